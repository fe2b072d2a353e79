//! The pinned datapath: programs, maps and links on a bpf filesystem, so that enforcement
//! outlives any process. Everything that makes BPF syscalls for the live state lives here.
//!
//! - [`Datapath::open`] creates the pinned state, or adopts it when a compatible build pinned it
//!   earlier (counters and policy carry on, the attached programs are never detached), or
//!   prepares to replace it when another build did (attach new, then detach old).
//! - [`Datapath::apply`] brings the live policy to a new one by a diff: inserts and updates
//!   first, deletions after, so no allowed destination is ever dropped and no denied one passes
//!   while it runs.
//! - [`detach`] is the only thing that removes the state.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::CString,
    net::IpAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::{
    EbpfLoader,
    maps::{
        Array, HashMap as AyaHashMap, LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray,
        PerCpuValues, RingBuf, lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAttachType,
        CgroupSockopt, CgroupSockoptAttachType, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
    },
};
use egress_monitor_common::{
    dns::{
        DomainValue, LearnedSocket, LearnedValue, NO_RULE, PendingKey, queries as dns_queries,
        resolver as dns_resolver, suffix_hash,
    },
    maps::{
        self as names, Counter, DEFAULT_RULE_CAPACITY, EVENTS_RING_BYTES, SockOwner, counter_index,
        stat,
    },
    policy::{IPV4_ADDR_LEN, IPV6_ADDR_LEN, RuleValue, config},
    verdict::{RULE_ID_DEFAULT, action, hook, mode, outcome},
};
use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::{
    cgroup::{self, CgroupError},
    iface::{self, InterfaceError},
    pins::{self, PinError, PinLayout},
    policy::{Action, DomainRule, Mode, Policy},
    resolvers::{self, NetnsError},
    state::{StateError, StateFile, StateRule},
};

/// The kernel object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] =
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
/// aya-log's ring buffer; pinned like the others so a later daemon can read it.
const LOG_MAP: &str = "AYA_LOGS";
/// Every map the object defines, all pinned.
const MAPS: [&str; 25] = [
    names::POLICY_V4,
    names::POLICY_V6,
    names::CONFIG,
    names::COUNTERS,
    names::RULE_HITS,
    names::STATS,
    names::EVENTS,
    names::SOCK_OWNERS,
    names::FLOWS,
    names::FLOW_DIRTY[0],
    names::FLOW_DIRTY[1],
    names::FLOW_REPORTED,
    names::FLOW_SCRATCH,
    names::DOMAINS,
    names::DNS_ALLOWED_V4,
    names::DNS_ALLOWED_V6,
    names::DNS_SCRATCH,
    names::DNS_QUERY_EVENTS,
    names::DNS_PENDING,
    names::DNS_RESOLVERS_V4,
    names::DNS_RESOLVERS_V6,
    names::DNS_NETNS,
    names::LEARNED_SOCKETS,
    names::RAW_EXEMPT,
    LOG_MAP,
];
/// Where a replacement is staged before it takes over the pin path (bpffs allows no dots in
/// names, and no map or program is called this).
const STAGING: &str = "replacing";

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

    fn program(name: &'static str) -> impl FnOnce(ProgramError) -> Self {
        move |source| DatapathError::Program { name, source }
    }

    fn pin(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| DatapathError::Pin { what, path, source }
    }
}

/// How [`Datapath::open`] found the pin path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Nothing was pinned: fresh state, nothing attached yet.
    Created,
    /// A compatible build's state: maps, counters, policy and attachments carry on.
    Adopted,
    /// Another build's state: a fresh one is staged; [`Datapath::finish_replacement`] attaches
    /// it where the old one was and then removes the old.
    Replacing { previous_build: u64 },
    /// This build's state, with maps too small for the capacity asked for: bigger ones are
    /// staged, filled with what the live ones hold (policy, learned addresses, sockets,
    /// counters), and replace them as a build replacement does.
    Growing { from: u32, to: u32 },
}

/// An attachment, as its pinned link names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// `cgroup-<id>` or `tc-<netns id>-<ifindex>`.
    pub name: String,
    /// What the daemon that attached it called the target (the cgroup path or interface name),
    /// when this process knows it.
    pub target: Option<String>,
}

/// Packets and bytes (of the IP packet) summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// Per outcome, for one hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HookCounters {
    pub allowed: Totals,
    pub denied_observed: Totals,
    pub denied_dropped: Totals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub cgroup: HookCounters,
    pub tc: HookCounters,
    pub events_lost: u64,
    /// IP packets whose header could not be read (denied, and in the outcome counters too).
    pub malformed: u64,
    /// TC: non-IP frames other than ARP (denied, and in the outcome counters too).
    pub not_ip: u64,
    /// TC: ARP frames (passed; not in the outcome counters, which are about IP).
    pub arp: u64,
    /// Denied packets counted in their flow instead of getting an event of their own.
    pub aggregated: u64,
    /// Times a flow could not be queued for its report (the queue was full).
    pub flow_queue_full: u64,
    /// DNS questions that left, and those denied for their name.
    pub dns_queries_allowed: u64,
    pub dns_queries_denied: u64,
    /// DNS answers whose addresses a domain rule let the kernel learn.
    pub dns_answers_learned: u64,
    /// DNS answers for an allowed name that taught nothing: not from a trusted resolver, not
    /// to a socket of a trusted namespace, or answering no question the socket asked.
    pub dns_answers_untrusted: u64,
    /// Packets denied because they name further destinations (source routes, routing headers).
    pub source_routed: u64,
    /// Guarded socket options refused (enforce) or reported (observe).
    pub raw_guard_hits: u64,
    /// Packets allowed because their socket opened to a learned address while it was allowed.
    pub learned_socket_passes: u64,
}

/// The live config: what the config map says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LiveConfig {
    pub mode: Mode,
    pub policy_version: u64,
    pub build_id: u64,
    pub pinned_since: u64,
    /// The flow reporting period; 0: every denied packet is an event (see [`crate::flows`]).
    pub flow_generation: u64,
}

/// What [`Datapath::apply`] changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub version: u64,
    pub previous_version: u64,
    pub inserted: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    pub mode: Mode,
    #[serde(skip)]
    pub elapsed: Duration,
    /// The rule slots before and after, when bigger maps were swapped in for the policy.
    pub grown: Option<(u32, u32)>,
}

impl std::fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy {:016x} applied ({} mode, was {:016x}): {} inserted, {} updated, {} removed, {} unchanged in {:.1} ms",
            self.version,
            self.mode,
            self.previous_version,
            self.inserted,
            self.updated,
            self.removed,
            self.unchanged,
            self.elapsed.as_secs_f64() * 1000.0
        )?;
        if let Some((from, to)) = self.grown {
            write!(
                f,
                "; the maps grew from {from} to {to} rule slots (swapped in without a gap)"
            )?;
        }
        Ok(())
    }
}

/// The pinned datapath of one pin path.
pub struct Datapath {
    layout: PinLayout,
    /// Where new links and maps go: the layout itself, or the staging area while replacing.
    target: PinLayout,
    opened: Opened,
    /// Targets attached by this process, by link name.
    targets: HashMap<String, String>,
    /// How many times this process swapped in bigger maps: a reader holding map handles
    /// (the ring buffer, the flows) opens them again when it changes.
    generation: u64,
}

