//! Empty programs on the hooks egress-monitor uses, each only returning the code egress-monitor
//! returns for a packet it passes: the limit of this design, what any program on these hooks
//! costs before it does anything.
//!
//! Each is two instructions (`mov r0, PASS; exit`) loaded with `BPF_PROG_LOAD`, pinned on the
//! benchmark's own bpf filesystem and attached with aya as the datapath attaches its own
//! programs: cgroup_skb egress and ingress by a link on the benchmark's child cgroup, TC egress
//! by tcx (kernel 6.6+, netlink before) on the node namespace's veth. Never the root cgroup or a
//! real interface.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SchedClassifier, TcAttachType,
};
use egress_monitor::datapath::Judge;
use egress_monitor_tests::{
    bpffs::BpfFs,
    netns::{NODE_IF, Topology},
};

/// One empty program, named after the hook it stands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Empty {
    CgroupEgress,
    CgroupIngress,
    TcEgress,
}

impl Empty {
    /// Its name in the kernel (at most 15 characters), as `bpftool prog` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Empty::CgroupEgress => "em_empty_cg_out",
            Empty::CgroupIngress => "em_empty_cg_in",
            Empty::TcEgress => "em_empty_tc_out",
        }
    }

    /// `mov r0, PASS`: what egress-monitor's program on the same hook returns for a packet it
    /// passes (cgroup_skb 1; TC `TC_ACT_UNSPEC`, -1), read from the one place that states it.
    fn pass_code(self) -> i32 {
        match self {
            Empty::CgroupEgress | Empty::CgroupIngress => Judge::Cgroup.pass_code() as i32,
            Empty::TcEgress => Judge::Tc.pass_code() as i32,
        }
    }

    /// `(prog_type, expected_attach_type)` for `BPF_PROG_LOAD`.
    fn kind(self) -> (u32, u32) {
        const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
        const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
        const BPF_CGROUP_INET_INGRESS: u32 = 0;
        const BPF_CGROUP_INET_EGRESS: u32 = 1;
        match self {
            Empty::CgroupEgress => (BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_EGRESS),
            Empty::CgroupIngress => (BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_INGRESS),
            Empty::TcEgress => (BPF_PROG_TYPE_SCHED_CLS, 0),
        }
    }

    /// Loads the program (not attached): `bpf(BPF_PROG_LOAD)`.
    pub fn load(self) -> io::Result<OwnedFd> {
        // struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm (little endian, as x86 and
        // arm64 run it).
        let insn = |code: u8, imm: i32| u64::from(code) | (u64::from(imm as u32) << 32);
        const MOV64_IMM_R0: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
        const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
        let program = [insn(MOV64_IMM_R0, self.pass_code()), insn(EXIT, 0)];
        let license = c"GPL";
        let (prog_type, expected_attach_type) = self.kind();
        let mut prog_name = [0u8; 16];
        prog_name[..self.name().len()].copy_from_slice(self.name().as_bytes());
        #[repr(C)]
        #[derive(Default)]
        struct LoadAttr {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
            prog_ifindex: u32,
            expected_attach_type: u32,
        }
        let attr = LoadAttr {
            prog_type,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type,
            ..LoadAttr::default()
        };
        const BPF_PROG_LOAD: libc::c_long = 5;
        bpf(BPF_PROG_LOAD, &attr).map(|fd| {
            // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
    }
}

/// `bpf(cmd, attr)`: the returned value (a descriptor, for the commands used here).
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i32> {
    // SAFETY: bpf(2) with an attribute struct the kernel reads, whose pointers outlive the call;
    // the kernel zero-extends an attribute shorter than its own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// Pins a loaded program at `path` (`BPF_OBJ_PIN`), so aya can open it to attach it.
fn pin(program: &OwnedFd, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let pathname = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = PinAttr {
        pathname: pathname.as_ptr() as u64,
        bpf_fd: program.as_raw_fd() as u32,
        file_flags: 0,
    };
    const BPF_OBJ_PIN: libc::c_long = 6;
    bpf(BPF_OBJ_PIN, &attr).map(drop)
}

/// Empty programs attached to the benchmark's cgroup (egress and ingress) and/or the node
/// namespace's veth (TC egress). Dropping it detaches them (the links are aya's, not pinned)
/// and unmounts the bpf filesystem that holds their pins.
pub struct EmptyPrograms {
    cgroup: Vec<CgroupSkb>,
    tc: Option<SchedClassifier>,
    attached: Vec<Empty>,
    /// Declared last: dropped after the programs, so the links go before the pins.
    pins: BpfFs,
}

impl EmptyPrograms {
    pub fn attach(cgroup: Option<&Path>, tc: Option<&Topology>) -> anyhow::Result<EmptyPrograms> {
        let mut set = EmptyPrograms {
            cgroup: Vec::new(),
            tc: None,
            attached: Vec::new(),
            pins: BpfFs::new()?,
        };
        if let Some(path) = cgroup {
            let directory =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            for (empty, kind) in [
                (Empty::CgroupEgress, CgroupSkbAttachType::Egress),
                (Empty::CgroupIngress, CgroupSkbAttachType::Ingress),
            ] {
                let mut program = CgroupSkb::from_pin(set.load_and_pin(empty)?, kind)
                    .with_context(|| format!("opening {}", empty.name()))?;
                program
                    .attach(directory.as_fd(), kind, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {} to {}", empty.name(), path.display()))?;
                set.cgroup.push(program);
                set.attached.push(empty);
            }
        }
        if let Some(topology) = tc {
            let empty = Empty::TcEgress;
            let mut program = SchedClassifier::from_pin(set.load_and_pin(empty)?)
                .with_context(|| format!("opening {}", empty.name()))?;
            let interface = CString::new(NODE_IF).expect("no NUL");
            topology
                .node
                .run(|| program.attach(&interface, TcAttachType::Egress))?
                .with_context(|| format!("attaching {} to {NODE_IF}", empty.name()))?;
            set.tc = Some(program);
            set.attached.push(empty);
        }
        Ok(set)
    }

    fn load_and_pin(&self, empty: Empty) -> anyhow::Result<PathBuf> {
        let program = empty
            .load()
            .with_context(|| format!("loading {}", empty.name()))?;
        let path = self.pinned(empty);
        pin(&program, &path).with_context(|| format!("pinning {}", path.display()))?;
        Ok(path)
    }

    /// Where `empty` is pinned (for its run-time statistics).
    pub fn pinned(&self, empty: Empty) -> PathBuf {
        self.pins.mount.join(empty.name())
    }

    /// The programs attached, in the order they were.
    pub fn attached(&self) -> &[Empty] {
        &self.attached
    }
}
