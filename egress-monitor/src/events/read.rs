//! Reading event lines back: what `events`, `policy suggest` and `policy replay` need of them,
//! a filter, and one line of text per event for people.
//!
//! Lines are read leniently by field: a line of an older schema, or of a kind this build does
//! not know, is still read for what it has; a line that is not a JSON object is skipped and
//! counted, never guessed at.

use std::{
    collections::HashMap,
    io::{self, BufRead as _},
    net::IpAddr,
    path::Path,
};

use egress_monitor_policy::suggest::Seen;
use ipnetwork::IpNetwork;
use serde::Deserialize;

/// One event line, as written by [`super::EventWriter`] (docs/events.md).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LoggedEvent {
    pub ts: String,
    /// `first`, `update`, `packet`, `dns`, `dns_answer`, `raw_socket`, `alarm`…
    pub kind: String,
    pub hook: Option<String>,
    /// `allowed`, `observed` or `dropped`.
    pub action: Option<String>,
    pub proto: Option<serde_json::Value>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub dst_name: Option<String>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub rule: Option<String>,
    pub policy: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
    pub cgroup: Option<String>,
    pub node: Option<String>,
    pub id: Option<String>,
    /// DNS questions and answers.
    pub name: Option<String>,
    pub qtype: Option<serde_json::Value>,
    pub server: Option<IpAddr>,
    pub addresses: Vec<IpAddr>,
    pub ttl: Option<u32>,
    pub learned: Option<bool>,
    /// Raw-socket guard events.
    pub option: Option<String>,
    /// Alarms: what happened.
    pub message: Option<String>,
}

impl LoggedEvent {
    /// Reads one line; `None` for a blank line or one that is not an event object.
    pub fn parse(line: &str) -> Option<LoggedEvent> {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str(line).ok()
    }

    /// A denied packet's event (`first`, `update`, `packet`).
    pub fn is_packet(&self) -> bool {
        matches!(self.kind.as_str(), "first" | "update" | "packet")
    }

    /// The process, as the filter matches it and people read it: `comm`, else the
    /// executable's file name.
    pub fn process(&self) -> Option<&str> {
        self.comm.as_deref().or_else(|| {
            self.exe
                .as_deref()
                .map(|exe| exe.rsplit('/').next().unwrap_or(exe))
        })
    }

    /// Packets this line stands for (1 when it does not say).
    pub fn packet_count(&self) -> u64 {
        self.packets.unwrap_or(1)
    }

    fn proto_text(&self) -> String {
        value_text(self.proto.as_ref())
    }
}

/// The denied traffic an events file recorded, as observations for `policy suggest` and
/// `policy replay`, and the count of lines that were not events. A packet whose event names no
/// destination name gets the one a DNS answer to the same node gave for its address (the
/// latest in the file), when there was one.
pub fn observations(path: &Path) -> io::Result<(Vec<Seen>, u64)> {
    let file = std::fs::File::open(path)?;
    let mut seen = Vec::new();
    let mut unreadable = 0;
    let mut answered: HashMap<(Option<String>, IpAddr), String> = HashMap::new();
    for line in io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Some(event) = LoggedEvent::parse(&line) else {
            unreadable += 1;
            continue;
        };
        if event.kind == "dns_answer"
            && let Some(name) = &event.name
        {
            for address in &event.addresses {
                answered.insert((event.node.clone(), *address), name.clone());
            }
            continue;
        }
        let denied = matches!(event.action.as_deref(), Some("observed" | "dropped"));
        if !event.is_packet() || !denied {
            continue;
        }
        seen.push(Seen {
            dst: event.dst,
            name: event.dst_name.clone(),
            process: event.process().map(str::to_owned),
            node: event.node.clone(),
            at_ms: egress_monitor_api::time::parse_rfc3339_ms(&event.ts).unwrap_or(0),
            packets: event.packet_count(),
        });
    }
    for item in &mut seen {
        if item.name.is_none()
            && let Some(dst) = item.dst
        {
            item.name = answered.get(&(item.node.clone(), dst)).cloned();
        }
    }
    Ok((seen, unreadable))
}

fn value_text(value: Option<&serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => "-".to_owned(),
    }
}

egress_monitor_api::words! {
    /// What `--action` selects: one action, or `denied` for both denied ones.
    pub enum ActionFilter {
        Allowed = "allowed", Observed = "observed", Dropped = "dropped", Denied = "denied",
    }
}

