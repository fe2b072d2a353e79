use egress_monitor_policy::{Action, Mode};

use super::*;
use egress_monitor_common::{dns::DNS_EVENT_SIZE, event::EVENT_SIZE, guard::GUARD_EVENT_SIZE};

use crate::datapath::state::StateRule;

fn event() -> Event {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[10, 77, 0, 2]);
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&[203, 0, 113, 1]);
    Event {
        kind: record::KIND_PACKET,
        ip_version: 4,
        proto: 17,
        hook: hook::CGROUP,
        outcome: outcome::DENIED_DROPPED as u8,
        flags: flags::HAS_PORTS,
        ethertype: 0,
        ts_boot_ns: 1_500_000_123,
        cgroup_id: 4242,
        len: 56,
        uid: 1000,
        ifindex: 0,
        rule_id: u32::MAX,
        pid: 0,
        src_port: 40000,
        dst_port: 53,
        src,
        dst,
        comm: [0; 16],
    }
}

/// The bytes the kernel writes for `value`.
fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: T is plain old data without implicit padding: every byte is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
}

fn policy() -> StateFile {
    StateFile {
        version: "00000000deadbeef".into(),
        mode: Mode::Observe,
        mode_source: String::new(),
        applied_at: "2026-11-29T00:00:00Z".into(),
        groups: vec![],
        rules: vec![StateRule {
            id: 14,
            cidr: "10.1.2.0/24".into(),
            action: Action::Deny,
            name: "cli-deny".into(),
            origin: "command line".into(),
            expires: None,
        }],
    }
}

fn clock() -> Clock {
    Clock::with_boot_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_374_400))
}

fn dns_event(kind: u8) -> DnsEvent {
    DnsEvent {
        kind,
        ip_version: 4,
        proto: 17,
        hook: hook::CGROUP,
        outcome: 0,
        flags: 0,
        address_count: 0,
        refusal: 0,
        ts_boot_ns: 1,
        cgroup_id: 2,
        server: [0; 16],
        addresses: [[0; 16]; 8],
        ttl: 0,
        pid: 0,
        uid: 0,
        rule_id: 0,
        repeats: 0,
        ifindex: 0,
        comm: [0; 16],
        src_port: 40000,
        qtype: 1,
        name_len: 1,
        _pad: [0; 2],
        name: [0; 256],
    }
}

fn guard_event() -> GuardEvent {
    GuardEvent {
        kind: record::KIND_GUARD,
        outcome: outcome::DENIED_DROPPED as u8,
        _pad: [0; 6],
        ts_boot_ns: 1,
        cgroup_id: 2,
        pid: 3,
        uid: 4,
        level: SOL_PACKET,
        optname: PACKET_QDISC_BYPASS,
        comm: [0; 16],
    }
}

#[test]
fn records_are_read_as_their_kind_byte_says() {
    let packet = event();
    assert!(matches!(decode(&bytes_of(&packet)), Ok(KernelRecord::Packet(e)) if e == packet));
    let query = dns_event(record::KIND_DNS_QUERY);
    assert!(matches!(decode(&bytes_of(&query)), Ok(KernelRecord::DnsQuery(e)) if *e == query));
    let answer = dns_event(record::KIND_DNS_ANSWER);
    assert!(matches!(decode(&bytes_of(&answer)), Ok(KernelRecord::DnsAnswer(e)) if *e == answer));
    let guard = guard_event();
    assert!(matches!(decode(&bytes_of(&guard)), Ok(KernelRecord::Guard(e)) if e == guard));
}

#[test]
fn unknown_kinds_and_sizes_not_the_kinds_are_malformed() {
    for kind in [0, 5, 0xff] {
        let mut bytes = bytes_of(&event());
        bytes[0] = kind;
        assert!(
            matches!(decode(&bytes), Err(EventError::UnknownKind(k)) if k == kind),
            "{kind}"
        );
    }
    assert!(matches!(decode(&[]), Err(EventError::Empty)));
    // A size other than the kind's struct's is refused: a packet event cut short or with a
    // byte too many, and a record relabelled as another kind (a guard record is not read
    // as a packet event's first 56 bytes).
    let packet = bytes_of(&event());
    let mut long = packet.clone();
    long.push(0);
    let relabelled = |mut bytes: Vec<u8>, kind: u8| {
        bytes[0] = kind;
        bytes
    };
    for (bytes, expected) in [
        (packet[..1].to_vec(), EVENT_SIZE),
        (packet[..EVENT_SIZE - 1].to_vec(), EVENT_SIZE),
        (long, EVENT_SIZE),
        (
            relabelled(bytes_of(&guard_event()), record::KIND_PACKET),
            EVENT_SIZE,
        ),
        (
            relabelled(packet.clone(), record::KIND_GUARD),
            GUARD_EVENT_SIZE,
        ),
        (
            relabelled(packet.clone(), record::KIND_DNS_QUERY),
            DNS_EVENT_SIZE,
        ),
        (
            relabelled(
                bytes_of(&dns_event(record::KIND_DNS_ANSWER)),
                record::KIND_PACKET,
            ),
            EVENT_SIZE,
        ),
    ] {
        let (kind, len) = (bytes[0], bytes.len());
        assert!(
            matches!(
                decode(&bytes),
                Err(EventError::BadSize { kind: k, len: l, expected: e })
                    if (k, l, e) == (kind, len, expected)
            ),
            "kind {kind}, {len} bytes"
        );
    }
}

