//! em-testclient: sends test traffic from inside a cgroup and a network namespace.
//!
//! ```text
//! em-testclient --netns NAME [--cgroup PATH] [--uid UID] [--interval-us US] udp  DST PORT COUNT PAYLOAD [dstopts]
//! em-testclient --netns NAME [--cgroup PATH] [--uid UID] spray DST_V4 COUNT PAYLOAD
//! em-testclient --netns NAME [--cgroup PATH] [--uid UID] resolve SERVER NAME a|aaaa [tcp]
//! em-testclient --netns NAME [--cgroup PATH] [--interval-us US] resolve-repeat SERVER NAME COUNT
//! em-testclient --netns NAME [--cgroup PATH] forge-answer SERVER NAME FORGED_V4
//! em-testclient --netns NAME [--cgroup PATH] resolve-pipelined SERVER NAME NAME
//! em-testclient --netns NAME [--cgroup PATH] [--uid UID] tcp  DST PORT TIMEOUT_MS
//! em-testclient --netns NAME [--cgroup PATH]             ping DST COUNT
//! em-testclient --netns NAME                             frame IFACE ETHERTYPE COUNT VLAN_TAGS
//! em-testclient --netns NAME [--cgroup PATH] [--caps net_raw] l2 IFACE DST_MAC DST PORT MODE COUNT
//! em-testclient --netns NAME [--cgroup PATH] [--caps net_raw] xdp-tx-ring
//! em-testclient --netns NAME [--cgroup PATH] [--uid UID] source-route DST HOP PORT
//! em-testclient --netns NAME [--cgroup PATH] [--uid UID] own-resolver SERVER NAME FORGED_V4
//! em-testclient --netns NAME [--cgroup PATH] [--interval-us US] udp-connected DST PORT COUNT
//! em-testclient --netns NAME [--cgroup PATH] [--caps net_raw] forge-as-resolver raw|packet RESOLVER NAME FORGED_V4
//! em-testclient --netns NAME [--cgroup PATH] [--uid UID] [--caps net_raw] exec PROGRAM [ARG]...
//! ```
//! `l2` sends UDP datagrams to DST:PORT in Ethernet frames to DST_MAC through an AF_PACKET
//! socket, MODE `plain`, `bypass` (`PACKET_QDISC_BYPASS`), `mmsg` (bypass, `sendmmsg`) or
//! `txring` (bypass, `PACKET_TX_RING`); `xdp-tx-ring` asks an AF_XDP socket for a TX ring;
//! `source-route` sends to DST through HOP (IPv4 LSRR, IPv6 segment routing header);
//! `own-resolver` unshares a user and network namespace and resolves NAME from a server of its
//! own on SERVER (loopback) that answers FORGED_V4; `udp-connected` sends COUNT datagrams
//! from one connected socket; `forge-as-resolver` asks RESOLVER for NAME, then answers itself
//! in RESOLVER's name over loopback (a raw IP socket, or a frame on `lo`). `--caps net_raw` drops to nobody keeping only CAP_NET_RAW (what
//! container runtimes grant); `--mark N` sets `SO_MARK` on `udp`'s socket.
//! `exec` replaces the client with PROGRAM (a real tool: a DHCP client, tcpdump) once it has
//! joined the cgroup and the namespace, without the fresh /sys `ip netns exec` would mount.
//! `frame` sends raw Ethernet frames through an AF_PACKET socket: broadcast, behind VLAN_TAGS
//! 802.1Q tags, with ETHERTYPE (hex); for 0800 the payload is a UDP datagram to 203.0.113.1.
//! It joins the cgroup first (so every socket it makes belongs there), then the namespace,
//! then drops to UID, and prints `ok=N eperm=N failed=N replies=N src_port=N`.

use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    mem::size_of,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Type};

// The attack clients, one module each (the functions below are the ordinary ones).
#[path = "../testclient/raw.rs"]
mod raw;
#[path = "../testclient/routes.rs"]
mod routes;
#[path = "../testclient/spoof.rs"]
mod spoof;
#[path = "../testclient/userns.rs"]
mod userns;