impl Datapath {
    /// Creates or adopts the pinned state at `layout` (see [`Opened`]). `rule_capacity` sizes
    /// new maps (policy tries and per-rule counters); adopted maps keep their size.
    pub fn open(layout: &PinLayout, rule_capacity: usize) -> Result<Datapath, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let missing =
            missing_capabilities(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
        if !missing.is_empty() {
            return Err(DatapathError::Privilege { missing });
        }
        layout.prepare()?;
        let staging = PinLayout::new(layout.root.join(STAGING));
        // A replacement that died half-way left a staging area: it was never attached alone
        // (the old links stay until the new are pinned), so it can go.
        if staging.root.exists() {
            remove_pins(&staging);
        }
        let (opened, target) = if layout.exists() {
            let live = read_config(layout)?;
            let live_capacity = capacity_of(layout)?;
            let wanted_capacity = effective_capacity(rule_capacity);
            if live.build_id == build_id() && wanted_capacity > live_capacity {
                staging.prepare()?;
                create_or_clean(&staging, rule_capacity)?;
                carry_over(layout, &staging).inspect_err(|_| remove_pins(&staging))?;
                (
                    Opened::Growing {
                        from: live_capacity,
                        to: wanted_capacity,
                    },
                    staging,
                )
            } else if live.build_id == build_id() {
                (Opened::Adopted, layout.clone())
            } else {
                staging.prepare()?;
                create_or_clean(&staging, rule_capacity)?;
                (
                    Opened::Replacing {
                        previous_build: live.build_id,
                    },
                    staging,
                )
            }
        } else {
            create_or_clean(layout, rule_capacity)?;
            (Opened::Created, layout.clone())
        };
        Ok(Datapath {
            layout: layout.clone(),
            target,
            opened,
            targets: HashMap::new(),
            generation: 0,
        })
    }

    /// Opens existing pinned state, for commands that inspect or change it (`status`,
    /// `policy apply`, `check`).
    pub fn existing(layout: &PinLayout) -> Result<Datapath, DatapathError> {
        if !layout.exists() {
            return Err(DatapathError::NotPinned(layout.root.clone()));
        }
        Ok(Datapath {
            layout: layout.clone(),
            target: layout.clone(),
            opened: Opened::Adopted,
            targets: HashMap::new(),
            generation: 0,
        })
    }

    pub fn opened(&self) -> Opened {
        self.opened
    }

    /// Changes when bigger maps were swapped in (see [`Datapath::apply`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// Attaches the cgroup_skb egress program to a cgroup v2 directory (every socket of every
    /// process in it and below, whatever their network namespace), with its three companions on
    /// the same cgroup (socket owners, DNS answers, raw-socket guards), and pins each link.
    /// Links already pinned are kept, missing ones made (a start that failed half-way is
    /// completed by the next). Returns false when all four were attached already (adopted).
    pub fn attach_cgroup(&mut self, path: &Path) -> Result<bool, DatapathError> {
        let cgroup = cgroup::open(path)?;
        let name = pins::cgroup_link_name(path).map_err(DatapathError::pin("reading", path))?;
        let mut attached = false;
        for program in [CGROUP_PROGRAM, SOCK_PROGRAM, INGRESS_PROGRAM, GUARD_PROGRAM] {
            let link = format!("{}{name}", cgroup_link_prefix(program));
            self.targets
                .insert(link.clone(), path.display().to_string());
            if self.target.links().join(&link).exists() {
                continue;
            }
            self.attach_to_cgroup(&cgroup, path, program, &link)?;
            attached = true;
        }
        Ok(attached)
    }

    /// Attaches one of the cgroup programs and pins its link as `link`.
    fn attach_to_cgroup(
        &mut self,
        cgroup: &std::fs::File,
        path: &Path,
        program: &'static str,
        link: &str,
    ) -> Result<(), DatapathError> {
        let attach_error = |what: &str| {
            let target = format!("cgroup {}{what}", path.display());
            move |source| DatapathError::Attach { target, source }
        };
        let pinned = self.target.program(program);
        match program {
            CGROUP_PROGRAM | INGRESS_PROGRAM => {
                let (kind, what) = if program == CGROUP_PROGRAM {
                    (CgroupSkbAttachType::Egress, "")
                } else {
                    (CgroupSkbAttachType::Ingress, " (DNS answers)")
                };
                let mut skb =
                    CgroupSkb::from_pin(pinned, kind).map_err(DatapathError::program(program))?;
                let id = skb
                    .attach(cgroup, kind, CgroupAttachMode::Single)
                    .map_err(attach_error(what))?;
                let taken = skb.take_link(id).map_err(DatapathError::program(program))?;
                self.pin_link(taken, program, link)
            }
            SOCK_PROGRAM => {
                let mut recorder = CgroupSock::from_pin(pinned, CgroupSockAttachType::SockCreate)
                    .map_err(DatapathError::program(program))?;
                let id = recorder
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map_err(attach_error(" (socket owners)"))?;
                let taken = recorder
                    .take_link(id)
                    .map_err(DatapathError::program(program))?;
                self.pin_link(taken, program, link)
            }
            _ => {
                // aya 0.16 cannot turn a sockopt link into an `FdLink` to pin, so the link is
                // made and pinned here directly (`BPF_LINK_CREATE`, `BPF_OBJ_PIN`).
                let guard = CgroupSockopt::from_pin(pinned, CgroupSockoptAttachType::Set)
                    .map_err(DatapathError::program(program))?;
                let program_fd = guard.fd().map_err(DatapathError::program(program))?;
                link_and_pin(
                    program_fd.as_fd(),
                    cgroup.as_fd(),
                    BPF_CGROUP_SETSOCKOPT,
                    &self.target.links().join(link),
                )
                .map_err(|source| DatapathError::Attach {
                    target: format!("cgroup {} (raw-socket guards)", path.display()),
                    source: ProgramError::IOError(source),
                })
            }
        }
    }

    /// Attaches the TC egress program to an interface of the calling thread's network
    /// namespace and pins the link. Returns false when it was already attached (adopted).
    pub fn attach_tc(&mut self, name: &str) -> Result<bool, DatapathError> {
        let interface = iface::lookup(name)?;
        if !interface.is_ethernet() {
            return Err(DatapathError::NotEthernet {
                name: name.to_owned(),
                link_type: interface.link_type,
            });
        }
        let link_name = pins::tc_link_name(interface.index).map_err(DatapathError::pin(
            "reading",
            Path::new("/proc/thread-self/ns/net"),
        ))?;
        self.targets.insert(link_name.clone(), name.to_owned());
        if self.target.links().join(&link_name).exists() {
            return Ok(false);
        }
        let c_name = CString::new(name).map_err(|_| InterfaceError::BadName(name.to_owned()))?;
        let mut program = SchedClassifier::from_pin(self.target.program(TC_PROGRAM))
            .map_err(DatapathError::program(TC_PROGRAM))?;
        let link_id = program
            .attach(&c_name, TcAttachType::Egress)
            .map_err(|source| DatapathError::Attach {
                target: format!("interface {name}"),
                source,
            })?;
        let link = program
            .take_link(link_id)
            .map_err(DatapathError::program(TC_PROGRAM))?;
        self.pin_link(link, TC_PROGRAM, &link_name)?;
        Ok(true)
    }

