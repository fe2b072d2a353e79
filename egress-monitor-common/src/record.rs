//! The records of the `EVENTS` ring buffer. Each starts with a kind byte (its first field,
//! `kind`), so the daemon reads a record as what it says it is, never by guessing from its
//! size: a record of an unknown kind, or whose size is not its kind's struct's, is malformed.
//!
//! 0 is no kind: a record left zeroed is never read as one.

/// A denied packet: [`crate::event::Event`].
pub const KIND_PACKET: u8 = 1;
/// A DNS question leaving: [`crate::dns::DnsEvent`].
pub const KIND_DNS_QUERY: u8 = 2;
/// A DNS answer arriving: [`crate::dns::DnsEvent`].
pub const KIND_DNS_ANSWER: u8 = 3;
/// A guarded socket option set or refused: [`crate::guard::GuardEvent`].
pub const KIND_GUARD: u8 = 4;