/// `--mark`: the `SO_MARK` of `udp`'s socket (0: none).
static MARK: AtomicU32 = AtomicU32::new(0);

#[derive(Default)]
pub(crate) struct Report {
    ok: u64,
    eperm: u64,
    failed: u64,
    replies: u64,
    src_port: u16,
}

impl Report {
    pub(crate) fn error(&mut self, err: &io::Error) {
        if err.raw_os_error() == Some(libc::EPERM) {
            self.eperm += 1;
        } else {
            self.failed += 1;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut netns = None;
    let mut cgroup = None;
    let mut uid = None;
    let mut caps = None;
    let mut interval = Duration::ZERO;
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        if args.is_empty() {
            bail!("{flag} needs a value");
        }
        let value = args.remove(0);
        match flag.as_str() {
            "--netns" => netns = Some(value),
            "--cgroup" => cgroup = Some(value),
            "--uid" => uid = Some(value.parse::<u32>().context("--uid")?),
            "--caps" if value == "net_raw" => caps = Some(value),
            "--mark" => MARK.store(value.parse().context("--mark")?, Ordering::Relaxed),
            "--interval-us" => {
                interval = Duration::from_micros(value.parse().context("--interval-us")?)
            }
            _ => bail!("unknown flag {flag}"),
        }
    }
    if let Some(cgroup) = cgroup {
        std::fs::write(format!("{cgroup}/cgroup.procs"), "0")
            .with_context(|| format!("joining cgroup {cgroup}"))?;
    }
    let netns = netns.context("--netns is required")?;
    let file = File::open(format!("/run/netns/{netns}")).context("opening the netns")?;
    // SAFETY: setns on a valid netns fd; this process is single-threaded here.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("entering the netns");
    }
    if let Some(uid) = uid {
        // SAFETY: plain setgid/setuid calls.
        if unsafe { libc::setgid(uid) } != 0 || unsafe { libc::setuid(uid) } != 0 {
            return Err(io::Error::last_os_error()).context("dropping to the uid");
        }
    }
    if caps.is_some() {
        keep_only_net_raw()?;
    }
    let arg = |i: usize| args.get(i).map(String::as_str).context("missing argument");
    if arg(0)? == "exec" {
        let program = arg(1)?;
        // Only returns on failure.
        let err = std::process::Command::new(program).args(&args[2..]).exec();
        return Err(err).with_context(|| format!("exec {program}"));
    }
    let report = match arg(0)? {
        "udp" => udp(
            arg(1)?.parse()?,
            arg(2)?.parse()?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            args.get(5).is_some_and(|a| a == "dstopts"),
            interval,
        )?,
        "resolve" => resolve(
            arg(1)?.parse()?,
            arg(2)?,
            arg(3)?,
            args.get(4).is_some_and(|a| a == "tcp"),
        )?,
        "resolve-repeat" => resolve_repeat(arg(1)?.parse()?, arg(2)?, arg(3)?.parse()?, interval)?,
        "resolve-pipelined" => resolve_pipelined(arg(1)?.parse()?, arg(2)?, arg(3)?)?,
        "forge-answer" => forge_answer(arg(1)?.parse()?, arg(2)?, arg(3)?.parse()?)?,
        "spray" => spray(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?)?,
        "tcp" => tcp(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?),
        "ping" => ping(arg(1)?.parse()?, arg(2)?.parse()?, interval)?,
        "frame" => frame(
            arg(1)?,
            u16::from_str_radix(arg(2)?, 16).context("ETHERTYPE is hex")?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
        )?,
        "l2" => raw::send(
            arg(1)?,
            arg(2)?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            arg(5)?.parse()?,
            arg(6)?.parse()?,
        )?,
        "xdp-tx-ring" => raw::xdp_tx_ring()?,
        "forge-as-resolver" => spoof::forge(arg(1)?, arg(2)?.parse()?, arg(3)?, arg(4)?.parse()?)?,
        "source-route" => routes::send(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?)?,
        "own-resolver" => userns::own_resolver(arg(1)?.parse()?, arg(2)?, arg(3)?.parse()?)?,
        "udp-connected" => udp_connected(
            arg(1)?.parse()?,
            arg(2)?.parse()?,
            arg(3)?.parse()?,
            interval,
        )?,
        other => bail!("unknown command {other}"),
    };
    println!(
        "ok={} eperm={} failed={} replies={} src_port={} pid={}",
        report.ok,
        report.eperm,
        report.failed,
        report.replies,
        report.src_port,
        std::process::id()
    );
    io::stdout().flush()?;
    Ok(())
}