    /// Pins a program's link under `links/<name>`: from then on the attachment lives as long
    /// as the pin, whatever happens to this process.
    fn pin_link<L>(&self, link: L, program: &'static str, name: &str) -> Result<(), DatapathError>
    where
        L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
    {
        let link: FdLink = link.try_into().map_err(|err| DatapathError::Program {
            name: program,
            source: ProgramError::from(err),
        })?;
        let path = self.target.links().join(name);
        link.pin(&path).map_err(|err| DatapathError::Pin {
            what: "pinning link",
            path,
            source: std::io::Error::other(err),
        })?;
        Ok(())
    }

    /// Completes a replacement once the staged programs are attached everywhere the caller
    /// wants: the old links whose targets got a new link are detached, the old pins removed,
    /// and the staged ones moved into place. Old links to targets not attached again are kept
    /// (only `detach` removes enforcement) and named in the returned list.
    pub fn finish_replacement(&mut self) -> Result<Vec<String>, DatapathError> {
        if !matches!(
            self.opened,
            Opened::Replacing { .. } | Opened::Growing { .. }
        ) {
            return Ok(Vec::new());
        }
        if let Opened::Growing { .. } = self.opened {
            // What the live programs learned while the bigger maps were filled and attached
            // (but nothing the new policy revoked).
            carry_dynamic(&self.layout, &self.target)?;
            forget_revoked(&self.target)?;
        }
        let staging = self.target.clone();
        let mut kept = Vec::new();
        for name in link_names(&self.layout) {
            let old = self.layout.links().join(&name);
            if staging.links().join(&name).exists() {
                // The new program is attached here already: detaching the old leaves no gap.
                unpin_link(&old)?;
            } else {
                kept.push(name);
            }
        }
        for dir in [self.layout.maps(), self.layout.programs()] {
            remove_dir_entries(&dir);
        }
        for (from, to) in [
            (staging.maps(), self.layout.maps()),
            (staging.programs(), self.layout.programs()),
            (staging.links(), self.layout.links()),
        ] {
            for entry in std::fs::read_dir(&from)
                .map_err(DatapathError::pin("reading", &from))?
                .flatten()
            {
                let destination = to.join(entry.file_name());
                std::fs::rename(entry.path(), &destination)
                    .map_err(DatapathError::pin("moving a pin to", &destination))?;
            }
        }
        remove_pins(&staging);
        self.target = self.layout.clone();
        self.opened = Opened::Adopted;
        Ok(kept)
    }

    /// Every attachment pinned at this pin path.
    pub fn attachments(&self) -> Vec<Attachment> {
        link_names(&self.target)
            .into_iter()
            .map(|name| Attachment {
                target: self.targets.get(&name).cloned(),
                name,
            })
            .collect()
    }

    /// Brings the live policy to `policy` by a diff, sets its mode and version, and records
    /// its names in the state file. Rule ids stay with their prefixes across applies, so the
    /// per-rule counters keep meaning the same rule.
    ///
    /// A policy larger than the live maps is applied to bigger ones, swapped in without a gap
    /// (see [`Datapath::grow`]) when this process attached every live link; otherwise it is
    /// refused and nothing changes.
    pub fn apply(&mut self, policy: &Policy) -> Result<ApplyReport, DatapathError> {
        let capacity = capacity_of(&self.target)?;
        // New prefixes go in before stale ones come out, so a trie holds both for a moment.
        let needed =
            (policy.rules.len() + policy.domains.len()).max(self.transient_entries(policy)?);
        if needed <= capacity as usize {
            return self.apply_in_place(policy);
        }
        // Mid-replacement (the maps are staged and nothing is attached to them yet), the
        // staged maps are what must be big enough: no second swap on top of the first.
        if !matches!(self.opened, Opened::Adopted | Opened::Created) {
            return Err(DatapathError::TooManyRules { needed, capacity });
        }
        let attach_to = self
            .reattach_targets()
            .map_err(|link| DatapathError::CannotGrow {
                needed,
                capacity,
                link,
            })?;
        let grown = u32::try_from(needed.saturating_mul(2))
            .unwrap_or(u32::MAX)
            .max(DEFAULT_RULE_CAPACITY);
        self.grow(policy, grown, &attach_to)
    }

    /// The most entries either trie holds while `policy` is applied in place: its prefixes of
    /// that family and the live ones it removes (inserts come before deletions).
    fn transient_entries(&self, policy: &Policy) -> Result<usize, DatapathError> {
        let v4 = open_trie::<IPV4_ADDR_LEN>(&self.target, names::POLICY_V4)?;
        let v6 = open_trie::<IPV6_ADDR_LEN>(&self.target, names::POLICY_V6)?;
        let mut keys: BTreeSet<LpmKey> = policy
            .rules
            .iter()
            .map(|rule| lpm_key(rule.network))
            .collect();
        for item in v4.iter() {
            let (key, _) = item.map_err(DatapathError::map(names::POLICY_V4, "read"))?;
            keys.insert(LpmKey::V4(key.prefix_len(), key.data()));
        }
        for item in v6.iter() {
            let (key, _) = item.map_err(DatapathError::map(names::POLICY_V6, "read"))?;
            keys.insert(LpmKey::V6(key.prefix_len(), key.data()));
        }
        let v4_count = keys
            .iter()
            .filter(|key| matches!(key, LpmKey::V4(..)))
            .count();
        Ok(v4_count.max(keys.len() - v4_count))
    }

    /// The attachments to make again for a swap: every live link's cgroup or interface. `Err`
    /// names a link this process cannot attach again (not attached by it, or a TC link in
    /// another network namespace).
    fn reattach_targets(&self) -> Result<Vec<Reattach>, String> {
        let own_netns = pins::tc_link_name(0)
            .ok()
            .and_then(|name| name.strip_suffix("-0").map(str::to_owned));
        let mut targets = Vec::new();
        for link in link_names(&self.target) {
            let target = self.targets.get(&link).ok_or_else(|| link.clone())?;
            if link.starts_with("cgroup-") {
                targets.push(Reattach::Cgroup(PathBuf::from(target)));
            } else if link.starts_with("tc-") {
                if own_netns
                    .as_deref()
                    .is_none_or(|own| !link.starts_with(&format!("{own}-")))
                {
                    return Err(link);
                }
                targets.push(Reattach::Tc(target.clone()));
            }
        }
        Ok(targets)
    }

    /// Swaps in maps of `capacity` slots under traffic: bigger maps and programs are staged,
    /// filled with what the live maps hold (so rule ids, counters, learned addresses and the
    /// sockets that hold them carry on), given `policy`, attached beside the live programs at
    /// every target (a packet then passes only if both pass it), filled again with what the
    /// live ones learned meanwhile, and only then are the old links removed. If anything fails
    /// the staged state goes and the live one was never touched.
    fn grow(
        &mut self,
        policy: &Policy,
        capacity: u32,
        attach_to: &[Reattach],
    ) -> Result<ApplyReport, DatapathError> {
        let from = capacity_of(&self.target)?;
        let state = StateFile::load(&self.layout.state_file())?;
        let staging = PinLayout::new(self.layout.root.join(STAGING));
        if staging.root.exists() {
            remove_pins(&staging);
        }
        staging.prepare()?;
        create_or_clean(&staging, capacity as usize)?;
        let live = std::mem::replace(&mut self.target, staging.clone());
        let opened = std::mem::replace(&mut self.opened, Opened::Growing { from, to: capacity });
        match self.fill_and_attach(&live, policy, attach_to) {
            Ok(mut report) => {
                for kept in self.finish_replacement()? {
                    log::warn!("kept the old maps' attachment {kept}");
                }
                self.generation += 1;
                report.grown = Some((from, capacity));
                Ok(report)
            }
            Err(err) => {
                for name in link_names(&staging) {
                    let _ = unpin_link(&staging.links().join(name));
                }
                remove_pins(&staging);
                self.target = live;
                self.opened = opened;
                if let Some(state) = state {
                    state.save(&self.layout.state_file())?;
                }
                Err(err)
            }
        }
    }

    fn fill_and_attach(
        &mut self,
        live: &PinLayout,
        policy: &Policy,
        attach_to: &[Reattach],
    ) -> Result<ApplyReport, DatapathError> {
        carry_over(live, &self.target)?;
        let report = self.apply_in_place(policy)?;
        for target in attach_to {
            match target {
                Reattach::Cgroup(path) => self.attach_cgroup(path)?,
                Reattach::Tc(name) => self.attach_tc(name)?,
            };
        }
        Ok(report)
    }

    fn apply_in_place(&mut self, policy: &Policy) -> Result<ApplyReport, DatapathError> {
        let started = Instant::now();
        // Everything that can fail outside the maps (a namespace gone, say) fails before any
        // map changes.
        let trust = TrustPlan::of(policy)?;
        let previous_version = read_config(&self.target)?.policy_version;
        let capacity = capacity_of(&self.target)?;
        let mut v4 = open_trie::<IPV4_ADDR_LEN>(&self.target, names::POLICY_V4)?;
        let mut v6 = open_trie::<IPV6_ADDR_LEN>(&self.target, names::POLICY_V6)?;
        let mut live: HashMap<LpmKey, RuleValue> = HashMap::new();
        for item in v4.iter() {
            let (key, value) = item.map_err(DatapathError::map(names::POLICY_V4, "read"))?;
            live.insert(LpmKey::V4(key.prefix_len(), key.data()), value);
        }
        for item in v6.iter() {
            let (key, value) = item.map_err(DatapathError::map(names::POLICY_V6, "read"))?;
            live.insert(LpmKey::V6(key.prefix_len(), key.data()), value);
        }

        // Ids: a prefix that stays keeps its id. New prefixes take ids no live entry holds, so
        // that while the stale entries still exist no two prefixes share an id (events and
        // per-rule counters stay right); only when those run out do they take a stale entry's.
        let wanted: Vec<(LpmKey, &crate::policy::Rule)> = policy
            .rules
            .iter()
            .map(|rule| (lpm_key(rule.network), rule))
            .collect();
        let wanted_keys: BTreeSet<LpmKey> = wanted.iter().map(|(key, _)| *key).collect();
        // Domain rules take ids from the same space (they count hits and name events alike).
        let mut domains: AyaHashMap<MapData, u64, DomainValue> =
            open_map(&self.target, names::DOMAINS)?;
        let live_domains = live_domain_ids(&domains)?;
        let wanted_domains: Vec<((u64, bool), &DomainRule)> = policy
            .domains
            .iter()
            .map(|rule| {
                let hash = suffix_hash(&rule.domain.wire());
                ((hash, rule.domain.subdomains), rule)
            })
            .collect();
        let wanted_domain_keys: BTreeSet<(u64, bool)> =
            wanted_domains.iter().map(|(key, _)| *key).collect();
        let kept: BTreeSet<u32> = wanted
            .iter()
            .filter_map(|(key, _)| live.get(key).map(|value| value.rule_id))
            .chain(
                wanted_domains
                    .iter()
                    .filter_map(|(key, _)| live_domains.get(key).copied()),
            )
            .collect();
        let stale: BTreeSet<u32> = live
            .iter()
            .filter(|(key, _)| !wanted_keys.contains(key))
            .map(|(_, value)| value.rule_id)
            .chain(
                live_domains
                    .iter()
                    .filter(|(key, _)| !wanted_domain_keys.contains(key))
                    .map(|(_, id)| *id),
            )
            .collect();
        let mut free = (0..capacity)
            .filter(|id| !kept.contains(id) && !stale.contains(id))
            .chain(stale.iter().copied().filter(|id| !kept.contains(id)));
        let mut plan = Vec::with_capacity(wanted.len());
        let mut fresh_ids = Vec::new();
        for (key, rule) in &wanted {
            let id = match live.get(key) {
                Some(value) => value.rule_id,
                None => {
                    let Some(id) = free.next() else {
                        return Err(DatapathError::TooManyRules {
                            needed: policy.rules.len(),
                            capacity,
                        });
                    };
                    fresh_ids.push(id);
                    id
                }
            };
            plan.push((*key, rule_value(id, rule.action), *rule));
        }
        let mut domain_plan: Vec<(u32, &DomainRule)> = Vec::with_capacity(wanted_domains.len());
        for (key, rule) in &wanted_domains {
            let id = match live_domains.get(key) {
                Some(id) => *id,
                None => {
                    let Some(id) = free.next() else {
                        return Err(DatapathError::TooManyRules {
                            needed: policy.rules.len() + policy.domains.len(),
                            capacity,
                        });
                    };
                    fresh_ids.push(id);
                    id
                }
            };
            domain_plan.push((id, rule));
        }

        // A recycled id starts counting from zero.
        if !fresh_ids.is_empty() {
            let mut hits: PerCpuArray<MapData, u64> = open_map(&self.target, names::RULE_HITS)?;
            let cpus = aya::util::nr_cpus()
                .map_err(|(_, err)| {
                    DatapathError::pin("reading", Path::new("/sys/devices/system/cpu/possible"))(
                        err,
                    )
                })?
                .get() as usize;
            for id in &fresh_ids {
                let zeros =
                    PerCpuValues::try_from(vec![0u64; cpus]).map_err(|err| DatapathError::Map {
                        name: names::RULE_HITS,
                        what: "reset".into(),
                        source: MapError::from(err),
                    })?;
                hits.set(*id, zeros, 0)
                    .map_err(DatapathError::map(names::RULE_HITS, "reset"))?;
            }
        }

        // Inserts and updates first: every destination allowed before and after stays allowed,
        // every one denied before and after stays denied, at every moment.
        let (mut inserted, mut updated, mut unchanged) = (0, 0, 0);
        for (key, value, rule) in &plan {
            match live.get(key) {
                Some(current) if current == value => {
                    unchanged += 1;
                    continue;
                }
                Some(_) => updated += 1,
                None => inserted += 1,
            }
            match key {
                LpmKey::V4(prefix, addr) => v4
                    .insert(&Key::new(*prefix, *addr), value, 0)
                    .map_err(DatapathError::map(
                        names::POLICY_V4,
                        format!("insert {}", rule.network),
                    ))?,
                LpmKey::V6(prefix, addr) => v6
                    .insert(&Key::new(*prefix, *addr), value, 0)
                    .map_err(DatapathError::map(
                        names::POLICY_V6,
                        format!("insert {}", rule.network),
                    ))?,
            }
        }
        // Then deletions: a removed prefix falls back to the next shorter one, which is already
        // in its final state.
        let mut removed = 0;
        for key in live.keys().filter(|key| !wanted_keys.contains(key)) {
            match key {
                LpmKey::V4(prefix, addr) => v4
                    .remove(&Key::new(*prefix, *addr))
                    .map_err(DatapathError::map(names::POLICY_V4, "remove a stale rule"))?,
                LpmKey::V6(prefix, addr) => v6
                    .remove(&Key::new(*prefix, *addr))
                    .map_err(DatapathError::map(names::POLICY_V6, "remove a stale rule"))?,
            }
            removed += 1;
        }

        // Domain rules: each domain's value says what its exact and its `*.` rule do. New
        // values first, then stale keys go.
        let mut values: HashMap<u64, DomainValue> = HashMap::new();
        for (((hash, _), _), (id, rule)) in wanted_domains.iter().zip(&domain_plan) {
            let value = values.entry(*hash).or_insert(DomainValue {
                exact_rule: RULE_ID_DEFAULT,
                subdomain_rule: RULE_ID_DEFAULT,
                exact_action: NO_RULE,
                subdomain_action: NO_RULE,
                _pad: [0; 6],
            });
            let code = rule_value(*id, rule.action).action;
            if rule.domain.subdomains {
                (value.subdomain_rule, value.subdomain_action) = (*id, code);
            } else {
                (value.exact_rule, value.exact_action) = (*id, code);
            }
        }
        for (hash, value) in &values {
            domains
                .insert(hash, value, 0)
                .map_err(DatapathError::map(names::DOMAINS, "insert"))?;
        }
        let live_hashes: Vec<u64> = domains.keys().filter_map(Result::ok).collect();
        for hash in live_hashes.iter().filter(|hash| !values.contains_key(hash)) {
            domains
                .remove(hash)
                .map_err(DatapathError::map(names::DOMAINS, "remove a stale rule"))?;
        }
        write_config(
            &self.target,
            config::DOMAIN_RULES,
            policy.domains.len() as u64,
        )?;
        // What a domain rule no longer allows goes: its learned addresses and the sockets that
        // kept one.
        forget_revoked(&self.target)?;
        // Queries are always reported; with domain rules, names no rule allows are refused.
        write_config(
            &self.target,
            config::DNS_QUERIES,
            if policy.domains.is_empty() {
                dns_queries::REPORT
            } else {
                dns_queries::FILTER
            },
        )?;

        self.write_trust(&trust)?;

        let version = policy.version();
        // Names first, then the version: a reader that sees the new version finds its names.
        let mut state = StateFile {
            version: format!("{version:016x}"),
            mode: policy.mode,
            applied_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            groups: policy
                .groups
                .iter()
                .map(|(n, on)| ((*n).to_owned(), *on))
                .collect(),
            rules: plan
                .iter()
                .map(|(_, value, rule)| StateRule {
                    id: value.rule_id,
                    cidr: rule.network.to_string(),
                    action: rule.action,
                    name: rule.name.clone(),
                    origin: rule.origin.to_string(),
                })
                .chain(domain_plan.iter().map(|(id, rule)| StateRule {
                    id: *id,
                    cidr: rule.domain.to_string(),
                    action: rule.action,
                    name: rule.name.clone(),
                    origin: rule.origin.to_string(),
                }))
                .collect(),
        };
        state.rules.sort_by_key(|rule| rule.id);
        state.save(&self.layout.state_file())?;
        self.set_mode(policy.mode)?;
        write_config(&self.target, config::POLICY_VERSION, version)?;
        Ok(ApplyReport {
            version,
            previous_version,
            inserted,
            updated,
            removed,
            unchanged,
            mode: policy.mode,
            elapsed: started.elapsed(),
            grown: None,
        })
    }

    /// Writes whose DNS answers teach (resolvers, network namespaces) and which cgroups the
    /// raw-socket guards leave alone, each map brought to the plan by a diff (new entries
    /// first).
    fn write_trust(&mut self, trust: &TrustPlan) -> Result<(), DatapathError> {
        replace_entries(&self.target, names::DNS_RESOLVERS_V4, &trust.resolvers_v4)?;
        replace_entries(&self.target, names::DNS_RESOLVERS_V6, &trust.resolvers_v6)?;
        replace_set(&self.target, names::DNS_NETNS, &trust.netns)?;
        write_config(
            &self.target,
            config::DNS_ANY_NETNS,
            u64::from(trust.any_netns),
        )?;
        replace_set(&self.target, names::RAW_EXEMPT, &trust.exempt)
    }

    /// Switches observe/enforce without reloading anything.
    pub fn set_mode(&mut self, new_mode: Mode) -> Result<(), DatapathError> {
        let value = match new_mode {
            Mode::Observe => mode::OBSERVE,
            Mode::Enforce => mode::ENFORCE,
        };
        write_config(&self.target, config::MODE, u64::from(value))
    }

    /// How long an address learned from a domain rule's DNS answer stays allowed beyond the
    /// record's TTL.
    pub fn set_dns_grace(&mut self, grace: Duration) -> Result<(), DatapathError> {
        let nanos = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        write_config(&self.target, config::DNS_GRACE_NS, nanos)
    }

    /// Least time between two events for the same DNS question from the same socket (zero:
    /// every query is an event).
    pub fn set_dns_event_interval(&mut self, interval: Duration) -> Result<(), DatapathError> {
        let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        write_config(&self.target, config::DNS_EVENT_INTERVAL_NS, nanos)
    }

    /// Addresses domain rules allow now, with when each stops (`CLOCK_BOOTTIME` ns) and the
    /// rule's id.
    pub fn learned(&self) -> Result<Vec<(IpAddr, LearnedValue)>, DatapathError> {
        let v4: AyaHashMap<MapData, [u8; 4], LearnedValue> =
            open_map(&self.target, names::DNS_ALLOWED_V4)?;
        let v6: AyaHashMap<MapData, [u8; 16], LearnedValue> =
            open_map(&self.target, names::DNS_ALLOWED_V6)?;
        let mut all = Vec::new();
        for item in v4.iter() {
            let (address, value) =
                item.map_err(DatapathError::map(names::DNS_ALLOWED_V4, "read"))?;
            all.push((IpAddr::from(address), value));
        }
        for item in v6.iter() {
            let (address, value) =
                item.map_err(DatapathError::map(names::DNS_ALLOWED_V6, "read"))?;
            all.push((IpAddr::from(address), value));
        }
        Ok(all)
    }

    /// Removes learned addresses whose time is up (the kernel already ignores them; this
    /// frees their slots). Returns how many went.
    pub fn prune_learned(&self) -> Result<usize, DatapathError> {
        let now = crate::clock::boot_time_ns();
        let expired: Vec<IpAddr> = self
            .learned()?
            .into_iter()
            .filter(|(_, value)| value.expires_ns <= now)
            .map(|(address, _)| address)
            .collect();
        let mut v4: AyaHashMap<MapData, [u8; 4], LearnedValue> =
            open_map(&self.target, names::DNS_ALLOWED_V4)?;
        let mut v6: AyaHashMap<MapData, [u8; 16], LearnedValue> =
            open_map(&self.target, names::DNS_ALLOWED_V6)?;
        // An entry refreshed by a new answer between the read and the removal is removed
        // anyway; the next answer for its name brings it back.
        for address in &expired {
            let _ = match address {
                IpAddr::V4(v4_address) => v4.remove(&v4_address.octets()),
                IpAddr::V6(v6_address) => v6.remove(&v6_address.octets()),
            };
        }
        Ok(expired.len())
    }

    /// Turns the kernel's debug log records on or off, live.
    pub fn set_kernel_log(&mut self, on: bool) -> Result<(), DatapathError> {
        write_config(&self.target, config::KERNEL_LOG, u64::from(on))
    }

    pub fn config(&self) -> Result<LiveConfig, DatapathError> {
        read_config(&self.target)
    }

    /// The secret that keeps `check`'s synthetic packets out of the counts (kept out of
    /// [`LiveConfig`], which `status` shows).
    pub fn check_secret(&self) -> Result<u64, DatapathError> {
        let array: Array<MapData, u64> = open_map(&self.target, names::CONFIG)?;
        array
            .get(&config::CHECK_SECRET, 0)
            .map_err(DatapathError::map(names::CONFIG, "read"))
    }

    /// The event ring buffer, opened from its pin. Events written while no daemon ran wait in
    /// it (up to its size; beyond, `events_lost` counts them).
    pub fn events(&self) -> Result<RingBuf<MapData>, DatapathError> {
        let data = MapData::from_pin(self.target.map(names::EVENTS))
            .map_err(DatapathError::map(names::EVENTS, "open"))?;
        RingBuf::try_from(Map::RingBuf(data)).map_err(DatapathError::map(names::EVENTS, "open"))
    }

    /// The aya-log reader for kernel-side debug records, when the programs have its map.
    pub fn logger(&self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        let info =
            aya::programs::ProgramInfo::from_pin(self.target.program(CGROUP_PROGRAM)).ok()?;
        match aya_log::EbpfLogger::init_from_id(info.id()) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::warn!("kernel-side log records will not be shown: {err}");
                None
            }
        }
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let counters: PerCpuArray<MapData, Counter> = open_map(&self.target, names::COUNTERS)?;
        let read = |hook_code: u8, result: u32| -> Result<Totals, DatapathError> {
            let values = counters
                .get(&counter_index(hook_code, result), 0)
                .map_err(DatapathError::map(names::COUNTERS, "read"))?;
            Ok(values.iter().fold(Totals::default(), |sum, c| Totals {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            }))
        };
        let per_hook = |hook_code: u8| -> Result<HookCounters, DatapathError> {
            Ok(HookCounters {
                allowed: read(hook_code, outcome::ALLOWED)?,
                denied_observed: read(hook_code, outcome::DENIED_OBSERVED)?,
                denied_dropped: read(hook_code, outcome::DENIED_DROPPED)?,
            })
        };
        let stats = self.per_cpu_sums(names::STATS)?;
        let stat_at = |slot: u32| stats.get(slot as usize).copied().unwrap_or(0);
        Ok(Counters {
            cgroup: per_hook(hook::CGROUP)?,
            tc: per_hook(hook::TC)?,
            events_lost: stat_at(stat::EVENTS_LOST),
            malformed: stat_at(stat::MALFORMED),
            not_ip: stat_at(stat::NOT_IP),
            arp: stat_at(stat::ARP),
            aggregated: stat_at(stat::AGGREGATED),
            flow_queue_full: stat_at(stat::FLOW_QUEUE_FULL),
            dns_queries_allowed: stat_at(stat::DNS_QUERIES_ALLOWED),
            dns_queries_denied: stat_at(stat::DNS_QUERIES_DENIED),
            dns_answers_learned: stat_at(stat::DNS_ANSWERS_LEARNED),
            dns_answers_untrusted: stat_at(stat::DNS_ANSWERS_UNTRUSTED),
            source_routed: stat_at(stat::SOURCE_ROUTED),
            raw_guard_hits: stat_at(stat::RAW_GUARD_HITS),
            learned_socket_passes: stat_at(stat::LEARNED_SOCKET_PASSES),
        })
    }

    /// Hits per rule id, summed over CPUs.
    pub fn rule_hits(&self) -> Result<Vec<u64>, DatapathError> {
        self.per_cpu_sums(names::RULE_HITS)
    }

    fn per_cpu_sums(&self, name: &'static str) -> Result<Vec<u64>, DatapathError> {
        let array: PerCpuArray<MapData, u64> = open_map(&self.target, name)?;
        array
            .iter()
            .map(|values| {
                values
                    .map(|values| values.iter().sum())
                    .map_err(DatapathError::map(name, "read"))
            })
            .collect()
    }
}

