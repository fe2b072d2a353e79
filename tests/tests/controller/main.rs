//! The controller over real HTTP, against both stores (an SQLite file, and a PostgreSQL
//! database of the test's own on the server `cargo xtask test` starts): authentication,
//! refusals that store nothing, exactly-once ingestion, filters, fleet policy and mode, node
//! states, TLS, replicas sharing one database, and the page in a real browser. The nodes here
//! are simulated; `kernel::fleet` runs real daemons.

mod console;
mod learn;
mod rollout;

use std::time::Duration;

use egress_monitor_api::time::now_ms;
use egress_monitor_tests::{
    Scratch,
    azure::{Claims, TestAzure},
    controller::{
        ADMIN_TOKEN, Api, BOUND_NODE, BOUND_TOKEN, Controller, ControllerFiles, FLEET_TOKEN,
        PgDatabase, READONLY_TOKEN, browse, postgres_ca, report, secret_file,
    },
    free_port,
};
use serde_json::{Value, json};

fn event(dst: &str, exe: &str, packets: u64) -> Value {
    json!({
        "ts_ms": now_ms() - 1000, "kind": "first", "hook": "cgroup", "action": "observed",
        "proto": "tcp", "src": "10.0.0.4", "dst": dst, "dst_port": 443, "dst_name": null,
        "rule": "default-deny", "pid": 4242, "comm": exe.rsplit('/').next().unwrap(),
        "exe": exe, "cgroup": "/system.slice/app.service", "packets": packets, "bytes": packets * 60
    })
}