/// Becomes nobody with CAP_NET_RAW alone (permitted, effective, ambient and bounding sets), as
/// `setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all,+net_raw
/// --ambient-caps=+net_raw --bounding-set=-all,+net_raw` would; checks the result.
fn keep_only_net_raw() -> anyhow::Result<()> {
    const NOBODY: u32 = 65534;
    const CAP_NET_RAW: u32 = 13;
    const CAP_LAST: u32 = 63;
    // SAFETY: plain prctl/setgroups/setgid/setuid calls on this single-threaded process.
    unsafe {
        for cap in (0..=CAP_LAST).filter(|&cap| cap != CAP_NET_RAW) {
            // Capabilities this kernel does not know fail with EINVAL: nothing to drop.
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(NOBODY) != 0
            || libc::setuid(NOBODY) != 0
        {
            return Err(io::Error::last_os_error()).context("becoming nobody");
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let raw = 1u32 << CAP_NET_RAW;
    let data = [
        Data {
            effective: raw,
            permitted: raw,
            inheritable: raw,
        },
        Data::default(),
    ];
    // SAFETY: capset with a v3 header and two data words.
    if unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error()).context("capset");
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .map(str::trim)
        .context("no CapEff")?;
    if u64::from_str_radix(effective, 16)? != u64::from(raw) {
        bail!("CapEff is {effective}, not CAP_NET_RAW alone");
    }
    Ok(())
}

/// `count` datagrams from one connected socket, `interval` apart.
fn udp_connected(dst: IpAddr, port: u16, count: u32, interval: Duration) -> anyhow::Result<Report> {
    let socket = unbound_udp(dst)?;
    socket.connect(SocketAddr::new(dst, port))?;
    let mut report = Report {
        src_port: socket.local_addr()?.port(),
        ..Report::default()
    };
    for _ in 0..count {
        match socket.send(&[0x5a; 16]) {
            Ok(_) => report.ok += 1,
            Err(err) => report.error(&err),
        }
        std::thread::sleep(interval);
    }
    Ok(report)
}

fn udp(
    dst: IpAddr,
    port: u16,
    count: u32,
    payload: usize,
    dstopts: bool,
    interval: Duration,
) -> anyhow::Result<Report> {
    let socket = unbound_udp(dst)?;
    let mark = MARK.load(Ordering::Relaxed);
    if mark != 0 {
        // SAFETY: setsockopt with a valid int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&raw const mark).cast(),
                size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("setting SO_MARK");
        }
    }
    if dstopts {
        if dst.is_ipv4() {
            bail!("dstopts is IPv6 only");
        }
        // A Destination Options header holding one PadN option (8 bytes in all); the kernel
        // fills in the next-header byte.
        let header: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
        // SAFETY: setsockopt with a valid buffer and its length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_DSTOPTS,
                header.as_ptr().cast(),
                header.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("setting IPV6_DSTOPTS");
        }
    }
    let mut report = Report {
        src_port: socket.local_addr()?.port(),
        ..Report::default()
    };
    let data = vec![0x5a; payload];
    for _ in 0..count {
        match socket.send_to(&data, SocketAddr::new(dst, port)) {
            Ok(_) => report.ok += 1,
            Err(err) => report.error(&err),
        }
        std::thread::sleep(interval);
    }
    Ok(report)
}

