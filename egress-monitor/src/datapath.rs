//! The loaded kernel programs and their maps: load, fill the policy, set the mode, attach, and
//! read counters back. Everything that makes BPF syscalls lives here.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SchedClassifier,
        TcAttachType,
    },
};
use egress_monitor_common::{
    maps::{self as names, Counter, DEFAULT_RULE_CAPACITY, EVENTS_RING_BYTES, counter_index, stat},
    policy::{IPV4_ADDR_LEN, IPV6_ADDR_LEN, RuleValue, config},
    verdict::{action, hook, mode, outcome},
};
use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::{
    cgroup::{self, CgroupError},
    iface::{self, InterfaceError},
    policy::{Action, Mode, Policy},
};

/// The kernel object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-monitor"));

const CGROUP_PROGRAM: &str = "cgroup_egress";
const TC_PROGRAM: &str = "tc_egress";

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
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("the kernel refused program `{name}`")]
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
    #[error("the policy has {count} rules; at most {max} fit in the datapath")]
    TooManyRules { count: usize, max: usize },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Interface(#[from] InterfaceError),
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
}

impl DatapathError {
    fn map(name: &'static str, what: impl Into<String>) -> impl FnOnce(MapError) -> Self {
        let what = what.into();
        move |source| DatapathError::Map { name, what, source }
    }
}

/// Where the programs are attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "hook", rename_all = "lowercase")]
pub enum Attachment {
    Cgroup { path: PathBuf },
    Tc { interface: String, ifindex: u32 },
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
}

/// The datapath: programs loaded, policy in the maps, attached where asked. Dropping it
/// detaches everything.
pub struct Datapath {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    rule_capacity: u32,
}

