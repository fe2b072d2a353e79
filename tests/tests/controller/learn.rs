//! Learning mode and dry runs for the fleet: a policy suggested from what nodes reported, and
//! a candidate replayed against it, with counts that are the reports' own.

use egress_monitor_api::time::now_ms;
use egress_monitor_tests::{
    Scratch,
    controller::{
        ADMIN_TOKEN, Api, Controller, ControllerFiles, FLEET_TOKEN, READONLY_TOKEN, report,
    },
};
use serde_json::{Value, json};

fn seen(dst: &str, name: Option<&str>, comm: &str, packets: u64) -> Value {
    json!({
        "ts_ms": now_ms() - 1000, "kind": "first", "hook": "cgroup", "action": "observed",
        "proto": "tcp", "src": "10.0.0.4", "dst": dst, "dst_port": 443, "dst_name": name,
        "rule": "default", "pid": 4242, "comm": comm, "exe": format!("/usr/bin/{comm}"),
        "cgroup": "/system.slice/app.service", "packets": packets, "bytes": packets * 60
    })
}

#[test]
fn the_fleet_suggests_a_policy_and_replays_a_candidate_against_its_reports() {
    let scratch = Scratch::new("learn");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    let send = |node: &str, group: &str, events: Vec<Value>| {
        let mut body = report(node, &format!("machine-{node}"), 1, 10, events);
        body["identity"]["group"] = json!(group);
        let (status, answer) = api.post_json("/api/v1/reports", FLEET_TOKEN, &body);
        assert_eq!(status, 200, "{answer}");
    };
    send(
        "vm-1",
        "web",
        vec![
            seen("203.0.113.9", Some("api.example.com"), "curl", 5),
            seen("198.51.100.7", None, "backup", 2),
        ],
    );
    send(
        "vm-2",
        "web",
        vec![seen("203.0.113.10", Some("api.example.com"), "curl", 4)],
    );
    send("vm-3", "batch", vec![seen("192.0.2.44", None, "rsync", 6)]);

    // Learning: a valid fleet policy, one domain rule for the name, exact addresses otherwise.
    let text = |path: &str, token: &str| -> (u16, String) {
        let (status, body) = api.get(path, token);
        (
            status,
            body.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.to_string()),
        )
    };
    let (status, suggested) = text("/api/v1/policy/suggestion", READONLY_TOKEN);
    assert_eq!(status, 200, "{suggested}");
    assert!(
        suggested.contains("domain = \"api.example.com\""),
        "{suggested}"
    );
    assert!(
        suggested.contains("cidr = \"198.51.100.7/32\""),
        "{suggested}"
    );
    assert!(
        suggested.contains("cidr = \"192.0.2.44/32\""),
        "{suggested}"
    );
    assert!(suggested.contains("nodes: 2 (vm-1, vm-2)"), "{suggested}");
    assert!(
        suggested.contains("confidence high"),
        "two nodes: {suggested}"
    );
    egress_monitor_policy::validate_fleet_policy(&suggested, None).expect("a valid fleet policy");
    // A group's traffic only.
    let (_, batch) = text(
        "/api/v1/policy/suggestion?group=batch&mode=enforce",
        ADMIN_TOKEN,
    );
    assert!(
        batch.contains("192.0.2.44/32") && !batch.contains("api.example.com"),
        "{batch}"
    );
    assert!(batch.contains("mode = \"enforce\""), "{batch}");
    let (status, _) = text("/api/v1/policy/suggestion?wildcards=maybe", ADMIN_TOKEN);
    assert_eq!(status, 400);
    let (status, _) = text("/api/v1/policy/suggestion", FLEET_TOKEN);
    assert_eq!(status, 403, "nodes do not read the fleet's traffic");

    // Dry run: the candidate allows the API by name and nothing else.
    let candidate = "[[rule]]\nname = \"api\"\ndomain = \"api.example.com\"\naction = \"allow\"\n";
    let replay = |query: &str, body: &str| -> (u16, Value) {
        api.send(
            "POST",
            &format!("/api/v1/policy/replay{query}"),
            READONLY_TOKEN,
            "application/toml",
            body.as_bytes(),
        )
    };
    let (status, report) = replay("", candidate);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["allowed"]["flows"], 2, "{report:#}");
    assert_eq!(report["allowed"]["packets"], 9, "{report:#}");
    assert_eq!(report["blocked"]["flows"], 2, "{report:#}");
    assert_eq!(report["blocked"]["packets"], 8, "{report:#}");
    assert_eq!(report["blocked"]["nodes"], json!(["vm-1", "vm-3"]));
    assert_eq!(report["blocked"]["destinations"]["192.0.2.44"], 6);
    assert_eq!(report["blocked"]["processes"]["backup"], 2);
    // The suggestion itself blocks nothing of what it was built from.
    let (status, report) = replay("", &suggested);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["blocked"]["flows"], 0, "{report:#}");
    assert_eq!(report["allowed"]["packets"], 17, "{report:#}");
    // One node's traffic.
    let (_, report) = replay("?node=vm-3", candidate);
    assert_eq!(report["blocked"]["packets"], 6, "{report:#}");
    assert_eq!(report["allowed"]["packets"], 0, "{report:#}");
    // Refused: nothing to try, an invalid policy; and nothing changed.
    let (status, _) = replay("", "  ");
    assert_eq!(status, 422);
    let (status, answer) = replay("", "[[rule]]\nname = \"x\"\n");
    assert_eq!(status, 422, "{answer}");
    // The same dry run on the console's page, as a diff.
    let form = format!(
        "policy={}&since=",
        candidate
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    let (status, page) = api.send(
        "POST",
        "/replay",
        READONLY_TOKEN,
        "application/x-www-form-urlencoded",
        form.as_bytes(),
    );
    assert_eq!(status, 200);
    let page = page.as_str().unwrap().to_owned();
    assert!(page.contains("id=\"would-block\""), "{page}");
    assert!(
        page.contains("Would still block: 2 flows, 8 packets on 2 nodes"),
        "{page}"
    );
    assert!(
        page.contains("Would let through (denied when recorded): 2 flows, 9 packets on 2 nodes"),
        "{page}"
    );
    let (status, page) = api.send(
        "POST",
        "/replay",
        READONLY_TOKEN,
        "application/x-www-form-urlencoded",
        b"policy=%5B%5Brule",
    );
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("id=\"replay-error\""));
    let (_, fleet) = api.get("/api/v1/policy", ADMIN_TOKEN);
    assert_eq!(fleet["version"], 0, "a dry run sets nothing: {fleet}");
}
