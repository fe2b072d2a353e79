//! Domain rules: names in the policy, matched in the kernel against the question of each DNS
//! answer a process in the cgroup receives; the answer's addresses are then allowed until
//! their TTL (plus a grace period) runs out.
//!
//! Names are matched by hash, in DNS wire format (length-prefixed labels, ending with the
//! root's zero byte), ASCII case folded. The kernel hashes every suffix of a question name
//! that starts at a label; a rule is the hash of its domain's wire form. [`suffix_hash`] is the
//! one definition both sides use.

/// FNV-1a parameters (64-bit).
const SEED: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// One step of the suffix hash: suffixes are hashed from their last byte to their first, so
/// the hash of every suffix of a name comes out of one backward pass.
#[inline(always)]
pub const fn fold(hash: u64, byte: u8) -> u64 {
    (hash ^ byte.to_ascii_lowercase() as u64).wrapping_mul(PRIME)
}

/// The hash the kernel computes for a name (or suffix) whose wire form is `wire`.
pub fn suffix_hash(wire: &[u8]) -> u64 {
    wire.iter().rev().fold(SEED, |hash, byte| fold(hash, *byte))
}

/// Where the backward pass starts.
pub const HASH_SEED: u64 = SEED;

/// The longest name in wire format.
pub const MAX_NAME: usize = 255;

/// What the rules for one domain say, keyed by [`suffix_hash`] of the domain: a rule for the
/// name itself (`example.com`) and one for the names below it (`*.example.com`) share the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainValue {
    pub exact_rule: u32,
    pub subdomain_rule: u32,
    /// [`crate::verdict::action`], or [`NO_RULE`].
    pub exact_action: u8,
    pub subdomain_action: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<DomainValue>() == 16);

/// [`DomainValue`] action when there is no such rule.
pub const NO_RULE: u8 = 0xff;

/// An address learned from an allowed answer (`DNS_ALLOWED_V4` / `_V6`, keyed by address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedValue {
    /// `bpf_ktime_get_boot_ns()` after which the address is no longer allowed.
    pub expires_ns: u64,
    /// The domain rule that allowed it.
    pub rule_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LearnedValue>() == 16);

/// Domain rules the kernel holds.
pub const DOMAINS_CAPACITY: u32 = 4096;
/// Addresses learned from answers, per family (an LRU map: the oldest are forgotten first).
pub const LEARNED_CAPACITY: u32 = 65_536;
/// Answer records read per DNS message (A, AAAA, CNAME...): a bounded walk.
pub const MAX_ANSWERS: usize = 16;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields, explicit padding.
    unsafe impl aya::Pod for super::DomainValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LearnedValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suffix_hash_ignores_case_and_is_the_backward_fold() {
        let wire = b"\x04Blob\x04core\x07windows\x03net\x00";
        assert_eq!(
            suffix_hash(wire),
            suffix_hash(b"\x04blob\x04core\x07windows\x03net\x00")
        );
        let mut hash = HASH_SEED;
        for byte in wire.iter().rev() {
            hash = fold(hash, *byte);
        }
        assert_eq!(hash, suffix_hash(wire));
        assert_ne!(suffix_hash(b"\x03net\x00"), suffix_hash(b"\x03org\x00"));
    }
}
