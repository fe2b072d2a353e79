//! What the kernel says about the programs a datapath pinned: how many instructions its
//! verifier walked to load each one (the budget is 1,000,000).

use anyhow::Context as _;
use egress_monitor::datapath::{
    CGROUP_PROGRAM, GUARD_PROGRAM, INGRESS_PROGRAM, SOCK_PROGRAM, TC_PROGRAM, pins::PinLayout,
};

/// The verifier's budget: a program whose walk passes this many instructions does not load.
pub const VERIFIER_BUDGET: u32 = 1_000_000;

/// Every program the datapath pins.
pub const PROGRAMS: [&str; 5] = [
    CGROUP_PROGRAM,
    TC_PROGRAM,
    INGRESS_PROGRAM,
    SOCK_PROGRAM,
    GUARD_PROGRAM,
];

/// The kernel's count of instructions it verified when it loaded `program`, pinned under
/// `layout` (`bpf_prog_info.verified_insns`, kernel 5.16+).
pub fn verified_instructions(layout: &PinLayout, program: &str) -> anyhow::Result<u32> {
    let info = aya::programs::ProgramInfo::from_pin(layout.program(program))
        .with_context(|| format!("{program}: reading the pinned program's info"))?;
    info.verified_instruction_count()
        .with_context(|| format!("{program}: the kernel reports no verified instruction count"))
}
