//! Where the durable state lives: pins on a bpf filesystem, and a small run directory beside it.
//!
//! ```text
//! <pin path>/maps/<MAP>                    every map (policy tries, config, counters, events)
//! <pin path>/programs/<program>            every program of the kernel object
//! <pin path>/links/<link name>             one pinned link per attachment, which lives as
//!                                          long as its pin (names: `datapath::LinkName`)
//! <run dir>/state.json                     the applied policy's rules and names
//! <run dir>/daemon.pid                     the running daemon, if any
//! <run dir>/policy-source.json             the file `policy apply` made the node's source
//! ```
//! The run directory is `/run/egress-monitor` for the default pin path and
//! `/run/egress-monitor/pins/<pin path, '/' as '%'>` for any other, so several independent
//! pin paths (as tests use) never share state.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/egress-monitor";
const DEFAULT_RUN_DIR: &str = "/run/egress-monitor";
const BPF_FS_DEFAULT_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{} is not on a bpf filesystem; mount one there (mount -t bpf bpf DIR) or choose a --pin-path under /sys/fs/bpf",
        .0.display()
    )]
    NotBpfFs(PathBuf),
    #[error("cannot mount the bpf filesystem on {BPF_FS_DEFAULT_MOUNT}")]
    Mount(#[source] io::Error),
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The paths of one pinned installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> PinLayout {
        PinLayout { root: root.into() }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn programs(&self) -> PathBuf {
        self.root.join("programs")
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.programs().join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Whether any state is pinned here (the config map is pinned first and removed last).
    pub fn exists(&self) -> bool {
        self.map(egress_monitor_common::maps::CONFIG).exists()
    }

    /// The run directory for this pin path (see the module doc).
    pub fn run_dir(&self) -> PathBuf {
        if self.root == Path::new(DEFAULT_PIN_PATH) {
            PathBuf::from(DEFAULT_RUN_DIR)
        } else {
            let escaped = self.root.to_string_lossy().replace('/', "%");
            Path::new(DEFAULT_RUN_DIR).join("pins").join(escaped)
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.run_dir().join("state.json")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("daemon.pid")
    }

    /// Makes sure the root is on a bpf filesystem, mounting one on /sys/fs/bpf when the root is
    /// below it and nothing is mounted there yet (as on machines that do not mount it at boot),
    /// then creates the directories.
    pub fn prepare(&self) -> Result<(), PinError> {
        let probe = existing_ancestor(&self.root);
        if !crate::system::fs::is(&probe, crate::system::fs::BPF) {
            if self.root.starts_with(BPF_FS_DEFAULT_MOUNT) {
                mount_bpf_fs()?;
            }
            if !crate::system::fs::is(&existing_ancestor(&self.root), crate::system::fs::BPF) {
                return Err(PinError::NotBpfFs(self.root.clone()));
            }
        }
        for dir in [self.maps(), self.programs(), self.links(), self.run_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| PinError::Create { path: dir, source })?;
        }
        Ok(())
    }
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    while !current.exists() {
        match current.parent() {
            Some(parent) => current = parent.to_path_buf(),
            None => break,
        }
    }
    current
}

fn mount_bpf_fs() -> Result<(), PinError> {
    std::fs::create_dir_all(BPF_FS_DEFAULT_MOUNT).map_err(PinError::Mount)?;
    let target = CString::new(BPF_FS_DEFAULT_MOUNT).expect("no NUL");
    let kind = CString::new("bpf").expect("no NUL");
    // SAFETY: mount(2) with valid C strings and no data.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount(io::Error::last_os_error()));
    }
    log::info!("mounted the bpf filesystem on {BPF_FS_DEFAULT_MOUNT}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directories_are_distinct_per_pin_path() {
        let default = PinLayout::new(DEFAULT_PIN_PATH);
        assert_eq!(
            default.state_file(),
            Path::new("/run/egress-monitor/state.json")
        );
        let other = PinLayout::new("/tmp/em-bpf/pins");
        assert_eq!(
            other.run_dir(),
            Path::new("/run/egress-monitor/pins/%tmp%em-bpf%pins")
        );
        assert_eq!(
            other.map("CONFIG"),
            Path::new("/tmp/em-bpf/pins/maps/CONFIG")
        );
        assert_eq!(
            other.program("tc_egress"),
            Path::new("/tmp/em-bpf/pins/programs/tc_egress")
        );
    }

    #[test]
    fn a_plain_directory_is_not_a_bpf_filesystem() {
        let layout = PinLayout::new("/tmp/em-not-bpffs/pins");
        assert!(matches!(layout.prepare(), Err(PinError::NotBpfFs(_))));
    }
}
