//! The cgroup v2 hierarchy: where it is mounted, and whether a path is one of its cgroups.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/mounts); mount one or pass --cgroup"
    )]
    NoHierarchy,
    #[error("cannot read /proc/mounts")]
    Mounts(#[source] io::Error),
    #[error("cgroup {} does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("{} is not a cgroup v2 directory", .0.display())]
    NotCgroup2(PathBuf),
    #[error("cannot open cgroup {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The mount point of the cgroup v2 hierarchy (its root cgroup), from `/proc/mounts`.
pub fn root() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    root_from_mounts(&mounts).ok_or(CgroupError::NoHierarchy)
}

fn root_from_mounts(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Opens a cgroup v2 directory for attaching, after checking that it is one.
pub fn open(path: &Path) -> Result<File, CgroupError> {
    if !path.exists() {
        return Err(CgroupError::NotFound(path.to_owned()));
    }
    if !crate::system::fs::is(path, crate::system::fs::CGROUP2) {
        return Err(CgroupError::NotCgroup2(path.to_owned()));
    }
    File::open(path).map_err(|source| CgroupError::Open {
        path: path.to_owned(),
        source,
    })
}

/// The id of a cgroup v2 directory (its inode number), as BPF helpers report it.
pub fn id(path: &Path) -> Result<u64, CgroupError> {
    use std::os::unix::fs::MetadataExt as _;
    let cgroup = open(path)?;
    cgroup
        .metadata()
        .map(|metadata| metadata.ino())
        .map_err(|source| CgroupError::Open {
            path: path.to_owned(),
            source,
        })
}

/// The cgroup directory below `root` whose id (inode number) is `id`: a depth-first search,
/// at most 16 levels deep.
pub fn path_of(root: &Path, id: u64) -> Option<PathBuf> {
    find(root, id, 0)
}

fn find(dir: &Path, id: u64, depth: usize) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    if std::fs::metadata(dir).ok()?.ino() == id {
        return Some(dir.to_path_buf());
    }
    if depth >= 16 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|entry| find(&entry.path(), id, depth + 1))
}

/// Cgroup paths by id, remembered (a cgroup's path does not change while it exists), so the
/// hierarchy is searched once per cgroup rather than once per event. Bounded.
#[derive(Debug, Default)]
pub struct PathCache {
    root: Option<PathBuf>,
    paths: std::collections::HashMap<u64, Option<String>>,
}

impl PathCache {
    const CAPACITY: usize = 4096;

    pub fn new() -> PathCache {
        PathCache {
            root: root().ok(),
            paths: std::collections::HashMap::new(),
        }
    }

    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(known) = self.paths.get(&id) {
            return known.clone();
        }
        let found = self
            .root
            .as_deref()
            .and_then(|root| path_of(root, id))
            .map(|path| path.display().to_string());
        if self.paths.len() >= Self::CAPACITY {
            self.paths.clear();
        }
        self.paths.insert(id, found.clone());
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cgroup2_mount_is_the_root() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n\
                      cgroup2 /mnt/other cgroup2 rw 0 0\n";
        assert_eq!(
            root_from_mounts(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(root_from_mounts("proc /proc proc rw 0 0\n"), None);
        assert_eq!(
            root_from_mounts("none /mnt/my\\040cg cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        assert!(matches!(
            open(Path::new("/tmp")),
            Err(CgroupError::NotCgroup2(_))
        ));
        assert!(matches!(
            open(Path::new("/no/such/cgroup")),
            Err(CgroupError::NotFound(_))
        ));
    }
}
