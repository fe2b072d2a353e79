//! The kernel object this binary carries: its programs, loading it with every map pinned,
//! and what loading needs.

use std::time::{SystemTime, UNIX_EPOCH};

use aya::EbpfLoader;
use egress_monitor_common::{maps::DEFAULT_RULE_CAPACITY, policy::config};

use super::{
    DatapathError,
    maps::{MAPS, Size, write_config},
    remove_pins,
};
use crate::datapath::pins::PinLayout;

/// The kernel object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-monitor"));

pub const CGROUP_PROGRAM: &str = "cgroup_egress";
pub const TC_PROGRAM: &str = "tc_egress";
/// Records who creates each socket in the cgroup, for the events' pid and comm.
pub const SOCK_PROGRAM: &str = "sock_create";
/// Reads DNS answers delivered in the cgroup, for domain rules.
pub const INGRESS_PROGRAM: &str = "cgroup_ingress";
/// Refuses the socket options that would let frames skip the TC hook (raw-socket guards).
pub const GUARD_PROGRAM: &str = "raw_guard";
/// Every program the object holds, all pinned.
const PROGRAMS: [&str; 5] = [
    CGROUP_PROGRAM,
    TC_PROGRAM,
    SOCK_PROGRAM,
    INGRESS_PROGRAM,
    GUARD_PROGRAM,
];

/// The capacity [`create`] gives maps asked for `rule_capacity`.
pub(super) fn effective_capacity(rule_capacity: usize) -> u32 {
    u32::try_from(rule_capacity)
        .unwrap_or(u32::MAX)
        .max(DEFAULT_RULE_CAPACITY)
}

/// [`create`], removing whatever it pinned if it fails half-way (a verifier rejection, say), so
/// that no half-made state is left for the next start to trip over.
pub(super) fn create_or_clean(
    layout: &PinLayout,
    rule_capacity: usize,
) -> Result<(), DatapathError> {
    create(layout, rule_capacity).inspect_err(|_| remove_pins(layout))
}

/// Loads the object with every map pinned under `layout` and pins every program there; the
/// programs are not attached. Records the build and the time.
fn create(layout: &PinLayout, rule_capacity: usize) -> Result<(), DatapathError> {
    let capacity = effective_capacity(rule_capacity);
    // aya-log's own level filter is frozen into the programs at load; every record is let
    // through here and the KERNEL_LOG config slot decides, live (`run --kernel-log`).
    let log_level = log::LevelFilter::Debug as u8;
    let mut loader = EbpfLoader::new();
    for map in MAPS {
        loader.map_pin_path(map.name, layout.map(map.name));
        match map.size {
            Size::Declared => {}
            Size::RuleSlots => {
                loader.map_max_entries(map.name, capacity);
            }
            Size::Fixed(entries) => {
                loader.map_max_entries(map.name, entries);
            }
        }
    }
    let mut ebpf = loader
        // aya-log's levels and `log`'s filter share their numbers.
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .load(EBPF_OBJECT)
        .map_err(DatapathError::Load)?;
    check_map_table(&ebpf)?;
    for name in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        let loaded = match program {
            aya::programs::Program::CgroupSkb(program) => program.load(),
            aya::programs::Program::SchedClassifier(program) => program.load(),
            aya::programs::Program::CgroupSock(program) => program.load(),
            aya::programs::Program::CgroupSockopt(program) => program.load(),
            _ => return Err(DatapathError::MissingProgram(name)),
        };
        loaded.map_err(DatapathError::program(name))?;
        let path = layout.program(name);
        program.pin(&path).map_err(|err| DatapathError::Pin {
            what: "pinning program",
            path,
            source: std::io::Error::other(err),
        })?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    write_config(layout, config::PINNED_SINCE, now)?;
    write_config(layout, config::CHECK_SECRET, check_secret())?;
    write_config(layout, config::BUILD_ID, build_id())?;
    Ok(())
}

/// Every map the object defines is in [`MAPS`](super::maps::MAPS), with the kind the object
/// gives it: a map added to the kernel crate and not to the table would be left unpinned (and
/// lost at the next start), so it stops the load instead. Global-data sections (`.rodata`,
/// `.bss`) are the loader's, not ours.
fn check_map_table(ebpf: &aya::Ebpf) -> Result<(), DatapathError> {
    use aya::maps::Map;

    use super::maps::MapKind;
    for (name, map) in ebpf.maps() {
        if name.starts_with('.') {
            continue;
        }
        let listed = super::maps::MAPS.iter().find(|spec| spec.name == name);
        let kind = match map {
            Map::LpmTrie(_) => Some(MapKind::LpmTrie),
            Map::RingBuf(_) => Some(MapKind::RingBuf),
            Map::Array(_) => Some(MapKind::Array),
            Map::HashMap(_) => Some(MapKind::HashMap),
            Map::LruHashMap(_) => Some(MapKind::LruHashMap),
            Map::Queue(_) => Some(MapKind::Queue),
            Map::PerCpuArray(_) => Some(MapKind::PerCpuArray),
            _ => None,
        };
        match listed {
            Some(spec) if Some(spec.kind) == kind => {}
            _ => {
                return Err(DatapathError::MapNotInTable {
                    name: name.to_owned(),
                    kind: kind.map_or_else(|| "another".to_owned(), |k| format!("{k:?}")),
                });
            }
        }
    }
    Ok(())
}

/// A random non-zero secret for `check`'s synthetic packets (see `config::CHECK_SECRET`).
fn check_secret() -> u64 {
    loop {
        let secret = getrandom::u64().unwrap_or_else(|err| {
            panic!("the kernel's random source failed ({err}); nothing can be secret")
        });
        if secret != 0 {
            return secret;
        }
    }
}

/// Identifies this binary's kernel object (FNV-1a of its bytes).
pub fn build_id() -> u64 {
    egress_monitor_common::hash::fnv1a(EBPF_OBJECT)
}

pub(super) const REQUIRED_CAPABILITIES: &str = "CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN";

const CAP_NET_ADMIN: u32 = 12;

const CAP_SYS_ADMIN: u32 = 21;

const CAP_BPF: u32 = 39;

/// What loading and attaching need that the process's effective capabilities (the `CapEff`
/// line of /proc/self/status) lack. Checked up front so the operator gets one sentence instead
/// of the kernel's EPERM from somewhere inside the loader.
pub(super) fn missing_capabilities(status: &str) -> Vec<&'static str> {
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_the_effective_set() {
        let status =
            |cap_eff: &str| format!("Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t{cap_eff}\n");
        assert!(
            missing_capabilities(&status("000001ffffffffff")).is_empty(),
            "root"
        );
        assert_eq!(
            missing_capabilities(&status("0000000000000000")),
            ["CAP_BPF", "CAP_NET_ADMIN"]
        );
        // CAP_BPF + CAP_NET_ADMIN, and CAP_SYS_ADMIN + CAP_NET_ADMIN, are each enough.
        assert!(missing_capabilities(&status("0000008000001000")).is_empty());
        assert!(missing_capabilities(&status("0000000000201000")).is_empty());
        assert_eq!(
            missing_capabilities(&status("0000008000000000")),
            ["CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_capabilities("no such line"),
            ["CAP_BPF", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn the_build_id_is_stable_for_this_binary() {
        assert_eq!(build_id(), build_id());
    }
}
