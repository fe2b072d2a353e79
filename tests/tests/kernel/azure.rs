//! `run --azure`: the node's VNet, whatever its address space, from a recorded instance
//! metadata document served in the peer namespace; kept when the metadata service goes away.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use egress_monitor_tests::{
    bpffs::BpfFs,
    netns::{INTERNET_V4, INTERNET_V6, PRIVATE_V4, Topology, UDP_PORT},
    require_root, sweep_stale,
};

use crate::{Daemon, Scratch, client, status_json};

/// Serves the recorded IMDS document on 10.77.0.1:8080 until stopped (bounded: it stops on
/// its own after 60 s). Answers 400 without `Metadata: true`, as IMDS does.
struct FakeImds {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeImds {
    fn start(topology: &Topology) -> FakeImds {
        let listener = topology
            .net
            .run(|| TcpListener::bind(SocketAddr::new(PRIVATE_V4.into(), 8080)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let document = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../egress-monitor/fixtures/azure/imds-instance.json"
        ))
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !stopping.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut metadata = false;
                for line in (&mut reader).lines().map_while(Result::ok) {
                    metadata |= line.eq_ignore_ascii_case("metadata: true");
                    if line.is_empty() {
                        break;
                    }
                }
                let (status, body) = if metadata {
                    ("200 OK", document.as_str())
                } else {
                    ("400 Bad Request", "{}")
                };
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeImds {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_vnet_from_imds_is_allowed_and_kept_when_imds_goes_away() {
    require_root();
    sweep_stale();
    let topology = Topology::new().unwrap();
    let bpffs = BpfFs::new().unwrap();
    let scratch = Scratch::new("azure");
    let events = scratch.0.join("events.jsonl");
    let pin = bpffs.pin_path().to_str().unwrap().to_owned();
    let imds = FakeImds::start(&topology);
    let args = [
        "--hook",
        "tc",
        "--iface",
        "veth-n",
        "--mode",
        "enforce",
        "--azure",
        "--imds-url",
        "http://10.77.0.1:8080/metadata/instance?api-version=2021-02-01",
        "--imds-interval",
        "1",
        "--pin-path",
        &pin,
        "--events",
        events.to_str().unwrap(),
    ];
    let daemon = Daemon::start(Some(&topology.node.name), &args);
    assert!(
        daemon.log.iter().any(|l| l.contains("VNet prefixes from the instance metadata service: 203.0.113.0/24, fd77::/64, 198.51.100.0/26")),
        "{:#?}",
        daemon.log
    );
    let node = client(&topology, None);
    // This VNet uses 203.0.113.0/24: allowed, though not RFC 1918.
    node.udp(INTERNET_V4.into(), UDP_PORT, 2, 10, false)
        .unwrap();
    assert_eq!(topology.peers.udp_received(INTERNET_V4.into()), 2);
    node.udp(IpAddr::V6(INTERNET_V6), UDP_PORT, 2, 10, false)
        .unwrap();
    assert_eq!(
        topology.peers.udp_received(IpAddr::V6(INTERNET_V6)),
        0,
        "outside the VNet: dropped"
    );
    let status = status_json(&bpffs.pin_path());
    assert!(
        status["rule_hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "azure-vnet" && r["cidr"] == "203.0.113.0/24"),
        "{status}"
    );

    // IMDS goes away: refreshes fail, the prefixes stay.
    drop(imds);
    let mut daemon = daemon;
    daemon.wait_for(
        "keeping the 3 VNet prefixes last known",
        Duration::from_secs(10),
    );
    node.udp(INTERNET_V4.into(), UDP_PORT, 2, 10, false)
        .unwrap();
    assert_eq!(
        topology.peers.udp_received(INTERNET_V4.into()),
        2,
        "still allowed"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");

    // A restart while IMDS is down starts from the last known prefixes.
    let daemon = Daemon::start(Some(&topology.node.name), &args);
    assert!(
        daemon
            .log
            .iter()
            .any(|l| l.contains("keeping the 3 VNet prefixes last known")),
        "{:#?}",
        daemon.log
    );
    node.udp(INTERNET_V4.into(), UDP_PORT, 2, 10, false)
        .unwrap();
    assert_eq!(topology.peers.udp_received(INTERNET_V4.into()), 2);
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
}
