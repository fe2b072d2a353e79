//! egress-monitor kernel programs.
//!
//! Two entry points, one verdict: `cgroup_egress` sees every socket of every process in the
//! attached cgroup (any network namespace); `tc_egress` sees every frame leaving an interface
//! (forwarded, bridged, AF_PACKET and kernel-generated traffic too). They differ only in where
//! the IP header starts and in the context fields they can report.
//!
//! # Layout
//! - `entry`: the entry points, thin.
//! - `fast`: the fast lane: the common allowed packet, read directly, looked up in the flat
//!   tables, decided as the full path would.
//! - `maps`: every map, in one place, named as `egress_monitor_common::maps` says.
//! - `parse`: bounded IPv4/IPv6 parsing (extension headers, fragments) into a [`parse::Packet`].
//! - `policy`: the LPM lookup and the mode: what to do with a packet.
//! - `emit`: per-CPU counters, per-rule hits and ring-buffer events.
//! - `dns`: domain rules — learning allowed addresses from DNS answers (cgroup ingress).
//! - `flow`: which denied packets become events (the first of each flow) and which are counted.
//! - `guard`: the socket options that would let frames skip the TC hook, refused.
#![no_std]
#![no_main]
// `atomic_xadd`: the only way to BPF's atomic add from Rust (see `emit::atomic_add`); the
// kernel build uses the pinned nightly. A host build (`cargo build --workspace`) uses core's
// atomics instead.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    allow(internal_features, reason = "core_intrinsics, for atomic_xadd")
)]

mod dns;
mod emit;
mod entry;
mod fast;
mod flow;
mod guard;
mod maps;
mod parse;
mod policy;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