/// Which events to show: every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub action: Option<ActionFilter>,
    /// The destination (the resolver asked, for a DNS question; any address, for an answer).
    pub dst: Option<IpNetwork>,
    /// `comm`, or the executable's file name or path.
    pub process: Option<String>,
    pub kind: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, event: &LoggedEvent) -> bool {
        if let Some(wanted) = self.action {
            let action = event.action.as_deref().unwrap_or("");
            let ok = match wanted {
                ActionFilter::Denied => matches!(action, "observed" | "dropped"),
                other => action == other.as_str(),
            };
            if !ok {
                return false;
            }
        }
        if let Some(network) = self.dst {
            let mut addresses = event.dst.iter().chain(event.server.iter());
            let answered = event.addresses.iter().any(|a| network.contains(*a));
            if !answered && !addresses.any(|a| network.contains(*a)) {
                return false;
            }
        }
        if let Some(process) = &self.process {
            let by_comm = event.comm.as_deref() == Some(process.as_str());
            let by_exe = event.exe.as_deref().is_some_and(|exe| {
                exe == process || exe.rsplit('/').next() == Some(process.as_str())
            });
            if !by_comm && !by_exe {
                return false;
            }
        }
        if let Some(kind) = &self.kind
            && &event.kind != kind
        {
            return false;
        }
        true
    }
}

/// Every kind of event line the daemon writes (what `--kind` accepts).
pub const KINDS: [&str; 7] = [
    "first",
    "update",
    "packet",
    "dns",
    "dns_answer",
    "raw_socket",
    "alarm",
];

/// Text any process can choose (a command name, an executable's path, a cgroup's, a name in a
/// DNS answer) made safe for a terminal: control, bidirectional-override and other invisible
/// format characters are written as `\u{…}`, so no line can be forged or hidden.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let format = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || format {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// One line for people: time, action, what, where to, which rule, who. Every text field is
/// made [`printable`].
pub fn human(event: &LoggedEvent) -> String {
    printable(&human_raw(event))
}

