//! Network namespaces and the two-namespace topology.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{is_stale, unique_id};

pub const NODE_IF: &str = "veth-n";
pub const NET_IF: &str = "veth-p";
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// Private peers: the far end of the veth.
pub const PRIVATE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const PRIVATE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// A private peer outside the node's subnet, for "deny inside an allowed range".
pub const LAB_V4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// "Internet" peers: documentation addresses that exist only in the test's peer namespace.
pub const INTERNET_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

pub const TCP_PORT: u16 = 7000;
pub const UDP_PORT: u16 = 7001;

/// Runs `ip` and fails with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace, deleted on drop (which also removes its interfaces).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(kind: &str) -> anyhow::Result<Netns> {
        let name = format!("{kind}-{}", unique_id());
        ip(&["netns", "add", &name])?;
        Ok(Netns { name })
    }

    /// `ip -n <ns> …`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets it creates stay in the
    /// namespace; attachments it makes resolve interface names there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a valid netns fd; it changes only this thread.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("entering netns {}", self.name));
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "delete", &self.name]) {
            eprintln!("cleanup: {err:#}");
        }
    }
}

pub(crate) fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale(&name, "em-node") || is_stale(&name, "em-net") {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

/// The node and its network, wired as the crate doc shows, with listening peers.
pub struct Topology {
    pub node: Netns,
    pub net: Netns,
    /// Peer sockets, bound inside `net`.
    pub peers: Peers,
}

/// UDP sockets on every peer address (so each address's deliveries are counted apart) and a
/// dual-stack TCP listener (the kernel completes handshakes into its backlog).
pub struct Peers {
    udp: Vec<(IpAddr, UdpSocket)>,
    _tcp: TcpListener,
}

impl Topology {
    pub fn new() -> anyhow::Result<Topology> {
        let node = Netns::new("em-node")?;
        let net = Netns::new("em-net")?;
        ip(&[
            "link", "add", NODE_IF, "netns", &node.name, "type", "veth", "peer", "name", NET_IF,
            "netns", &net.name,
        ])?;
        let (node_v4, node_v6) = (format!("{NODE_V4}/24"), format!("{NODE_V6}/64"));
        let (peer_v4, peer_v6) = (format!("{PRIVATE_V4}/24"), format!("{PRIVATE_V6}/64"));
        node.ip(&["link", "set", "lo", "up"])?;
        node.ip(&["link", "set", NODE_IF, "up"])?;
        node.ip(&["addr", "add", &node_v4, "dev", NODE_IF])?;
        node.ip(&["-6", "addr", "add", &node_v6, "dev", NODE_IF, "nodad"])?;
        node.ip(&["route", "add", "default", "via", &PRIVATE_V4.to_string()])?;
        node.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &PRIVATE_V6.to_string(),
        ])?;
        net.ip(&["link", "set", "lo", "up"])?;
        net.ip(&["link", "set", NET_IF, "up"])?;
        net.ip(&["addr", "add", &peer_v4, "dev", NET_IF])?;
        net.ip(&["-6", "addr", "add", &peer_v6, "dev", NET_IF, "nodad"])?;
        for address in [format!("{INTERNET_V4}/32"), format!("{LAB_V4}/32")] {
            net.ip(&["addr", "add", &address, "dev", "lo"])?;
        }
        net.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{INTERNET_V6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        let peers = net.run(|| -> anyhow::Result<Peers> {
            let mut udp = Vec::new();
            for address in [
                IpAddr::V4(PRIVATE_V4),
                IpAddr::V4(LAB_V4),
                IpAddr::V4(INTERNET_V4),
                IpAddr::V6(PRIVATE_V6),
                IpAddr::V6(INTERNET_V6),
            ] {
                let socket = UdpSocket::bind(SocketAddr::new(address, UDP_PORT))
                    .with_context(|| format!("binding UDP {address}"))?;
                socket.set_read_timeout(Some(Duration::from_millis(300)))?;
                udp.push((address, socket));
            }
            let tcp =
                TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), TCP_PORT))
                    .context("binding TCP [::]")?;
            Ok(Peers { udp, _tcp: tcp })
        })??;
        Ok(Topology { node, net, peers })
    }

    /// The node end's ifindex, as the TC hook reports it.
    pub fn node_ifindex(&self) -> anyhow::Result<u32> {
        self.node.run(|| {
            let name = std::ffi::CString::new(NODE_IF).expect("no NUL");
            // SAFETY: a valid C string.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        })
    }
}

/// A packet socket on the peer's end of the veth: sees every frame that arrives, whatever it
/// carries, so a test can tell whether a frame made it across.
pub struct Tap {
    socket: std::os::fd::OwnedFd,
}

impl Topology {
    /// Starts capturing on `veth-p` (frames sent before this are not seen).
    pub fn tap(&self) -> anyhow::Result<Tap> {
        self.net.run(|| -> anyhow::Result<Tap> {
            const ETH_P_ALL: u16 = 0x0003;
            // SAFETY: plain socket(2); owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ALL.to_be()),
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
            }
            // SAFETY: a fresh fd nobody else owns.
            let socket =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let name = std::ffi::CString::new(NET_IF).expect("no NUL");
            // SAFETY: sockaddr_ll is plain data; if_nametoindex takes a valid C string.
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = ETH_P_ALL.to_be();
            address.sll_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            // SAFETY: bind with a valid sockaddr_ll.
            let rc = unsafe {
                libc::bind(
                    fd,
                    (&address as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("binding the tap");
            }
            crate::set_receive_timeout(fd, Duration::from_millis(300)).context("SO_RCVTIMEO")?;
            Ok(Tap { socket })
        })?
    }
}

impl Topology {
    /// The MAC address of the peer's end (`veth-p`), for frames sent to it by hand.
    pub fn peer_mac(&self) -> anyhow::Result<String> {
        let output = Command::new("ip")
            .args(["-n", &self.net.name, "-o", "link", "show", NET_IF])
            .output()
            .context("running `ip`")?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("no link/ether in `{text}`"))
    }
}

impl Tap {
    /// Frames captured so far for which `matches` holds (waits until quiet).
    pub fn frames_matching(&self, matches: impl Fn(&[u8]) -> bool) -> usize {
        let mut buffer = [0u8; 2048];
        let mut count = 0;
        // Bounded: each read waits at most the receive timeout.
        for _ in 0..10_000 {
            // SAFETY: reading into a valid buffer.
            let read = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&self.socket),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if read < 0 {
                break;
            }
            if matches(&buffer[..read as usize]) {
                count += 1;
            }
        }
        count
    }

    /// Frames captured so far whose outer ethertype is `ethertype` (waits until quiet).
    pub fn frames_with_ethertype(&self, ethertype: u16) -> usize {
        self.frames_matching(|frame| {
            frame.len() >= 14 && u16::from_be_bytes([frame[12], frame[13]]) == ethertype
        })
    }
}

impl Peers {
    /// Datagrams that reached `address` since the last call (waits until the socket is quiet).
    pub fn udp_received(&self, address: IpAddr) -> usize {
        let (_, socket) = self
            .udp
            .iter()
            .find(|(a, _)| *a == address)
            .unwrap_or_else(|| panic!("no UDP peer on {address}"));
        let mut buffer = vec![0u8; 65536];
        let mut count = 0;
        // Bounded: each read waits at most the read timeout, and a test sends at most a few
        // hundred datagrams.
        for _ in 0..10_000 {
            match socket.recv(&mut buffer) {
                Ok(_) => count += 1,
                Err(_) => break,
            }
        }
        count
    }
}
