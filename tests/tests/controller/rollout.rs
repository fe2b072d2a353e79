//! Staged rollouts: the canaries (a group, or a share of the nodes) get the new policy and mode,
//! the others keep theirs; a canary's new drops pause the rollout; it is rolled back or
//! promoted in one call; the history names each stage and who did it. On both stores.

use egress_monitor_api::time::now_ms;
use egress_monitor_tests::{
    Scratch,
    controller::{
        ADMIN_TOKEN, Api, Controller, ControllerFiles, FLEET_TOKEN, PgDatabase, READONLY_TOKEN,
        report,
    },
};
use serde_json::{Value, json};

const BASE: &str = "[[rule]]\nname = \"mirror\"\ncidr = \"198.51.100.0/24\"\naction = \"allow\"\n";
const CANDIDATE: &str =
    "[[rule]]\nname = \"mirror\"\ncidr = \"198.51.100.0/25\"\naction = \"allow\"\n";

fn dropped(dst: &str) -> Value {
    json!({
        "ts_ms": now_ms() - 500, "kind": "first", "hook": "cgroup", "action": "dropped",
        "proto": "tcp", "src": "10.0.0.4", "dst": dst, "dst_port": 443, "dst_name": null,
        "rule": "default", "pid": 7, "comm": "backup", "exe": "/usr/bin/backup",
        "cgroup": "/system.slice/backup.service", "packets": 4, "bytes": 240
    })
}

/// Node `id` of `group` reports, running fleet version `version` (0: local) in `mode`; the
/// controller's reply.
fn send(
    api: &Api,
    id: &str,
    group: &str,
    seq: u64,
    version: u64,
    mode: &str,
    events: Vec<Value>,
) -> Value {
    let mut body = report(id, &format!("machine-{id}"), seq, 10, events);
    body["identity"]["group"] = json!(group);
    body["mode"] = json!(mode);
    body["policy"]["fleet_version"] = if version == 0 {
        Value::Null
    } else {
        json!(version)
    };
    let (status, reply) = api.post_json("/api/v1/reports", FLEET_TOKEN, &body);
    assert_eq!(status, 200, "{reply}");
    reply
}

fn start(api: &Api, body: &Value) -> (u16, Value) {
    api.post_json("/api/v1/rollout", ADMIN_TOKEN, body)
}

