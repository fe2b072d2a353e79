//! The entry points. The two egress programs differ only in where the IP header starts; the
//! verdict is the fast lane's ([`crate::fast`]) when it takes the packet, else
//! [`crate::policy::judge`]'s, and each returns exactly that verdict.
#![allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya's macros wrap these functions in the raw-pointer entry points the kernel calls"
)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{cgroup_skb, cgroup_sock, cgroup_sockopt, classifier},
    programs::{SkBuffContext, SockContext, SockoptContext, TcContext},
};
use egress_monitor_common::verdict::hook;

use aya_log_ebpf::debug;

use crate::{
    fast,
    parse::L3Start,
    policy::{self, Verdict},
};

/// Runs in the creating process's context whenever a socket is made in the cgroup: remembers
/// who made it, for the events of its packets. Never refuses a socket.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    crate::emit::record_owner(ctx.as_ptr());
    1
}

/// Runs for every `setsockopt` of a process in the cgroup: refuses the options that would let
/// its frames skip the TC hook (see [`crate::guard`]).
#[cgroup_sockopt(setsockopt)]
pub fn raw_guard(ctx: SockoptContext) -> i32 {
    crate::guard::setsockopt(ctx.sockopt)
}

/// Runs for every packet delivered to a socket in the cgroup: learns the addresses that
/// domain rules allow from DNS answers, before the process reads them. Passes everything.
#[cgroup_skb]
pub fn cgroup_ingress(ctx: SkBuffContext) -> i32 {
    if crate::fast::may_be_dns_answer(ctx.as_ptr().cast()) {
        crate::dns::learn(&ctx.skb, ctx.as_ptr().cast());
    }
    CGROUP_PASS
}

/// cgroup_skb return codes: 1 lets the packet go, 0 drops it (the sender sees EPERM).
const CGROUP_PASS: i32 = 1;
const CGROUP_DROP: i32 = 0;

#[cgroup_skb]
pub fn cgroup_egress(ctx: SkBuffContext) -> i32 {
    if fast::egress(ctx.as_ptr().cast(), L3Start::Network, hook::CGROUP) {
        return CGROUP_PASS;
    }
    let judgement = policy::judge(
        &ctx.skb,
        ctx.as_ptr().cast(),
        L3Start::Network,
        hook::CGROUP,
    );
    if judgement.unjudgeable && policy::kernel_log() {
        debug!(&ctx, "cgroup egress: unreadable IP header, denied");
    }
    match judgement.verdict {
        Verdict::Pass => CGROUP_PASS,
        Verdict::Drop => CGROUP_DROP,
    }
}

#[allow(
    clippy::unnecessary_cast,
    reason = "TC_ACT_SHOT is u32 in some architectures' bindings and i32 in others"
)]
const TC_DROP: i32 = TC_ACT_SHOT as i32;

/// TC pass is `TC_ACT_UNSPEC` (TCX_NEXT): let later programs on the hook have their say rather
/// than ending the chain, so egress-monitor composes with other TC users. Drop ends it.
#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    if fast::egress(ctx.as_ptr().cast(), L3Start::Ethernet, hook::TC) {
        return TC_ACT_UNSPEC;
    }
    let judgement = policy::judge(&ctx.skb, ctx.as_ptr().cast(), L3Start::Ethernet, hook::TC);
    if judgement.unjudgeable && policy::kernel_log() {
        debug!(&ctx, "tc egress: no readable IP destination, denied");
    }
    match judgement.verdict {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_DROP,
    }
}
