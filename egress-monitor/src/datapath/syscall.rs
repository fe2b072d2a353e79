//! The raw `bpf(2)` calls aya 0.16 has no API for (a setsockopt link, pinning it, a test run
//! with a context), made in one place.

use std::io;

/// `bpf(cmd, attr, size_of(attr))`: the kernel's non-negative answer (a descriptor, or 0), or
/// the errno it set.
///
/// # Safety
/// `attr` must have the layout of `union bpf_attr` as `cmd` reads it, and every pointer in it
/// must be valid for the kernel to read or write during the call.
pub(super) unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for the attribute; its size is the one given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