fn nodes(api: &Api) -> Vec<Value> {
    let (status, body) = api.get("/api/v1/nodes", ADMIN_TOKEN);
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

fn violations(api: &Api, query: &str) -> Vec<Value> {
    let (status, body) = api.get(&format!("/api/v1/violations{query}"), ADMIN_TOKEN);
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

/// Sends a report's headers with `token`, announcing `length` bytes, then `body` (which may
/// be shorter): the answer as text.
fn raw_post(url: &str, token: &str, length: usize, body: &[u8]) -> String {
    use std::io::{Read as _, Write as _};
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /api/v1/reports HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = vec![0; 4096];
    let n = stream.read(&mut answer).unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

fn expect_refused(answer: (u16, Value), status: u16, message: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let error = answer.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {}", answer.1));
    assert!(
        error.contains(message),
        "`{error}` does not say `{message}`"
    );
}

/// The controller's `/metrics` at `address` (as served with `--metrics`).
fn scrape(address: &str) -> String {
    let (status, text) = Api::new(&format!("http://{address}")).get("/metrics", "");
    assert_eq!(status, 200, "{text}");
    text.as_str().expect("metrics are text").to_owned()
}

/// `text` has the sample `series value`.
fn assert_sample(text: &str, series: &str, value: u64) {
    let found = text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '));
    assert_eq!(
        found,
        Some(value.to_string().as_str()),
        "{series} in\n{text}"
    );
}

/// The API's whole contract, on one store.
fn contract(db: &str, scratch: &Scratch) {
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, db, 0, &[]);
    let api = Api::new(&controller.url);
    let reports = "/api/v1/reports";
    // Probes need no token, and learn nothing about the fleet.
    assert_eq!(api.get("/healthz", ""), (200, json!({"status": "ok"})));

    // Who may call what.
    let good = report(
        "node-a",
        "machine-a",
        1,
        10,
        vec![event("203.0.113.9", "/usr/bin/curl", 3)],
    );
    expect_refused(
        api.post_json(reports, "", &good),
        401,
        "missing `Authorization",
    );
    expect_refused(
        api.post_json(reports, "not-a-token-at-all", &good),
        401,
        "unknown token",
    );
    expect_refused(
        api.post_json(reports, ADMIN_TOKEN, &good),
        403,
        "use a node token",
    );
    expect_refused(api.get("/api/v1/nodes", FLEET_TOKEN), 403, "admin token");
    expect_refused(api.put_policy_as(FLEET_TOKEN), 403, "admin token");
    expect_refused(
        api.post_json(reports, BOUND_TOKEN, &good),
        403,
        "belongs to node `bound-node`",
    );

    // Bad input, refused with a clear message.
    let send = |body: &[u8], content_type: &str| {
        api.send("POST", reports, FLEET_TOKEN, content_type, body)
    };
    expect_refused(send(b"{\"node_id\": ", "application/json"), 400, "");
    expect_refused(send(b"{}", "text/plain"), 415, "");
    let mut unknown = good.clone();
    unknown["surprise"] = json!(1);
    expect_refused(
        api.post_json(reports, FLEET_TOKEN, &unknown),
        422,
        "unknown field `surprise`",
    );
    for (field, value, message) in [
        ("seq", json!(0), "seq must be between 1"),
        ("node_id", json!("a b"), "node_id must be"),
        (
            "stream",
            json!("xyz"),
            "stream must be 16 hexadecimal digits",
        ),
        (
            "interval_s",
            json!(0),
            "interval_s must be between 1 and 3600",
        ),
        (
            "created_ms",
            json!(1000),
            "created_ms must be milliseconds since the epoch",
        ),
        (
            "mode",
            json!("panic"),
            "`panic` is not one of observe, enforce",
        ),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        expect_refused(api.post_json(reports, FLEET_TOKEN, &bad), 422, message);
    }
    let mut bad = good.clone();
    bad["events"][0]["dst_port"] = json!(70000);
    expect_refused(api.post_json(reports, FLEET_TOKEN, &bad), 422, "dst_port");
    bad = good.clone();
    bad["events"][0]["exe"] = json!("/tmp/evil\nname");
    expect_refused(
        api.post_json(reports, FLEET_TOKEN, &bad),
        422,
        "events[0].exe must be",
    );
    bad = good.clone();
    bad["events"] = Value::Array(vec![event("203.0.113.9", "/bin/x", 1); 5001]);
    expect_refused(
        api.post_json(reports, FLEET_TOKEN, &bad),
        422,
        "at most 5000 events",
    );
    // A 9 MiB body is refused from its announced length, before it is sent.
    let answer = raw_post(&controller.url, FLEET_TOKEN, 9 << 20, b"");
    assert!(
        answer.starts_with("HTTP/1.1 413")
            && answer.contains("a request body is at most 8388608 bytes"),
        "{answer}"
    );
    // A refusal that may leave the body unread tells the client not to reuse the connection
    // (a pooled connection the server then drops fails the client's next request).
    assert!(answer.contains("connection: close"), "{answer}");
    let body = good.to_string();
    let answer = raw_post(&controller.url, "not-a-token", body.len(), body.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 401") && answer.contains("connection: close"),
        "{answer}"
    );
    assert!(nodes(&api).is_empty(), "a refused report stored something");
    assert!(violations(&api, "").is_empty());

    // Exactly once: the same report twice is stored once.
    let (status, reply) = api.post_json(reports, FLEET_TOKEN, &good);
    assert_eq!((status, &reply["stored"]), (200, &json!(true)), "{reply}");
    assert_eq!(reply["fleet"], json!({"policy_version": 0, "mode": null}));
    let (status, reply) = api.post_json(reports, FLEET_TOKEN, &good);
    assert_eq!((status, &reply["stored"]), (200, &json!(false)), "{reply}");
    assert_eq!(violations(&api, "").len(), 1);
    let second = report(
        "node-a",
        "machine-a",
        2,
        10,
        vec![
            event("198.51.100.7", "/usr/bin/wget", 5),
            event("203.0.113.9", "/usr/bin/curl", 2),
        ],
    );
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &second).0, 200);
    // A fleet token cannot take another machine's node id; a bound token reports for its node.
    expect_refused(
        api.post_json(
            reports,
            FLEET_TOKEN,
            &report("node-a", "machine-x", 3, 10, vec![]),
        ),
        409,
        "node id `node-a` is registered to another machine",
    );
    // The refusal names nothing of the owner a forger could send next.
    let (_, refusal) = api.post_json(
        reports,
        FLEET_TOKEN,
        &report("node-a", "machine-x", 3, 10, vec![]),
    );
    assert!(!refusal.to_string().contains("machine-a"), "{refusal}");
    let bound = report(
        BOUND_NODE,
        "machine-b",
        1,
        1,
        vec![event("192.0.2.1", "/usr/bin/nc", 1)],
    );
    assert_eq!(api.post_json(reports, BOUND_TOKEN, &bound).0, 200);

    let listed = nodes(&api);
    assert_eq!(listed.len(), 2, "{listed:#?}");
    let a = listed.iter().find(|n| n["node_id"] == "node-a").unwrap();
    assert_eq!(a["reports"], 2);
    assert_eq!(a["events"], 3);
    assert_eq!(a["state"], "observing");
    assert_eq!(a["hostname"], "host-node-a");
    assert_eq!(a["counters"]["denied_observed_packets"], 3);

    // Filters.
    assert_eq!(violations(&api, "").len(), 4);
    assert_eq!(violations(&api, "?node=node-a").len(), 3);
    assert_eq!(violations(&api, "?destination=203.0.113.9").len(), 2);
    assert_eq!(violations(&api, "?process=wget").len(), 1);
    assert_eq!(
        violations(&api, "?process=/usr/bin/curl&node=node-a").len(),
        2
    );
    assert_eq!(violations(&api, "?limit=1").len(), 1);
    let newest = violations(&api, "?limit=1")[0]["id"].as_i64().unwrap();
    assert_eq!(violations(&api, &format!("?before={newest}")).len(), 3);
    let future = now_ms() + 3_600_000;
    assert!(violations(&api, &format!("?since={future}")).is_empty());
    assert_eq!(violations(&api, &format!("?until={future}")).len(), 4);
    expect_refused(
        api.get("/api/v1/violations?limit=0", ADMIN_TOKEN),
        400,
        "`limit`",
    );
    expect_refused(
        api.get("/api/v1/violations?colour=red", ADMIN_TOKEN),
        400,
        "unknown parameter `colour`: use node, rule, kind, destination, process, since, until, before, after, limit",
    );
    let wget = &violations(&api, "?process=wget")[0];
    assert_eq!(wget["dst"], "198.51.100.7");
    assert_eq!(wget["dst_port"], 443);
    assert_eq!(wget["packets"], 5);
    assert_eq!(wget["node_id"], "node-a");

    // The summary: top destinations and processes by packets.
    let (_, summary) = api.get("/api/v1/summary", ADMIN_TOKEN);
    assert_eq!(summary["nodes"], 2);
    assert_eq!(summary["top_destinations"][0]["key"], "198.51.100.7");
    assert_eq!(summary["top_destinations"][0]["packets"], 5);
    assert_eq!(summary["top_destinations"][1]["packets"], 5); // 203.0.113.9: 3 + 2
    assert_eq!(summary["top_destinations"][1]["events"], 2);
    assert_eq!(summary["top_processes"][0]["key"], "/usr/bin/curl");

    // The fleet policy: validated as a node would, versioned, readable by nodes.
    expect_refused(
        api.put_policy("[[rule]]\nname = \"x\"\ncidr = \"203.0.113.0/33\"\naction = \"allow\"\n"),
        422,
        "fleet-policy:3:8",
    );
    expect_refused(api.put_policy("mode = "), 422, "fleet-policy:1:");
    let policy = "[[rule]]\nname = \"mirror\"\ncidr = \"203.0.113.0/24\"\naction = \"allow\"\n";
    let (status, fleet) = api.put_policy(policy);
    assert_eq!((status, &fleet["version"]), (200, &json!(1)), "{fleet}");
    // The same text again is no new version; If-Match (the ETag) guards against lost updates;
    // a policy without a rule of its own needs a confirmation.
    let (status, again) = api.put_policy(policy);
    assert_eq!((status, &again["version"]), (200, &json!(1)), "{again}");
    assert_eq!(
        api.etag("/api/v1/policy", FLEET_TOKEN).as_deref(),
        Some("\"1\"")
    );
    let put_if = |version: &str, text: &str| {
        api.send_with(
            "PUT",
            "/api/v1/policy",
            ADMIN_TOKEN,
            "application/toml",
            text.as_bytes(),
            &[("If-Match", version)],
        )
    };
    expect_refused(
        put_if(
            "\"0\"",
            "[[rule]]\nname = \"other\"\ncidr = \"198.51.100.0/24\"\naction = \"allow\"\n",
        ),
        412,
        "the fleet policy is at v1, not v0",
    );
    expect_refused(
        put_if("seven", policy),
        400,
        "`If-Match` must be a policy version",
    );
    assert_eq!(put_if("\"1\"", policy).0, 200);
    expect_refused(api.put_policy("# nothing\n"), 422, "no rule of its own");
    let (status, fleet) = api.get("/api/v1/policy", FLEET_TOKEN);
    assert_eq!(status, 200);
    assert_eq!(fleet["policy"], policy);
    // The nodes do not run it yet: drifted.
    let a = nodes(&api)
        .into_iter()
        .find(|n| n["node_id"] == "node-a")
        .unwrap();
    assert_eq!(a["state"], "drifted");
    assert_eq!(a["converged"], false);
    assert!(
        a["problems"][0]
            .as_str()
            .unwrap()
            .contains("runs its local policy, the fleet's is v1")
    );
    let (_, reply) = api.post_json(
        reports,
        FLEET_TOKEN,
        &report("node-a", "machine-a", 3, 10, vec![]),
    );
    assert_eq!(reply["fleet"]["policy_version"], 1);

    // The mode: bad values refused; a policy that would cut the nodes off in enforce mode
    // keeps the fleet from switching.
    expect_refused(
        api.put_json("/api/v1/mode", ADMIN_TOKEN, &json!({"mode": "lockdown"})),
        422,
        "`lockdown` is not one of observe, enforce",
    );
    // Fine in observe mode; in enforce mode it would cut the nodes off their metadata service.
    let cutting =
        "[[rule]]\nname = \"no-imds\"\ncidr = \"169.254.169.254/32\"\naction = \"deny\"\n";
    assert_eq!(api.put_policy(cutting).0, 200);
    expect_refused(
        api.put_json("/api/v1/mode", ADMIN_TOKEN, &json!({"mode": "enforce"})),
        409,
        "the fleet policy v2 is invalid in enforce mode, so the mode stays",
    );
    assert_eq!(api.put_policy(policy).0, 200);
    let (status, fleet) = api.put_json("/api/v1/mode", ADMIN_TOKEN, &json!({"mode": "enforce"}));
    assert_eq!(
        (status, &fleet["mode"]),
        (200, &json!("enforce")),
        "{fleet}"
    );
    // The fleet's history: every change, newest first, and what it left (the refused switch
    // is not in it); each version's text stays readable.
    let (status, history) = api.get("/api/v1/history", ADMIN_TOKEN);
    assert_eq!(status, 200, "{history}");
    let history: Vec<(String, u64, Value)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert!(h["at"].as_str().unwrap().ends_with('Z'), "{h}");
            (
                h["change"].as_str().unwrap().to_owned(),
                h["policy_version"].as_u64().unwrap(),
                h["mode"].clone(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("mode".to_owned(), 3, json!("enforce")),
            ("policy".to_owned(), 3, Value::Null),
            ("policy".to_owned(), 2, Value::Null),
            ("policy".to_owned(), 1, Value::Null),
        ]
    );
    assert_eq!(
        api.get("/api/v1/history?limit=2", ADMIN_TOKEN)
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    expect_refused(
        api.get("/api/v1/history?limit=0", ADMIN_TOKEN),
        400,
        "`limit` must be",
    );
    expect_refused(
        api.get("/api/v1/history?since=1", ADMIN_TOKEN),
        400,
        "unknown parameter",
    );
    expect_refused(api.get("/api/v1/history", FLEET_TOKEN), 403, "admin token");
    let (status, v2) = api.get("/api/v1/policy/2", ADMIN_TOKEN);
    assert_eq!(
        (status, &v2["policy"], &v2["version"]),
        (200, &json!(cutting), &json!(2)),
        "{v2}"
    );
    expect_refused(
        api.get("/api/v1/policy/9", ADMIN_TOKEN),
        404,
        "no fleet policy version 9",
    );
    expect_refused(
        api.get("/api/v1/policy/x", ADMIN_TOKEN),
        400,
        "positive integer",
    );
    expect_refused(api.get("/api/v1/policy/1", FLEET_TOKEN), 403, "admin token");
    let mut converged = report("node-a", "machine-a", 5, 10, vec![]);
    converged["mode"] = json!("enforce");
    converged["policy"]["fleet_version"] = fleet["version"].clone();
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &converged).0, 200);
    let a = nodes(&api)
        .into_iter()
        .find(|n| n["node_id"] == "node-a")
        .unwrap();
    assert_eq!(a["state"], "enforced", "{a:#}");
    assert_eq!(a["converged"], true);
    // A report that arrives late (an earlier one of the same stream, say from a spool) does
    // not roll the state back.
    let mut late = report("node-a", "machine-a", 4, 10, vec![]);
    late["created_ms"] = json!(now_ms() - 60_000);
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &late).0, 200);
    let a = nodes(&api)
        .into_iter()
        .find(|n| n["node_id"] == "node-a")
        .unwrap();
    assert_eq!(a["state"], "enforced");
    assert_eq!(a["reports"], 5);
    // One node by id, from this store: the same view as in the list.
    assert_eq!(
        api.get("/api/v1/nodes/node-a", ADMIN_TOKEN),
        (200, a.clone())
    );

    // Stale: the bound node reports every second and stopped; three intervals later it is stale.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let b = nodes(&api)
            .into_iter()
            .find(|n| n["node_id"] == BOUND_NODE)
            .unwrap();
        if b["state"] == "stale" {
            assert!(
                b["problems"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("no report for")
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stale: {b:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let (_, summary) = api.get("/api/v1/summary", ADMIN_TOKEN);
    assert_eq!(
        (summary["stale"].clone(), summary["enforced"].clone()),
        (json!(1), json!(1))
    );
    expect_refused(
        api.get("/api/v1/nothing", ADMIN_TOKEN),
        404,
        "no such route",
    );

    // A node scaled in for good is forgotten by an operator (not by a node); its violations stay.
    let forget = format!("/api/v1/nodes/{BOUND_NODE}");
    expect_refused(api.delete(&forget, FLEET_TOKEN), 403, "admin token");
    assert_eq!(api.delete(&forget, ADMIN_TOKEN).0, 200);
    expect_refused(api.delete(&forget, ADMIN_TOKEN), 404, "no node");
    assert_eq!(nodes(&api).len(), 1);
    assert_eq!(violations(&api, &format!("?node={BOUND_NODE}")).len(), 1);

    // Without --attestation-subscription, no attested document is taken (any Azure VM
    // anywhere can get a validly signed one).
    expect_refused(
        api.post_json(
            "/api/v1/attestation/nonce",
            FLEET_TOKEN,
            &json!({"node_id": "node-z"}),
        ),
        403,
        "attestation is off",
    );

    // DNS violations: stored with their tunnelling score, filtered by kind and by name.
    let mut question = event("10.0.0.53", "/usr/bin/dig", 2);
    question["kind"] = json!("dns");
    question["dst_port"] = json!(53);
    question["dst_name"] = json!("c2lnbmFs.exfil.example");
    question["tunnel_score"] = json!(70);
    let mut over = question.clone();
    over["tunnel_score"] = json!(101);
    expect_refused(
        api.post_json(
            reports,
            FLEET_TOKEN,
            &report("node-d", "machine-d", 1, 10, vec![over]),
        ),
        422,
        "tunnel_score must be between 0 and 100",
    );
    let dns_report = report(
        "node-d",
        "machine-d",
        1,
        10,
        vec![question, event("203.0.113.7", "/usr/bin/curl", 1)],
    );
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &dns_report).0, 200);
    let dns = violations(&api, "?kind=dns");
    assert_eq!(dns.len(), 1, "{dns:#?}");
    assert_eq!(dns[0]["dst_name"], "c2lnbmFs.exfil.example");
    assert_eq!(dns[0]["tunnel_score"], 70);
    assert_eq!(
        violations(&api, "?kind=dns&destination=c2lnbmFs.exfil.example").len(),
        1
    );
    let flows = violations(&api, "?kind=first&node=node-d");
    assert_eq!(flows.len(), 1);
    assert!(flows[0].get("tunnel_score").is_none(), "{:#}", flows[0]);
    expect_refused(
        api.get("/api/v1/violations?kind=dnss", ADMIN_TOKEN),
        400,
        "`kind`: `dnss` is not one of first, update, packet, dns",
    );
}

trait PutAs {
    fn put_policy_as(&self, token: &str) -> (u16, Value);
}

impl PutAs for Api {
    fn put_policy_as(&self, token: &str) -> (u16, Value) {
        self.send("PUT", "/api/v1/policy", token, "application/toml", b"")
    }
}

#[test]
fn api_contract_on_sqlite() {
    let scratch = Scratch::new("api-sqlite");
    let db = format!("sqlite:{}", scratch.0.join("controller.db").display());
    contract(&db, &scratch);
}

#[test]
fn api_contract_on_postgres() {
    let scratch = Scratch::new("api-postgres");
    let database = PgDatabase::create();
    contract(&database.url(), &scratch);
}

/// Two stateless controllers on one PostgreSQL database: what one stores the other serves,
/// and a report sent to both at once is stored once.
/// The controller's clock decides: a report dated a day ahead does not freeze a node's state
/// (the next one received sets it), and a node claiming a long interval is stale after the
/// controller's `--stale-after` all the same.
#[test]
fn the_controllers_clock_decides_order_and_freshness() {
    let scratch = Scratch::new("controller-clock");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &["--stale-after", "10"]);
    let api = Api::new(&controller.url);
    let reports = "/api/v1/reports";
    let node = |id: &str| {
        nodes(&api)
            .into_iter()
            .find(|n| n["node_id"] == id)
            .unwrap()
    };
    let mut forged = report("clock-a", "machine-clock-a", 1, 10, vec![]);
    forged["created_ms"] = json!(now_ms() + 23 * 3_600_000);
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &forged).0, 200);
    assert_eq!(node("clock-a")["state"], "observing");
    let mut real = report("clock-a", "machine-clock-a", 2, 10, vec![]);
    real["health"]["attachments"] = json!(0);
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &real).0, 200);
    let a = node("clock-a");
    assert_eq!(a["state"], "unprotected", "{a:#}");
    assert_eq!(a["problems"][0], "no program attached", "{a:#}");

    // An hour's interval, and the controller's 10 s bound.
    let slow = report("clock-b", "machine-clock-b", 1, 3600, vec![]);
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &slow).0, 200);
    assert_eq!(node("clock-b")["state"], "observing");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let b = node("clock-b");
        if b["state"] == "stale" {
            assert!(
                b["problems"][0]
                    .as_str()
                    .unwrap()
                    .ends_with("(stale after 10 s)"),
                "{b:#}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stale: {b:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The API a large fleet's scripts need: pages of nodes with a `Link` to the next, a state
/// filter, one node by id, an arrival-order cursor on violations; an unknown or repeated
/// parameter is a 400 naming it (never ignored), and a method no route takes a JSON 405.
#[test]
fn the_api_pages_filters_and_refuses_what_it_does_not_know() {
    let scratch = Scratch::new("controller-paging");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    let reports = "/api/v1/reports";
    for i in 1..=5 {
        let mut body = report(
            &format!("page-{i}"),
            &format!("machine-page-{i}"),
            1,
            10,
            vec![event(&format!("203.0.113.{i}"), "/usr/bin/curl", 1)],
        );
        if i == 4 {
            body["health"]["attachments"] = json!(0);
        }
        if i % 2 == 0 {
            body["identity"]["group"] = json!("vmss-even");
        }
        assert_eq!(api.post_json(reports, FLEET_TOKEN, &body).0, 200);
    }
    // Pages of two, following the `Link` header.
    let mut seen = Vec::new();
    let mut next = Some("/api/v1/nodes?limit=2".to_owned());
    let mut pages = 0;
    while let Some(path) = next {
        let (status, body, link) = api.get_page(&path, ADMIN_TOKEN);
        assert_eq!(status, 200, "{body}");
        let page = body.as_array().unwrap();
        assert!(page.len() <= 2, "{body}");
        seen.extend(
            page.iter()
                .map(|n| n["node_id"].as_str().unwrap().to_owned()),
        );
        next = link;
        pages += 1;
        assert!(pages <= 3, "more pages than nodes: {seen:?}");
    }
    assert_eq!(
        seen,
        (1..=5).map(|i| format!("page-{i}")).collect::<Vec<_>>()
    );
    // Filters: the unprotected node only; one node by id.
    let (status, unprotected) = api.get("/api/v1/nodes?state=unprotected", ADMIN_TOKEN);
    assert_eq!(status, 200);
    assert_eq!(unprotected.as_array().unwrap().len(), 1, "{unprotected}");
    assert_eq!(unprotected[0]["node_id"], "page-4");
    // A group (a scale set): its nodes only, paged with the filter kept.
    let (status, even, link) = api.get_page("/api/v1/nodes?group=vmss-even&limit=1", ADMIN_TOKEN);
    assert_eq!(status, 200, "{even}");
    assert_eq!(even[0]["node_id"], "page-2");
    assert_eq!(even[0]["group"], "vmss-even");
    let (_, rest, _) = api.get_page(&link.expect("a next page"), ADMIN_TOKEN);
    assert_eq!(rest[0]["node_id"], "page-4", "{rest}");
    expect_refused(
        api.get("/api/v1/nodes?group=no%20such", ADMIN_TOKEN),
        400,
        "`group` must be a group name",
    );
    let mut bad_group = report("page-9", "machine-page-9", 1, 10, vec![]);
    bad_group["identity"]["group"] = json!("a group");
    expect_refused(
        api.post_json(reports, FLEET_TOKEN, &bad_group),
        422,
        "identity.group must be",
    );
    let (status, one) = api.get("/api/v1/nodes/page-2", ADMIN_TOKEN);
    assert_eq!(
        (status, one["node_id"].clone()),
        (200, json!("page-2")),
        "{one}"
    );
    expect_refused(
        api.get("/api/v1/nodes/page-9", ADMIN_TOKEN),
        404,
        "no node `page-9`",
    );
    // Unknown and repeated parameters are refused, by name.
    expect_refused(
        api.get("/api/v1/nodes?sate=stale", ADMIN_TOKEN),
        400,
        "unknown parameter `sate`: use state, group, after, limit",
    );
    expect_refused(
        api.get("/api/v1/nodes?state=gone", ADMIN_TOKEN),
        400,
        "`state` must be one of stale, unprotected, drifted, observing, enforced",
    );
    expect_refused(
        api.get("/api/v1/violations?node=page-1&node=page-2", ADMIN_TOKEN),
        400,
        "`node` given more than once",
    );
    expect_refused(
        api.get("/api/v1/summary?window=1h", ADMIN_TOKEN),
        400,
        "unknown parameter `window`: this route takes none",
    );
    // A poller's cursor: oldest first after an id, in the order stored.
    let all = violations(&api, "?after=0&limit=1000");
    assert_eq!(all.len(), 5);
    let ids: Vec<i64> = all.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let rest = violations(&api, &format!("?after={}", ids[2]));
    assert_eq!(
        rest.iter()
            .map(|v| v["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        ids[3..].to_vec()
    );
    // Another node's late, spooled event (made an hour ago) is still after the cursor.
    let mut late = report(
        "page-1",
        "machine-page-1",
        2,
        10,
        vec![event("203.0.113.77", "/usr/bin/wget", 1)],
    );
    late["events"][0]["ts_ms"] = json!(now_ms() - 3_600_000);
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &late).0, 200);
    let newer = violations(&api, &format!("?after={}", ids[4]));
    assert_eq!(newer.len(), 1, "{newer:?}");
    assert_eq!(newer[0]["dst"], "203.0.113.77");
    expect_refused(
        api.get("/api/v1/violations?before=9&after=3", ADMIN_TOKEN),
        400,
        "give `before`",
    );
    // A method no route takes: JSON like every other error.
    expect_refused(
        api.patch("/api/v1/nodes", ADMIN_TOKEN),
        405,
        "this route does not take that method",
    );
}

/// Replicas started together on an empty database all come up: the schema's migrations run
/// once, under a lock held until they are committed (three tries, three replicas each).
#[test]
fn replicas_started_together_on_an_empty_database_all_serve() {
    let scratch = Scratch::new("replicas-together");
    let files = ControllerFiles::new(&scratch.0);
    for attempt in 0..3 {
        let database = PgDatabase::create();
        let url = database.url();
        let replicas: Vec<Controller> = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..3)
                .map(|_| scope.spawn(|| Controller::start(&files, &url, 0, &[])))
                .collect();
            starting
                .into_iter()
                .map(|start| start.join().expect("every replica starts"))
                .collect()
        });
        for replica in &replicas {
            assert_eq!(
                Api::new(&replica.url).get("/healthz", ""),
                (200, json!({"status": "ok"})),
                "attempt {attempt}"
            );
        }
        assert_eq!(
            database.query_in(
                "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"
            ),
            "1,2,3,4,5,6,7,8,9,10,11",
            "attempt {attempt}"
        );
    }
}

