//! Child cgroups for the tests: never the root, always removed.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{is_stale, unique_id};

const KIND: &str = "em-test";

/// A child cgroup of the cgroup2 root; its processes are killed and it is removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> anyhow::Result<Cgroup> {
        let root =
            egress_monitor::system::cgroup::root().context("finding the cgroup2 hierarchy")?;
        let path = root.join(format!("{KIND}-{}", unique_id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// The cgroup id the kernel reports for sockets in it (the directory's inode number).
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

fn remove(path: &Path) {
    // cgroup.kill (5.14+) ends whatever a failed test left running inside.
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    for _ in 0..50 {
        if std::fs::remove_dir(path).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("cleanup: could not remove {}", path.display());
}

pub(crate) fn sweep_stale() {
    let Ok(root) = egress_monitor::system::cgroup::root() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        if is_stale(&entry.file_name().to_string_lossy(), KIND) {
            remove(&entry.path());
        }
    }
}
