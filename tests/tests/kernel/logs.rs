//! The events file as operators and shippers read it: every line names its node, its schema
//! and an id of its own; `events --follow` shows the matching ones live, for people or as JSON;
//! a rotated file (moved, then SIGHUP, or moved alone) is reopened, and nothing is lost.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egress_monitor_tests::{
    daemon_binary,
    netns::{INTERNET_V4, INTERNET_V6, PRIVATE_V4},
};
use serde_json::Value;

use crate::{Node, event_lines};

/// `egress-monitor events ARGS`, its standard output in a file; killed on drop.
struct Follower {
    child: Child,
    out: std::path::PathBuf,
}

impl Follower {
    fn start(out: &Path, args: &[&str]) -> Follower {
        let child = Command::new(daemon_binary())
            .arg("events")
            .args(args)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start events --follow");
        Follower {
            child,
            out: out.to_owned(),
        }
    }

    /// Its lines once there are at least `count` (bounded wait).
    fn lines(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_carry_node_schema_and_id_are_followed_live_and_survive_rotation() {
    let node = Node::new("evf");
    let events = node.events();
    let daemon = node.daemon(&["--node-id", "node-evf", "--flow-interval", "0"]);
    let scratch = &node.scratch.0;
    // Followers started before anything is sent: people's view of observed packets to the
    // documentation range, and scripts' view of the same as JSON.
    let people = Follower::start(
        &scratch.join("people.txt"),
        &[
            "--file",
            events.to_str().unwrap(),
            "--follow",
            "--action",
            "observed",
            "--dst",
            "203.0.113.0/24",
        ],
    );
    let scripts = Follower::start(
        &scratch.join("scripts.jsonl"),
        &[
            "--file",
            events.to_str().unwrap(),
            "-f",
            "--dst",
            "2001:db8::/32",
            "--json",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.send(INTERNET_V4.into(), 2), 0, "observe mode");
    assert_eq!(node.send(INTERNET_V6.into(), 3), 0, "observe mode");
    assert_eq!(node.send(PRIVATE_V4.into(), 1), 0, "allowed");
    let written = event_lines(&events, 5);
    assert_eq!(written.len(), 5, "{written:#?}");
    let mut ids = BTreeSet::new();
    for line in &written {
        assert_eq!(line["node"], "node-evf", "{line}");
        assert_eq!(line["schema"], 1, "{line}");
        assert!(
            ids.insert(line["id"].as_str().unwrap().to_owned()),
            "{line}"
        );
    }

    let shown = people.lines(2);
    assert_eq!(shown.len(), 2, "{shown:#?}");
    for line in &shown {
        assert!(
            line.contains("observed") && line.contains("-> 203.0.113.1:") && line.contains("udp"),
            "{line}"
        );
        assert!(
            line.contains("rule=default") && line.contains("em-testclient"),
            "{line}"
        );
    }
    let json: Vec<Value> = scripts
        .lines(3)
        .iter()
        .map(|line| serde_json::from_str(line).expect("--json prints the lines as written"))
        .collect();
    assert_eq!(json.len(), 3, "{json:#?}");
    assert!(
        json.iter()
            .all(|line| line["dst"] == "2001:db8::1" && line["node"] == "node-evf")
    );

    // Rotation as an operator does it by hand: move, then SIGHUP.
    let first = scratch.join("events.jsonl.1");
    std::fs::rename(&events, &first).unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.send(INTERNET_V4.into(), 1), 0);
    let after = event_lines(&events, 1);
    assert_eq!(
        after.len(),
        1,
        "the new file gets the new event: {after:#?}"
    );
    // As logrotate does it: move alone; the daemon notices within its drain interval.
    let second = scratch.join("events.jsonl.2");
    std::fs::rename(&events, &second).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(node.send(INTERNET_V4.into(), 1), 0);
    let after = event_lines(&events, 1);
    assert_eq!(after.len(), 1, "{after:#?}");
    // Nothing lost, nothing twice: 5 + 1 + 1 lines over the three files, 7 ids.
    let all: Vec<Value> = [&first, &second, &events]
        .iter()
        .flat_map(|path| event_lines(path, 0))
        .collect();
    assert_eq!(all.len(), 7, "{all:#?}");
    let ids: BTreeSet<&str> = all.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 7);
    // The follower went on across both rotations.
    let shown = people.lines(4);
    assert_eq!(shown.len(), 4, "{shown:#?}");
    let to_internet = all
        .iter()
        .filter(|l| {
            l["dst"].as_str().and_then(|d| d.parse::<IpAddr>().ok()) == Some(INTERNET_V4.into())
        })
        .count();
    assert_eq!(to_internet, 4);
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
}

/// Without --follow: the whole file, filtered, and a clear error for a file that is not there.
#[test]
fn events_reads_a_whole_file_and_refuses_a_missing_one() {
    let scratch = egress_monitor_tests::Scratch::new("evr");
    let file = scratch.0.join("events.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"ts":"2026-12-02T01:00:00.000000000Z","kind":"first","hook":"cgroup","action":"dropped","proto":"tcp","src":"10.0.0.4","dst":"203.0.113.80","src_port":41974,"dst_port":443,"packets":1,"bytes":60,"rule":"default","comm":"curl","pid":7}"#,
            "\n",
            "garbage\n",
            r#"{"ts":"2026-12-02T01:00:01.000000000Z","kind":"dns","hook":"cgroup","action":"allowed","name":"example.com","qtype":"A","server":"168.63.129.16","proto":"udp","rule":"default","comm":"python3"}"#,
            "\n",
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(daemon_binary())
            .arg("events")
            .arg("--file")
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let all = run(&[]);
    assert!(all.status.success());
    let text = String::from_utf8_lossy(&all.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(String::from_utf8_lossy(&all.stderr).contains("1 lines were not events"));
    let dropped = run(&["--action", "dropped", "--process", "curl"]);
    let text = String::from_utf8_lossy(&dropped.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("203.0.113.80:443") && text.contains("curl[7]"),
        "{text}"
    );
    let dns = run(&["--kind", "dns", "--json"]);
    let line: Value = serde_json::from_slice(&dns.stdout).unwrap();
    assert_eq!(line["name"], "example.com");

    let missing = Command::new(daemon_binary())
        .args(["events", "--file"])
        .arg(scratch.0.join("nothing.jsonl"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read the events file"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let bad = Command::new(daemon_binary())
        .args(["events", "--dst", "not-a-cidr"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