/// Operators' tokens have names and roles: a read-only token reads and changes nothing, every
/// change in the history names the token that made it, and refused tokens reach the log
/// (a line per burst, not per guess).
#[test]
fn operators_are_named_read_only_is_read_only_and_refusals_are_logged() {
    let scratch = Scratch::new("controller-roles");
    let files = ControllerFiles::new(&scratch.0);
    let mut controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    assert_eq!(api.get("/api/v1/nodes", READONLY_TOKEN).0, 200);
    assert_eq!(api.get("/api/v1/history", READONLY_TOKEN).0, 200);
    expect_refused(
        api.put_policy_as(READONLY_TOKEN),
        403,
        "the token `auditor` is read-only",
    );
    expect_refused(
        api.put_json("/api/v1/mode", READONLY_TOKEN, &json!({"mode": "enforce"})),
        403,
        "read-only",
    );
    assert_eq!(
        api.put_json("/api/v1/mode", ADMIN_TOKEN, &json!({"mode": "enforce"}))
            .0,
        200
    );
    assert_eq!(
        api.send(
            "PUT",
            "/api/v1/policy?confirm=empty",
            ADMIN_TOKEN,
            "application/toml",
            b""
        )
        .0,
        200
    );
    let (_, history) = api.get("/api/v1/history", READONLY_TOKEN);
    assert_eq!(
        history
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["change"].as_str().unwrap(), h["by"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [("policy", "operator-1"), ("mode", "operator-1")],
        "{history:#}"
    );
    for _ in 0..20 {
        expect_refused(
            api.get("/api/v1/nodes", "guessed-token-0000000000"),
            401,
            "unknown token",
        );
    }
    let line = controller.wait_for("with an unknown token", Duration::from_secs(5));
    assert!(line.contains("refused 1 request(s)"), "{line}");
}

/// `certificates` makes what an operator without a PKI needs: nodes trusting its `ca.crt`
/// reach a controller serving its `controller.crt` over HTTPS.
#[test]
fn the_certificates_command_makes_a_ca_and_a_server_certificate() {
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = Scratch::new("controller-certificates");
    let files = ControllerFiles::new(&scratch.0);
    let tls = scratch.0.join("tls");
    let output = std::process::Command::new(egress_monitor_tests::controller_binary())
        .args([
            "certificates",
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
            "--out",
        ])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let key = tls.join("controller.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cert = tls.join("controller.crt").display().to_string();
    let key = key.display().to_string();
    let controller = Controller::start(
        &files,
        &files.sqlite(),
        0,
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    assert!(controller.url.starts_with("https://"), "{}", controller.url);
    let api = Api::with_ca(&controller.url, &tls.join("ca.crt"));
    assert_eq!(api.get("/healthz", ""), (200, json!({"status": "ok"})));
    // Run again over the same directory: nothing is overwritten.
    let again = std::process::Command::new(egress_monitor_tests::controller_binary())
        .args(["certificates", "--name", "localhost", "--out"])
        .arg(&tls)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{again:?}"
    );
}

/// Quotas: a node over its reports per minute, or its bytes per day, gets 429 with
/// `Retry-After` and nothing is stored; other nodes are not touched.
#[test]
fn a_node_over_its_quota_gets_429_and_retry_after() {
    let scratch = Scratch::new("controller-quota");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(
        &files,
        &files.sqlite(),
        0,
        &[
            "--quota-reports-per-minute",
            "3",
            "--quota-mib-per-day",
            "1",
        ],
    );
    let api = Api::new(&controller.url);
    let send = |node: &str, seq: u64, events: usize| {
        let body = report(
            node,
            &format!("machine-{node}"),
            seq,
            10,
            vec![event("203.0.113.9", "/usr/bin/curl", 1); events],
        )
        .to_string();
        raw_post(&controller.url, FLEET_TOKEN, body.len(), body.as_bytes())
    };
    for seq in 1..=3 {
        let answer = send("quota-a", seq, 0);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let answer = send("quota-a", 4, 0);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("retry-after: "), "{answer}");
    assert!(
        answer.contains("sends more than 3 reports a minute"),
        "{answer}"
    );
    assert!(send("quota-b", 1, 0).starts_with("HTTP/1.1 200"));
    // A day's bytes: 1 MiB, and a report of about 1.5 MiB.
    let answer = send("quota-c", 1, 5000);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("its quota is 1 MiB a day"), "{answer}");
    let stored: Vec<(String, u64)> = nodes(&api)
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_owned(),
                n["reports"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [("quota-a".to_owned(), 3), ("quota-b".to_owned(), 1)],
        "nothing of a refused report is stored"
    );
}

/// Node identity (PostgreSQL, where replicas share the bindings): an Azure VM proves it is the
/// node it says with an attested document for the controller's nonce and gets a credential of
/// its own; from then on a fleet token cannot report for the id, forged, replayed, stale,
/// tampered and foreign documents are refused, another VM is refused the id without learning
/// anything of the owner, and the same VM reimaged (a new machine id) is accepted.
#[test]
fn nodes_prove_who_they_are_with_attested_documents() {
    const SUBSCRIPTION: &str = "6a1e4b3c-0000-4000-8000-00000000c0de";
    const VM_A: &str = "0f3c2b1a-aaaa-4bbb-8ccc-000000000001";
    const VM_B: &str = "0f3c2b1a-aaaa-4bbb-8ccc-000000000002";
    let scratch = Scratch::new("controller-attest");
    let files = ControllerFiles::new(&scratch.0);
    let azure = TestAzure::new(&scratch.0.join("azure"), "metadata.azure.com");
    let forger = TestAzure::new(&scratch.0.join("forger"), "metadata.azure.com");
    let db = PgDatabase::create();
    let roots = azure.root().display().to_string();
    let issuing = azure.issuing().display().to_string();
    let mut controller = Controller::start(
        &files,
        &db.url(),
        0,
        &[
            "--attestation-roots",
            &roots,
            "--attestation-intermediates",
            &issuing,
            "--attestation-subscription",
            SUBSCRIPTION,
        ],
    );
    let api = Api::new(&controller.url);
    let reports = "/api/v1/reports";
    let nonce = |token: &str, node: &str| -> String {
        let (status, body) = api.post_json(
            "/api/v1/attestation/nonce",
            token,
            &json!({"node_id": node}),
        );
        assert_eq!(status, 200, "{body}");
        let nonce = body["nonce"].as_str().unwrap().to_owned();
        assert!(
            nonce.len() == 10 && nonce.bytes().all(|b| b.is_ascii_digit()),
            "{body}"
        );
        nonce
    };
    let attest = |token: &str, node: &str, nonce: &str, document: &Value| {
        api.post_json(
            "/api/v1/attestation",
            token,
            &json!({"node_id": node, "nonce": nonce, "document": document}),
        )
    };

    // Before it is bound, the id is the fleet token's like any other.
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let first = report("vmss-1", "machine-1", next(), 10, vec![]);
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &first).0, 200);
    let n = nonce(FLEET_TOKEN, "vmss-1");
    let document = azure.document(&Claims::now(VM_A, SUBSCRIPTION, &n));
    let (status, body) = attest(FLEET_TOKEN, "vmss-1", &n, &document);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["vm_id"], VM_A);
    let credential = body["credential"].as_str().unwrap().to_owned();
    assert_eq!(credential.len(), 64);

    // Bound: the fleet token no longer reports for it; the node's credential does, for it alone.
    expect_refused(
        api.post_json(
            reports,
            FLEET_TOKEN,
            &report("vmss-1", "machine-1", next(), 10, vec![]),
        ),
        403,
        "node id `vmss-1` has a credential of its own",
    );
    assert_eq!(
        api.post_json(
            reports,
            &credential,
            &report("vmss-1", "machine-1", next(), 10, vec![])
        )
        .0,
        200
    );
    expect_refused(
        api.post_json(
            reports,
            &credential,
            &report("vmss-2", "machine-1", 1, 10, vec![]),
        ),
        403,
        "this credential belongs to node `vmss-1`",
    );
    assert_eq!(api.get("/api/v1/policy", &credential).0, 200);
    expect_refused(api.get("/api/v1/nodes", &credential), 403, "node token");
    // The VM the node proved is what is stored, whatever its reports say.
    let mut claiming = report("vmss-1", "machine-1", next(), 10, vec![]);
    claiming["identity"]["vm_id"] = json!(VM_B);
    assert_eq!(api.post_json(reports, &credential, &claiming).0, 200);
    let (_, node) = api.get("/api/v1/nodes/vmss-1", ADMIN_TOKEN);
    assert_eq!(node["vm_id"], VM_A, "{node}");
    // A VM is one node: it cannot bind a second id.
    let n = nonce(FLEET_TOKEN, "vmss-2");
    expect_refused(
        attest(
            FLEET_TOKEN,
            "vmss-2",
            &n,
            &azure.document(&Claims::now(VM_A, SUBSCRIPTION, &n)),
        ),
        409,
        "this VM is bound to another node id",
    );
    // A node that reported from a VM (its metadata) is not another VM's to attest for.
    let mut on_c = report("vmss-3", "machine-3", 1, 10, vec![]);
    on_c["identity"]["vm_id"] = json!("0f3c2b1a-aaaa-4bbb-8ccc-0000000000c3");
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &on_c).0, 200);
    let n = nonce(FLEET_TOKEN, "vmss-3");
    expect_refused(
        attest(
            FLEET_TOKEN,
            "vmss-3",
            &n,
            &azure.document(&Claims::now(VM_B, SUBSCRIPTION, &n)),
        ),
        409,
        "has reported from another VM",
    );
    // Nonces have their own small quota: asking cannot use up the node's reports.
    for _ in 0..20 {
        api.post_json(
            "/api/v1/attestation/nonce",
            FLEET_TOKEN,
            &json!({"node_id": "vmss-9"}),
        );
    }
    expect_refused(
        api.post_json(
            "/api/v1/attestation/nonce",
            FLEET_TOKEN,
            &json!({"node_id": "vmss-9"}),
        ),
        429,
        "asks for more than 20 nonces a minute",
    );
    assert_eq!(
        api.post_json(
            reports,
            FLEET_TOKEN,
            &report("vmss-9", "machine-9", 1, 10, vec![])
        )
        .0,
        200
    );

    // A used nonce, a forger's chain, a document for another nonce, a stale one, one of
    // another subscription, a tampered one: each refused, and each uses its nonce up.
    expect_refused(
        attest(FLEET_TOKEN, "vmss-1", &n, &document),
        401,
        "unknown, used or expired nonce",
    );
    let n = nonce(FLEET_TOKEN, "vmss-1");
    expect_refused(
        attest(
            FLEET_TOKEN,
            "vmss-1",
            &n,
            &forger.document(&Claims::now(VM_A, SUBSCRIPTION, &n)),
        ),
        401,
        "does not chain to a trust root",
    );
    expect_refused(
        attest(
            FLEET_TOKEN,
            "vmss-1",
            &n,
            &azure.document(&Claims::now(VM_A, SUBSCRIPTION, &n)),
        ),
        401,
        "unknown, used or expired nonce",
    );
    let n = nonce(FLEET_TOKEN, "vmss-1");
    expect_refused(
        attest(
            FLEET_TOKEN,
            "vmss-1",
            &n,
            &azure.document(&Claims::now(VM_A, SUBSCRIPTION, "0123456789")),
        ),
        401,
        "not for the nonce this controller gave out",
    );
    let n = nonce(FLEET_TOKEN, "vmss-1");
    let mut stale = Claims::now(VM_A, SUBSCRIPTION, &n);
    (stale.created, stale.expires) = (stale.created - 7 * 3600, stale.created - 3600);
    expect_refused(
        attest(FLEET_TOKEN, "vmss-1", &n, &azure.document(&stale)),
        401,
        "outside its validity window",
    );
    let n = nonce(FLEET_TOKEN, "vmss-1");
    expect_refused(
        attest(
            FLEET_TOKEN,
            "vmss-1",
            &n,
            &azure.document(&Claims::now(
                VM_A,
                "11111111-2222-4333-8444-555555555555",
                &n,
            )),
        ),
        401,
        "subscription is not one this controller accepts",
    );
    let n = nonce(FLEET_TOKEN, "vmss-1");
    let signed_for_b = azure.document(&Claims::now(VM_B, SUBSCRIPTION, &n));
    let tampered = tamper(&signed_for_b, VM_B, VM_A);
    expect_refused(
        attest(FLEET_TOKEN, "vmss-1", &n, &tampered),
        401,
        "signature does not verify",
    );

    // Another VM is refused the id, and learns nothing of the owner.
    let n = nonce(FLEET_TOKEN, "vmss-1");
    let (status, body) = attest(
        FLEET_TOKEN,
        "vmss-1",
        &n,
        &azure.document(&Claims::now(VM_B, SUBSCRIPTION, &n)),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is bound to another VM"),
        "{body}"
    );
    assert!(
        !body.to_string().contains(VM_A) && !body.to_string().contains("machine-1"),
        "{body}"
    );

    // The same VM reimaged: a new machine id, the fleet token only; it attests again, gets a
    // new credential, and the old one is void.
    let n = nonce(FLEET_TOKEN, "vmss-1");
    let (status, body) = attest(
        FLEET_TOKEN,
        "vmss-1",
        &n,
        &azure.document(&Claims::now(VM_A, SUBSCRIPTION, &n)),
    );
    assert_eq!(status, 200, "{body}");
    let renewed = body["credential"].as_str().unwrap().to_owned();
    assert_ne!(renewed, credential);
    assert_eq!(
        api.post_json(
            reports,
            &renewed,
            &report("vmss-1", "machine-2", next(), 10, vec![])
        )
        .0,
        200,
        "the reimaged node (new machine id) reports with its new credential"
    );
    expect_refused(
        api.post_json(
            reports,
            &credential,
            &report("vmss-1", "machine-1", next(), 10, vec![]),
        ),
        401,
        "unknown token",
    );
    let (_, node) = api.get("/api/v1/nodes/vmss-1", ADMIN_TOKEN);
    assert_eq!(node["machine_id"], "machine-2", "{node}");
    // The database keeps digests, never a usable credential.
    let stored = db.query_in("SELECT credential FROM node_bindings");
    assert!(
        !stored.contains(&renewed) && stored.trim().len() == 64,
        "{stored}"
    );

    // A node id with its own token line is not the fleet token's to report or attest for.
    expect_refused(
        api.post_json(
            reports,
            FLEET_TOKEN,
            &report(BOUND_NODE, "machine-x", 1, 10, vec![]),
        ),
        403,
        "has a credential of its own",
    );
    expect_refused(
        api.post_json(
            "/api/v1/attestation/nonce",
            FLEET_TOKEN,
            &json!({"node_id": BOUND_NODE}),
        ),
        403,
        "has a token of its own",
    );
    expect_refused(
        attest(
            FLEET_TOKEN,
            BOUND_NODE,
            "0123456789",
            &azure.document(&Claims::now(VM_B, SUBSCRIPTION, "0123456789")),
        ),
        403,
        "has a token of its own",
    );

    // Forgetting the node frees the id for another VM.
    assert_eq!(api.delete("/api/v1/nodes/vmss-1", ADMIN_TOKEN).0, 200);
    let n = nonce(FLEET_TOKEN, "vmss-1");
    let (status, body) = attest(
        FLEET_TOKEN,
        "vmss-1",
        &n,
        &azure.document(&Claims::now(VM_B, SUBSCRIPTION, &n)),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["vm_id"], VM_B);
    let credential = body["credential"].as_str().unwrap().to_owned();
    assert_eq!(
        api.post_json(
            reports,
            &credential,
            &report("vmss-1", "machine-b", 1, 10, vec![])
        )
        .0,
        200
    );

    // An operator takes the id back with a token line of its own: the attested credential is
    // void from the reload on.
    secret_file(
        &files.dir.join("nodes.token"),
        &format!(
            "{FLEET_TOKEN}\n{BOUND_NODE} {BOUND_TOKEN}\nvmss-1 vmss-1-token-0123456789abcdef\n"
        ),
    );
    controller.signal(libc::SIGHUP);
    controller.wait_for("SIGHUP: tokens read again", Duration::from_secs(10));
    expect_refused(
        api.post_json(
            reports,
            &credential,
            &report("vmss-1", "machine-b", 2, 10, vec![]),
        ),
        401,
        "has a token of its own now",
    );
}