fn human_raw(event: &LoggedEvent) -> String {
    // `2026-12-02T02:03:17.866842647Z` → `02:03:17.866`
    let time = event
        .ts
        .get(11..23)
        .filter(|_| event.ts.len() > 23)
        .unwrap_or(&event.ts);
    let action = event.action.as_deref().unwrap_or("-");
    let who = match (event.process(), event.pid) {
        (Some(process), Some(pid)) => format!("{process}[{pid}]"),
        (Some(process), None) => process.to_owned(),
        (None, _) => "-".to_owned(),
    };
    let cgroup = event
        .cgroup
        .as_deref()
        .map(|path| format!(" {}", path.trim_start_matches("/sys/fs/cgroup")))
        .unwrap_or_default();
    let rule = event.rule.as_deref().unwrap_or("-");
    let hook = event.hook.as_deref().unwrap_or("-");
    match event.kind.as_str() {
        "first" | "update" | "packet" => {
            let endpoint = |address: Option<IpAddr>, port: Option<u16>| match (address, port) {
                (Some(IpAddr::V6(v6)), Some(port)) => format!("[{v6}]:{port}"),
                (Some(address), Some(port)) => format!("{address}:{port}"),
                (Some(address), None) => address.to_string(),
                (None, _) => "?".to_owned(),
            };
            let name = event
                .dst_name
                .as_deref()
                .map(|name| format!(" ({name})"))
                .unwrap_or_default();
            let count = match event.kind.as_str() {
                "update" => format!(" +{} packets", event.packet_count()),
                _ => String::new(),
            };
            format!(
                "{time} {action:<8} {hook:<6} {:<6} {} -> {}{name} rule={rule} {who}{cgroup}{count}",
                event.proto_text(),
                endpoint(event.src, event.src_port),
                endpoint(event.dst, event.dst_port),
            )
        }
        "dns" => format!(
            "{time} {action:<8} {hook:<6} dns    {} {} via {} rule={rule} {who}{cgroup}",
            value_text(event.qtype.as_ref()),
            event.name.as_deref().unwrap_or("?"),
            event.server.map_or("?".to_owned(), |s| s.to_string()),
        ),
        "dns_answer" => format!(
            "{time} {:<8} answer {} {} -> {}{} {who}{cgroup}",
            if event.learned == Some(true) {
                "learned"
            } else {
                "-"
            },
            value_text(event.qtype.as_ref()),
            event.name.as_deref().unwrap_or("?"),
            event
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            event
                .ttl
                .map(|ttl| format!(" ttl {ttl}s"))
                .unwrap_or_default(),
        ),
        "raw_socket" => format!(
            "{time} {action:<8} raw socket option {} {who}{cgroup}",
            event.option.as_deref().unwrap_or("?")
        ),
        kind => format!(
            "{time} {kind} {}",
            event.message.as_deref().unwrap_or("(no message)")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = r#"{"ts":"2026-11-29T05:12:40.118372301Z","kind":"first","hook":"cgroup","action":"dropped","proto":"tcp","src":"10.0.0.4","dst":"203.0.113.80","src_port":41974,"dst_port":443,"packets":1,"bytes":60,"len":60,"rule":"default","policy":"3f0c9a1b5d2e4f60","pid":2231,"comm":"curl","exe":"/usr/bin/curl","uid":0,"cgroup_id":8812,"cgroup":"/sys/fs/cgroup/system.slice/app.service","node":"vm-1","schema":1,"id":"ab-1"}"#;
    const DNS: &str = r#"{"ts":"2026-11-29T05:20:11.502113311Z","kind":"dns","hook":"cgroup","action":"allowed","name":"example.com","qtype":"A","server":"168.63.129.16","proto":"udp","src_port":51234,"rule":"default","policy":"x","repeats":0,"pid":4120,"comm":"python3","exe":"/usr/bin/python3.11"}"#;

    #[test]
    fn an_event_line_reads_back_with_its_envelope() {
        let event = LoggedEvent::parse(FIRST).unwrap();
        assert!(event.is_packet());
        assert_eq!(event.dst, Some("203.0.113.80".parse().unwrap()));
        assert_eq!(event.node.as_deref(), Some("vm-1"));
        assert_eq!(event.id.as_deref(), Some("ab-1"));
        assert_eq!(event.process(), Some("curl"));
        assert_eq!(
            human(&event),
            "05:12:40.118 dropped  cgroup tcp    10.0.0.4:41974 -> 203.0.113.80:443 rule=default \
             curl[2231] /system.slice/app.service"
        );
        let forged = LoggedEvent {
            comm: Some("x\n05:00:00.000 allowed\u{1b}[2K\u{202e}".to_owned()),
            ..event.clone()
        };
        let line = human(&forged);
        assert!(!line.contains('\n') && !line.contains('\u{1b}') && !line.contains('\u{202e}'));
        assert!(
            line.contains("x\\u{a}05:00:00.000 allowed\\u{1b}[2K\\u{202e}"),
            "{line}"
        );
        assert_eq!(LoggedEvent::parse("not json"), None);
        assert_eq!(LoggedEvent::parse("{broken"), None);
        assert_eq!(LoggedEvent::parse(""), None);
    }

    #[test]
    fn the_filter_needs_every_condition_it_is_given() {
        let first = LoggedEvent::parse(FIRST).unwrap();
        let dns = LoggedEvent::parse(DNS).unwrap();
        let dropped = EventFilter {
            action: Some(ActionFilter::Dropped),
            ..EventFilter::default()
        };
        assert!(dropped.matches(&first) && !dropped.matches(&dns));
        let denied = EventFilter {
            action: Some(ActionFilter::Denied),
            ..EventFilter::default()
        };
        assert!(denied.matches(&first) && !denied.matches(&dns));
        let dst = EventFilter {
            dst: Some("203.0.113.0/24".parse().unwrap()),
            ..EventFilter::default()
        };
        assert!(dst.matches(&first) && !dst.matches(&dns));
        let resolver = EventFilter {
            dst: Some("168.63.129.16/32".parse().unwrap()),
            ..EventFilter::default()
        };
        assert!(!resolver.matches(&first) && resolver.matches(&dns));
        for process in ["python3", "python3.11", "/usr/bin/python3.11"] {
            let filter = EventFilter {
                process: Some(process.to_owned()),
                ..EventFilter::default()
            };
            assert!(filter.matches(&dns) && !filter.matches(&first), "{process}");
        }
        let both = EventFilter {
            action: Some(ActionFilter::Dropped),
            process: Some("python3".to_owned()),
            ..EventFilter::default()
        };
        assert!(!both.matches(&first) && !both.matches(&dns));
        assert!(EventFilter::default().matches(&first));
    }
}
