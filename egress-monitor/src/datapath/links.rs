//! Attaching the programs and pinning their links, and the names those links are pinned
//! under.

use std::{ffi::CString, fmt, io, os::fd::AsFd as _, os::unix::fs::MetadataExt as _, path::Path};

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
    datapath::pins::PinLayout,
    system::cgroup,
    system::iface::{self, InterfaceError},
};

/// The calling thread's network namespace, whose inode number TC link names carry.
const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// The programs attached to every cgroup, each with a link of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupHook {
    /// The egress verdict.
    Egress,
    /// Records who creates each socket.
    SockCreate,
    /// Reads DNS answers, for domain rules.
    Ingress,
    /// The raw-socket guards (setsockopt).
    Setsockopt,
}

impl CgroupHook {
    /// All of them, in the order they are attached.
    pub const ALL: [CgroupHook; 4] = [
        CgroupHook::Egress,
        CgroupHook::SockCreate,
        CgroupHook::Ingress,
        CgroupHook::Setsockopt,
    ];

    /// The program attached.
    pub fn program(self) -> &'static str {
        match self {
            CgroupHook::Egress => CGROUP_PROGRAM,
            CgroupHook::SockCreate => SOCK_PROGRAM,
            CgroupHook::Ingress => INGRESS_PROGRAM,
            CgroupHook::Setsockopt => GUARD_PROGRAM,
        }
    }

    /// What its link name has before `cgroup-<id>`.
    fn prefix(self) -> &'static str {
        match self {
            CgroupHook::Egress => "",
            CgroupHook::SockCreate => "sock",
            CgroupHook::Ingress => "in",
            CgroupHook::Setsockopt => "opt",
        }
    }

    /// What an error attaching it adds to the cgroup's path.
    fn role(self) -> &'static str {
        match self {
            CgroupHook::Egress => "",
            CgroupHook::SockCreate => " (socket owners)",
            CgroupHook::Ingress => " (DNS answers)",
            CgroupHook::Setsockopt => " (raw-socket guards)",
        }
    }
}

/// The name a link is pinned under (`links/<name>`), which says what is attached where: the
/// one place these names are made and read.
///
/// `cgroup-<id>` (and `sockcgroup-`, `incgroup-`, `optcgroup-<id>` for the cgroup's other
/// programs, see [`CgroupHook`]), the id being the cgroup directory's inode number; and
/// `tc-<netns>-<ifindex>`, the network namespace's inode number and the interface's index
/// (indices repeat across namespaces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkName {
    Cgroup { hook: CgroupHook, cgroup: u64 },
    Tc { netns: u64, ifindex: u32 },
}

impl LinkName {
    /// The link of `hook` on the cgroup at `path`.
    pub fn cgroup(hook: CgroupHook, path: &Path) -> io::Result<LinkName> {
        Ok(LinkName::Cgroup {
            hook,
            cgroup: std::fs::metadata(path)?.ino(),
        })
    }

    /// The TC link on interface `ifindex` of the calling thread's network namespace.
    pub fn tc(ifindex: u32) -> io::Result<LinkName> {
        Ok(LinkName::Tc {
            netns: LinkName::own_netns()?,
            ifindex,
        })
    }

    /// The calling thread's network namespace, as TC link names carry it.
    pub fn own_netns() -> io::Result<u64> {
        Ok(std::fs::metadata(OWN_NETNS)?.ino())
    }

    /// The link of another of the same cgroup's programs (`None` for a TC link).
    pub fn beside(self, other: CgroupHook) -> Option<LinkName> {
        match self {
            LinkName::Cgroup { cgroup, .. } => Some(LinkName::Cgroup {
                hook: other,
                cgroup,
            }),
            LinkName::Tc { .. } => None,
        }
    }
}

impl fmt::Display for LinkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkName::Cgroup { hook, cgroup } => write!(f, "{}cgroup-{cgroup}", hook.prefix()),
            LinkName::Tc { netns, ifindex } => write!(f, "tc-{netns}-{ifindex}"),
        }
    }
}

/// A name [`LinkName`] does not make.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not the name of a link this program pins")]
pub struct UnknownLinkName(pub String);

impl std::str::FromStr for LinkName {
    type Err = UnknownLinkName;

    fn from_str(name: &str) -> Result<LinkName, UnknownLinkName> {
        let unknown = || UnknownLinkName(name.to_owned());
        if let Some(rest) = name.strip_prefix("tc-") {
            let (netns, ifindex) = rest.split_once('-').ok_or_else(unknown)?;
            return Ok(LinkName::Tc {
                netns: number(netns).ok_or_else(unknown)?,
                ifindex: number(ifindex).ok_or_else(unknown)?,
            });
        }
        CgroupHook::ALL
            .into_iter()
            .find_map(|hook| {
                let id = name.strip_prefix(hook.prefix())?.strip_prefix("cgroup-")?;
                Some((hook, id))
            })
            .and_then(|(hook, id)| {
                Some(LinkName::Cgroup {
                    hook,
                    cgroup: number(id)?,
                })
            })
            .ok_or_else(unknown)
    }
}