/// The live domain rules' ids, by (hash of the domain, whether it is the `*.` rule): each
/// value of the map holds the ids of both rules of its domain.
fn live_domain_ids(
    domains: &AyaHashMap<MapData, u64, DomainValue>,
) -> Result<HashMap<(u64, bool), u32>, DatapathError> {
    let mut ids = HashMap::new();
    for item in domains.iter() {
        let (hash, value) = item.map_err(DatapathError::map(names::DOMAINS, "read"))?;
        if value.exact_action != NO_RULE {
            ids.insert((hash, false), value.exact_rule);
        }
        if value.subdomain_action != NO_RULE {
            ids.insert((hash, true), value.subdomain_rule);
        }
    }
    Ok(ids)
}

/// What [`detach`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DetachReport {
    pub links: Vec<String>,
    pub programs: Vec<String>,
    pub maps: Vec<String>,
}

/// Detaches every program pinned at `layout` and removes all its pins and its run directory.
/// The only way enforcement ends.
pub fn detach(layout: &PinLayout) -> Result<DetachReport, DatapathError> {
    let mut report = DetachReport::default();
    for area in [PinLayout::new(layout.root.join(STAGING)), layout.clone()] {
        for name in link_names(&area) {
            unpin_link(&area.links().join(&name))?;
            report.links.push(name);
        }
    }
    for (dir, list) in [
        (layout.programs(), &mut report.programs),
        (layout.maps(), &mut report.maps),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                list.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        list.sort();
    }
    remove_pins(layout);
    let _ = std::fs::remove_dir_all(layout.run_dir());
    Ok(report)
}