#[test]
fn a_cgroup_event_has_every_schema_field() {
    let record = EventRecord::new(&event(), &policy(), &clock()).unwrap();
    let json: serde_json::Value = serde_json::to_value(&record).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "ts": "2025-11-29T00:00:01.500000123Z", "kind": "packet",
            "hook": "cgroup", "action": "dropped", "proto": "udp",
            "src": "10.77.0.2", "dst": "203.0.113.1", "src_port": 40000, "dst_port": 53,
            "packets": 1, "bytes": 56, "len": 56,
            "rule": "default", "policy": "00000000deadbeef",
            "pid": null, "comm": null, "exe": null,
            "uid": 1000, "cgroup_id": 4242
        })
    );
}

#[test]
fn a_flow_has_a_first_event_then_updates_with_what_was_aggregated() {
    let mut first = event();
    first.flags |= flags::FLOW_FIRST | flags::OWNER_KNOWN;
    first.pid = 4321;
    first.comm[..4].copy_from_slice(b"curl");
    let record = EventRecord::new(&first, &policy(), &clock()).unwrap();
    assert_eq!(
        (record.kind, record.packets, record.bytes),
        (FlowKind::First, 1, 56)
    );
    let update = FlowUpdate {
        first,
        packets: 9_999,
        bytes: 9_999 * 56,
        last_seen_ns: 12_000_000_000,
    };
    let json =
        serde_json::to_value(EventRecord::update(&update, &policy(), &clock()).unwrap()).unwrap();
    assert_eq!(json["kind"], "update");
    assert_eq!(
        json["ts"], "2025-11-29T00:00:12.000000000Z",
        "the latest packet's time"
    );
    assert_eq!(json["first_ts"], "2025-11-29T00:00:01.500000123Z");
    assert_eq!(
        (json["packets"].clone(), json["bytes"].clone()),
        (9_999.into(), (9_999 * 56).into())
    );
    assert!(json.get("len").is_none(), "an update is not one packet");
    // Everything else is the flow's: who sent what to where.
    assert_eq!(json["comm"], "curl");
    assert_eq!(json["pid"], 4321);
    assert_eq!(json["dst"], "203.0.113.1");
    assert_eq!(json["dst_port"], 53);
    assert_eq!(json["rule"], "default");
}

#[test]
fn a_tc_v6_fragment_names_its_rule_and_has_null_ports() {
    let policy = policy();
    // Ids come from the live maps, not from positions: the state file maps 14 to the rule.
    let rule_id = 14;
    let mut e = event();
    e.hook = hook::TC;
    e.outcome = outcome::DENIED_OBSERVED as u8;
    e.ifindex = 3;
    e.ip_version = 6;
    e.proto = 58;
    e.flags = flags::FRAGMENT;
    e.rule_id = rule_id;
    e.dst = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
    e.src = "fd77::2".parse::<Ipv6Addr>().unwrap().octets();
    let json = serde_json::to_value(EventRecord::new(&e, &policy, &clock()).unwrap()).unwrap();
    assert_eq!(json["hook"], "tc");
    assert_eq!(json["action"], "observed");
    assert_eq!(json["proto"], "icmpv6");
    assert_eq!(json["dst"], "2001:db8::1");
    assert_eq!(json["src"], "fd77::2");
    assert_eq!(json["src_port"], serde_json::Value::Null);
    assert_eq!(json["dst_port"], serde_json::Value::Null);
    assert_eq!(json["ifindex"], 3);
    assert_eq!(json["rule"], "cli-deny");
    assert_eq!(json["fragment"], true);
    assert!(json.get("uid").is_none() && json.get("cgroup_id").is_none());
    assert!(json.get("malformed").is_none() && json.get("ethertype").is_none());
}

#[test]
fn a_non_ip_frame_has_null_addresses_and_its_ethertype() {
    let mut e = event();
    e.hook = hook::TC;
    e.ip_version = 0;
    e.proto = 0;
    e.flags = flags::NOT_IP;
    e.ethertype = 0x88b5;
    let json = serde_json::to_value(EventRecord::new(&e, &policy(), &clock()).unwrap()).unwrap();
    assert_eq!(json["ethertype"], "0x88b5");
    assert_eq!(
        (&json["src"], &json["dst"]),
        (&serde_json::Value::Null, &serde_json::Value::Null)
    );
    assert_eq!(json["dst_port"], serde_json::Value::Null);
    assert_eq!(json["rule"], "default");
    assert!(json.get("malformed").is_none());
    let mut e = event();
    e.flags = flags::MALFORMED;
    let json = serde_json::to_value(EventRecord::new(&e, &policy(), &clock()).unwrap()).unwrap();
    assert_eq!(
        (json["malformed"].clone(), json["dst"].clone()),
        (serde_json::Value::Bool(true), serde_json::Value::Null)
    );
}

