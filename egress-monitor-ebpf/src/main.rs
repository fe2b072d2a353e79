//! egress-monitor kernel programs.
//!
//! Two entry points, one verdict: [`cgroup_egress`] sees every socket of every process in the
//! attached cgroup (any network namespace); [`tc_egress`] sees every frame leaving an interface
//! (forwarded, bridged, AF_PACKET and kernel-generated traffic too). They differ only in where
//! the IP header starts and in the context fields they can report.
//!
//! # Layout
//! - `maps`: every map, in one place, named as `egress_monitor_common::maps` says.
//! - `parse`: bounded IPv4/IPv6 parsing (extension headers, fragments) into a [`parse::Packet`].
//! - `policy`: the LPM lookup and the mode: what to do with a packet.
//! - `emit`: per-CPU counters, per-rule hits and ring-buffer events.
#![no_std]
#![no_main]

mod emit;
mod maps;
mod parse;
mod policy;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{cgroup_skb, classifier},
    programs::{SkBuffContext, TcContext},
};
use egress_monitor_common::verdict::hook;

use aya_log_ebpf::warn;

use crate::{parse::L3Start, policy::Verdict};

/// cgroup_skb return codes: 1 lets the packet go, 0 drops it (the sender sees EPERM).
const CGROUP_PASS: i32 = 1;
const CGROUP_DROP: i32 = 0;

#[cgroup_skb]
pub fn cgroup_egress(ctx: SkBuffContext) -> i32 {
    let judgement = policy::judge(
        &ctx.skb,
        ctx.as_ptr().cast(),
        L3Start::Network,
        hook::CGROUP,
    );
    if judgement.malformed {
        warn!(
            &ctx,
            "cgroup egress: unreadable IP header, treated as denied"
        );
    }
    match judgement.verdict {
        Verdict::Pass => CGROUP_PASS,
        Verdict::Drop => CGROUP_DROP,
    }
}

/// TC pass is `TC_ACT_UNSPEC` (TCX_NEXT): let later programs on the hook have their say rather
/// than ending the chain, so egress-monitor composes with other TC users. Drop ends it.
#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let judgement = policy::judge(&ctx.skb, ctx.as_ptr().cast(), L3Start::Ethernet, hook::TC);
    if judgement.malformed {
        warn!(&ctx, "tc egress: unreadable IP header, treated as denied");
    }
    match judgement.verdict {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT as i32,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
