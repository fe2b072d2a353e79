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
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<RuleValue>() == 8);

impl RuleValue {
    pub const fn new(rule_id: u32, action: u8) -> Self {
        Self {
            rule_id,
            action,
            _pad: [0; 3],
        }
    }
}

/// Slots of the `CONFIG` array (`u32` values).
pub mod config {
    /// [`crate::verdict::mode`]: observe or enforce. Flipped by the daemon without a reload.
    pub const MODE: u32 = 0;
    pub const COUNT: u32 = 1;
}

/// LPM trie key data lengths, in bytes (the key is `prefix_len: u32` followed by the address in
/// network byte order).
pub const IPV4_ADDR_LEN: usize = 4;
pub const IPV6_ADDR_LEN: usize = 16;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integer fields, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::RuleValue {}
}