/// Export (OTLP/HTTP): every violation reaches a real OTLP receiver as a log record with
/// OpenTelemetry's attribute names, through refusals (a wrong key, 401: retried, nothing
/// skipped) and a controller killed mid-export (resumed from its cursor: nothing lost, nothing
/// sent twice).
#[test]
fn every_violation_reaches_the_otlp_receiver_across_a_restart() {
    use egress_monitor_tests::otlp::{OtlpReceiver, attribute};
    let scratch = Scratch::new("controller-otlp");
    let files = ControllerFiles::new(&scratch.0);
    let receiver = OtlpReceiver::start(401);
    let port = free_port();
    let start = || {
        Controller::start(
            &files,
            &files.sqlite(),
            port,
            &["--otlp-endpoint", &receiver.url],
        )
    };
    let controller = start();
    let api = Api::new(&controller.url);
    let reports = "/api/v1/reports";
    let events = |count: usize, host: usize| -> Vec<Value> {
        (0..count)
            .map(|i| {
                event(
                    &format!("203.0.113.{}", (i + host) % 250 + 1),
                    "/usr/bin/curl",
                    1,
                )
            })
            .collect()
    };
    let mut question = event("10.0.0.53", "/usr/bin/dig", 1);
    question["kind"] = json!("dns");
    question["dst_port"] = json!(53);
    question["dst_name"] = json!("c2lnbmFs.exfil.example");
    question["tunnel_score"] = json!(80);
    let mut first = events(1500, 0);
    first.push(question);
    for (seq, batch) in [(1, first), (2, events(1200, 7)), (3, events(300, 11))] {
        let (status, body) = api.post_json(
            reports,
            FLEET_TOKEN,
            &report("otlp-a", "m-a", seq, 10, batch),
        );
        assert_eq!(status, 200, "{body}");
    }
    // Refused (401, as with a wrong key): retried with back-off, nothing is lost.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.requests().1 < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            receiver.requests()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two batches get through; then the receiver refuses again and the controller is killed.
    receiver.allow(Some(2));
    receiver.wait(Duration::from_secs(20), |records| records.len() == 2000);
    let refused = receiver.requests().1;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.requests().1 == refused {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            receiver.requests()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    controller.kill();
    receiver.allow(None);
    let controller = start();
    let api = Api::new(&controller.url);
    let (status, body) = api.post_json(
        reports,
        FLEET_TOKEN,
        &report("otlp-b", "m-b", 1, 10, events(500, 3)),
    );
    assert_eq!(status, 200, "{body}");

    // Every stored violation, exactly once (the killed controller's acknowledged batches were
    // not sent again).
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = violations(&api, &format!("?after={after}&limit=1000"));
        let Some(last) = page.last() else { break };
        after = last["id"].as_i64().unwrap();
        stored.extend(page.iter().map(|v| v["id"].as_i64().unwrap()));
    }
    assert_eq!(stored.len(), 3501);
    let records = receiver.wait(Duration::from_secs(30), |records| {
        records.len() >= stored.len()
    });
    let mut exported: Vec<i64> = records
        .iter()
        .map(|r| {
            attribute(&r.record.attributes, "egress_monitor.violation.id")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    exported.sort_unstable();
    assert_eq!(exported, stored, "every violation once, none twice");

    // OpenTelemetry's names: a flow and the DNS question.
    let flow = records
        .iter()
        .find(|r| attribute(&r.resource, "egress_monitor.node.id").as_deref() == Some("otlp-b"))
        .unwrap();
    let a = &flow.record.attributes;
    assert_eq!(
        attribute(&flow.resource, "service.name").as_deref(),
        Some("egress-monitor")
    );
    assert_eq!(attribute(a, "network.transport").as_deref(), Some("tcp"));
    assert_eq!(attribute(a, "destination.port").as_deref(), Some("443"));
    assert_eq!(
        attribute(a, "process.executable.path").as_deref(),
        Some("/usr/bin/curl")
    );
    assert_eq!(
        attribute(a, "process.executable.name").as_deref(),
        Some("curl")
    );
    assert_eq!(attribute(a, "process.pid").as_deref(), Some("4242"));
    assert_eq!(
        attribute(a, "egress_monitor.action").as_deref(),
        Some("observed")
    );
    assert!(
        attribute(a, "destination.address")
            .unwrap()
            .starts_with("203.0.113.")
    );
    assert_eq!(flow.record.severity_text, "WARN");
    assert_eq!(flow.record.event_name, "egress_monitor.violation");
    assert!(flow.record.time_unix_nano > 1_700_000_000_000_000_000);
    let dns = records
        .iter()
        .find(|r| attribute(&r.record.attributes, "egress_monitor.kind").as_deref() == Some("dns"))
        .unwrap();
    assert_eq!(
        attribute(&dns.record.attributes, "dns.question.name").as_deref(),
        Some("c2lnbmFs.exfil.example")
    );
    assert_eq!(
        attribute(&dns.record.attributes, "egress_monitor.dns.tunnel_score").as_deref(),
        Some("80")
    );
}

/// `document` with `from` replaced by `to` (same length) inside the signed content: the
/// signature still travels, over other bytes.
fn tamper(document: &Value, from: &str, to: &str) -> Value {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut der = engine
        .decode(document["signature"].as_str().unwrap())
        .unwrap();
    let at = der
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("the claim is in the signed content");
    der[at..at + to.len()].copy_from_slice(to.as_bytes());
    json!({"encoding": "pkcs7", "signature": engine.encode(der)})
}

#[test]
fn replicas_share_one_postgres_database() {
    let scratch = Scratch::new("replicas");
    let database = PgDatabase::create();
    let files = ControllerFiles::new(&scratch.0);
    let metrics = format!("127.0.0.1:{}", free_port());
    let one = Controller::start(&files, &database.url(), 0, &["--metrics", &metrics]);
    let two = Controller::start(&files, &database.url(), 0, &[]);
    let (api_one, api_two) = (Api::new(&one.url), Api::new(&two.url));
    for seq in 1..=20u64 {
        let body = report(
            "node-r",
            "machine-r",
            seq,
            10,
            vec![event("203.0.113.5", "/bin/sh", seq)],
        );
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| api_one.post_json("/api/v1/reports", FLEET_TOKEN, &body));
            let b = scope.spawn(|| api_two.post_json("/api/v1/reports", FLEET_TOKEN, &body));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!((a.0, b.0), (200, 200), "{} {}", a.1, b.1);
        let stored = [&a.1["stored"], &b.1["stored"]];
        assert_eq!(
            stored.iter().filter(|s| ***s == json!(true)).count(),
            1,
            "report {seq} stored {stored:?}"
        );
    }
    let from_two = violations(&api_two, "?node=node-r&limit=1000");
    assert_eq!(from_two.len(), 20);
    let packets: u64 = from_two
        .iter()
        .map(|v| v["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(packets, (1..=20).sum::<u64>());
    let rule =
        |cidr: &str| format!("[[rule]]\nname = \"r\"\ncidr = \"{cidr}\"\naction = \"allow\"\n");
    assert_eq!(api_one.put_policy(&rule("203.0.113.0/24")).0, 200);
    assert_eq!(
        api_two.put_policy(&rule("198.51.100.0/24")).1["version"],
        2,
        "versions are shared"
    );
    assert_eq!(nodes(&api_one)[0]["reports"], 20);

    // The database goes away: both replicas say so to probes, and refuse reports with 503
    // (the nodes keep them and retry) instead of hanging or acknowledging them.
    assert_sample(
        &scrape(&metrics),
        "egress_monitor_controller_database_up",
        1,
    );
    drop(database);
    let text = scrape(&metrics);
    assert_sample(&text, "egress_monitor_controller_database_up", 0);
    assert!(
        !text.contains("controller_nodes{"),
        "states of an unknown fleet: {text}"
    );
    for api in [&api_one, &api_two] {
        expect_refused(api.get("/healthz", ""), 503, "database does not answer");
        let body = report("node-r", "machine-r", 21, 10, vec![]);
        expect_refused(
            api.post_json("/api/v1/reports", FLEET_TOKEN, &body),
            503,
            "storage failed",
        );
    }
}

/// PostgreSQL over TLS (`sslmode=require`): the server's certificate is verified against
/// `--db-ca` (a server the controller cannot verify stops it at start), and the controller's
/// connections really are encrypted.
#[test]
fn postgres_over_verified_tls() {
    let scratch = Scratch::new("pg-tls");
    let database = PgDatabase::create();
    let files = ControllerFiles::new(&scratch.0);
    let url = format!("{}?sslmode=require", database.url());
    let ca = postgres_ca();
    let ca = ca.to_str().unwrap();
    let refused = |db: &str, extra: &[&str]| {
        let output = std::process::Command::new(egress_monitor_tests::controller_binary())
            .args(["--listen", "127.0.0.1:0", "--db", db])
            .arg("--admin-token-file")
            .arg(files.dir.join("admin.token"))
            .arg("--node-token-file")
            .arg(files.dir.join("nodes.token"))
            .args(extra)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The public roots do not know the test cluster's CA: no connection, no start.
    let (code, stderr) = refused(&url, &[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    // A CA for a connection that does not ask for TLS is a mistake, said as one.
    let (code, stderr) = refused(&database.url(), &["--db-ca", ca]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("add `sslmode=require`"), "{stderr}");

    let controller = Controller::start(&files, &url, 0, &["--db-ca", ca]);
    let api = Api::new(&controller.url);
    let body = report(
        "node-t",
        "machine-t",
        1,
        10,
        vec![event("203.0.113.4", "/bin/sh", 2)],
    );
    let (status, reply) = api.post_json("/api/v1/reports", FLEET_TOKEN, &body);
    assert_eq!((status, &reply["stored"]), (200, &json!(true)), "{reply}");
    assert_eq!(violations(&api, "?node=node-t").len(), 1);
    let sessions = database.query(&format!(
        "SELECT count(*) || CASE WHEN bool_and(s.ssl) THEN ' encrypted' ELSE ' clear' END FROM pg_stat_ssl s JOIN pg_stat_activity a \
         USING (pid) WHERE a.datname = '{}' AND a.pid <> pg_backend_pid()",
        database.name
    ));
    let (count, connections) = sessions.split_once(' ').unwrap();
    assert!(count.parse::<u32>().unwrap() >= 1, "{sessions}");
    assert_eq!(connections, "encrypted", "{sessions}");
}

/// HTTPS with the operator's certificate; a client that does not trust it gets nothing.
#[test]
fn tls_when_given_a_certificate() {
    let scratch = Scratch::new("tls");
    let files = ControllerFiles::new(&scratch.0);
    let (ca, cert, key) = files.certificate();
    let mut controller = Controller::start(
        &files,
        &files.sqlite(),
        0,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(controller.url.starts_with("https://"), "{}", controller.url);
    let api = Api::with_ca(&controller.url, &ca);
    assert_eq!(api.get("/api/v1/nodes", ADMIN_TOKEN), (200, json!([])));
    let untrusting = Api::new(&controller.url);
    assert!(untrusting.try_get("/api/v1/nodes", ADMIN_TOKEN).is_err());
    let plain = Api::new(&controller.url.replace("https://", "http://"));
    assert!(
        plain
            .try_get("/api/v1/nodes", ADMIN_TOKEN)
            .map_or(true, |(status, _)| status != 200),
        "plain HTTP must not be served on a TLS port"
    );

    // A renewed certificate (here from another CA) is served after SIGHUP, without a restart.
    let renewed = ControllerFiles::new(&scratch.0.join("renewed"));
    let (new_ca, new_cert, new_key) = renewed.certificate();
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    controller.signal(libc::SIGHUP);
    controller.wait_for("TLS certificate", Duration::from_secs(10));
    let api = Api::with_ca(&controller.url, &new_ca);
    assert_eq!(api.get("/api/v1/nodes", ADMIN_TOKEN), (200, json!([])));
    assert!(
        Api::with_ca(&controller.url, &ca)
            .try_get("/api/v1/nodes", ADMIN_TOKEN)
            .is_err(),
        "the old certificate is still served"
    );
    // One that cannot be loaded changes nothing.
    std::fs::write(&key, "not a key\n").unwrap();
    controller.signal(libc::SIGHUP);
    controller.wait_for("kept the previous TLS certificate", Duration::from_secs(10));
    assert_eq!(api.get("/api/v1/nodes", ADMIN_TOKEN), (200, json!([])));
}

/// SIGHUP reads the token files again: a rotated fleet token is in force at once, the old one
/// refused; token files that are invalid change nothing.
#[test]
fn tokens_are_read_again_on_sighup() {
    let scratch = Scratch::new("rotate");
    let files = ControllerFiles::new(&scratch.0);
    let mut controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    let reports = "/api/v1/reports";
    let body = |seq| report("node-r", "machine-r", seq, 10, vec![]);
    assert_eq!(api.post_json(reports, FLEET_TOKEN, &body(1)).0, 200);

    let rotated = "fleet-token-rotated-61c0a9e4d2b7";
    std::fs::write(files.dir.join("nodes.token"), format!("{rotated}\n")).unwrap();
    controller.signal(libc::SIGHUP);
    let line = controller.wait_for("SIGHUP: tokens", Duration::from_secs(10));
    assert!(line.contains("(2 admin, 1 node tokens)"), "{line}");
    expect_refused(
        api.post_json(reports, FLEET_TOKEN, &body(2)),
        401,
        "unknown token",
    );
    assert_eq!(api.post_json(reports, rotated, &body(2)).0, 200);
    assert_eq!(api.get("/api/v1/nodes", ADMIN_TOKEN).0, 200);

    // The admin token in the node file: refused at start, and kept out on SIGHUP too.
    std::fs::write(
        files.dir.join("nodes.token"),
        format!("{rotated}\n{ADMIN_TOKEN}\n"),
    )
    .unwrap();
    controller.signal(libc::SIGHUP);
    let line = controller.wait_for("SIGHUP: kept the previous tokens", Duration::from_secs(10));
    assert!(line.contains("also the admin token"), "{line}");
    assert_eq!(api.post_json(reports, rotated, &body(3)).0, 200);
    expect_refused(
        api.post_json(reports, ADMIN_TOKEN, &body(4)),
        403,
        "use a node token",
    );
}

/// Bad configurations stop the controller at start with a clear message.
#[test]
fn bad_configurations_are_refused() {
    let scratch = Scratch::new("config");
    let files = ControllerFiles::new(&scratch.0);
    let run = |args: &[&str]| {
        std::process::Command::new(egress_monitor_tests::controller_binary())
            .args(args)
            .output()
            .unwrap()
    };
    let admin = files.dir.join("admin.token");
    let nodes = files.dir.join("nodes.token");
    let short = files.dir.join("short.token");
    secret_file(&short, "tooshort\n");
    let admin_as_node = files.dir.join("admin-as-node.token");
    secret_file(&admin_as_node, &format!("{ADMIN_TOKEN}\n"));
    let loose = files.dir.join("loose.token");
    std::fs::write(&loose, format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (
            vec!["--db".into(), "mysql://x".into()],
            3,
            "`mysql://x` is not a database".into(),
        ),
        (
            vec!["--admin-token-file".into(), short.display().to_string()],
            2,
            format!("{}:1: a token is at least 16", short.display()),
        ),
        (
            vec![
                "--node-token-file".into(),
                admin_as_node.display().to_string(),
            ],
            2,
            "a node token is also the admin token".into(),
        ),
        (
            vec!["--admin-token-file".into(), loose.display().to_string()],
            2,
            format!(
                "{} can be read by other users (mode 644): a token file must be its owner's alone",
                loose.display()
            ),
        ),
        (
            vec!["--tls-cert".into(), admin.display().to_string()],
            2,
            "--tls-key".into(),
        ),
    ];
    for (overrides, code, message) in cases {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--db".into(),
            files.sqlite(),
            "--admin-token-file".into(),
            admin.display().to_string(),
            "--node-token-file".into(),
            nodes.display().to_string(),
        ];
        for pair in overrides.chunks(2) {
            match args.iter().position(|a| *a == pair[0]) {
                Some(i) => args[i + 1] = pair[1].clone(),
                None => args.extend(pair.iter().cloned()),
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run(&refs);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{overrides:?}: {stderr}");
        assert!(
            stderr.contains(&message),
            "{overrides:?}: `{stderr}` lacks `{message}`"
        );
    }
}

/// `egress-monitor controller` still starts the controller for one release: it runs the
/// controller's own program with the same arguments, and says it is deprecated.
#[test]
fn the_old_controller_command_runs_the_controller_program() {
    let scratch = Scratch::new("alias");
    let files = ControllerFiles::new(&scratch.0);
    let output = std::process::Command::new(egress_monitor_tests::daemon_binary())
        .env("PATH", "/nonexistent")
        .args(["controller", "--listen", "127.0.0.1:0", "--db", "mysql://x"])
        .arg("--admin-token-file")
        .arg(files.dir.join("admin.token"))
        .arg("--node-token-file")
        .arg(files.dir.join("nodes.token"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`egress-monitor controller` is deprecated")
            && stderr.contains("egress-monitor-controller: cannot open the database mysql://x"),
        "{stderr}"
    );
    assert_eq!(output.status.code(), Some(3), "{stderr}");
}

/// A fleet policy naming a service tags file is refused: the controller would read its own
/// file and every node another.
#[test]
fn a_fleet_policy_naming_a_service_tags_file_is_refused() {
    let scratch = Scratch::new("tags");
    let files = ControllerFiles::new(&scratch.0);
    std::fs::write(scratch.0.join("tags.json"), r#"{"values": []}"#).unwrap();
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    let (status, body) = api.put_policy(&format!(
        "[service_tags]\nfile = \"{}\"\ntags = [\"Storage\"]\n",
        scratch.0.join("tags.json").display()
    ));
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("a fleet policy cannot name a service tags file"),
        "{body}"
    );
}

/// The page, rendered by a real browser: the fleet table, the violation, the tops, the policy.
#[test]
fn the_page_in_a_real_browser() {
    let scratch = Scratch::new("page");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let api = Api::new(&controller.url);
    let body = report(
        "web-7",
        "machine-w",
        1,
        10,
        vec![event(
            "203.0.113.77",
            "/opt/app/<script>alert(1)</script>",
            9,
        )],
    );
    assert_eq!(api.post_json("/api/v1/reports", FLEET_TOKEN, &body).0, 200);
    assert_eq!(api.put_policy("# the fleet's\n[[rule]]\nname = \"mirror\"\ncidr = \"198.51.100.0/24\"\naction = \"allow\"\n").0, 200);
    assert_eq!(
        api.put_json("/api/v1/mode", ADMIN_TOKEN, &json!({"mode": "observe"}))
            .0,
        200
    );

    // Without the token: 401 and a browser's login prompt.
    let (status, _) = api.get("/", "");
    assert_eq!(status, 401);
    assert_eq!(
        api.get("/", FLEET_TOKEN).0,
        401,
        "a node token does not open the page"
    );

    let dom = browse(&format!("{}/", controller.url), ADMIN_TOKEN, &scratch.0);
    for needle in [
        "egress-monitor fleet",
        "data-node=\"web-7\"",
        "class=\"state drifted\"",
        "runs its local policy, the fleet's is v1",
        "203.0.113.77:443",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "name = \"mirror\"",
        "0 of 1 nodes run it",
        // The fleet's history, newest first.
        "<tr data-change=\"mode\" data-version=\"1\">",
        "<tr data-change=\"policy\" data-version=\"1\">",
    ] {
        assert!(dom.contains(needle), "the page lacks `{needle}`:\n{dom}");
    }
    assert!(
        !dom.contains("<script>alert"),
        "the page runs what a node sent"
    );
    let wrong = browse(
        &format!("{}/", controller.url),
        "wrong-token-0123456789",
        &scratch.0,
    );
    assert!(
        !wrong.contains("data-node"),
        "the page showed the fleet without the token"
    );
}

/// The controller's own metrics (`--metrics`, no token): requests by route pattern and status,
/// reports by outcome, events stored, nodes by state read at the scrape.
#[test]
fn the_controllers_own_metrics() {
    let scratch = Scratch::new("controller-metrics");
    let files = ControllerFiles::new(&scratch.0);
    let metrics = format!("127.0.0.1:{}", free_port());
    let controller = Controller::start(&files, &files.sqlite(), 0, &["--metrics", &metrics]);
    let api = Api::new(&controller.url);
    let text = scrape(&metrics);
    assert_sample(&text, "egress_monitor_controller_database_up", 1);
    assert_sample(
        &text,
        "egress_monitor_controller_nodes{state=\"observing\"}",
        0,
    );

    let reports = "/api/v1/reports";
    let first = report(
        "node-m",
        "machine-m",
        1,
        10,
        vec![
            event("203.0.113.1", "/bin/a", 1),
            event("203.0.113.2", "/bin/b", 1),
        ],
    );
    let second = report(
        "node-m",
        "machine-m",
        2,
        10,
        vec![event("203.0.113.3", "/bin/c", 1)],
    );
    for (body, token, status) in [
        (&first, FLEET_TOKEN, 200),
        (&first, FLEET_TOKEN, 200),
        (&second, FLEET_TOKEN, 200),
        (&second, "not-a-token", 401),
    ] {
        assert_eq!(api.post_json(reports, token, body).0, status);
    }
    assert_eq!(api.delete("/api/v1/nodes/nobody", ADMIN_TOKEN).0, 404);
    assert_eq!(api.get("/no/such/route", ADMIN_TOKEN).0, 404);

    let text = scrape(&metrics);
    let requests = "egress_monitor_controller_requests_total";
    assert_sample(
        &text,
        &format!("{requests}{{route=\"{reports}\",status=\"200\"}}"),
        3,
    );
    assert_sample(
        &text,
        &format!("{requests}{{route=\"{reports}\",status=\"401\"}}"),
        1,
    );
    assert_sample(
        &text,
        &format!("{requests}{{route=\"/api/v1/nodes/{{node_id}}\",status=\"404\"}}"),
        1,
    );
    assert_sample(
        &text,
        &format!("{requests}{{route=\"unmatched\",status=\"404\"}}"),
        1,
    );
    assert_sample(
        &text,
        &format!("egress_monitor_controller_request_duration_seconds_count{{route=\"{reports}\"}}"),
        4,
    );
    let outcomes = "egress_monitor_controller_reports_total";
    assert_sample(&text, &format!("{outcomes}{{outcome=\"stored\"}}"), 2);
    assert_sample(&text, &format!("{outcomes}{{outcome=\"duplicate\"}}"), 1);
    assert_sample(&text, "egress_monitor_controller_events_stored_total", 3);
    assert_sample(
        &text,
        "egress_monitor_controller_nodes{state=\"observing\"}",
        1,
    );
    assert_sample(&text, "egress_monitor_controller_nodes{state=\"stale\"}", 0);
}

/// A connection that never completes its first request is closed (after 10 s); one that made a
/// request and then idles longer than that (a node's pooled connection between reports) is
/// kept and serves the next one.
#[test]
fn trickled_first_requests_are_cut_idle_connections_kept() {
    use std::io::{Read as _, Write as _};
    let scratch = Scratch::new("trickle");
    let files = ControllerFiles::new(&scratch.0);
    let controller = Controller::start(&files, &files.sqlite(), 0, &[]);
    let address = controller.url.trim_start_matches("http://").to_owned();
    let open = || {
        let stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    };
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let answer = |stream: &mut std::net::TcpStream| {
        let mut text = String::new();
        let mut buffer = [0u8; 1024];
        while !text.contains("{\"status\":\"ok\"}") {
            let n = stream.read(&mut buffer).expect("an answer");
            assert!(n > 0, "closed after: {text}");
            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        text
    };
    let mut idle = open();
    idle.write_all(request.as_bytes()).unwrap();
    assert!(answer(&mut idle).starts_with("HTTP/1.1 200"));
    // Headers begun, never finished.
    let mut trickling = open();
    write!(trickling, "GET /healthz HTTP/1.1\r\nHost: {address}\r\n").unwrap();
    let mut buffer = [0u8; 64];
    match trickling.read(&mut buffer) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the trickling connection was not closed: {other:?}"),
    }
    // The idle connection, unused for longer than that, still serves.
    std::thread::sleep(Duration::from_secs(2));
    idle.write_all(request.as_bytes()).unwrap();
    assert!(answer(&mut idle).starts_with("HTTP/1.1 200"));
}
