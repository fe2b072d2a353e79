//! Attaching the programs and pinning their links.

use std::{ffi::CString, os::fd::AsFd as _, path::Path};

use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAttachType,
    CgroupSockopt, CgroupSockoptAttachType, ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
};

use super::{
    CGROUP_PROGRAM, Datapath, DatapathError, GUARD_PROGRAM, INGRESS_PROGRAM, SOCK_PROGRAM,
    TC_PROGRAM,
};
use crate::{
    cgroup,
    iface::{self, InterfaceError},
    pins::{self, PinLayout},
};

/// The prefix a cgroup program's link name has before `cgroup-<id>`.
fn cgroup_link_prefix(program: &str) -> &'static str {
    match program {
        SOCK_PROGRAM => "sock",
        INGRESS_PROGRAM => "in",
        GUARD_PROGRAM => "opt",
        _ => "",
    }
}

/// `enum bpf_attach_type`'s `BPF_CGROUP_SETSOCKOPT` (include/uapi/linux/bpf.h).
const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// Attaches a program to a cgroup with a BPF link and pins the link at `path`, for link types
/// aya cannot hand over as an `FdLink`. The link lives as long as its pin.
fn link_and_pin(
    program: std::os::fd::BorrowedFd<'_>,
    cgroup: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
    path: &Path,
) -> std::io::Result<()> {
    use std::os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    };
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;
    // `union bpf_attr` as BPF_LINK_CREATE reads it (the rest zeroed), and as BPF_OBJ_PIN does.
    let mut create = [0u32; 16];
    create[0] = program.as_raw_fd() as u32;
    create[1] = cgroup.as_raw_fd() as u32;
    create[2] = attach_type;
    // SAFETY: bpf(2) with an attribute buffer that outlives the call.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            create.as_mut_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    if link < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor bpf(2) just returned, owned by nobody else; closed after pinning.
    let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
    let pathname = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a pin path with a NUL byte"))?;
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut pin = PinAttr {
        pathname: pathname.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: bpf(2) with an attribute whose pointer outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &raw mut pin,
            std::mem::size_of::<PinAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn link_names(layout: &PinLayout) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.links())
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Removes a link's pin and closes it, which detaches its program.
pub(super) fn unpin_link(path: &Path) -> Result<(), DatapathError> {
    let link = PinnedLink::from_pin(path).map_err(|err| DatapathError::Pin {
        what: "opening link",
        path: path.to_owned(),
        source: std::io::Error::other(err),
    })?;
    link.unpin()
        .map_err(DatapathError::pin("unpinning link", path))?;
    Ok(())
}

impl Datapath {
    /// Attaches the cgroup_skb egress program to a cgroup v2 directory (every socket of every
    /// process in it and below, whatever their network namespace), with its three companions on
    /// the same cgroup (socket owners, DNS answers, raw-socket guards), and pins each link.
    /// Links already pinned are kept, missing ones made (a start that failed half-way is
    /// completed by the next). Returns false when all four were attached already (adopted).
    pub fn attach_cgroup(&mut self, path: &Path) -> Result<bool, DatapathError> {
        let cgroup = cgroup::open(path)?;
        let name = pins::cgroup_link_name(path).map_err(DatapathError::pin("reading", path))?;
        let mut attached = false;
        for program in [CGROUP_PROGRAM, SOCK_PROGRAM, INGRESS_PROGRAM, GUARD_PROGRAM] {
            let link = format!("{}{name}", cgroup_link_prefix(program));
            self.targets
                .insert(link.clone(), path.display().to_string());
            if self.target.links().join(&link).exists() {
                continue;
            }
            self.attach_to_cgroup(&cgroup, path, program, &link)?;
            attached = true;
        }
        Ok(attached)
    }