/// One DNS question (`a` or `aaaa`) to `server`:53 over UDP or TCP; `replies` counts the
/// answer's addresses, `ok` whether an answer came (an NXDOMAIN is an answer with none).
/// A query for `name` (`kind`: `a` or `aaaa`) in wire format.
pub(crate) fn dns_query(name: &str, kind: &str) -> anyhow::Result<Vec<u8>> {
    use simple_dns::{CLASS, Name, Packet, PacketFlag, QTYPE, Question, TYPE};
    let qtype = match kind {
        "a" => TYPE::A,
        "aaaa" => TYPE::AAAA,
        other => bail!("unknown record type {other}; a or aaaa"),
    };
    let mut query = Packet::new_query(0x4d45);
    query.set_flags(PacketFlag::RECURSION_DESIRED);
    query.questions.push(Question::new(
        Name::new(name)?,
        QTYPE::TYPE(qtype),
        CLASS::IN.into(),
        false,
    ));
    Ok(query.build_bytes_vec()?)
}

/// The answer to `query` (a question for `name`) naming `address` with `ttl`.
pub(crate) fn answer_naming(
    query: &[u8],
    name: &str,
    ttl: u32,
    address: Ipv4Addr,
) -> anyhow::Result<Vec<u8>> {
    use simple_dns::{
        CLASS, Name, Packet, ResourceRecord,
        rdata::{A, RData},
    };
    let query = Packet::parse(query)?;
    let mut answer = Packet::new_reply(query.id());
    answer.questions = query.questions.clone();
    answer.answers.push(ResourceRecord::new(
        Name::new(name)?,
        CLASS::IN,
        ttl,
        RData::A(A::from(address)),
    ));
    Ok(answer.build_bytes_vec()?)
}

/// `count` identical A questions from one UDP socket, `interval` apart, each awaiting its
/// answer (`ok` counts answers).
fn resolve_repeat(
    server: IpAddr,
    name: &str,
    count: u32,
    interval: Duration,
) -> anyhow::Result<Report> {
    let query = dns_query(name, "a")?;
    let socket = unbound_udp(server)?;
    socket.set_read_timeout(Some(Duration::from_millis(1000)))?;
    let mut report = Report {
        src_port: socket.local_addr()?.port(),
        ..Report::default()
    };
    let mut buffer = [0u8; 4096];
    for _ in 0..count {
        match socket.send_to(&query, SocketAddr::new(server, 53)) {
            Ok(_) => match socket.recv(&mut buffer) {
                Ok(_) => report.ok += 1,
                Err(err) => report.error(&err),
            },
            Err(err) => report.error(&err),
        }
        std::thread::sleep(interval);
    }
    Ok(report)
}

