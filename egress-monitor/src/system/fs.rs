//! Which filesystem a path is on, and which file.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
};

/// Which file a path names, or a descriptor holds (device and inode): a file moved away and
/// replaced by another under the same path has another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub fn of_path(path: &Path) -> io::Result<FileId> {
        std::fs::metadata(path).map(|m| FileId::of(&m))
    }

    pub fn of_file(file: &File) -> io::Result<FileId> {
        file.metadata().map(|m| FileId::of(&m))
    }

    fn of(metadata: &std::fs::Metadata) -> FileId {
        FileId {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// `CGROUP2_SUPER_MAGIC`.
pub const CGROUP2: i64 = 0x6367_7270;
/// `BPF_FS_MAGIC`.
pub const BPF: i64 = 0xcafe_4a11;

/// Whether `path` is on a filesystem with this magic number (statfs(2) `f_type`).
#[expect(
    clippy::useless_conversion,
    reason = "statfs.f_type is i64 on x86_64 but another width on other architectures"
)]
pub fn is(path: &Path, magic: i64) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) on a valid C string into a zeroed out-struct.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && i64::from(stat.f_type) == magic
    }
}
