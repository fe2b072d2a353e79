//! Whether the pinned links still do what they were made to: each still attached to its
//! target and running the program it was attached with. The daemon records what it attached
//! (`links.json` in the run directory, which lives exactly as long as the pins) and compares
//! what it finds with it: every few seconds while it runs, and at start for what happened
//! while no daemon ran.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Datapath, links::link_names, pins::PinLayout};

/// A pinned link as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// The program the link runs.
    pub program_id: u32,
    /// False once the link was detached from its target (`bpftool link detach`): the pin is
    /// there, but the link filters nothing.
    pub attached: bool,
}

/// `BPF_LINK_TYPE_CGROUP`, `_TCX` and `_NETKIT`: links whose target reads 0 once detached.
const LINK_TYPE_CGROUP: u32 = 3;
const LINK_TYPE_TCX: u32 = 11;
const LINK_TYPE_NETKIT: u32 = 13;

/// The state of the link pinned at `path`.
fn link_state(path: &Path) -> std::io::Result<LinkState> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let pathname = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a pin path with a NUL byte"))?;
    #[repr(C)]
    struct GetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut get = GetAttr {
        pathname: pathname.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: BPF_OBJ_GET's attribute; `pathname` outlives the call.
    let fd = unsafe { super::syscall::bpf(BPF_OBJ_GET, &mut get)? };
    // SAFETY: a descriptor bpf(2) just returned, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // `struct bpf_link_info`: type, id, prog_id, then (8-aligned) the union whose first
    // field is the cgroup id (cgroup links) or the ifindex (tcx, netkit).
    let mut info = [0u64; 8];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD's attribute; the kernel writes at most `info_len` bytes
    // into `info`, which outlives the call.
    unsafe { super::syscall::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)? };
    let link_type = info[0] as u32;
    let program_id = (info[1] & 0xffff_ffff) as u32;
    let target = info[2];
    let attached = match link_type {
        LINK_TYPE_CGROUP => target != 0,
        LINK_TYPE_TCX | LINK_TYPE_NETKIT => target & 0xffff_ffff != 0,
        _ => true,
    };
    Ok(LinkState {
        program_id,
        attached,
    })
}

/// Every pinned link at `layout` and its state (`None`: it could not be read).
pub fn link_states(layout: &PinLayout) -> BTreeMap<String, Option<LinkState>> {
    link_names(layout)
        .into_iter()
        .map(|name| {
            let state = link_state(&layout.links().join(&name)).ok();
            (name, state)
        })
        .collect()
}

/// What the daemon attached: each link's name and the program it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub links: BTreeMap<String, u32>,
}

fn expected_path(layout: &PinLayout) -> PathBuf {
    layout.run_dir().join("links.json")
}

impl Expected {
    /// What the last daemon recorded, if anything.
    pub fn load(layout: &PinLayout) -> Option<Expected> {
        let bytes = std::fs::read(expected_path(layout)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// What is attached now, as the record to compare with from here on.
    pub fn now(layout: &PinLayout) -> Expected {
        Expected {
            links: link_states(layout)
                .into_iter()
                .filter_map(|(name, state)| {
                    let state = state.filter(|state| state.attached)?;
                    Some((name, state.program_id))
                })
                .collect(),
        }
    }

    pub fn save(&self, layout: &PinLayout) -> std::io::Result<()> {
        let dir = layout.run_dir();
        std::fs::create_dir_all(&dir)?;
        let path = expected_path(layout);
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&temporary, &path)
    }

    /// What differs from the record in `found` (from [`link_states`]), one sentence each.
    pub fn differences(&self, found: &BTreeMap<String, Option<LinkState>>) -> Vec<Tampering> {
        let mut out = Vec::new();
        for (name, program_id) in &self.links {
            match found.get(name) {
                None => out.push(Tampering {
                    link: name.clone(),
                    what: TamperKind::Removed,
                    message: format!("the link {name} was removed: its program no longer runs"),
                }),
                Some(None) => out.push(Tampering {
                    link: name.clone(),
                    what: TamperKind::Unreadable,
                    message: format!("the link {name} cannot be read"),
                }),
                Some(Some(state)) if !state.attached => out.push(Tampering {
                    link: name.clone(),
                    what: TamperKind::Detached,
                    message: format!("the link {name} was detached from its target"),
                }),
                Some(Some(state)) if state.program_id != *program_id => out.push(Tampering {
                    link: name.clone(),
                    what: TamperKind::Replaced,
                    message: format!(
                        "the link {name} runs program {} now, not the program {program_id} it \
                         was attached with",
                        state.program_id
                    ),
                }),
                Some(Some(_)) => {}
            }
        }
        out
    }
}

egress_monitor_api::words! {
    /// How a link was tampered with.
    pub enum TamperKind {
        Removed = "link_removed",
        Detached = "link_detached",
        Replaced = "program_replaced",
        Unreadable = "link_unreadable",
    }
}

/// One link no longer as attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tampering {
    pub link: String,
    pub what: TamperKind,
    pub message: String,
}

impl Datapath {
    /// The pinned links' states (see [`link_states`]).
    pub fn link_states(&self) -> BTreeMap<String, Option<LinkState>> {
        link_states(&self.layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_detached_and_replaced_links_are_told_apart() {
        let expected = Expected {
            links: BTreeMap::from([
                ("cgroup-egress-1".to_owned(), 10),
                ("cgroup-ingress-1".to_owned(), 11),
                ("tc-2".to_owned(), 12),
                ("tc-3".to_owned(), 13),
                ("tc-4".to_owned(), 14),
            ]),
        };
        let attached = |program_id| {
            Some(LinkState {
                program_id,
                attached: true,
            })
        };
        let found = BTreeMap::from([
            ("cgroup-egress-1".to_owned(), attached(10)),
            (
                "cgroup-ingress-1".to_owned(),
                Some(LinkState {
                    program_id: 11,
                    attached: false,
                }),
            ),
            ("tc-2".to_owned(), attached(99)),
            ("tc-4".to_owned(), None),
            ("tc-5".to_owned(), attached(15)),
        ]);
        let kinds: Vec<(String, TamperKind)> = expected
            .differences(&found)
            .into_iter()
            .map(|t| (t.link, t.what))
            .collect();
        assert_eq!(
            kinds,
            [
                ("cgroup-ingress-1".to_owned(), TamperKind::Detached),
                ("tc-2".to_owned(), TamperKind::Replaced),
                ("tc-3".to_owned(), TamperKind::Removed),
                ("tc-4".to_owned(), TamperKind::Unreadable),
            ]
        );
    }
}