/// Whose DNS answers teach and which cgroups the raw-socket guards leave alone, as the maps
/// hold them.
struct TrustPlan {
    resolvers_v4: Vec<([u8; 4], u8)>,
    resolvers_v6: Vec<([u8; 16], u8)>,
    netns: Vec<u64>,
    any_netns: bool,
    exempt: Vec<u64>,
}

impl TrustPlan {
    fn of(policy: &Policy) -> Result<TrustPlan, DatapathError> {
        let resolvers = resolvers::trusted_resolvers(&policy.dns);
        let local = resolvers::local_addresses();
        let place = |address: &IpAddr| {
            if resolvers::is_local(address, &local) {
                dns_resolver::LOCAL
            } else {
                dns_resolver::REMOTE
            }
        };
        let resolvers_v4 = resolvers
            .iter()
            .filter_map(|address| match address {
                IpAddr::V4(v4) => Some((v4.octets(), place(address))),
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map(|v4| (v4.octets(), place(&IpAddr::V4(v4)))),
            })
            .collect();
        let resolvers_v6 = resolvers
            .iter()
            .filter_map(|address| match address {
                IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                    Some((v6.octets(), place(address)))
                }
                _ => None,
            })
            .collect();
        let mut exempt = Vec::new();
        for path in &policy.raw_sockets.allow_cgroups {
            match cgroup::id(path) {
                Ok(id) => exempt.push(id),
                // Exempting nothing is the stricter outcome: say so, and go on.
                Err(err) => log::warn!(
                    "[raw_sockets] allow_cgroups: {} is not exempt: {}",
                    path.display(),
                    crate::error::chain(&err)
                ),
            }
        }
        Ok(TrustPlan {
            resolvers_v4,
            resolvers_v6,
            netns: resolvers::trusted_netns_cookies(&policy.dns)?,
            any_netns: policy.dns.any_network_namespace,
            exempt,
        })
    }
}

