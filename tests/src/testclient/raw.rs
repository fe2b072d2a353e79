//! Raw L2 senders: AF_PACKET frames (plain, with `PACKET_QDISC_BYPASS`, through `sendmmsg` and
//! through a `PACKET_TX_RING`) and an AF_XDP TX ring, as an attacker with CAP_NET_RAW would
//! send them.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

use crate::Report;

const SOL_PACKET: i32 = 263;
const PACKET_TX_RING: i32 = 13;
const PACKET_QDISC_BYPASS: i32 = 20;
const TP_STATUS_SEND_REQUEST: u64 = 1;
/// `TPACKET_ALIGN(sizeof(struct tpacket_hdr))`: where a TPACKET_V1 TX frame's data starts.
const TPACKET_V1_DATA: usize = 32;

/// How the frames are sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Bypass,
    Mmsg,
    TxRing,
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Mode> {
        Ok(match text {
            "plain" => Mode::Plain,
            "bypass" => Mode::Bypass,
            "mmsg" => Mode::Mmsg,
            "txring" => Mode::TxRing,
            other => bail!("unknown L2 mode {other}; plain, bypass, mmsg or txring"),
        })
    }
}

/// An Ethernet frame from `iface` to `dst_mac` carrying a UDP datagram to `dst:port`.
fn frame(src_mac: [u8; 6], dst_mac: [u8; 6], dst: IpAddr, port: u16) -> anyhow::Result<Vec<u8>> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac);
    let payload = [0x5a; 32];
    let mut bytes = Vec::new();
    match dst {
        IpAddr::V4(v4) => builder
            .ipv4([10, 77, 0, 2], v4.octets(), 64)
            .udp(40000, port)
            .write(&mut bytes, &payload),
        IpAddr::V6(v6) => builder
            .ipv6(
                "fd77::2".parse::<std::net::Ipv6Addr>()?.octets(),
                v6.octets(),
                64,
            )
            .udp(40000, port)
            .write(&mut bytes, &payload),
    }
    .context("building the frame")?;
    Ok(bytes)
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {text}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {text}"))?;
    }
    Ok(mac)
}

fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = CString::new(iface)?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {iface}");
    }
    Ok(index)
}

/// The interface's MAC address (by ioctl: this process's /sys shows another namespace).
fn own_mac(iface: &str) -> anyhow::Result<[u8; 6]> {
    // SAFETY: plain socket(2); owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket");
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(iface.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR on a valid socket with a valid ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut request) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("{iface}'s address"));
    }
    // SAFETY: SIOCGIFHWADDR filled in the hardware address.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (byte, value) in mac.iter_mut().zip(data) {
        *byte = value as u8;
    }
    Ok(mac)
}

fn setsockopt_int(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt with a valid int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `count` frames to `dst` on `iface` (to `dst_mac`), the way `mode` says. A refused
/// `PACKET_QDISC_BYPASS` counts in `eperm`, and the frames are sent anyway (as an attacker
/// would try); `ok` counts frames the kernel took.
pub fn send(
    iface: &str,
    dst_mac: &str,
    dst: IpAddr,
    port: u16,
    mode: Mode,
    count: u32,
) -> anyhow::Result<Report> {
    let dst_mac = parse_mac(dst_mac)?;
    let bytes = frame(own_mac(iface)?, dst_mac, dst, port)?;
    let (socket, mut address) =
        packet_socket(ifindex(iface)?, dst_mac).context("AF_PACKET socket")?;
    let mut report = Report::default();
    if mode != Mode::Plain
        && let Err(err) = setsockopt_int(&socket, SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    {
        report.error(&err);
    }
    match mode {
        Mode::Plain | Mode::Bypass => {
            for _ in 0..count {
                match send_frame(&socket, &address, &bytes) {
                    Ok(()) => report.ok += 1,
                    Err(err) => report.error(&err),
                }
            }
        }
        Mode::Mmsg => {
            let mut iov = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            // SAFETY: mmsghdr is plain data; zeroed is valid.
            let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
            message.msg_hdr.msg_name = (&raw mut address).cast();
            message.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            message.msg_hdr.msg_iov = &raw mut iov;
            message.msg_hdr.msg_iovlen = 1;
            let mut messages = vec![message; count as usize];
            // SAFETY: `count` valid message headers pointing at live buffers.
            let sent =
                unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), count, 0) };
            tally(&mut report, sent as isize, count);
        }
        Mode::TxRing => tx_ring(&socket, &address, &bytes, count, &mut report)?,
    }
    Ok(report)
}