fn resolve(server: IpAddr, name: &str, kind: &str, tcp: bool) -> anyhow::Result<Report> {
    use simple_dns::{Packet, rdata::RData};
    let query = dns_query(name, kind)?;
    let to = SocketAddr::new(server, 53);
    let mut report = Report::default();
    let timeout = Duration::from_millis(1000);
    let reply = if tcp {
        let mut stream = match TcpStream::connect_timeout(&to, timeout) {
            Ok(stream) => stream,
            Err(err) => {
                report.error(&err);
                return Ok(report);
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        report.src_port = stream.local_addr()?.port();
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        if let Err(err) = stream.write_all(&framed) {
            report.error(&err);
            return Ok(report);
        }
        let mut length = [0u8; 2];
        let mut reply = Vec::new();
        if stream.read_exact(&mut length).is_ok() {
            reply.resize(usize::from(u16::from_be_bytes(length)), 0);
            if stream.read_exact(&mut reply).is_err() {
                reply.clear();
            }
        }
        reply
    } else {
        let socket = unbound_udp(server)?;
        socket.set_read_timeout(Some(timeout))?;
        report.src_port = socket.local_addr()?.port();
        if let Err(err) = socket.send_to(&query, to) {
            report.error(&err);
            return Ok(report);
        }
        let mut buffer = [0u8; 4096];
        match socket.recv(&mut buffer) {
            Ok(len) => buffer[..len].to_vec(),
            Err(_) => Vec::new(),
        }
    };
    match Packet::parse(&reply) {
        Ok(packet) if !reply.is_empty() => {
            report.ok = 1;
            report.replies = packet
                .answers
                .iter()
                .filter(|rr| matches!(rr.rdata, RData::A(_) | RData::AAAA(_)))
                .count() as u64;
        }
        _ => report.failed += 1,
    }
    Ok(report)
}

/// Two A questions in one TCP write (one segment): `first`, then `second` right behind it.
/// `ok` counts the answers received.
fn resolve_pipelined(server: IpAddr, first: &str, second: &str) -> anyhow::Result<Report> {
    let mut framed = Vec::new();
    for name in [first, second] {
        let query = dns_query(name, "a")?;
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(&query);
    }
    let mut report = Report::default();
    let timeout = Duration::from_millis(1000);
    let mut stream = match TcpStream::connect_timeout(&SocketAddr::new(server, 53), timeout) {
        Ok(stream) => stream,
        Err(err) => {
            report.error(&err);
            return Ok(report);
        }
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    report.src_port = stream.local_addr()?.port();
    if let Err(err) = stream.write_all(&framed) {
        report.error(&err);
        return Ok(report);
    }
    let mut length = [0u8; 2];
    while stream.read_exact(&mut length).is_ok() {
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
        if stream.read_exact(&mut reply).is_err() {
            break;
        }
        report.ok += 1;
    }
    Ok(report)
}

/// A question for `name` to `server` from one socket, then a forged answer naming `forged`,
/// sent to that socket from a second, local socket bound to port 53 (what an unprivileged
/// process may do where low ports are open to it). `ok` counts the answers received.
fn forge_answer(server: IpAddr, name: &str, forged: Ipv4Addr) -> anyhow::Result<Report> {
    let query_bytes = dns_query(name, "a")?;
    let victim = UdpSocket::bind("0.0.0.0:0")?;
    victim.set_read_timeout(Some(Duration::from_millis(1000)))?;
    let mut report = Report {
        src_port: victim.local_addr()?.port(),
        ..Report::default()
    };
    if let Err(err) = victim.send_to(&query_bytes, SocketAddr::new(server, 53)) {
        report.error(&err);
        return Ok(report);
    }
    let answer = answer_naming(&query_bytes, name, 60, forged)?;
    let forger = UdpSocket::bind("127.0.0.1:53").context("binding 127.0.0.1:53")?;
    forger.send_to(
        &answer,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), report.src_port),
    )?;
    let mut buffer = [0u8; 4096];
    for _ in 0..2 {
        match victim.recv(&mut buffer) {
            Ok(_) => report.ok += 1,
            Err(_) => break,
        }
    }
    Ok(report)
}

/// A UDP socket on an ephemeral port of the family `peer` needs.
pub(crate) fn unbound_udp(peer: IpAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(if peer.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    })
}

/// Ports used by `spray`, from 1024 on.
const SPRAY_PORTS: u32 = 64_512;

/// `count` datagrams from one socket, each to a distinct (address, port) of `dst`'s /24 (hosts
/// 1 to 254): a flood of distinct flows that stays inside one documentation prefix.
fn spray(dst: Ipv4Addr, count: u32, payload: usize) -> anyhow::Result<Report> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let mut report = Report {
        src_port: socket.local_addr()?.port(),
        ..Report::default()
    };
    let [a, b, c, _] = dst.octets();
    let data = vec![0x5a; payload];
    for i in 0..count {
        let host = 1 + (i / SPRAY_PORTS) % 254;
        let port = 1024 + i % SPRAY_PORTS;
        let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, host as u8)), port as u16);
        match socket.send_to(&data, to) {
            Ok(_) => report.ok += 1,
            Err(err) => report.error(&err),
        }
    }
    Ok(report)
}

fn tcp(dst: IpAddr, port: u16, timeout_ms: u64) -> Report {
    let mut report = Report::default();
    match TcpStream::connect_timeout(
        &SocketAddr::new(dst, port),
        Duration::from_millis(timeout_ms),
    ) {
        Ok(mut stream) => {
            report.ok += 1;
            report.replies += 1;
            report.src_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
            let _ = stream.write_all(b"hello");
        }
        Err(err) => report.error(&err),
    }
    report
}