/// The prefix a cgroup program's link name has before `cgroup-<id>`.
fn cgroup_link_prefix(program: &str) -> &'static str {
    match program {
        SOCK_PROGRAM => "sock",
        INGRESS_PROGRAM => "in",
        GUARD_PROGRAM => "opt",
        _ => "",
    }
}

/// An attachment to make again when bigger maps are swapped in.
enum Reattach {
    Cgroup(PathBuf),
    Tc(String),
}

/// The rule slots of the maps pinned at `layout` (the per-rule counters' size, which the
/// tries share).
fn capacity_of(layout: &PinLayout) -> Result<u32, DatapathError> {
    Ok(MapInfo::from_pin(layout.map(names::RULE_HITS))
        .map_err(DatapathError::map(names::RULE_HITS, "open"))?
        .max_entries())
}

/// The capacity [`create`] gives maps asked for `rule_capacity`.
fn effective_capacity(rule_capacity: usize) -> u32 {
    u32::try_from(rule_capacity)
        .unwrap_or(u32::MAX)
        .max(DEFAULT_RULE_CAPACITY)
}

/// Config slots that describe the live state and carry over to bigger maps (not the build, nor
/// the check secret, which the new maps have of their own).
const CARRIED_CONFIG: [u32; 10] = [
    config::MODE,
    config::POLICY_VERSION,
    config::PINNED_SINCE,
    config::KERNEL_LOG,
    config::FLOW_GENERATION,
    config::DNS_GRACE_NS,
    config::DOMAIN_RULES,
    config::DNS_QUERIES,
    config::DNS_EVENT_INTERVAL_NS,
    config::DNS_ANY_NETNS,
];

/// Copies what the maps at `from` hold into the (bigger, empty) maps at `to` of the same
/// build: the config, the policy as it is (so rule ids stay), the counters, and what the
/// programs learned ([`carry_dynamic`]).
fn carry_over(from: &PinLayout, to: &PinLayout) -> Result<(), DatapathError> {
    let source: Array<MapData, u64> = open_map(from, names::CONFIG)?;
    for slot in CARRIED_CONFIG {
        let value = source
            .get(&slot, 0)
            .map_err(DatapathError::map(names::CONFIG, "read"))?;
        write_config(to, slot, value)?;
    }
    copy_trie::<IPV4_ADDR_LEN>(from, to, names::POLICY_V4)?;
    copy_trie::<IPV6_ADDR_LEN>(from, to, names::POLICY_V6)?;
    copy_hash::<u64, DomainValue>(from, to, names::DOMAINS, 0)?;
    copy_per_cpu::<Counter>(from, to, names::COUNTERS)?;
    copy_per_cpu::<u64>(from, to, names::STATS)?;
    copy_per_cpu::<u64>(from, to, names::RULE_HITS)?;
    carry_dynamic(from, to)
}

