//! The kernel's clock as userspace reads it.

/// `CLOCK_BOOTTIME` in nanoseconds: what the kernel's `bpf_ktime_get_boot_ns()` returns, so
/// the time every event, flow and learned address is stamped with.
pub fn boot_time_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec; CLOCK_BOOTTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
