//! Policy trie values and the config array.

/// The value stored for each prefix in the IPv4 and IPv6 LPM tries.
///
/// `rule_id` indexes the per-rule hit counters and lets the daemon name the rule in events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleValue {
    pub rule_id: u32,
    /// One of [`crate::verdict::action`].
    pub action: u8,
    /// [`rule_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<RuleValue>() == 8);

impl RuleValue {
    pub const fn new(rule_id: u32, action: u8) -> Self {
        Self {
            rule_id,
            action,
            flags: 0,
            _pad: [0; 2],
        }
    }

    pub const fn with_flags(self, flags: u8) -> Self {
        Self { flags, ..self }
    }
}

/// `RuleValue::flags` bits.
pub mod rule_flags {
    /// The rule expires: `RULE_EXPIRY[rule_id]` says when, and what applies after.
    pub const EXPIRES: u8 = 1 << 0;
}

/// `RULE_EXPIRY[rule_id]` of a rule with [`rule_flags::EXPIRES`]: from `expires_boot_ns` on,
/// its prefix is judged as the rule it falls back to — the policy's longest rule strictly
/// containing it, or none (the default deny) — exactly as if it had been removed. A fallback
/// may expire too: the kernel follows at most [`MAX_EXPIRY_HOPS`] of them, then denies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleExpiry {
    /// `bpf_ktime_get_boot_ns()` at which the rule stops applying (the daemon converts the
    /// policy's wall-clock time, and converts again when the wall clock is stepped).
    pub expires_boot_ns: u64,
    /// `crate::verdict::RULE_ID_DEFAULT` when no rule contains the prefix.
    pub fallback_rule: u32,
    pub fallback_action: u8,
    pub fallback_flags: u8,
    /// Non-zero once the daemon wrote the entry: a rule whose entry is not set is denied
    /// (never judged by a zeroed entry's "rule 0").
    pub set: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<RuleExpiry>() == 16);

/// How many expired rules in a row a lookup falls back through before it denies.
pub const MAX_EXPIRY_HOPS: usize = 8;

/// Slots of the `CONFIG` array (`u64` values). Pinned with the other maps, so the live state
/// describes itself: any later process can read what is enforced, since when, by which build.
pub mod config {
    /// [`crate::verdict::mode`]: observe or enforce. Flipped without reloading anything.
    pub const MODE: u32 = 0;
    /// The applied policy's version: the first 8 bytes of its content hash.
    pub const POLICY_VERSION: u32 = 1;
    /// Identifies the kernel object that created the maps; a different build replaces them.
    pub const BUILD_ID: u32 = 2;
    /// When the state was first pinned (seconds since the Unix epoch).
    pub const PINNED_SINCE: u32 = 3;
    /// Non-zero: the programs write debug log records (aya-log) about packets they could not
    /// judge. Off by default; `run --kernel-log` turns it on without reloading anything.
    pub const KERNEL_LOG: u32 = 4;
    /// The flow reporting period (see [`crate::flow`]), advanced by the daemon once per
    /// interval. 0 turns aggregation off: every denied packet is an event of its own.
    pub const FLOW_GENERATION: u32 = 5;
    /// Nanoseconds an address learned from a DNS answer stays allowed beyond the record's TTL.
    pub const DNS_GRACE_NS: u32 = 6;
    /// How many domain rules the policy has; 0: DNS answers are not looked into at all.
    pub const DOMAIN_RULES: u32 = 7;
    /// What the programs do with DNS queries: [`crate::dns`]`::queries` (off, report, filter).
    pub const DNS_QUERIES: u32 = 8;
    /// Nanoseconds between two events for the same question from the same socket; 0: every
    /// query is an event.
    pub const DNS_EVENT_INTERVAL_NS: u32 = 9;
    /// A random non-zero value made when the maps are created. `check` puts it in the first
    /// two words of the synthetic packets' `cb` (which only BPF programs and
    /// `BPF_PROG_TEST_RUN` can set, and which the kernel clears before cgroup programs): such
    /// packets get a verdict but are neither counted nor reported. No process can forge it, as
    /// it could a mark.
    pub const CHECK_SECRET: u32 = 10;
    /// Non-zero: DNS answers teach sockets of any network namespace, not only those in
    /// `DNS_NETNS` (an explicit opt-in of the policy's `[dns]` table).
    pub const DNS_ANY_NETNS: u32 = 11;
    /// Non-zero: the egress programs skip their fast lane (the flat tables, see
    /// [`crate::flat`]) and judge every packet on the full path. Decisions are the same either
    /// way; the benchmark and the tests compare the two.
    pub const FAST_LANE_OFF: u32 = 12;
    pub const COUNT: u32 = 13;
}

/// LPM trie key data lengths, in bytes (the key is `prefix_len: u32` followed by the address in
/// network byte order).
pub const IPV4_ADDR_LEN: usize = 4;
pub const IPV6_ADDR_LEN: usize = 16;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integer fields, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::RuleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleExpiry {}
}
