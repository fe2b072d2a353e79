//! A DNS answer forged in a resolver's name by a process with CAP_NET_RAW: it asks the
//! resolver for a name the resolver does not know (so the real answer, an NXDOMAIN, teaches
//! nothing and leaves the question open), then writes the answer itself, from the resolver's
//! address and port 53 to its own socket (at the node's address, the one the question left
//! from) over loopback: through a raw IP socket (`raw`) or as an Ethernet frame on the loopback
//! device (`packet`; a frame to 127.0.0.1 there would be a martian).

use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::bail;

use crate::Report;

/// `ok`: the forgery was sent; `eperm`: the kernel refused it; `replies`: answers the asking
/// socket received.
pub fn forge(
    mode: &str,
    resolver: Ipv4Addr,
    name: &str,
    forged: Ipv4Addr,
) -> anyhow::Result<Report> {
    let query_bytes = crate::dns_query(name, "a")?;
    let victim = UdpSocket::bind("0.0.0.0:0")?;
    victim.set_read_timeout(Some(Duration::from_millis(500)))?;
    let port = victim.local_addr()?.port();
    let mut report = Report {
        src_port: port,
        ..Report::default()
    };
    let own = {
        let probe = UdpSocket::bind("0.0.0.0:0")?;
        probe.connect(SocketAddr::new(resolver.into(), 53))?;
        match probe.local_addr()?.ip() {
            std::net::IpAddr::V4(own) => own,
            std::net::IpAddr::V6(_) => bail!("no IPv4 address towards {resolver}"),
        }
    };
    victim.send_to(&query_bytes, SocketAddr::new(resolver.into(), 53))?;
    let answer = crate::answer_naming(&query_bytes, name, 3600, forged)?;
    let ip = etherparse::PacketBuilder::ipv4(resolver.octets(), own.octets(), 64).udp(53, port);
    let sent = match mode {
        "raw" => {
            let mut datagram = Vec::new();
            ip.write(&mut datagram, &answer)?;
            send_raw(&datagram, own)
        }
        "packet" => {
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ethernet2([0; 6], [0; 6])
                .ipv4(resolver.octets(), own.octets(), 64)
                .udp(53, port)
                .write(&mut frame, &answer)?;
            send_on_loopback(&frame)
        }
        other => bail!("unknown forging mode {other}; raw or packet"),
    };
    match sent {
        Ok(()) => report.ok += 1,
        Err(err) => report.error(&err),
    }
    let mut buffer = [0u8; 1500];
    for _ in 0..2 {
        match victim.recv(&mut buffer) {
            Ok(_) => report.replies += 1,
            Err(_) => break,
        }
    }
    Ok(report)
}

/// Sends a whole IPv4 datagram through an `IPPROTO_RAW` socket (the header is the caller's).
fn send_raw(datagram: &[u8], to_address: Ipv4Addr) -> io::Result<()> {
    // SAFETY: plain socket(2); owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_in is plain data; zeroed is valid.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from_ne_bytes(to_address.octets());
    // SAFETY: a valid buffer and sockaddr_in.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            datagram.as_ptr().cast(),
            datagram.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends an Ethernet frame on the loopback device (index 1 in every namespace) through a
/// packet socket.
fn send_on_loopback(frame: &[u8]) -> io::Result<()> {
    let (socket, address) = crate::raw::packet_socket(1, [0; 6])?;
    crate::raw::send_frame(&socket, &address, frame)
}
