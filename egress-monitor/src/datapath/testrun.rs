//! Running packets through the pinned programs without sending them: `BPF_PROG_TEST_RUN`, for
//! `check` (one verdict per probe) and the benchmark (the per-packet cost).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya::programs::{CgroupSkb, CgroupSkbAttachType, SchedClassifier};

use super::{CGROUP_PROGRAM, Datapath, DatapathError, TC_PROGRAM};

/// A program that judges packets, run on a synthetic one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    Cgroup,
    Tc,
}

impl Judge {
    pub const ALL: [Judge; 2] = [Judge::Cgroup, Judge::Tc];

    pub fn program(self) -> &'static str {
        match self {
            Judge::Cgroup => CGROUP_PROGRAM,
            Judge::Tc => TC_PROGRAM,
        }
    }

    /// What the program returns for a packet it passes: cgroup_skb's 1, TC's `TC_ACT_UNSPEC`
    /// (-1: the next program on the hook has its say).
    pub fn pass_code(self) -> u32 {
        match self {
            Judge::Cgroup => 1,
            Judge::Tc => u32::MAX,
        }
    }
}

/// The pinned judging programs, opened for test runs.
pub struct TestRunner {
    cgroup: CgroupSkb,
    tc: SchedClassifier,
}

impl Datapath {
    /// Opens the pinned programs that judge packets, to run synthetic ones through them.
    pub fn test_runner(&self) -> Result<TestRunner, DatapathError> {
        let cgroup = CgroupSkb::from_pin(
            self.target.program(CGROUP_PROGRAM),
            CgroupSkbAttachType::Egress,
        )
        .map_err(DatapathError::program(CGROUP_PROGRAM))?;
        let tc = SchedClassifier::from_pin(self.target.program(TC_PROGRAM))
            .map_err(DatapathError::program(TC_PROGRAM))?;
        // Loaded from their pins, both have a descriptor: asked here so `run` cannot fail on it.
        cgroup
            .fd()
            .map_err(DatapathError::program(CGROUP_PROGRAM))?;
        tc.fd().map_err(DatapathError::program(TC_PROGRAM))?;
        Ok(TestRunner { cgroup, tc })
    }
}

impl TestRunner {
    /// Runs `frame` through `judge`'s program `repeat` times (see [`test_run`]).
    pub fn run(
        &self,
        judge: Judge,
        frame: &[u8],
        repeat: u32,
        secret: Option<u64>,
    ) -> io::Result<TestRun> {
        let fd = match judge {
            Judge::Cgroup => self.cgroup.fd(),
            Judge::Tc => self.tc.fd(),
        }
        .map_err(io::Error::other)?;
        test_run(fd.as_fd(), frame, repeat, secret)
    }
}

/// An Ethernet frame carrying a small UDP datagram to `destination` (test runs take an L2
/// frame for both program types; cgroup_skb sees it from the IP header on, as on the wire).
pub fn frame_to(destination: IpAddr) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let payload = [0u8; 16];
    let mut frame = Vec::new();
    let written = match destination {
        IpAddr::V4(v4) => builder
            .ipv4([192, 0, 2, 2], v4.octets(), 64)
            .udp(40000, 443)
            .write(&mut frame, &payload),
        IpAddr::V6(v6) => builder
            .ipv6(
                "2001:db8::2"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("valid")
                    .octets(),
                v6.octets(),
                64,
            )
            .udp(40000, 443)
            .write(&mut frame, &payload),
    };
    written.expect("a frame fits in a Vec");
    frame
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value.
    pub retval: u32,
    /// The kernel's average time per run, in nanoseconds.
    pub duration_ns: u32,
}

/// Offset of `cb[0]` in `struct __sk_buff` (after `len, pkt_type, mark, queue_mapping,
/// protocol, vlan_present, vlan_tci, vlan_proto, priority, ingress_ifindex, ifindex,
/// tc_index`): the first field after `mark` a test run may set.
const SKB_CB_OFFSET: usize = 48;

/// `bpf(BPF_PROG_TEST_RUN)`: runs `frame` through the program `repeat` times, with `secret` in
/// the skb's `cb[0..2]` when given (see `egress_monitor_common::policy::config::CHECK_SECRET`):
/// the programs then judge the packet without counting or reporting it. Public for the
/// benchmark, which runs an empty program of its own the same way.
pub fn test_run(
    program: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
    secret: Option<u64>,
) -> io::Result<TestRun> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // struct __sk_buff up to cb[1]; every other field stays zero, as the kernel requires.
    let mut context = [0u8; SKB_CB_OFFSET + 8];
    let secret = secret.unwrap_or(0);
    context[SKB_CB_OFFSET..SKB_CB_OFFSET + 4].copy_from_slice(&(secret as u32).to_ne_bytes());
    context[SKB_CB_OFFSET + 4..].copy_from_slice(&((secret >> 32) as u32).to_ne_bytes());
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = TestAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: context.len() as u32,
        ctx_in: context.as_ptr() as u64,
        ..TestAttr::default()
    };
    // SAFETY: BPF_PROG_TEST_RUN's attribute; `frame` and `context` outlive the call.
    unsafe { super::syscall::bpf(BPF_PROG_TEST_RUN, &mut attr)? };
    Ok(TestRun {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}