fn history(api: &Api) -> Vec<(String, String)> {
    let (_, entries) = api.get("/api/v1/history", ADMIN_TOKEN);
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["change"].as_str().unwrap().to_owned(),
                e["by"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn rollout_contract(db: &str, scratch: &Scratch) {
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, db, 0, &[]);
    let api = Api::new(&controller.url);
    assert_eq!(api.put_policy(BASE).0, 200);
    assert_eq!(
        api.put_json("/api/v1/mode", ADMIN_TOKEN, &json!({"mode": "observe"}))
            .0,
        200
    );
    for (id, group) in [("vm-c1", "canary"), ("vm-c2", "canary"), ("vm-w1", "web")] {
        send(&api, id, group, 1, 1, "observe", vec![]);
    }

    // Refused: no canaries, both, a read-only token, an invalid policy.
    let (status, _) = start(&api, &json!({"policy": CANDIDATE}));
    assert_eq!(status, 422);
    let (status, _) = start(
        &api,
        &json!({"policy": CANDIDATE, "group": "canary", "percent": 5}),
    );
    assert_eq!(status, 422);
    let (status, _) = api.post_json(
        "/api/v1/rollout",
        READONLY_TOKEN,
        &json!({"policy": CANDIDATE, "group": "canary"}),
    );
    assert_eq!(status, 403);
    let (status, _) = start(
        &api,
        &json!({"policy": "[[rule]]\nname = 1\n", "group": "canary"}),
    );
    assert_eq!(status, 422);

    // The canaries get v2 in enforce mode; the web node keeps v1 in observe mode.
    let (status, started) = start(
        &api,
        &json!({"policy": CANDIDATE, "mode": "enforce", "group": "canary"}),
    );
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["rollout"]["stage"], "canary");
    assert_eq!(started["rollout"]["canaries"], 2);
    assert_eq!(started["rollout"]["others"], 1);
    let reply = send(&api, "vm-c1", "canary", 2, 1, "observe", vec![]);
    assert_eq!(
        reply["fleet"],
        json!({"policy_version": 2, "mode": "enforce"})
    );
    let reply = send(&api, "vm-w1", "web", 2, 1, "observe", vec![]);
    assert_eq!(
        reply["fleet"],
        json!({"policy_version": 1, "mode": "observe"})
    );
    // Each fetches its own policy.
    let (_, canary) = api.get("/api/v1/policy?node=vm-c1", FLEET_TOKEN);
    assert_eq!(
        (canary["version"].clone(), canary["policy"].clone()),
        (json!(2), json!(CANDIDATE))
    );
    let (_, web) = api.get("/api/v1/policy?node=vm-w1", FLEET_TOKEN);
    assert_eq!(
        (
            web["version"].clone(),
            web["policy"].clone(),
            web["mode"].clone()
        ),
        (json!(1), json!(BASE), json!("observe"))
    );
    // The web node runs what it should: converged; a canary on the old one is not yet.
    let (_, nodes) = api.get("/api/v1/nodes", ADMIN_TOKEN);
    let converged = |id: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .unwrap()["converged"]
            .clone()
    };
    assert_eq!(converged("vm-w1"), true);
    assert_eq!(converged("vm-c1"), false);
    // The fleet as a whole does not change under a rollout; a second one waits.
    let (status, _) = api.put_policy(BASE);
    assert_eq!(status, 409);
    let (status, _) = start(&api, &json!({"mode": "observe", "percent": 10}));
    assert_eq!(status, 409);

    // Drops from a canary still on the old policy say nothing about the candidate.
    send(
        &api,
        "vm-c2",
        "canary",
        2,
        1,
        "observe",
        vec![dropped("203.0.113.49")],
    );
    let (_, still) = api.get("/api/v1/rollout", READONLY_TOKEN);
    assert_eq!(still["rollout"]["stage"], "canary", "{still:#}");
    // A canary that follows and drops packets it did not before: the rollout pauses itself.
    send(&api, "vm-c2", "canary", 3, 2, "enforce", vec![]);
    send(
        &api,
        "vm-c1",
        "canary",
        3,
        2,
        "enforce",
        vec![dropped("203.0.113.50")],
    );
    let (_, paused) = api.get("/api/v1/rollout", READONLY_TOKEN);
    assert_eq!(paused["rollout"]["stage"], "paused", "{paused:#}");
    let reason = paused["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("canary vm-c1 reported 4 new dropped packets")
            && reason.contains("203.0.113.50")
            && reason.contains("backup"),
        "{reason}"
    );
    assert_eq!(paused["rollout"]["canaries_converged"], 2);

    // A paused rollout is promoted only by an operator who says they saw why.
    let (status, answer) = api.post_json("/api/v1/rollout/promote", ADMIN_TOKEN, &json!({}));
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("\"confirm\": \"paused\""),
        "{answer}"
    );
    // The lockdown is taken during a rollout, and reaches the others; observe waits.
    let (status, answer) = api.put_json("/api/v1/mode", ADMIN_TOKEN, &json!({"mode": "observe"}));
    assert_eq!(status, 409, "{answer}");
    // Not from a form another site posts with the browser's credentials: JSON only.
    let (status, _) = api.send(
        "POST",
        "/api/v1/rollout/rollback",
        ADMIN_TOKEN,
        "application/x-www-form-urlencoded",
        b"",
    );
    assert_eq!(status, 415, "a form post cannot roll back");
    // Rolled back in one call: every node is told v1 in observe mode again.
    let (status, back) = api.post_json("/api/v1/rollout/rollback", ADMIN_TOKEN, &json!({}));
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["active"], false);
    assert_eq!(
        (
            back["fleet"]["version"].clone(),
            back["fleet"]["mode"].clone()
        ),
        (json!(1), json!("observe"))
    );
    let reply = send(&api, "vm-c1", "canary", 4, 2, "enforce", vec![]);
    assert_eq!(
        reply["fleet"],
        json!({"policy_version": 1, "mode": "observe"})
    );
    let (status, _) = api.post_json("/api/v1/rollout/promote", ADMIN_TOKEN, &json!({}));
    assert_eq!(status, 409, "no rollout to promote");

    // Another, to a share of the nodes, promoted: v3 (v2 is never given out again) for all.
    let (status, again) = start(&api, &json!({"policy": CANDIDATE, "percent": 100}));
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["fleet"]["version"], 3);
    let (status, done) = api.post_json("/api/v1/rollout/promote", ADMIN_TOKEN, &json!({}));
    assert_eq!(status, 200, "{done}");
    let reply = send(&api, "vm-w1", "web", 3, 1, "observe", vec![]);
    assert_eq!(reply["fleet"]["policy_version"], 3);
    let (_, fleet) = api.get("/api/v1/policy", ADMIN_TOKEN);
    assert_eq!(fleet["policy"], CANDIDATE);
    assert_eq!(
        api.put_policy(BASE).1["version"],
        4,
        "PUT works again after the rollout"
    );

    // The history: each stage and who did it, newest first.
    let stages: Vec<(String, String)> = history(&api).into_iter().take(6).collect();
    let expected: Vec<(String, String)> = [
        ("policy", "operator-1"),
        ("rollout-promote", "operator-1"),
        ("rollout-start", "operator-1"),
        ("rollout-rollback", "operator-1"),
        ("rollout-pause", "controller (automatic)"),
        ("rollout-start", "operator-1"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(stages, expected);
}

#[test]
fn staged_rollouts_on_sqlite() {
    let scratch = Scratch::new("rollout-sqlite");
    let files = ControllerFiles::new(&scratch.0);
    rollout_contract(&files.sqlite(), &scratch);
}

#[test]
fn staged_rollouts_on_postgres() {
    let scratch = Scratch::new("rollout-postgres");
    let database = PgDatabase::create();
    rollout_contract(&database.url(), &scratch);
}