/// A packet socket and the address of `dst_mac` on interface `ifindex`, to send frames with.
pub fn packet_socket(ifindex: u32, dst_mac: [u8; 6]) -> io::Result<(OwnedFd, libc::sockaddr_ll)> {
    // SAFETY: plain socket(2); owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is valid.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_ifindex = ifindex as i32;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&dst_mac);
    Ok((socket, address))
}

/// Sends one frame through a packet socket to `address`.
pub fn send_frame(socket: &OwnedFd, address: &libc::sockaddr_ll, frame: &[u8]) -> io::Result<()> {
    // SAFETY: a valid buffer and sockaddr_ll.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (address as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn tally(report: &mut Report, sent: isize, frames: u32) {
    if sent < 0 {
        report.error(&io::Error::last_os_error());
    } else {
        report.ok += sent.min(frames as isize) as u64;
    }
}

/// Sends through a TPACKET_V1 TX ring: frames written into the mapped ring, then one `send`.
fn tx_ring(
    socket: &OwnedFd,
    address: &libc::sockaddr_ll,
    bytes: &[u8],
    count: u32,
    report: &mut Report,
) -> anyhow::Result<()> {
    const FRAME: usize = 2048;
    const BLOCK: usize = 4096;
    let frames = (count as usize).clamp(2, 64).next_multiple_of(2);
    let request = libc::tpacket_req {
        tp_block_size: BLOCK as u32,
        tp_block_nr: (frames * FRAME / BLOCK) as u32,
        tp_frame_size: FRAME as u32,
        tp_frame_nr: frames as u32,
    };
    // SAFETY: setsockopt with a valid tpacket_req.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            SOL_PACKET,
            PACKET_TX_RING,
            (&raw const request).cast(),
            size_of::<libc::tpacket_req>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("PACKET_TX_RING");
    }
    // SAFETY: binding a packet socket to a valid sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (address as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("binding the packet socket");
    }
    let length = frames * FRAME;
    // SAFETY: mapping the ring the kernel just made for this socket.
    let ring = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            socket.as_raw_fd(),
            0,
        )
    };
    if ring == libc::MAP_FAILED {
        return Err(io::Error::last_os_error()).context("mapping the TX ring");
    }
    let sending = (count as usize).min(frames);
    for slot in 0..sending {
        // SAFETY: each frame slot lies inside the mapping; the header is written last.
        unsafe {
            let frame = ring.cast::<u8>().add(slot * FRAME);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), frame.add(TPACKET_V1_DATA), bytes.len());
            // struct tpacket_hdr { unsigned long tp_status; unsigned int tp_len; ... }
            frame
                .add(8)
                .cast::<u32>()
                .write_volatile(bytes.len() as u32);
            frame.cast::<u64>().write_volatile(TP_STATUS_SEND_REQUEST);
        }
    }
    // SAFETY: a send with no buffer flushes the ring.
    let sent = unsafe { libc::send(socket.as_raw_fd(), std::ptr::null(), 0, 0) };
    if sent < 0 {
        report.error(&io::Error::last_os_error());
    } else {
        report.ok += (sent as usize / bytes.len()) as u64;
    }
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(ring, length) };
    Ok(())
}

/// Makes an AF_XDP socket and asks for a TX ring: `ok` if granted, `eperm` if refused.
pub fn xdp_tx_ring() -> anyhow::Result<Report> {
    const AF_XDP: i32 = 44;
    const SOL_XDP: i32 = 283;
    const XDP_TX_RING: i32 = 3;
    // SAFETY: plain socket(2); owned below.
    let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("AF_XDP socket");
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut report = Report::default();
    match setsockopt_int(&socket, SOL_XDP, XDP_TX_RING, 64) {
        Ok(()) => report.ok += 1,
        Err(err) => report.error(&err),
    }
    Ok(report)
}
