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
//!
//! No other module opens a pin or calls `bpf()`: they use the types and methods here.
//!
//! # Layout
//! - `mod.rs`: [`Datapath`] (open, adopt, settings, learned addresses, the event ring) and
//!   [`detach`]; `error`: [`DatapathError`].
//! - `object`: the kernel object this binary carries, its programs, loading it, what loading
//!   needs; `maps`: the one table of maps (name, kind, size) and opening them.
//! - `links`: attaching programs and pinning their links, named by [`LinkName`].
//! - `plan`: the pure apply plan (ids, steps in their safe order, whether the maps fit);
//!   `apply`: reading the maps and carrying the plan out; `expiry`: when expiring rules end; `trust`: resolvers, namespaces and
//!   cgroups the policy trusts.
//! - `grow`: replacing the state under traffic (another build, bigger maps), carrying over
//!   what the live maps hold.
//! - `counters`, `flow_maps`: reading the counters and the flows; `testrun`:
//!   `BPF_PROG_TEST_RUN` through the judging programs.

pub mod pins;
pub mod state;

mod apply;
mod counters;
mod error;
pub mod expiry;
mod flat;
mod flow_maps;
mod grow;
mod links;
mod maps;
mod object;
mod plan;
mod syscall;
mod testrun;
mod trust;
pub mod watch;

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use aya::maps::{Array, HashMap as AyaHashMap, MapData, RingBuf};
use egress_monitor_common::{dns::LearnedValue, maps as names, policy::config, verdict::mode};
use serde::Serialize;

use egress_monitor_policy::Mode;

use crate::datapath::pins::PinLayout;

pub use apply::ApplyReport;
pub use counters::{Counters, HookCounters, Totals};
pub use error::DatapathError;
pub use flat::{FastLane, TableUse};
pub(crate) use flow_maps::FlowMaps;
pub(crate) use links::{CgroupHook, LinkName};
pub use object::{
    CGROUP_PROGRAM, GUARD_PROGRAM, INGRESS_PROGRAM, SOCK_PROGRAM, TC_PROGRAM, build_id,
};
pub use testrun::{Judge, TestRun, TestRunner, frame_to, test_run};

use grow::carry_over;
use links::{link_names, unpin_link};
use maps::{capacity_of, open_map, read_config, write_config};
use object::{EBPF_OBJECT, create_or_clean, effective_capacity, missing_capabilities};

/// Where a replacement is staged before it takes over the pin path (bpffs allows no dots in
/// names, and no map or program is called this).
const STAGING: &str = "replacing";

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
    /// Its pin's name, as `LinkName` makes it.
    pub name: String,
    /// What the daemon that attached it called the target (the cgroup path or interface name),
    /// when this process knows it.
    pub target: Option<String>,
}

/// The live config: what the config map says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LiveConfig {
    pub mode: Mode,
    pub policy_version: u64,
    pub build_id: u64,
    pub pinned_since: u64,
    /// The flow reporting period; 0: every denied packet is an event (see [`crate::events::flows`]).
    pub flow_generation: u64,
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

    /// Switches observe/enforce without reloading anything.
    pub fn set_mode(&mut self, new_mode: Mode) -> Result<(), DatapathError> {
        let value = match new_mode {
            Mode::Observe => mode::OBSERVE,
            Mode::Enforce => mode::ENFORCE,
        };
        write_config(&self.target, config::MODE, u64::from(value))
    }

    /// Turns the egress programs' fast lane (the flat tables in front of the tries) on or off,
    /// live. Verdicts are the same either way; off, every packet takes the full path (for the
    /// benchmark's comparison, the tests', and as a switch should the lane ever be doubted).
    pub fn set_fast_lane(&mut self, on: bool) -> Result<(), DatapathError> {
        write_config(&self.target, config::FAST_LANE_OFF, u64::from(!on))
    }

    /// Whether the fast lane is on, and what its tables hold.
    pub fn fast_lane(&self) -> Result<FastLane, DatapathError> {
        let array: Array<MapData, u64> = open_map(&self.target, names::CONFIG)?;
        let off = array
            .get(&config::FAST_LANE_OFF, 0)
            .map_err(DatapathError::map(names::CONFIG, "read"))?;
        flat::fast_lane(&self.target, off == 0)
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
        let now = crate::system::clock::boot_time_ns();
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
        open_map(&self.target, names::EVENTS)
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
}
