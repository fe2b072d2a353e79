//! A resolver of one's own: an unprivileged process makes a user and network namespace, runs
//! a DNS server on its own loopback and asks it for a name, answered with any address it
//! likes (and the longest TTL there is). The answer reaches a socket of the process's cgroup.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::Report;

/// Unshares a user and network namespace (as the current, unprivileged user), brings up its
/// loopback, serves `name` → `forged` on `server`:53 and resolves it from a client socket.
/// `ok`: the answer arrived.
pub fn own_resolver(server: Ipv4Addr, name: &str, forged: Ipv4Addr) -> anyhow::Result<Report> {
    // SAFETY: unshare(2) on this single-threaded process.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("unshare(CLONE_NEWUSER | CLONE_NEWNET)");
    }
    loopback_up()?;
    if !server.is_loopback() {
        bail!("the own resolver listens on loopback");
    }
    let listener = UdpSocket::bind(SocketAddr::new(IpAddr::V4(server), 53))
        .context("binding port 53 in the own namespace")?;
    listener.set_read_timeout(Some(Duration::from_secs(2)))?;
    let query = crate::dns_query(name, "a")?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    client.send_to(&query, SocketAddr::new(IpAddr::V4(server), 53))?;
    let mut buffer = [0u8; 1500];
    let (len, from) = listener.recv_from(&mut buffer).context("the question")?;
    let answer = crate::answer_naming(&buffer[..len], name, u32::MAX, forged)?;
    listener.send_to(&answer, from)?;
    let mut report = Report::default();
    match client.recv(&mut buffer) {
        Ok(_) => report.ok += 1,
        Err(err) => report.error(&err),
    }
    Ok(report)
}

/// `ip link set lo up` by ioctl, with the capabilities the new user namespace grants.
fn loopback_up() -> anyhow::Result<()> {
    // SAFETY: plain socket(2); owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket");
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: ioctls on a valid socket with a valid ifreq.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut request) != 0 {
            return Err(io::Error::last_os_error()).context("SIOCGIFFLAGS lo");
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut request) != 0 {
            return Err(io::Error::last_os_error()).context("SIOCSIFFLAGS lo up");
        }
    }
    Ok(())
}
