//! The `egress-monitor` binary end to end: attach, events to a file as they happen, clean stop.

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use egress_monitor_tests::{
    cgroup::Cgroup,
    client::Client,
    daemon_binary,
    netns::{INTERNET_V4, INTERNET_V6, LAB_V4, NODE_V4, PRIVATE_V4, Topology, UDP_PORT},
    require_root, sweep_stale,
};
use serde_json::Value;

use crate::CLIENT;

/// A running daemon; killed on drop if a test fails before stopping it.
struct Daemon {
    child: Child,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    /// Starts `egress-monitor run ARGS`, optionally inside a network namespace, and waits
    /// (bounded) until it says it is attached.
    fn start(netns: Option<&str>, args: &[&str]) -> Daemon {
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(daemon_binary());
                command
            }
            None => Command::new(daemon_binary()),
        };
        command.arg("run").args(args);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start egress-monitor");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            stderr: receiver,
            log: Vec::new(),
        };
        daemon.wait_for("rules loaded", Duration::from_secs(20));
        daemon
    }

    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                let found = line.contains(needle);
                self.log.push(line);
                if found {
                    return;
                }
            }
        }
        panic!(
            "egress-monitor never logged `{needle}`; its log: {:#?}",
            self.log
        );
    }

    /// SIGTERM, then the exit status and the whole log.
    fn stop(mut self) -> (i32, Vec<String>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "egress-monitor did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            self.log.push(line);
        }
        (status.code().unwrap_or(-1), std::mem::take(&mut self.log))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of the events file once it holds at least `count` (bounded wait).
fn event_lines(path: &Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("em-{}-{name}", egress_monitor_tests::unique_id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client(topology: &Topology, cgroup: Option<&Cgroup>) -> Client {
    Client {
        binary: CLIENT.into(),
        netns: topology.node.name.clone(),
        cgroup: cgroup.map(|c| c.path.clone()),
        uid: None,
    }
}

/// Observe mode on the cgroup hook: traffic passes, each denied datagram is a JSON line in the
/// events file while the daemon runs, and SIGTERM stops it with exit 0 and a summary.
#[test]
fn observe_mode_writes_each_denied_packet_as_a_json_line() {
    require_root();
    sweep_stale();
    let topology = Topology::new().unwrap();
    let cgroup = Cgroup::new().unwrap();
    let scratch = Scratch::new("observe");
    let events = scratch.0.join("events.jsonl");
    let cgroup_arg = cgroup.path.to_str().unwrap();
    let daemon = Daemon::start(
        None,
        &["--cgroup", cgroup_arg, "--events", events.to_str().unwrap()],
    );

    let started = SystemTime::now();
    let sent = client(&topology, Some(&cgroup))
        .udp(INTERNET_V4.into(), UDP_PORT, 3, 10, false)
        .unwrap();
    assert_eq!(sent.ok, 3, "observe mode drops nothing");
    client(&topology, Some(&cgroup))
        .udp(PRIVATE_V4.into(), UDP_PORT, 3, 10, false)
        .unwrap();
    assert_eq!(topology.peers.udp_received(INTERNET_V4.into()), 3);

    // Written while the daemon runs, not at exit.
    let lines = event_lines(&events, 3);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for line in &lines {
        let ts = humantime::parse_rfc3339(line["ts"].as_str().unwrap()).expect("RFC 3339 ts");
        let age = ts
            .duration_since(started - Duration::from_secs(5))
            .expect("recent ts");
        assert!(age < Duration::from_secs(60), "ts {ts:?}");
        assert_eq!(line["hook"], "cgroup");
        assert_eq!(line["action"], "observed");
        assert_eq!(line["proto"], "udp");
        assert_eq!(line["src"], NODE_V4.to_string());
        assert_eq!(line["dst"], INTERNET_V4.to_string());
        assert_eq!(line["src_port"], u64::from(sent.src_port));
        assert_eq!(line["dst_port"], u64::from(UDP_PORT));
        assert_eq!(line["len"], 38);
        assert_eq!(line["rule"], "default");
        assert_eq!(line["uid"], 0);
        assert_eq!(line["cgroup_id"], cgroup.id());
        assert!(line.get("ifindex").is_none());
    }

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    let summary = log
        .iter()
        .find(|l| l.contains("stopping:"))
        .expect("a summary line");
    assert!(
        summary.contains("cgroup: 3 allowed, 3 denied-observed, 0 denied-dropped"),
        "{summary}"
    );
}

/// Enforce mode on the TC hook of the node's interface, with a policy file: internet and the
/// denied lab subnet are dropped and named in events; after SIGTERM the hook is gone.
#[test]
fn enforce_mode_on_tc_drops_and_names_the_rule() {
    require_root();
    sweep_stale();
    let topology = Topology::new().unwrap();
    let scratch = Scratch::new("enforce");
    let events = scratch.0.join("events.jsonl");
    let policy = scratch.0.join("policy.toml");
    std::fs::write(
        &policy,
        "mode = \"enforce\"\n\n[[rule]]\nname = \"lab\"\ncidr = \"10.78.0.0/24\"\naction = \"deny\"\n",
    )
    .unwrap();
    let daemon = Daemon::start(
        Some(&topology.node.name),
        &[
            "--hook",
            "tc",
            "--iface",
            "veth-n",
            "--policy",
            policy.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ],
    );
    let node = client(&topology, None);
    for dst in [
        IpAddr::V4(INTERNET_V4),
        IpAddr::V6(INTERNET_V6),
        IpAddr::V4(LAB_V4),
    ] {
        node.udp(dst, UDP_PORT, 2, 10, false).unwrap();
        assert_eq!(topology.peers.udp_received(dst), 0, "{dst} must be dropped");
    }
    node.udp(PRIVATE_V4.into(), UDP_PORT, 2, 10, false).unwrap();
    assert_eq!(topology.peers.udp_received(PRIVATE_V4.into()), 2);

    let lines = event_lines(&events, 6);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let ifindex = topology.node_ifindex().unwrap();
    for line in &lines {
        assert_eq!(line["hook"], "tc");
        assert_eq!(line["action"], "dropped");
        assert_eq!(line["ifindex"], ifindex);
        assert!(line.get("uid").is_none() && line.get("cgroup_id").is_none());
        let expected_rule = if line["dst"] == LAB_V4.to_string() {
            "lab"
        } else {
            "default"
        };
        assert_eq!(line["rule"], expected_rule, "{line}");
    }

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log:#?}");
    // Without pinning (a later feature), stopping the daemon removes the hook.
    node.udp(INTERNET_V4.into(), UDP_PORT, 2, 10, false)
        .unwrap();
    assert_eq!(topology.peers.udp_received(INTERNET_V4.into()), 2);
}