impl Datapath {
    /// Loads both programs with `policy` in the tries and its mode set. Nothing is attached yet,
    /// so no packet is judged before the policy is complete.
    pub fn load(policy: &Policy) -> Result<Datapath, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let missing =
            missing_capabilities(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
        if !missing.is_empty() {
            return Err(DatapathError::Privilege { missing });
        }
        let count_v4 = policy.rules.iter().filter(|r| r.network.is_ipv4()).count();
        let count_v6 = policy.rules.len() - count_v4;
        let max = u32::MAX as usize - 1;
        if policy.rules.len() > max {
            return Err(DatapathError::TooManyRules {
                count: policy.rules.len(),
                max,
            });
        }
        let capacity = |count: usize| (count as u32).max(DEFAULT_RULE_CAPACITY);
        let rule_capacity = capacity(policy.rules.len());
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::POLICY_V4, capacity(count_v4))
            .map_max_entries(names::POLICY_V6, capacity(count_v6))
            .map_max_entries(names::RULE_HITS, rule_capacity)
            .map_max_entries(names::EVENTS, EVENTS_RING_BYTES)
            // Kernel-side log records (debug: packets denied for want of a destination) follow
            // the daemon's own level; aya-log's levels and `log`'s filter share their numbers.
            .override_global("AYA_LOG_LEVEL", &(log::max_level() as u8), false)
            .load(EBPF_OBJECT)
            .map_err(DatapathError::Load)?;
        let mut datapath = Datapath {
            ebpf: {
                for name in [CGROUP_PROGRAM, TC_PROGRAM] {
                    load_program(&mut ebpf, name)?;
                }
                ebpf
            },
            attachments: Vec::new(),
            rule_capacity,
        };
        datapath.set_mode(policy.mode)?;
        datapath.insert_rules(policy)?;
        Ok(datapath)
    }

    /// Takes the aya-log ring buffer so its records reach the `log` crate; poll it with
    /// [`aya_log::EbpfLogger::flush`] when its fd is readable.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::warn!("kernel-side log records will not be shown: {err}");
                None
            }
        }
    }

    /// Switches observe/enforce without reloading anything.
    pub fn set_mode(&mut self, new_mode: Mode) -> Result<(), DatapathError> {
        let value = match new_mode {
            Mode::Observe => mode::OBSERVE,
            Mode::Enforce => mode::ENFORCE,
        };
        let mut array: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(names::CONFIG)
                .ok_or(DatapathError::MissingMap(names::CONFIG))?,
        )
        .map_err(DatapathError::map(names::CONFIG, "open"))?;
        array
            .set(config::MODE, &value, 0)
            .map_err(DatapathError::map(names::CONFIG, "set the mode"))
    }

    fn insert_rules(&mut self, policy: &Policy) -> Result<(), DatapathError> {
        let [v4, v6] = self
            .ebpf
            .maps_disjoint_mut([names::POLICY_V4, names::POLICY_V6]);
        let mut v4: LpmTrie<&mut MapData, [u8; IPV4_ADDR_LEN], RuleValue> =
            LpmTrie::try_from(v4.ok_or(DatapathError::MissingMap(names::POLICY_V4))?)
                .map_err(DatapathError::map(names::POLICY_V4, "open"))?;
        let mut v6: LpmTrie<&mut MapData, [u8; IPV6_ADDR_LEN], RuleValue> =
            LpmTrie::try_from(v6.ok_or(DatapathError::MissingMap(names::POLICY_V6))?)
                .map_err(DatapathError::map(names::POLICY_V6, "open"))?;
        for (id, rule) in policy.rules.iter().enumerate() {
            let value = rule_value(id as u32, rule.action);
            match lpm_key(rule.network) {
                LpmKey::V4(prefix, addr) => {
                    v4.insert(&Key::new(prefix, addr), &value, 0)
                        .map_err(DatapathError::map(
                            names::POLICY_V4,
                            format!("insert {}", rule.network),
                        ))?
                }
                LpmKey::V6(prefix, addr) => {
                    v6.insert(&Key::new(prefix, addr), &value, 0)
                        .map_err(DatapathError::map(
                            names::POLICY_V6,
                            format!("insert {}", rule.network),
                        ))?
                }
            }
        }
        Ok(())
    }

    /// Attaches the cgroup_skb egress program to a cgroup v2 directory: every socket of every
    /// process in it and its descendants, whatever their network namespace.
    pub fn attach_cgroup(&mut self, path: &Path) -> Result<(), DatapathError> {
        let cgroup = cgroup::open(path)?;
        let program: &mut CgroupSkb = program_mut(&mut self.ebpf, CGROUP_PROGRAM)?;
        program
            .attach(
                cgroup,
                CgroupSkbAttachType::Egress,
                CgroupAttachMode::Single,
            )
            .map_err(|source| DatapathError::Attach {
                target: format!("cgroup {}", path.display()),
                source,
            })?;
        self.attachments.push(Attachment::Cgroup {
            path: path.to_owned(),
        });
        Ok(())
    }

    /// Attaches the TC egress program to an interface of the calling thread's network
    /// namespace.
    pub fn attach_tc(&mut self, name: &str) -> Result<(), DatapathError> {
        let interface = iface::lookup(name)?;
        if !interface.is_ethernet() {
            return Err(DatapathError::NotEthernet {
                name: name.to_owned(),
                link_type: interface.link_type,
            });
        }
        let c_name = CString::new(name).map_err(|_| InterfaceError::BadName(name.to_owned()))?;
        let program: &mut SchedClassifier = program_mut(&mut self.ebpf, TC_PROGRAM)?;
        if let Err(source) = program.attach(&c_name, TcAttachType::Egress) {
            return Err(DatapathError::Attach {
                target: format!("interface {name}"),
                source,
            });
        }
        self.attachments.push(Attachment::Tc {
            interface: name.to_owned(),
            ifindex: interface.index,
        });
        Ok(())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Takes the event ring buffer (once) for a reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(DatapathError::MissingMap(names::EVENTS))?;
        RingBuf::try_from(map).map_err(DatapathError::map(names::EVENTS, "open"))
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let counters: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(
            self.ebpf
                .map(names::COUNTERS)
                .ok_or(DatapathError::MissingMap(names::COUNTERS))?,
        )
        .map_err(DatapathError::map(names::COUNTERS, "open"))?;
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
        })
    }

    /// Hits per rule id (index into the policy's rules), summed over CPUs.
    pub fn rule_hits(&self, rule_count: usize) -> Result<Vec<u64>, DatapathError> {
        let mut hits = self.per_cpu_sums(names::RULE_HITS)?;
        hits.truncate(rule_count.min(self.rule_capacity as usize));
        Ok(hits)
    }

    fn per_cpu_sums(&self, name: &'static str) -> Result<Vec<u64>, DatapathError> {
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?)
                .map_err(DatapathError::map(name, "open"))?;
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

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), DatapathError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?;
    let result = match program {
        aya::programs::Program::CgroupSkb(program) => program.load(),
        aya::programs::Program::SchedClassifier(program) => program.load(),
        _ => return Err(DatapathError::MissingProgram(name)),
    };
    result.map_err(|source| DatapathError::Program { name, source })
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}