/// An output that takes `capacity` bytes (a short write when it fills), then fails like a
/// full disk.
struct FullDisk {
    capacity: usize,
    taken: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut taken = self.taken.lock().unwrap();
        let room = self.capacity - taken.len();
        if room == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = room.min(buf.len());
        taken.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_output_counts_unwritten_events_and_keeps_going() {
    let record = EventRecord::new(&event(), &policy(), &clock()).unwrap();
    let line_len = serde_json::to_string(&record).unwrap().len() + 1;
    let taken = std::sync::Arc::default();
    let disk = FullDisk {
        capacity: 2 * line_len,
        taken: std::sync::Arc::clone(&taken),
    };
    let mut writer = EventWriter::new(Box::new(disk), "node-1");
    // The 64 KiB buffer takes the lines; the flush finds the disk full after two.
    for _ in 0..5 {
        writer.write(&record);
    }
    writer.flush();
    assert_eq!(writer.written(), 5, "buffered");
    // Past the buffer, writes fail and are counted rather than stopping anything.
    let many = 64 * 1024 / line_len + 10;
    for _ in 0..many {
        writer.write(&record);
    }
    assert!(writer.unwritten() > 0);
    assert_eq!(writer.written() + writer.unwritten(), 5 + many as u64);
    assert_eq!(
        taken.lock().unwrap().len(),
        2 * line_len,
        "the disk was filled"
    );
}

#[test]
fn a_known_owner_names_the_process() {
    let mut e = event();
    e.flags |= flags::OWNER_KNOWN;
    e.pid = std::process::id();
    e.comm[..6].copy_from_slice(b"curl\0\0");
    let json = serde_json::to_value(EventRecord::new(&e, &policy(), &clock()).unwrap()).unwrap();
    assert_eq!(json["pid"], std::process::id());
    assert_eq!(json["comm"], "curl");
    e.flags &= !flags::OWNER_KNOWN;
    let json = serde_json::to_value(EventRecord::new(&e, &policy(), &clock()).unwrap()).unwrap();
    assert_eq!(
        (json["pid"].clone(), json["comm"].clone()),
        (serde_json::Value::Null, serde_json::Value::Null),
        "an unknown owner is null, not pid 0"
    );
}

#[test]
fn unknown_protocols_are_numbers_and_bad_codes_are_errors() {
    assert_eq!(Proto::from_number(47, 4), Proto::Number(47));
    assert_eq!(serde_json::to_string(&Proto::Number(47)).unwrap(), "47");
    assert_eq!(Proto::from_number(1, 4), Proto::Name("icmp"));
    let mut e = event();
    e.hook = 9;
    assert!(EventRecord::new(&e, &policy(), &clock()).is_err());
    let mut e = event();
    e.outcome = outcome::ALLOWED as u8;
    assert!(EventRecord::new(&e, &policy(), &clock()).is_err());
}

#[test]
fn every_line_names_its_node_schema_and_a_unique_id_and_a_moved_file_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut writer = EventWriter::open(&EventsTarget::File(path.clone()), "vm-7").unwrap();
    let record = EventRecord::new(&event(), &policy(), &clock()).unwrap();
    writer.write(&record);
    writer.write(&record);
    writer.flush();
    // Rotated as logrotate does without copytruncate: the next flush notices.
    let rotated = dir.path().join("events.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    writer.flush();
    writer.write(&record);
    writer.flush();
    // SIGHUP reopens whatever the path names now.
    std::fs::rename(&path, dir.path().join("events.jsonl.2")).unwrap();
    writer.reopen();
    writer.write(&record);
    writer.flush();
    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let (old, moved, new) = (
        lines(&rotated),
        lines(&dir.path().join("events.jsonl.2")),
        lines(&path),
    );
    assert_eq!((old.len(), moved.len(), new.len()), (2, 1, 1));
    let all: Vec<_> = old.iter().chain(&moved).chain(&new).collect();
    for line in &all {
        assert_eq!(line["node"], "vm-7");
        assert_eq!(line["schema"], 1);
        assert_eq!(line["dst"], "203.0.113.1");
    }
    let ids: std::collections::BTreeSet<_> = all
        .iter()
        .map(|line| line["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    // Another writer (a restarted daemon) never repeats an id.
    let mut other = EventWriter::open(&EventsTarget::File(path.clone()), "vm-7").unwrap();
    other.write(&record);
    other.flush();
    let last = lines(&path).pop().unwrap();
    assert!(!ids.contains(last["id"].as_str().unwrap()));
}
