//! What can go wrong with the pinned state.

use std::path::{Path, PathBuf};

use aya::{maps::MapError, programs::ProgramError};

use super::object::REQUIRED_CAPABILITIES;
use crate::{
    datapath::pins::PinError, datapath::state::StateError, system::cgroup::CgroupError,
    system::iface::InterfaceError, system::resolvers::NetnsError,
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "loading the firewall needs root, or {}; this process lacks {}",
        REQUIRED_CAPABILITIES, missing.join(" and ")
    )]
    Privilege { missing: Vec<&'static str> },
    #[error(
        "this binary was built without its eBPF programs (AYA_BUILD_SKIP); run `cargo xtask setup` and rebuild"
    )]
    NoObject,
    #[error("cannot load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("map `{0}` is not in the table of map kinds (a bug: every map must be listed)")]
    UnknownMap(&'static str),
    #[error(
        "the eBPF object's map `{name}` ({kind}) is not in the table of maps with that kind (a bug: add it to datapath/maps.rs)"
    )]
    MapNotInTable { name: String, kind: String },
    #[error("the pinned config's {slot} holds {value}, which no build of ours writes")]
    BadConfig { slot: &'static str, value: u64 },
    #[error(
        "map `{0}` is not copied entry by entry (a bug: only tries, hashes and per-CPU arrays are)"
    )]
    NotCopied(&'static str),
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map `{name}`: {what}")]
    Map {
        name: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    #[error("cannot wait for the running programs before changing the policy tries")]
    Barrier(#[source] std::io::Error),
    #[error("flat table `{name}`: {what}")]
    FlatTable {
        name: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nothing is pinned at {}; start `egress-monitor run` first", .0.display())]
    NotPinned(PathBuf),
    #[error(
        "the policy needs {needed} rule slots but the live maps hold {capacity}; nothing was changed"
    )]
    TooManyRules { needed: usize, capacity: u32 },
    #[error(
        "the policy needs {needed} rule slots but the live maps hold {capacity}, and {link} was not attached by this process, so bigger maps cannot be swapped in under it; nothing was changed (apply the policy through the running daemon, which grows its maps without a gap: its policy source and SIGHUP, or `policy apply` while it runs)"
    )]
    CannotGrow {
        needed: usize,
        capacity: u32,
        link: String,
    },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "interface `{name}` is not an Ethernet device (link type {link_type}); the TC hook supports Ethernet devices only"
    )]
    NotEthernet { name: String, link_type: u16 },
    #[error("cannot attach to {target}")]
    Attach {
        target: String,
        #[source]
        source: ProgramError,
    },
    #[error("{what} {}", path.display())]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DatapathError {
    pub(crate) fn map(
        name: &'static str,
        what: impl Into<String>,
    ) -> impl FnOnce(MapError) -> Self {
        let what = what.into();
        move |source| DatapathError::Map { name, what, source }
    }

    pub(super) fn program(name: &'static str) -> impl FnOnce(ProgramError) -> Self {
        move |source| DatapathError::Program { name, source }
    }

    pub(super) fn pin(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| DatapathError::Pin { what, path, source }
    }
}