/// Copies what the programs learned and keep learning: DNS-learned addresses, the sockets
/// holding one, socket owners (and their namespaces), questions in flight. Entries the new
/// maps have already are kept (they are newer).
fn carry_dynamic(from: &PinLayout, to: &PinLayout) -> Result<(), DatapathError> {
    const NO_OVERWRITE: u64 = 1; // BPF_NOEXIST
    copy_learned::<4>(from, to, names::DNS_ALLOWED_V4)?;
    copy_learned::<16>(from, to, names::DNS_ALLOWED_V6)?;
    copy_hash::<LearnedSocket, u32>(from, to, names::LEARNED_SOCKETS, NO_OVERWRITE)?;
    copy_hash::<u64, SockOwner>(from, to, names::SOCK_OWNERS, NO_OVERWRITE)?;
    copy_hash::<PendingKey, u64>(from, to, names::DNS_PENDING, NO_OVERWRITE)
}

/// Removes learned addresses, and sockets holding one, whose domain rule no longer allows (no
/// rule of `DOMAINS` with that id and action allow).
fn forget_revoked(layout: &PinLayout) -> Result<(), DatapathError> {
    let domains: AyaHashMap<MapData, u64, DomainValue> = open_map(layout, names::DOMAINS)?;
    let mut allowing = BTreeSet::new();
    for (_, value) in domains.iter().filter_map(Result::ok) {
        if value.exact_action == action::ALLOW {
            allowing.insert(value.exact_rule);
        }
        if value.subdomain_action == action::ALLOW {
            allowing.insert(value.subdomain_rule);
        }
    }
    let allowing = &allowing;
    fn forget<K: aya::Pod, V: aya::Pod>(
        layout: &PinLayout,
        name: &'static str,
        rule_of: impl Fn(&V) -> u32,
        allowing: &BTreeSet<u32>,
    ) -> Result<(), DatapathError> {
        let mut map: AyaHashMap<MapData, K, V> = open_map(layout, name)?;
        let revoked: Vec<K> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, value)| !allowing.contains(&rule_of(value)))
            .map(|(key, _)| key)
            .collect();
        for key in &revoked {
            // Gone already (the LRU evicted it): nothing to do.
            let _ = map.remove(key);
        }
        Ok(())
    }
    forget::<[u8; 4], LearnedValue>(layout, names::DNS_ALLOWED_V4, |v| v.rule_id, allowing)?;
    forget::<[u8; 16], LearnedValue>(layout, names::DNS_ALLOWED_V6, |v| v.rule_id, allowing)?;
    forget::<LearnedSocket, u32>(layout, names::LEARNED_SOCKETS, |rule| *rule, allowing)?;
    Ok(())
}

/// Copies learned addresses, keeping whichever of two entries for an address expires later (an
/// answer refreshed in the live maps after the first copy must not keep its earlier expiry).
fn copy_learned<const N: usize>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
) -> Result<(), DatapathError> {
    let source: AyaHashMap<MapData, [u8; N], LearnedValue> = open_map(from, name)?;
    let mut target: AyaHashMap<MapData, [u8; N], LearnedValue> = open_map(to, name)?;
    for (address, learned) in source.iter().filter_map(Result::ok) {
        let newer = target
            .get(&address, 0)
            .is_ok_and(|existing| existing.expires_ns >= learned.expires_ns);
        if !newer {
            target
                .insert(&address, &learned, 0)
                .map_err(DatapathError::map(name, "copy"))?;
        }
    }
    Ok(())
}

fn copy_trie<const N: usize>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
) -> Result<(), DatapathError> {
    let source = open_trie::<N>(from, name)?;
    let mut target = open_trie::<N>(to, name)?;
    for item in source.iter() {
        let (key, value) = item.map_err(DatapathError::map(name, "read"))?;
        target
            .insert(&key, &value, 0)
            .map_err(DatapathError::map(name, "copy"))?;
    }
    Ok(())
}

/// Copies a hash or LRU map's entries; an entry that went while it was read is skipped.
fn copy_hash<K: aya::Pod, V: aya::Pod>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
    flags: u64,
) -> Result<(), DatapathError> {
    let source: AyaHashMap<MapData, K, V> = open_map(from, name)?;
    let mut target: AyaHashMap<MapData, K, V> = open_map(to, name)?;
    for (key, value) in source.iter().filter_map(Result::ok) {
        match target.insert(&key, &value, flags) {
            Ok(()) => {}
            // Already there (NO_OVERWRITE): the new maps' entry is the newer.
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => return Err(DatapathError::map(name, "copy")(err)),
        }
    }
    Ok(())
}

fn copy_per_cpu<V: aya::Pod>(
    from: &PinLayout,
    to: &PinLayout,
    name: &'static str,
) -> Result<(), DatapathError> {
    let source: PerCpuArray<MapData, V> = open_map(from, name)?;
    let mut target: PerCpuArray<MapData, V> = open_map(to, name)?;
    for index in 0..source.len().min(target.len()) {
        let values = source
            .get(&index, 0)
            .map_err(DatapathError::map(name, "read"))?;
        target
            .set(index, values, 0)
            .map_err(DatapathError::map(name, "copy"))?;
    }
    Ok(())
}

/// [`create`], removing whatever it pinned if it fails half-way (a verifier rejection, say), so
/// that no half-made state is left for the next start to trip over.
fn create_or_clean(layout: &PinLayout, rule_capacity: usize) -> Result<(), DatapathError> {
    create(layout, rule_capacity).inspect_err(|_| remove_pins(layout))
}

/// Loads the object with every map pinned under `layout` and pins both programs there; the
/// programs are not attached. Records the build and the time.
fn create(layout: &PinLayout, rule_capacity: usize) -> Result<(), DatapathError> {
    let capacity = effective_capacity(rule_capacity);
    // aya-log's own level filter is frozen into the programs at load; every record is let
    // through here and the KERNEL_LOG config slot decides, live (`run --kernel-log`).
    let log_level = log::LevelFilter::Debug as u8;
    let mut loader = EbpfLoader::new();
    for name in MAPS {
        loader.map_pin_path(name, layout.map(name));
    }
    let mut ebpf = loader
        .map_max_entries(names::POLICY_V4, capacity)
        .map_max_entries(names::POLICY_V6, capacity)
        .map_max_entries(names::RULE_HITS, capacity)
        .map_max_entries(names::EVENTS, EVENTS_RING_BYTES)
        // aya-log's levels and `log`'s filter share their numbers.
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .load(EBPF_OBJECT)
        .map_err(DatapathError::Load)?;
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

pub(crate) fn open_map<T>(layout: &PinLayout, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let kind = map_kind(name).ok_or(DatapathError::UnknownMap(name))?;
    let data = MapData::from_pin(layout.map(name)).map_err(DatapathError::map(name, "open"))?;
    let map = match kind {
        MapKind::LpmTrie => Map::LpmTrie(data),
        MapKind::RingBuf => Map::RingBuf(data),
        MapKind::Array => Map::Array(data),
        MapKind::HashMap => Map::HashMap(data),
        MapKind::LruHashMap => Map::LruHashMap(data),
        MapKind::Queue => Map::Queue(data),
        MapKind::PerCpuArray => Map::PerCpuArray(data),
    };
    T::try_from(map).map_err(DatapathError::map(name, "open"))
}

/// The kinds of map the object defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapKind {
    LpmTrie,
    RingBuf,
    Array,
    HashMap,
    LruHashMap,
    Queue,
    PerCpuArray,
}