/// A decimal number, digits only (no sign, so that a name parses back only from what
/// [`LinkName`]'s `Display` wrote).
fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
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
    // SAFETY: BPF_LINK_CREATE's attribute, pointing at nothing.
    let link = unsafe { super::syscall::bpf(BPF_LINK_CREATE, &mut create)? };
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
    // SAFETY: BPF_OBJ_PIN's attribute; `pathname` outlives the call.
    unsafe { super::syscall::bpf(BPF_OBJ_PIN, &mut pin)? };
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
        let mut attached = false;
        for hook in CgroupHook::ALL {
            let link = LinkName::cgroup(hook, path)
                .map_err(DatapathError::pin("reading", path))?
                .to_string();
            self.targets
                .insert(link.clone(), path.display().to_string());
            if self.target.links().join(&link).exists() {
                continue;
            }
            self.attach_to_cgroup(&cgroup, path, hook, &link)?;
            attached = true;
        }
        Ok(attached)
    }

    /// Attaches one of the cgroup programs and pins its link as `link`.
    fn attach_to_cgroup(
        &mut self,
        cgroup: &std::fs::File,
        path: &Path,
        hook: CgroupHook,
        link: &str,
    ) -> Result<(), DatapathError> {
        let program = hook.program();
        let target = format!("cgroup {}{}", path.display(), hook.role());
        let pinned = self.target.program(program);
        match hook {
            CgroupHook::Egress | CgroupHook::Ingress => {
                let kind = if hook == CgroupHook::Egress {
                    CgroupSkbAttachType::Egress
                } else {
                    CgroupSkbAttachType::Ingress
                };
                let mut skb =
                    CgroupSkb::from_pin(pinned, kind).map_err(DatapathError::program(program))?;
                let id = skb
                    .attach(cgroup, kind, CgroupAttachMode::Single)
                    .map_err(|source| DatapathError::Attach { target, source })?;
                let taken = skb.take_link(id).map_err(DatapathError::program(program))?;
                self.pin_link(taken, program, link)
            }
            CgroupHook::SockCreate => {
                let mut recorder = CgroupSock::from_pin(pinned, CgroupSockAttachType::SockCreate)
                    .map_err(DatapathError::program(program))?;
                let id = recorder
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map_err(|source| DatapathError::Attach { target, source })?;
                let taken = recorder
                    .take_link(id)
                    .map_err(DatapathError::program(program))?;
                self.pin_link(taken, program, link)
            }
            CgroupHook::Setsockopt => {
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
                    target,
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
        let link_name = LinkName::tc(interface.index)
            .map_err(DatapathError::pin("reading", Path::new(OWN_NETNS)))?
            .to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_parse_back_to_what_made_them() {
        let mut links: Vec<LinkName> = CgroupHook::ALL
            .into_iter()
            .map(|hook| LinkName::Cgroup { hook, cgroup: 4242 })
            .collect();
        links.push(LinkName::Tc {
            netns: 4026531840,
            ifindex: 7,
        });
        for link in links {
            assert_eq!(link.to_string().parse::<LinkName>(), Ok(link), "{link}");
        }
    }

    #[test]
    fn link_names_are_spelt_as_pinned_by_earlier_builds() {
        // Links pinned by a running daemon are adopted by the next build: the spelling stays.
        let names = [
            "cgroup-7",
            "sockcgroup-7",
            "incgroup-7",
            "optcgroup-7",
            "tc-11-2",
        ];
        let parsed: Vec<LinkName> = names.iter().map(|name| name.parse().unwrap()).collect();
        assert_eq!(
            parsed,
            [
                LinkName::Cgroup {
                    hook: CgroupHook::Egress,
                    cgroup: 7
                },
                LinkName::Cgroup {
                    hook: CgroupHook::SockCreate,
                    cgroup: 7
                },
                LinkName::Cgroup {
                    hook: CgroupHook::Ingress,
                    cgroup: 7
                },
                LinkName::Cgroup {
                    hook: CgroupHook::Setsockopt,
                    cgroup: 7
                },
                LinkName::Tc {
                    netns: 11,
                    ifindex: 2
                },
            ]
        );
        assert_eq!(parsed[0].beside(CgroupHook::Setsockopt), Some(parsed[3]));
        assert_eq!(parsed[4].beside(CgroupHook::Egress), None);
    }

    #[test]
    fn other_names_are_not_link_names() {
        for name in [
            "",
            "cgroup-",
            "cgroup-x",
            "cgroup-+7",
            "cgroup-7-1",
            "xcgroup-7",
            "tc-7",
            "tc-7-",
            "tc-7-x",
            "tc--7",
            "tc-1-99999999999",
            "replacing",
        ] {
            assert_eq!(
                name.parse::<LinkName>(),
                Err(UnknownLinkName(name.to_owned())),
                "{name}"
            );
        }
    }
}
