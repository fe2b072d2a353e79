//! The ABI between the egress-monitor kernel programs and the daemon.
//!
//! Everything here is `#[repr(C)]`, free of `bool`/`Option`/enums, padded explicitly, and its
//! size is asserted at compile time, so both sides agree on every byte.
//!
//! # Layout
//! - [`verdict`]: action, outcome, hook and mode codes, defined once.
//! - [`policy`]: the LPM trie value (verdict + rule id) and the config array slots.
//! - [`flat`]: the flat tables in front of the tries, and the walk both sides share.
//! - [`maps`]: map names and counter-array indexing.
//! - [`record`]: the kind byte that starts every ring-buffer record.
//! - [`event`]: the record written to the ring buffer for a denied packet.
//! - [`flow`]: how denied packets are aggregated per flow.
//! - [`dns`]: domain rules and the addresses their answers allow.
//! - [`hash`]: FNV-1a, the one hash both sides use.
//! - [`guard`]: the socket options that would skip the TC hook, refused.
#![no_std]

pub mod dns;
pub mod event;
pub mod flat;
pub mod flow;
pub mod guard;
pub mod hash;
pub mod maps;
pub mod policy;
pub mod record;
pub mod verdict;