/// Each map's kind, by name (as `egress-monitor-ebpf/src/maps.rs` defines it). `None`: a name
/// this table does not know, which is a bug to report, not a kind to guess.
fn map_kind(name: &str) -> Option<MapKind> {
    Some(match name {
        names::POLICY_V4 | names::POLICY_V6 => MapKind::LpmTrie,
        names::EVENTS | LOG_MAP => MapKind::RingBuf,
        names::CONFIG => MapKind::Array,
        names::DOMAINS
        | names::DNS_RESOLVERS_V4
        | names::DNS_RESOLVERS_V6
        | names::DNS_NETNS
        | names::RAW_EXEMPT => MapKind::HashMap,
        names::SOCK_OWNERS
        | names::FLOWS
        | names::FLOW_REPORTED
        | names::DNS_ALLOWED_V4
        | names::DNS_ALLOWED_V6
        | names::DNS_PENDING
        | names::DNS_QUERY_EVENTS
        | names::LEARNED_SOCKETS => MapKind::LruHashMap,
        name if names::FLOW_DIRTY.contains(&name) => MapKind::Queue,
        names::COUNTERS
        | names::RULE_HITS
        | names::STATS
        | names::FLOW_SCRATCH
        | names::DNS_SCRATCH => MapKind::PerCpuArray,
        _ => return None,
    })
}

/// `enum bpf_attach_type`'s `BPF_CGROUP_SETSOCKOPT` (include/uapi/linux/bpf.h).
const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// Attaches a program to a cgroup with a BPF link and pins the link at `path`, for link types
/// aya cannot hand over as an `FdLink`. The link lives as long as its pin.
fn link_and_pin(
    program: std::os::fd::BorrowedFd<'_>,
    cgroup: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
    path: &Path,
) -> std::io::Result<()> {
    use std::os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    };
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;
    // `union bpf_attr` as BPF_LINK_CREATE reads it (the rest zeroed), and as BPF_OBJ_PIN does.
    let mut create = [0u32; 16];
    create[0] = program.as_raw_fd() as u32;
    create[1] = cgroup.as_raw_fd() as u32;
    create[2] = attach_type;
    // SAFETY: bpf(2) with an attribute buffer that outlives the call.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            create.as_mut_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    if link < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor bpf(2) just returned, owned by nobody else; closed after pinning.
    let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
    let pathname = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a pin path with a NUL byte"))?;
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut pin = PinAttr {
        pathname: pathname.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: bpf(2) with an attribute whose pointer outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &raw mut pin,
            std::mem::size_of::<PinAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the hash map `name` (a set: every value 1) hold exactly `wanted`.
fn replace_set<K: aya::Pod + PartialEq>(
    layout: &PinLayout,
    name: &'static str,
    wanted: &[K],
) -> Result<(), DatapathError> {
    let entries: Vec<(K, u8)> = wanted.iter().map(|key| (*key, 1)).collect();
    replace_entries(layout, name, &entries)
}

/// Makes the hash map `name` hold exactly `wanted`: new and changed entries first, then the
/// stale ones removed.
fn replace_entries<K: aya::Pod + PartialEq>(
    layout: &PinLayout,
    name: &'static str,
    wanted: &[(K, u8)],
) -> Result<(), DatapathError> {
    let mut map: AyaHashMap<MapData, K, u8> = open_map(layout, name)?;
    for (key, value) in wanted {
        map.insert(key, value, 0)
            .map_err(DatapathError::map(name, "insert"))?;
    }
    let live: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in live
        .iter()
        .filter(|key| !wanted.iter().any(|(wanted, _)| wanted == *key))
    {
        map.remove(key)
            .map_err(DatapathError::map(name, "remove a stale entry"))?;
    }
    Ok(())
}

fn open_trie<const N: usize>(
    layout: &PinLayout,
    name: &'static str,
) -> Result<LpmTrie<MapData, [u8; N], RuleValue>, DatapathError> {
    open_map(layout, name)
}

pub(crate) fn read_config(layout: &PinLayout) -> Result<LiveConfig, DatapathError> {
    let array: Array<MapData, u64> = open_map(layout, names::CONFIG)?;
    let get = |slot: u32| {
        array
            .get(&slot, 0)
            .map_err(DatapathError::map(names::CONFIG, "read"))
    };
    Ok(LiveConfig {
        mode: if get(config::MODE)? == u64::from(mode::ENFORCE) {
            Mode::Enforce
        } else {
            Mode::Observe
        },
        policy_version: get(config::POLICY_VERSION)?,
        build_id: get(config::BUILD_ID)?,
        pinned_since: get(config::PINNED_SINCE)?,
        flow_generation: get(config::FLOW_GENERATION)?,
    })
}

pub(crate) fn write_config(layout: &PinLayout, slot: u32, value: u64) -> Result<(), DatapathError> {
    let mut array: Array<MapData, u64> = open_map(layout, names::CONFIG)?;
    array
        .set(slot, &value, 0)
        .map_err(DatapathError::map(names::CONFIG, "write"))
}

fn link_names(layout: &PinLayout) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.links())
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Removes a link's pin and closes it, which detaches its program.
fn unpin_link(path: &Path) -> Result<(), DatapathError> {
    let link = PinnedLink::from_pin(path).map_err(|err| DatapathError::Pin {
        what: "opening link",
        path: path.to_owned(),
        source: std::io::Error::other(err),
    })?;
    link.unpin()
        .map_err(DatapathError::pin("unpinning link", path))?;
    Ok(())
}

fn remove_dir_entries(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes every pin and directory of a layout (links first, so nothing is left attached to
/// programs whose maps are gone).
fn remove_pins(layout: &PinLayout) {
    for dir in [layout.links(), layout.programs(), layout.maps()] {
        remove_dir_entries(&dir);
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(layout.root.join(STAGING));
    let _ = std::fs::remove_dir(&layout.root);
}

const REQUIRED_CAPABILITIES: &str = "CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN";
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// What loading and attaching need that the process's effective capabilities (the `CapEff`
/// line of /proc/self/status) lack. Checked up front so the operator gets one sentence instead
/// of the kernel's EPERM from somewhere inside the loader.
fn missing_capabilities(status: &str) -> Vec<&'static str> {
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

/// An LPM trie key: prefix length and the address bytes in network order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LpmKey {
    V4(u32, [u8; IPV4_ADDR_LEN]),
    V6(u32, [u8; IPV6_ADDR_LEN]),
}

pub fn lpm_key(network: IpNetwork) -> LpmKey {
    match network {
        IpNetwork::V4(n) => LpmKey::V4(u32::from(n.prefix()), n.network().octets()),
        IpNetwork::V6(n) => LpmKey::V6(u32::from(n.prefix()), n.network().octets()),
    }
}

pub fn rule_value(id: u32, rule_action: Action) -> RuleValue {
    RuleValue::new(
        id,
        match rule_action {
            Action::Allow => action::ALLOW,
            Action::Deny => action::DENY,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_keys_are_prefix_and_network_order_bytes() {
        assert_eq!(
            lpm_key("10.1.2.0/24".parse().unwrap()),
            LpmKey::V4(24, [10, 1, 2, 0])
        );
        assert_eq!(lpm_key("0.0.0.0/0".parse().unwrap()), LpmKey::V4(0, [0; 4]));
        let LpmKey::V6(prefix, bytes) = lpm_key("2001:db8::/32".parse().unwrap()) else {
            panic!("an IPv6 network gives an IPv6 key");
        };
        assert_eq!(prefix, 32);
        assert_eq!(bytes[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert!(bytes[4..].iter().all(|b| *b == 0));
    }

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
    fn rule_values_carry_id_and_action() {
        assert_eq!(rule_value(7, Action::Deny), RuleValue::new(7, action::DENY));
        assert_eq!(rule_value(0, Action::Allow).action, action::ALLOW);
        assert_eq!(rule_value(0, Action::Allow)._pad, [0; 3]);
    }

    #[test]
    fn every_pinned_map_has_a_kind() {
        for name in MAPS {
            assert!(map_kind(name).is_some(), "{name}");
        }
        assert_eq!(map_kind("NO_SUCH_MAP"), None);
    }

    #[test]
    fn the_build_id_is_stable_for_this_binary() {
        assert_eq!(build_id(), build_id());
    }
}
