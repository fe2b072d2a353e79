//! The harness for egress-monitor's kernel tests: isolated network namespaces, child cgroups,
//! peers that count what reaches them, and a client that sends from inside both.
//!
//! Safety rules (see shared/testing.md): nothing attaches to the root cgroup or to a real
//! interface, and nothing pins on the host's own bpf filesystem (each test mounts its own);
//! traffic stays between the test's own namespaces; "internet" peers are documentation
//! addresses; every guard cleans up on drop, and [`sweep_stale`] removes what a killed run left
//! behind.
//!
//! ```text
//!  netns em-node-<id>                         netns em-net-<id>
//!    veth-n 10.77.0.2/24 fd77::2/64   <--->   veth-p 10.77.0.1/24 fd77::1/64
//!    default via 10.77.0.1 / fd77::1          lo: 203.0.113.1, 2001:db8::1 (internet)
//!                                                 10.78.0.1 (private, for deny-inside-allow)
//! ```

pub mod azure;
pub mod bpffs;
pub mod cgroup;
pub mod client;
pub mod controller;
pub mod daemon;
pub mod dns;
pub mod logged;
pub mod netns;
pub mod otlp;
pub mod programs;

use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of everything the tests create, so a sweep can find leftovers.
pub const PREFIX: &str = "em";

/// Fails loudly when the tests cannot run: they need root and BPF, which CI here has.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the kernel tests need root (BPF, network namespaces, cgroups): run `cargo xtask test` as root"
    );
}

/// The `egress-monitor` binary under test: `$EGRESS_MONITOR_BIN`, or the one cargo built next
/// to this test binary (`cargo xtask test` builds it first).
pub fn daemon_binary() -> std::path::PathBuf {
    built_binary("EGRESS_MONITOR_BIN", "egress-monitor")
}

/// The `egress-monitor-controller` binary under test: `$EGRESS_MONITOR_CONTROLLER_BIN`, or the
/// one cargo built next to this test binary.
pub fn controller_binary() -> std::path::PathBuf {
    built_binary("EGRESS_MONITOR_CONTROLLER_BIN", "egress-monitor-controller")
}

fn built_binary(variable: &str, name: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("a target directory")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p {name}` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Sets `SO_RCVTIMEO` on a socket: reads give up after `timeout`.
pub fn set_receive_timeout(
    fd: std::os::fd::RawFd,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: setsockopt with a valid timeval and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A name part unique within this machine: the pid (for the stale sweep) and a counter.
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a resource named `<kind>-<pid>-<n>` belongs to a process that is gone.
pub(crate) fn is_stale(name: &str, kind: &str) -> bool {
    let Some(rest) = name.strip_prefix(kind) else {
        return false;
    };
    let Some(pid) = rest
        .split('-')
        .nth(1)
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and cgroups left by earlier runs that were killed before cleaning up.
pub fn sweep_stale() {
    netns::sweep_stale();
    cgroup::sweep_stale();
    bpffs::sweep_stale();
}

/// A scratch directory under the system's temporary directory, removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("em-{}-{name}", unique_id()));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}
