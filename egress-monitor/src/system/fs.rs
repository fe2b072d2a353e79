//! Which filesystem a path is on.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

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