fn ping(dst: IpAddr, count: u16, interval: Duration) -> anyhow::Result<Report> {
    let (domain, protocol) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    // SAFETY: plain socket(2); owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("raw ICMP socket");
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    egress_monitor_tests::set_receive_timeout(fd, Duration::from_millis(500))
        .context("SO_RCVTIMEO")?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut report = Report::default();
    for seq in 0..count {
        let echo = IcmpEchoHeader { id, seq };
        let packet = match dst {
            IpAddr::V4(_) => {
                let header = Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo), b"egress");
                let mut bytes = header.to_bytes().to_vec();
                bytes.extend_from_slice(b"egress");
                bytes
            }
            // ICMPv6 raw sockets have the kernel fill in the checksum.
            IpAddr::V6(_) => {
                let mut bytes = vec![128, 0, 0, 0];
                bytes.extend_from_slice(&id.to_be_bytes());
                bytes.extend_from_slice(&seq.to_be_bytes());
                bytes.extend_from_slice(b"egress");
                bytes
            }
        };
        match send_to(&socket, &packet, dst) {
            Ok(()) => report.ok += 1,
            Err(err) => {
                report.error(&err);
                continue;
            }
        }
        if await_reply(&socket, dst, id, seq) {
            report.replies += 1;
        }
        std::thread::sleep(interval);
    }
    Ok(report)
}

fn frame(iface: &str, ethertype: u16, count: u32, vlan_tags: u8) -> anyhow::Result<Report> {
    const ETH_P_8021Q: u16 = 0x8100;
    let mut bytes = vec![0xff; 6];
    bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    for _ in 0..vlan_tags {
        bytes.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        bytes.extend_from_slice(&1u16.to_be_bytes());
    }
    bytes.extend_from_slice(&ethertype.to_be_bytes());
    if ethertype == 0x0800 {
        let builder =
            etherparse::PacketBuilder::ipv4([10, 77, 0, 2], [203, 0, 113, 1], 64).udp(40000, 7001);
        let payload = [0x5a; 32];
        builder
            .write(&mut bytes, &payload)
            .context("building the IPv4 packet")?;
    } else {
        bytes.extend_from_slice(&[0; 46]);
    }
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface}");
    }
    let (socket, address) = raw::packet_socket(ifindex, [0xff; 6]).context("AF_PACKET socket")?;
    let mut report = Report::default();
    for _ in 0..count {
        match raw::send_frame(&socket, &address, &bytes) {
            Ok(()) => report.ok += 1,
            Err(err) => report.error(&err),
        }
    }
    Ok(report)
}

fn send_to(socket: &OwnedFd, packet: &[u8], dst: IpAddr) -> io::Result<()> {
    // SAFETY: sockaddr_storage is large enough for either family; zeroed is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        IpAddr::V4(v4) => {
            // SAFETY: storage is suitably sized and aligned for sockaddr_in.
            let addr = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            // SAFETY: storage is suitably sized and aligned for sockaddr_in6.
            let addr = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            addr.sin6_addr.s6_addr = v6.octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: a valid buffer and sockaddr of the given length.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads until our echo reply arrives or the socket's receive timeout passes (bounded loop).
fn await_reply(socket: &OwnedFd, dst: IpAddr, id: u16, seq: u16) -> bool {
    let mut buffer = [0u8; 2048];
    for _ in 0..64 {
        // SAFETY: reading into a valid buffer.
        let read = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if read <= 0 {
            return false;
        }
        let data = &buffer[..read as usize];
        // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
        let icmp = match dst {
            IpAddr::V4(_) => &data[usize::from(data[0] & 0x0f) * 4..],
            IpAddr::V6(_) => data,
        };
        let reply_type = if dst.is_ipv4() { 0 } else { 129 };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && u16::from_be_bytes([icmp[4], icmp[5]]) == id
            && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
        {
            return true;
        }
    }
    false
}
