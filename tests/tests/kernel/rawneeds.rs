//! What nodes need from packet sockets still works under the raw-socket guards (issue 13
//! item 1). With both hooks attached in enforce mode, real tools run in the node namespace and
//! the child cgroup (`em-testclient exec` joins both, then execs them):
//!
//! - a DHCP client (busybox `udhcpc`, a packet socket for its broadcasts) gets a lease from a
//!   real server (busybox `udhcpd` on the peer's end) and renews it;
//! - tcpdump (a packet socket with an RX ring) captures what the node sends.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use egress_monitor::datapath::Counters;
use egress_monitor_policy::Mode;
use egress_monitor_tests::{
    Scratch,
    client::Client,
    logged::Logged,
    netns::{NET_IF, NODE_IF, PRIVATE_V4, UDP_PORT},
};

use crate::{Fixture, Hook};

/// The server's pool: a range of its own in the node's /24, away from 10.77.0.1 and .2.
const POOL: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 110));
/// The bound on every wait.
const WAIT: Duration = Duration::from_secs(20);

/// udhcpc's script. It records each event (`EVENT IP`) and, as a real client's script would,
/// gives the node the leased address, alone (`/32`: no route, and 10.77.0.2 stays the source
/// for the /24), so that renewing is what it is on a real node: a unicast from that address.
/// The address is added before the event is recorded, so a recorded lease is ready to renew.
fn script(events: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         case \"$1\" in\n\
         bound|renew) ip addr replace \"$ip/32\" dev \"$interface\" || exit 1 ;;\n\
         esac\n\
         echo \"$1 $ip\" >> '{}'\n",
        events.display()
    )
}

/// The `udhcpd` configuration: the pool on `veth-p`, its lease and pid files in `dir`.
fn server_config(dir: &Path) -> String {
    let (first, last) = POOL;
    format!(
        "start {first}\nend {last}\ninterface {NET_IF}\nmax_leases 11\n\
         lease_file {dir}/udhcpd.leases\npidfile {dir}/udhcpd.pid\n\
         option subnet 255.255.255.0\noption lease 3600\n",
        dir = dir.display()
    )
}