    /// Attaches one of the cgroup programs and pins its link as `link`.
    fn attach_to_cgroup(
        &mut self,
        cgroup: &std::fs::File,
        path: &Path,
        program: &'static str,
        link: &str,
    ) -> Result<(), DatapathError> {
        let attach_error = |what: &str| {
            let target = format!("cgroup {}{what}", path.display());
            move |source| DatapathError::Attach { target, source }
        };
        let pinned = self.target.program(program);
        match program {
            CGROUP_PROGRAM | INGRESS_PROGRAM => {
                let (kind, what) = if program == CGROUP_PROGRAM {
                    (CgroupSkbAttachType::Egress, "")
                } else {
                    (CgroupSkbAttachType::Ingress, " (DNS answers)")
                };
                let mut skb =
                    CgroupSkb::from_pin(pinned, kind).map_err(DatapathError::program(program))?;
                let id = skb
                    .attach(cgroup, kind, CgroupAttachMode::Single)
                    .map_err(attach_error(what))?;
                let taken = skb.take_link(id).map_err(DatapathError::program(program))?;
                self.pin_link(taken, program, link)
            }
            SOCK_PROGRAM => {
                let mut recorder = CgroupSock::from_pin(pinned, CgroupSockAttachType::SockCreate)
                    .map_err(DatapathError::program(program))?;
                let id = recorder
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map_err(attach_error(" (socket owners)"))?;
                let taken = recorder
                    .take_link(id)
                    .map_err(DatapathError::program(program))?;
                self.pin_link(taken, program, link)
            }
            _ => {
                // aya 0.16 cannot turn a sockopt link into an `FdLink` to pin, so the link is
                // made and pinned here directly (`BPF_LINK_CREATE`, `BPF_OBJ_PIN`).
                let guard = CgroupSockopt::from_pin(pinned, CgroupSockoptAttachType::Set)
                    .map_err(DatapathError::program(program))?;
                let program_fd = guard.fd().map_err(DatapathError::program(program))?;
                link_and_pin(
                    program_fd.as_fd(),
                    cgroup.as_fd(),
                    BPF_CGROUP_SETSOCKOPT,
                    &self.target.links().join(link),
                )
                .map_err(|source| DatapathError::Attach {
                    target: format!("cgroup {} (raw-socket guards)", path.display()),
                    source: ProgramError::IOError(source),
                })
            }
        }
    }

    /// Attaches the TC egress program to an interface of the calling thread's network
    /// namespace and pins the link. Returns false when it was already attached (adopted).
    pub fn attach_tc(&mut self, name: &str) -> Result<bool, DatapathError> {
        let interface = iface::lookup(name)?;
        if !interface.is_ethernet() {
            return Err(DatapathError::NotEthernet {
                name: name.to_owned(),
                link_type: interface.link_type,
            });
        }
        let link_name = pins::tc_link_name(interface.index).map_err(DatapathError::pin(
            "reading",
            Path::new("/proc/thread-self/ns/net"),
        ))?;
        self.targets.insert(link_name.clone(), name.to_owned());
        if self.target.links().join(&link_name).exists() {
            return Ok(false);
        }
        let c_name = CString::new(name).map_err(|_| InterfaceError::BadName(name.to_owned()))?;
        let mut program = SchedClassifier::from_pin(self.target.program(TC_PROGRAM))
            .map_err(DatapathError::program(TC_PROGRAM))?;
        let link_id = program
            .attach(&c_name, TcAttachType::Egress)
            .map_err(|source| DatapathError::Attach {
                target: format!("interface {name}"),
                source,
            })?;
        let link = program
            .take_link(link_id)
            .map_err(DatapathError::program(TC_PROGRAM))?;
        self.pin_link(link, TC_PROGRAM, &link_name)?;
        Ok(true)
    }

    /// Pins a program's link under `links/<name>`: from then on the attachment lives as long
    /// as the pin, whatever happens to this process.
    fn pin_link<L>(&self, link: L, program: &'static str, name: &str) -> Result<(), DatapathError>
    where
        L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
    {
        let link: FdLink = link.try_into().map_err(|err| DatapathError::Program {
            name: program,
            source: ProgramError::from(err),
        })?;
        let path = self.target.links().join(name);
        link.pin(&path).map_err(|err| DatapathError::Pin {
            what: "pinning link",
            path,
            source: std::io::Error::other(err),
        })?;
        Ok(())
    }
}
