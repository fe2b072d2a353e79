//! Bad input and a hostile environment: refused before anything is attached, with one clear
//! sentence and the documented exit code.

use std::process::{Command, Output};

use egress_monitor_tests::{bpffs::BpfFs, cgroup::Cgroup, daemon_binary, require_root};

use crate::stderr;

/// Runs `egress-monitor ARGS`; `run` gets a private pin path, so that even a test that fails
/// never pins anything on the host's own bpf filesystem.
fn run(args: &[&str]) -> Output {
    let bpffs = (args.first() == Some(&"run")).then(|| BpfFs::new().expect("a bpf filesystem"));
    let mut command = Command::new(daemon_binary());
    command.args(args);
    if let Some(bpffs) = &bpffs {
        command.arg("--pin-path").arg(bpffs.pin_path());
    }
    command.output().expect("run egress-monitor")
}

fn scratch_file(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("em-{}-{name}", egress_monitor_tests::unique_id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Programs attached to a cgroup, as bpftool (an independent witness) lists them.
fn attached(cgroup: &Cgroup) -> String {
    let output = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cgroup.path)
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(
        output.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn policy_check_accepts_a_good_file_and_locates_errors_in_a_bad_one() {
    let good = scratch_file(
        "good.toml",
        "mode = \"enforce\"\n[[rule]]\nname = \"m\"\ncidr = \"203.0.113.0/24\"\naction = \"allow\"\n",
    );
    let output = run(&["policy", "check", good.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid"));

    let bad = scratch_file(
        "bad.toml",
        "mode = \"enforce\"\n[[rule]]\nname = \"m\"\ncidr = \"203.0.113.7/24\"\naction = \"allow\"\n",
    );
    let output = run(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "{}:4:8: `203.0.113.7/24` has host bits set",
            bad.display()
        )),
        "{text}"
    );

    let output = run(&["policy", "check", "/nonexistent/em-policy.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output)
            .contains("/nonexistent/em-policy.toml: cannot read the policy file: No such file")
    );
    let _ = std::fs::remove_file(good);
    let _ = std::fs::remove_file(bad);
}

/// A policy file holding an 8 MiB string (in review its error was 16 MiB, the value echoed
/// twice): refused with an error of a few hundred bytes that still names the place. A file over
/// the size limit is refused unread, naming the limit. `policy check` answers no with 1, the
/// commands that use a policy refuse it with 2.
#[test]
fn huge_values_and_huge_files_give_short_errors() {
    let huge = "a".repeat(8 << 20);
    let file = scratch_file(
        "huge.toml",
        &format!(
            "mode = \"enforce\"\n[[rule]]\nname = \"m\"\ncidr = \"{huge}\"\naction = \"allow\"\n"
        ),
    );
    let path = file.to_str().unwrap();
    for (args, code) in [
        (vec!["policy", "check", path], 1),
        (vec!["policy", "show", "--policy", path], 2),
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(code), "{args:?}");
        assert!(
            output.stderr.len() < 2048,
            "{args:?}: {} bytes of stderr",
            output.stderr.len()
        );
        let text = stderr(&output);
        assert!(
            text.contains(&format!("{path}:4:8: `aaaa")) && text.contains("(8388608 bytes)"),
            "{args:?}: {text}"
        );
    }
    let _ = std::fs::remove_file(&file);

    // Sparse: nothing is written, the metadata says how big it is.
    let big = scratch_file("big.toml", "");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(egress_monitor_policy::MAX_FILE_BYTES + 1)
        .unwrap();
    let output = run(&["policy", "show", "--policy", big.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "{}: the policy file holds at least {} bytes, more than the limit of {} bytes",
            big.display(),
            egress_monitor_policy::MAX_FILE_BYTES + 1,
            egress_monitor_policy::MAX_FILE_BYTES
        )),
        "{text}"
    );
    let _ = std::fs::remove_file(&big);
}

#[test]
fn policy_show_prints_the_groups_and_the_effective_rules() {
    let output = run(&[
        "policy",
        "show",
        "--deny",
        "10.1.2.0/24",
        "--allow",
        "198.51.100.0/24",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "group private on",
        "group azure on",
        "group cgnat off",
        "group multicast off",
        "allow 168.63.129.16/32",
        "allow 169.254.169.254/32",
        "allow fc00::/7",
        "deny  10.1.2.0/24",
        "allow 198.51.100.0/24",
        "(everything else)",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn a_bad_policy_is_refused_before_anything_is_attached() {
    require_root();
    let cgroup = Cgroup::new().unwrap();
    let bad = scratch_file("run-bad.toml", "mode = \"enforce\"\nbogus = 1\n");
    let output = run(&[
        "run",
        "--cgroup",
        cgroup.path.to_str().unwrap(),
        "--policy",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("{}:2:1: unknown field `bogus`", bad.display())));
    assert_eq!(attached(&cgroup).trim(), "", "nothing may be attached");
    let output = run(&[
        "run",
        "--cgroup",
        cgroup.path.to_str().unwrap(),
        "--deny",
        "2001:db8::/129",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--deny `2001:db8::/129`: `2001:db8::/129` is not a CIDR"),
        "{}",
        stderr(&output)
    );
    let output = run(&[
        "run",
        "--cgroup",
        cgroup.path.to_str().unwrap(),
        "--events",
        "/nonexistent/dir/events.jsonl",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("cannot open the event output /nonexistent/dir/events.jsonl: No such file")
    );
    assert_eq!(attached(&cgroup).trim(), "", "nothing may be attached");
    let _ = std::fs::remove_file(bad);
}

#[test]
fn bad_controller_settings_are_refused_before_anything_is_attached() {
    require_root();
    let cgroup = Cgroup::new().unwrap();
    let token = scratch_file("node.token", "fleet-token-0123456789abcdef\n");
    let short = scratch_file("short.token", "short\n");
    let spool =
        std::env::temp_dir().join(format!("em-{}-spool", egress_monitor_tests::unique_id()));
    let cases: [(&[&str], &str); 5] = [
        (
            &["--controller", "http://127.0.0.1:1"],
            "--token-file <FILE>",
        ),
        (
            &["--token-file", token.to_str().unwrap()],
            "--controller <URL>",
        ),
        (
            &[
                "--controller",
                "ftp://controller",
                "--token-file",
                token.to_str().unwrap(),
            ],
            "--controller must be an http:// or https:// URL, not `ftp://controller`",
        ),
        (
            &[
                "--controller",
                "http://127.0.0.1:1",
                "--token-file",
                short.to_str().unwrap(),
            ],
            "no token in the file (one line, at least 16 characters)",
        ),
        (
            &[
                "--controller",
                "http://127.0.0.1:1",
                "--token-file",
                token.to_str().unwrap(),
                "--node-id",
                "not a name",
            ],
            "a node id is 1-128 letters",
        ),
    ];
    for (args, message) in cases {
        let mut full = vec!["run", "--cgroup", cgroup.path.to_str().unwrap()];
        full.extend(["--spool-dir", spool.to_str().unwrap()]);
        full.extend_from_slice(args);
        let output = run(&full);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(attached(&cgroup).trim(), "", "nothing may be attached");
    }
    for path in [token, short, spool] {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&path);
    }
}

#[test]
fn a_missing_cgroup_or_interface_is_one_sentence_and_exit_3() {
    require_root();
    for (args, sentence) in [
        (
            vec!["run", "--cgroup", "/sys/fs/cgroup/em-no-such-cgroup"],
            "egress-monitor: cgroup /sys/fs/cgroup/em-no-such-cgroup does not exist\n",
        ),
        (
            vec!["run", "--cgroup", "/tmp"],
            "egress-monitor: /tmp is not a cgroup v2 directory\n",
        ),
        (
            vec!["run", "--hook", "tc", "--iface", "em-nope0"],
            "egress-monitor: no network interface named `em-nope0`\n",
        ),
        (
            vec!["run", "--hook", "tc", "--iface", "lo"],
            "egress-monitor: interface `lo` is not an Ethernet device (link type 772); the TC hook supports Ethernet devices only\n",
        ),
    ] {
        let output = run(&args);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stderr(&output);
        let last = text.lines().last().unwrap_or_default();
        assert_eq!(format!("{last}\n"), sentence, "{args:?}");
        assert!(
            !text.contains("panicked") && !text.contains("backtrace"),
            "{text}"
        );
    }
}

#[test]
fn without_privilege_it_says_what_is_missing() {
    require_root();
    let cgroup = Cgroup::new().unwrap();
    let bpffs = BpfFs::new().unwrap();
    // setpriv (util-linux) runs the daemon as nobody, with no capabilities.
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(daemon_binary())
        .args(["run", "--cgroup", cgroup.path.to_str().unwrap()])
        .arg("--pin-path")
        .arg(bpffs.pin_path())
        .output()
        .expect("setpriv");
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "egress-monitor: loading the firewall needs root, or CAP_BPF (or CAP_SYS_ADMIN) and \
         CAP_NET_ADMIN; this process lacks CAP_BPF and CAP_NET_ADMIN\n"
    );
    assert_eq!(attached(&cgroup).trim(), "");
}

#[test]
fn help_has_examples() {
    let output = run(&["run", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("Examples:") && text.contains("--mode enforce --hook both"),
        "{text}"
    );
}

fn azure_fixture(name: &str) -> String {
    let dir = match name {
        "ServiceTags_Public.json" => "../egress-monitor-policy/fixtures",
        _ => "../egress-monitor/fixtures/azure",
    };
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

/// nsg-audit gates a pipeline: exit 1 when the internet is reachable, 0 when isolated, 2 for a
/// file that is not an NSG export.
#[test]
fn nsg_audit_exit_codes_gate_a_deployment() {
    let output = run(&["nsg-audit", &azure_fixture("nsg-default.json")]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("NOT ISOLATED"), "{text}");
    assert!(
        text.contains(
            "the internet Tcp all ports: allowed by AllowInternetOutBound (priority 65001)"
        ),
        "{text}"
    );

    let output = run(&["nsg-audit", &azure_fixture("nsg-fixed.json"), "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["exposures"], serde_json::json!([]));

    let output = run(&["nsg-audit", &azure_fixture("ServiceTags_Public.json")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not an NSG export"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn service_tags_print_policy_rules_and_refuse_azure_cloud() {
    let tags = azure_fixture("ServiceTags_Public.json");
    let output = run(&[
        "policy",
        "service-tags",
        &tags,
        "--tag",
        "Storage.WestEurope",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.matches("[[rule]]").count(), 3, "{text}");
    let output = run(&["policy", "service-tags", &tags, "--tag", "AzureCloud"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("every Azure tenant"));
}