/// The address of the first recorded `event` (bounded wait); panics with both logs if it
/// does not come.
fn wait_for_event(
    events: &Path,
    event: &str,
    client: &mut Logged,
    server: &mut Logged,
) -> Ipv4Addr {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(events).unwrap_or_default();
        let address = text.lines().find_map(|line| {
            let (name, address) = line.split_once(' ')?;
            (name == event).then(|| address.parse().ok())?
        });
        if let Some(address) = address {
            return address;
        }
        if Instant::now() > deadline {
            client.drain(Duration::from_millis(200));
            server.drain(Duration::from_millis(200));
            panic!(
                "no `{event}` within {WAIT:?}; events: {text:?}\nudhcpc: {:#?}\nudhcpd: {:#?}",
                client.log, server.log
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `frame` is a DHCP message from `client` to the server (10.77.0.1, UDP port 67).
fn dhcp_unicast_from(frame: &[u8], client: Ipv4Addr) -> bool {
    let Ok(packet) = etherparse::SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    match (packet.net, packet.transport) {
        (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(udp))) => {
            ip.header().source_addr() == client
                && ip.header().destination_addr() == PRIVATE_V4
                && udp.destination_port() == 67
        }
        _ => false,
    }
}

fn counters(fx: &Fixture) -> Counters {
    fx.datapath.counters().expect("read counters")
}

/// With both hooks in enforce mode, `udhcpc` in the node's namespace and cgroup broadcasts
/// from 0.0.0.0 through its packet socket, gets a lease from `udhcpd` on the peer's end (at
/// the TC hook, DISCOVER and REQUEST are allowed), and on SIGUSR1 renews it with a unicast
/// REQUEST from the leased address through a UDP socket (allowed at both hooks) that reaches
/// the server. No raw-socket guard fires and nothing is dropped.
#[test]
fn a_dhcp_client_gets_and_renews_a_lease() {
    let fx = Fixture::new(Hook::Both, Mode::Enforce, &[]);
    let scratch = Scratch::new("dhcp");
    let events = scratch.0.join("events");
    let script_path = scratch.0.join("udhcpc.script");
    std::fs::write(&script_path, script(&events)).unwrap();
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = scratch.0.join("udhcpd.conf");
    std::fs::write(&config, server_config(&scratch.0)).unwrap();
    std::fs::write(scratch.0.join("udhcpd.leases"), "").unwrap();

    // The server side: the peer's namespace, no cgroup (nothing there is under test).
    let peer = Client {
        netns: fx.topology.net.name.clone(),
        cgroup: None,
        ..fx.client(None)
    };
    // Over a veth the server's UDP checksums are left to offload, and the client's packet
    // socket would drop the offer: have them computed.
    let output = peer
        .exec("ethtool", &["-K", NET_IF, "tx", "off"])
        .output()
        .expect("run ethtool");
    assert!(output.status.success(), "ethtool: {output:?}");
    let mut server = Logged::spawn(
        &mut peer.exec(
            "busybox",
            &["udhcpd", "-f", "-a", "100", config.to_str().unwrap()],
        ),
        "udhcpd",
    );
    server.wait_for("started", WAIT);

    let before = counters(&fx);
    let mut client = Logged::spawn(
        &mut fx.client(None).exec(
            "busybox",
            &[
                "udhcpc",
                "-f",
                "-i",
                NODE_IF,
                // Ask for broadcast replies: the node has no leased address yet.
                "-B",
                "-s",
                script_path.to_str().unwrap(),
                "-t",
                "5",
                "-T",
                "2",
                "-A",
                "2",
            ],
        ),
        "udhcpc",
    );
    let leased = wait_for_event(&events, "bound", &mut client, &mut server);
    assert!(
        (POOL.0..=POOL.1).contains(&leased),
        "{leased} is not from the pool"
    );
    let bound = counters(&fx);
    // DISCOVER and REQUEST, from 0.0.0.0 to 255.255.255.255 through the packet socket.
    assert!(
        bound.tc.allowed.packets >= before.tc.allowed.packets + 2,
        "the client's broadcasts were allowed at TC: {before:?} -> {bound:?}"
    );

    let tap = fx.topology.tap().unwrap();
    client.signal(libc::SIGUSR1);
    let renewed = wait_for_event(&events, "renew", &mut client, &mut server);
    assert_eq!(renewed, leased, "renewed the same lease");
    assert!(
        tap.frames_matching(|frame| dhcp_unicast_from(frame, leased)) >= 1,
        "the renewal was a unicast from {leased} to the server"
    );
    let after = counters(&fx);
    assert!(
        after.cgroup.allowed.packets > bound.cgroup.allowed.packets
            && after.tc.allowed.packets > bound.tc.allowed.packets,
        "the renewal was allowed at both hooks: {bound:?} -> {after:?}"
    );
    assert_eq!(after.raw_guard_hits, 0, "{after:?}");
    assert_eq!(after.cgroup.denied_dropped.packets, 0, "{after:?}");
    assert_eq!(after.tc.denied_dropped.packets, 0, "{after:?}");
}

/// With both hooks in enforce mode, tcpdump in the node's namespace and cgroup opens its
/// capture (a packet socket with an RX ring, which the guards leave alone) on `veth-n` and
/// captures the two datagrams the node sends to the private peer, which arrive.
#[test]
fn tcpdump_captures_on_the_node() {
    let fx = Fixture::new(Hook::Both, Mode::Enforce, &[]);
    let port = UDP_PORT.to_string();
    let mut tcpdump = Logged::spawn(
        &mut fx.client(None).exec(
            "tcpdump",
            &["-i", NODE_IF, "-c", "2", "-n", "udp", "port", &port],
        ),
        "tcpdump",
    );
    tcpdump.wait_for("listening on", WAIT);
    let sent = fx
        .client(None)
        .udp(PRIVATE_V4.into(), UDP_PORT, 2, 8, false)
        .unwrap();
    assert_eq!((sent.ok, sent.eperm), (2, 0), "{sent:?}");
    let status = tcpdump
        .wait(WAIT)
        .unwrap_or_else(|| panic!("tcpdump still running: {:#?}", tcpdump.log));
    assert!(status.success(), "tcpdump {status}: {:#?}", tcpdump.log);
    assert!(
        tcpdump.log.iter().any(|line| line == "2 packets captured"),
        "{:#?}",
        tcpdump.log
    );
    assert_eq!(fx.topology.peers.udp_received(PRIVATE_V4.into()), 2);
    let after = counters(&fx);
    assert_eq!(after.raw_guard_hits, 0, "{after:?}");
}
