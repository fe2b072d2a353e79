//! Datagrams that name a destination beyond their IP destination, as any unprivileged process
//! can send them: an IPv4 loose source route (`IP_OPTIONS`) and an IPv6 segment routing header
//! (`IPV6_RTHDR`, type 4). The IP destination is `hop`, the route's last address `dst`.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, bail};

use crate::Report;

const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 0x83;
const IPV6_RTHDR: i32 = 57;
const IPV6_SRCRT_TYPE_4: u8 = 4;

/// Sends one datagram to `dst:port` routed through `hop` (both of one family).
pub fn send(dst: IpAddr, hop: IpAddr, port: u16) -> anyhow::Result<Report> {
    let socket = crate::unbound_udp(dst)?;
    let (level, name, option) = match (dst, hop) {
        // [NOP, LSRR, length 7, pointer 4, hop]: the kernel sends to the first address and
        // writes the datagram's destination into the route's last slot.
        (IpAddr::V4(_), IpAddr::V4(hop)) => {
            let mut option = vec![IPOPT_NOOP, IPOPT_LSRR, 7, 4];
            option.extend_from_slice(&hop.octets());
            (libc::IPPROTO_IP, libc::IP_OPTIONS, option)
        }
        // A segment routing header with two segments: [0] the final destination (the kernel
        // writes the datagram's destination there), [1] the hop, which the packet goes to
        // first (segments left 1).
        (IpAddr::V6(_), IpAddr::V6(hop)) => {
            let mut option = vec![0, 4, IPV6_SRCRT_TYPE_4, 1, 1, 0, 0, 0];
            option.extend_from_slice(&[0; 16]);
            option.extend_from_slice(&hop.octets());
            (libc::IPPROTO_IPV6, IPV6_RTHDR, option)
        }
        _ => bail!("the destination and the hop must be of one family"),
    };
    // SAFETY: setsockopt with a valid buffer and its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            option.as_ptr().cast(),
            option.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setting the source route");
    }
    let mut report = Report {
        src_port: socket.local_addr()?.port(),
        ..Report::default()
    };
    match socket.send_to(&[0x5a; 16], SocketAddr::new(dst, port)) {
        Ok(_) => report.ok += 1,
        Err(err) => report.error(&err),
    }
    Ok(report)
}
