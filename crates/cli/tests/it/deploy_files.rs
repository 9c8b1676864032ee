//! The deployment files this machine can check without a container engine or a cluster: the
//! systemd unit (`deploy/systemd/`) and the Kubernetes manifests (`deploy/kubernetes/`), each
//! read by the tool that would read it, and both held to the compose stack's settings:
//!
//! - `systemd-analyze verify` accepts the unit, pointed at the binary under test, without a
//!   single warning, and `systemd-analyze security` rates its sandbox OK;
//! - a real node, traced with strace from start to final flush, makes no system call and opens
//!   no socket family that the unit's sandbox would refuse;
//! - kubernetes-validate accepts every manifest against the Kubernetes schemas it bundles
//!   (offline, strict: an unknown field fails), and refuses a broken copy;
//! - the compose nodes, the unit with its environment file and the manifests set the same
//!   environment variables, each a setting of `tally serve`, with values `tally check-config`
//!   accepts; they serve on the same port and are probed on the same paths;
//! - every stop timeout covers the drain delay, the drain timeout and a final flush.
//!
//! `systemd-analyze` comes from Debian's `systemd` package and kubernetes-validate from PyPI,
//! in a virtualenv of its own (`target/kubernetes-validate`, or `$TALLY_KUBERNETES_VALIDATE`);
//! scripts/test installs both. A test that misses one fails and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_yaml_ng::Value as Yaml;

use crate::helpers::postgres::fresh_database;
use crate::helpers::process::TallyProcess;
use crate::helpers::root;
use crate::helpers::yaml::{seq, str_at, str_seq};

const UNIT: &str = "deploy/systemd/tally.service";
const UNIT_ENV: &str = "deploy/systemd/tally.env";
const KUBERNETES: &str = "deploy/kubernetes";
const STATEFULSET: &str = "deploy/kubernetes/statefulset.yaml";
const CONFIGMAP: &str = "deploy/kubernetes/configmap.yaml";
const SECRET_EXAMPLE: &str = "deploy/kubernetes/secret.example.yaml";
const COMPOSE: &str = "deploy/compose.yaml";
const HAPROXY_CFG: &str = "deploy/haproxy/haproxy.cfg";

/// The time a final flush gets beyond the drain, in every stop timeout: a normal flush takes
/// milliseconds, a large one after an outage a few statements of `--db-timeout` (5 s) at most.
const FLUSH_ALLOWANCE: Duration = Duration::from_secs(10);

/// The Kubernetes versions the manifests are validated against: 1.28, the oldest meant (the
/// StatefulSet's volume retention policy is on by default from 1.27), and the newest whose
/// schemas kubernetes-validate bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.28.0", "1.37.0"];

// ---------------------------------------------------------------------------------------------
// systemd

#[test]
fn systemd_analyze_verifies_the_unit_without_a_warning() {
    let unit = read(UNIT);
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/local/bin/tally serve"),
        "{UNIT}: ExecStart must run /usr/local/bin/tally serve"
    );
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = unit_with_binary(&dir, &unit);
    let out = systemd_analyze(&["verify", copy.to_str().unwrap()]);
    // verify exits 0 on an unknown setting or a bad value, which it only prints: any output
    // is a mistake in the file.
    assert!(
        out.status.success() && output_text(&out).trim().is_empty(),
        "systemd-analyze verify {UNIT}:\n{}",
        output_text(&out)
    );

    // The same check on a broken copy speaks up, so the one above could fail.
    let broken = unit.replace("TimeoutStopSec=30s", "TimeoutStopSec=soon");
    assert_ne!(broken, unit, "the copy is not broken");
    let copy = unit_with_binary(&dir, &broken);
    let out = systemd_analyze(&["verify", copy.to_str().unwrap()]);
    assert!(
        output_text(&out).contains("soon"),
        "systemd-analyze verify let a broken TimeoutStopSec pass:\n{}",
        output_text(&out)
    );
}

#[test]
fn systemd_analyze_rates_the_unit_sandbox_ok() {
    // Exposure 0.0 (locked down) to 10.0 (none); the threshold is in tenths. Below 2.0 is
    // what systemd calls OK; a unit without hardening rates about 9.6.
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let copy = unit_with_binary(&dir, text);
        systemd_analyze(&[
            "security",
            "--offline=yes",
            "--threshold=20",
            copy.to_str().unwrap(),
        ])
    };
    let out = check(&read(UNIT));
    assert!(
        out.status.success(),
        "systemd-analyze security rates {UNIT} above 2.0:\n{}",
        output_text(&out)
    );
    let bare = "[Service]\nExecStart=/usr/local/bin/tally serve\n";
    assert!(
        !check(bare).status.success(),
        "systemd-analyze security passed a unit without hardening"
    );
}

#[test]
fn the_unit_runs_tally_as_its_own_user_keeps_its_state_and_outlasts_the_drain() {
    let service = unit_service_section();
    let one = |key: &str| {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .next_back()
            .unwrap_or_else(|| panic!("{UNIT}: no {key}="))
    };
    // Tally does not notify systemd; Type=notify would wait for a message that never comes.
    assert_eq!(one("Type"), "exec");
    assert_eq!(one("User"), "tally");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("KillMode"), "mixed");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("RestartPreventExitStatus"), "2");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("EnvironmentFile"), "/etc/tally/tally.env");
    // The journal lives in the state directory, the only place ProtectSystem=strict leaves
    // writable, and the user that sysusers file creates owns it.
    let env = systemd_env();
    assert_eq!(one("StateDirectory"), "tally");
    assert_eq!(env["TALLY_DATA_DIR"], "/var/lib/tally");
    assert!(
        read("deploy/systemd/tally.sysusers")
            .lines()
            .any(|l| l.starts_with("u tally - ") && l.contains(" /var/lib/tally ")),
        "tally.sysusers must create the tally user with /var/lib/tally as its home"
    );

    let stop = duration(one("TimeoutStopSec"));
    let drain = duration(&env["TALLY_DRAIN_DELAY"]) + duration(&env["TALLY_DRAIN_TIMEOUT"]);
    assert!(
        stop >= drain + FLUSH_ALLOWANCE,
        "{UNIT}: TimeoutStopSec {stop:?} leaves no time for the final flush after a drain of {drain:?}"
    );

    let files: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    let connections: u64 = env
        .get("TALLY_MAX_CONNECTIONS")
        .map_or(10_000, |n| n.parse().unwrap());
    assert!(
        files >= connections + 1_000,
        "{UNIT}: LimitNOFILE {files} leaves too little beside {connections} connections"
    );
}

/// The sandbox refuses, with EPERM, every system call outside `SystemCallFilter=` and every
/// socket family outside `RestrictAddressFamilies=`: a node that needed one would fail in
/// ways no test here could see. So a real node runs under strace (start, requests, flushes,
/// SIGTERM, final flush) and each call it made must be one the unit allows.
#[test]
fn every_system_call_and_socket_family_a_node_uses_is_allowed_by_the_unit() {
    let service = unit_service_section();
    let setting = |key: &str| {
        service
            .iter()
            .rfind(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{UNIT}: no {key}="))
    };
    let filter = setting("SystemCallFilter");
    assert!(
        !filter.contains('~'),
        "{UNIT}: this test reads SystemCallFilter as an allow list: {filter}"
    );
    let mut allowed = BTreeSet::new();
    for group in filter.split_whitespace() {
        syscall_group(group, &mut allowed);
    }
    assert!(allowed.contains("fdatasync"), "{allowed:?}");
    let families: BTreeSet<String> = setting("RestrictAddressFamilies")
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    let db = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let data_dir = dir.path().join("data");
    let strace = TallyProcess::start_wrapped(
        &["strace", "-f", "-qq", "-o", trace.to_str().unwrap()],
        &data_dir,
        &["--flush-interval", "100ms"],
        &[("DATABASE_URL", db.url.as_str())],
    );
    let http = reqwest::blocking::Client::new();
    for path in ["/health", "/ready", "/metrics"] {
        assert!(
            http.get(strace.url(path))
                .send()
                .unwrap()
                .status()
                .is_success()
        );
    }
    for i in 0..20 {
        let answer = http
            .post(strace.url("/increment"))
            .json(&serde_json::json!({"key": format!("k{}", i % 4), "value": 1}))
            .send()
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    std::thread::sleep(Duration::from_millis(500));
    // strace's child is Tally: stop it as systemd would, and strace ends with it.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.pid())).unwrap();
    let tally: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on the pid of a process that strace, our child, has not reaped.
    assert_eq!(unsafe { libc::kill(tally, libc::SIGTERM) }, 0);
    let mut strace = strace;
    assert!(
        strace.wait(Duration::from_secs(60)).success(),
        "{}",
        strace.log()
    );
    assert!(
        strace.log().contains("final flush done"),
        "{}",
        strace.log()
    );

    let trace = std::fs::read_to_string(trace).unwrap();
    let mut used = BTreeSet::new();
    for line in trace.lines() {
        // `PID name(args...) = result`; resumed calls and signals are not new calls.
        let Some((_, call)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let call = call.trim_start();
        if let Some((name, _)) = call.split_once('(')
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            used.insert(name.to_owned());
        }
        if let Some(rest) = call.strip_prefix("socket(") {
            let family = rest.split(',').next().unwrap_or_default();
            assert!(
                families.contains(family),
                "{UNIT}: RestrictAddressFamilies lacks {family}, which the node uses: {line}"
            );
        }
    }
    assert!(
        used.contains("fdatasync") && used.contains("accept4"),
        "{used:?}"
    );
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "{UNIT}: SystemCallFilter refuses system calls the node makes: {refused:?}"
    );
}

/// The system calls of a `SystemCallFilter=` entry: a group (`@name`, expanded by
/// systemd-analyze, groups within it too) or one call.
fn syscall_group(entry: &str, into: &mut BTreeSet<String>) {
    if !entry.starts_with('@') {
        into.insert(entry.to_owned());
        return;
    }
    let out = systemd_analyze(&["syscall-filter", entry]);
    assert!(out.status.success(), "{}", output_text(&out));
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.starts_with('@') {
            syscall_group(name, into);
        } else {
            into.insert(name.to_owned());
        }
    }
}

/// The unit with ExecStart pointed at the binary under test, as `DIR/tally.service`.
fn unit_with_binary(dir: &tempfile::TempDir, unit: &str) -> PathBuf {
    let text = unit.replace(
        "ExecStart=/usr/local/bin/tally ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_tally")),
    );
    let path = dir.path().join("tally.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn systemd_analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): run scripts/test, which installs it (Debian package `systemd`)"
            )
        })
}

/// `(key, value)` of each setting of the unit's `[Service]` section, in order.
fn unit_service_section() -> Vec<(String, String)> {
    let mut section = "";
    let mut settings = Vec::new();
    for line in read(UNIT).lines().map(str::trim) {
        if line.starts_with('[') {
            section = if line == "[Service]" { "service" } else { "" };
        } else if section == "service" && !line.is_empty() && !line.starts_with('#') {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{UNIT}: `{line}`"));
            settings.push((k.to_owned(), v.to_owned()));
        }
    }
    settings
}

/// The environment the unit gives Tally: its Environment= lines, then the environment file,
/// which overrides them (as systemd applies them).
fn systemd_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v) in unit_service_section() {
        if k == "Environment" {
            let (name, value) = v.split_once('=').expect("Environment=NAME=VALUE");
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    for line in read(UNIT_ENV).lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT_ENV}: `{line}`"));
        env.insert(name.to_owned(), value.to_owned());
    }
    env
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

#[test]
fn kubernetes_validate_accepts_every_manifest_and_refuses_a_broken_one() {
    let manifests = manifests();
    let mut resources = 0;
    for path in &manifests {
        resources += documents(path).len();
    }
    for version in KUBERNETES_VERSIONS {
        let out = kubernetes_validate(version, &manifests);
        let text = output_text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate {version} refused a manifest:\n{text}"
        );
        // One line per resource, each passed: a file it skipped (no schema for its kind) or
        // warned about would not count as checked.
        let passed = text.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(passed, resources, "kubernetes-validate {version}:\n{text}");
        assert!(
            !text.contains("WARN") && !text.contains("ERROR"),
            "kubernetes-validate {version}:\n{text}"
        );
    }

    // A misspelt field and a value of the wrong type are refused, so the check above could fail.
    let statefulset = read(STATEFULSET);
    let dir = tempfile::tempdir().unwrap();
    for (what, broken) in [
        (
            "an unknown field",
            statefulset.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:"),
        ),
        (
            "a string for a number",
            statefulset.replace("replicas: 3", "replicas: \"3\""),
        ),
    ] {
        assert_ne!(broken, statefulset, "{what}: the copy is not broken");
        let path = dir.path().join("broken.yaml");
        std::fs::write(&path, broken).unwrap();
        let out = kubernetes_validate(KUBERNETES_VERSIONS[0], &[path]);
        assert!(
            !out.status.success() && output_text(&out).contains("did not validate"),
            "kubernetes-validate accepted a StatefulSet with {what}:\n{}",
            output_text(&out)
        );
    }
}

#[test]
fn the_kustomization_applies_every_manifest_but_the_example_secret() {
    let kustomization = yaml(&format!("{KUBERNETES}/kustomization.yaml"));
    let listed: BTreeSet<PathBuf> = str_seq(&kustomization, "resources")
        .into_iter()
        .map(|r| root().join(KUBERNETES).join(r))
        .collect();
    let expected: BTreeSet<PathBuf> = manifests()
        .into_iter()
        .filter(|p| !p.ends_with(Path::new(SECRET_EXAMPLE).file_name().unwrap()))
        .collect();
    assert_eq!(
        listed, expected,
        "{KUBERNETES}/kustomization.yaml resources"
    );
    assert!(
        kustomization.get("namespace").is_none(),
        "the manifests name no namespace"
    );
}

#[test]
fn the_statefulset_keeps_a_volume_per_node_probes_ready_and_drains_before_sigterm() {
    let set = statefulset();
    assert_eq!(str_at(&set, &["kind"]), "StatefulSet");
    let spec = &set["spec"];
    let pod = &spec["template"]["spec"];
    let container = tally_container();
    let env = kubernetes_env();

    // Each pod is one node: its name is the node id, and its own volume holds the journal.
    assert_eq!(
        str_at(
            &container_env(&container, "TALLY_NODE_ID"),
            &["valueFrom", "fieldRef", "fieldPath"]
        ),
        "metadata.name"
    );
    let claims = seq(spec, "volumeClaimTemplates");
    let claim = str_at(&claims[0], &["metadata", "name"]);
    let mount = seq(&container, "volumeMounts")
        .iter()
        .find(|m| str_at(m, &["name"]) == claim)
        .unwrap_or_else(|| panic!("{STATEFULSET}: the claim {claim} is not mounted"));
    assert_eq!(str_at(mount, &["mountPath"]), env["TALLY_DATA_DIR"]);
    assert_eq!(
        str_seq(&claims[0]["spec"], "accessModes"),
        ["ReadWriteOnce"]
    );
    for when in ["whenDeleted", "whenScaled"] {
        assert_eq!(
            str_at(spec, &["persistentVolumeClaimRetentionPolicy", when]),
            "Retain",
            "{STATEFULSET}: a volume may hold a journal"
        );
    }

    assert_eq!(probe_path(&container, "readinessProbe"), "/ready");
    assert_eq!(probe_path(&container, "livenessProbe"), "/health");
    assert_eq!(probe_path(&container, "startupProbe"), "/health");

    // preStop, then SIGTERM: the drain delay, requests in flight, a final flush; all within the
    // grace period, which counts from the start of preStop.
    let pre_stop = str_seq(&container["lifecycle"]["preStop"]["exec"], "command");
    let [sleep, seconds] = pre_stop[..] else {
        panic!("{STATEFULSET}: preStop {pre_stop:?}")
    };
    assert_eq!(sleep, "sleep");
    let pre_stop = Duration::from_secs(seconds.parse().unwrap());
    assert!(pre_stop >= Duration::from_secs(3), "preStop {pre_stop:?}");
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    let drain = duration(&env["TALLY_DRAIN_DELAY"]) + duration(&env["TALLY_DRAIN_TIMEOUT"]);
    assert!(
        grace >= pre_stop + drain + FLUSH_ALLOWANCE,
        "{STATEFULSET}: terminationGracePeriodSeconds {grace:?} leaves no time for the final flush after {pre_stop:?} of preStop and a drain of {drain:?}"
    );

    // The image's user, on a read-only root: only the volume is written.
    let dockerfile = read("Dockerfile");
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert!(
        dockerfile.contains(&format!("USER {uid}:")),
        "runAsUser {uid} is not the Dockerfile's USER"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Yaml::Bool(true));
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"],
        Yaml::Bool(true)
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        Yaml::Bool(false)
    );

    // The Services, the budget and the scrape annotations all find these pods.
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let budget = documents(&root().join(KUBERNETES).join("poddisruptionbudget.yaml"));
    assert_eq!(&budget[0]["spec"]["selector"]["matchLabels"], labels);
    let services = documents(&root().join(KUBERNETES).join("service.yaml"));
    assert!(
        services
            .iter()
            .any(|s| str_at(s, &["metadata", "name"]) == str_at(spec, &["serviceName"])),
        "{STATEFULSET}: serviceName names no Service"
    );
    for service in &services {
        assert_eq!(&service["spec"]["selector"], labels);
    }
}

#[test]
fn the_validator_found_is_the_version_scripts_test_pins() {
    // scripts/test pins the validator's version; the one found must be that one, so that a
    // stale virtualenv does not validate against other schemas.
    let script = read("scripts/test");
    let pinned = script
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VALIDATE_VERSION="))
        .expect("scripts/test pins kubernetes-validate");
    let out = Command::new(kubernetes_validate_program())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pinned);
}

fn kubernetes_validate_program() -> PathBuf {
    let path = std::env::var_os("TALLY_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/kubernetes-validate/bin/kubernetes-validate"));
    assert!(
        path.is_file(),
        "kubernetes-validate is not installed at {}: run scripts/test, which installs it from \
         PyPI into target/kubernetes-validate (TALLY_KUBERNETES_VALIDATE may name another)",
        path.display()
    );
    path
}

/// kubernetes-validate in strict mode (an unknown field fails) against one Kubernetes version.
fn kubernetes_validate(version: &str, files: &[PathBuf]) -> Output {
    Command::new(kubernetes_validate_program())
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .unwrap()
}

/// The manifests of `deploy/kubernetes`: every YAML file but the kustomization, which is not a
/// Kubernetes resource.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(KUBERNETES))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{KUBERNETES}: {files:?}");
    files
}

/// The YAML documents of one file (a file may hold several, separated by `---`).
fn documents(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("\n---\n")
        .map(|doc| {
            serde_yaml_ng::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

fn statefulset() -> Yaml {
    documents(&root().join(STATEFULSET)).remove(0)
}

fn tally_container() -> Yaml {
    let set = statefulset();
    seq(&set["spec"]["template"]["spec"], "containers")
        .iter()
        .find(|c| str_at(c, &["name"]) == "tally")
        .cloned()
        .expect("a container named tally")
}

fn container_env(container: &Yaml, name: &str) -> Yaml {
    seq(container, "env")
        .iter()
        .find(|e| str_at(e, &["name"]) == name)
        .cloned()
        .unwrap_or_else(|| panic!("{STATEFULSET}: no {name}"))
}

fn probe_path(container: &Yaml, probe: &str) -> String {
    let get = &container[probe]["httpGet"];
    assert_eq!(
        str_at(get, &["port"]),
        "http",
        "{probe}: the container's named port"
    );
    str_at(get, &["path"]).to_owned()
}

/// The environment the pods get: the image's ENV, the ConfigMap, then the container's own
/// variables, with the example Secret's connection string and the first pod's name.
fn kubernetes_env() -> BTreeMap<String, String> {
    let mut env = dockerfile_env();
    let config = documents(&root().join(CONFIGMAP)).remove(0);
    for (k, v) in config["data"].as_mapping().unwrap() {
        env.insert(k.as_str().unwrap().into(), v.as_str().unwrap().into());
    }
    let secret = documents(&root().join(SECRET_EXAMPLE)).remove(0);
    for var in seq(&tally_container(), "env") {
        let name = str_at(var, &["name"]).to_owned();
        let value = if let Some(v) = var.get("value") {
            v.as_str().unwrap().to_owned()
        } else if let Some(key) = var["valueFrom"]["secretKeyRef"]["key"].as_str() {
            assert_eq!(
                str_at(var, &["valueFrom", "secretKeyRef", "name"]),
                str_at(&secret, &["metadata", "name"])
            );
            str_at(&secret, &["stringData", key]).to_owned()
        } else {
            assert_eq!(
                str_at(var, &["valueFrom", "fieldRef", "fieldPath"]),
                "metadata.name",
                "{name}"
            );
            format!("{}-0", str_at(&statefulset(), &["metadata", "name"]))
        };
        env.insert(name, value);
    }
    env
}

// ---------------------------------------------------------------------------------------------
// In step with the compose stack

#[test]
fn compose_systemd_and_kubernetes_set_the_same_settings_and_tally_accepts_each() {
    let sets = [
        ("compose", compose_env()),
        ("systemd", systemd_env()),
        ("kubernetes", kubernetes_env()),
    ];

    // Each name is a setting of `tally serve`: a misspelt one would be ignored in silence.
    let help = tally(&["serve", "--help"], &BTreeMap::new());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for (what, env) in &sets {
        for name in env.keys() {
            assert!(
                help.contains(&format!("[env: {name}="))
                    || help.contains(&format!("[env: {name}]")),
                "{what}: {name} is not a setting of `tally serve`"
            );
        }
    }

    // The same settings everywhere: one added to one way of running Tally is added to all.
    let names = |env: &BTreeMap<String, String>| env.keys().cloned().collect::<BTreeSet<_>>();
    for (what, env) in &sets[1..] {
        assert_eq!(
            names(env),
            names(&sets[0].1),
            "{what} and compose set different variables"
        );
    }

    // And Tally takes every value: check-config parses them as `serve` would.
    for (what, env) in &sets {
        let out = tally(&["check-config"], env);
        assert!(
            out.status.success(),
            "{what}: tally check-config refuses the environment {env:?}:\n{}",
            output_text(&out)
        );
    }
    let mut broken = sets[0].1.clone();
    broken.insert("TALLY_DRAIN_TIMEOUT".into(), "soon".into());
    let out = tally(&["check-config"], &broken);
    assert_eq!(
        out.status.code(),
        Some(2),
        "check-config took TALLY_DRAIN_TIMEOUT=soon"
    );
}

#[test]
fn compose_systemd_and_kubernetes_serve_on_one_port_and_probe_the_same_paths() {
    let port = |what: &str, env: &BTreeMap<String, String>| -> u16 {
        let listen = env
            .get("TALLY_LISTEN")
            .unwrap_or_else(|| panic!("{what}: no TALLY_LISTEN"));
        listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{what}: TALLY_LISTEN={listen}"))
    };
    let compose_port = port("compose", &compose_env());
    assert_eq!(port("systemd", &systemd_env()), compose_port);
    assert_eq!(port("kubernetes", &kubernetes_env()), compose_port);
    assert!(read("Dockerfile").contains(&format!("EXPOSE {compose_port}\n")));

    // Kubernetes: the container port, the Services and the scrape annotation.
    let container = tally_container();
    let http = seq(&container, "ports")
        .iter()
        .find(|p| str_at(p, &["name"]) == "http")
        .expect("a port named http");
    assert_eq!(http["containerPort"].as_u64(), Some(compose_port.into()));
    for service in documents(&root().join(KUBERNETES).join("service.yaml")) {
        let ports = seq(&service["spec"], "ports");
        assert_eq!(ports[0]["port"].as_u64(), Some(compose_port.into()));
        assert_eq!(str_at(&ports[0], &["targetPort"]), "http");
    }
    let annotations = &statefulset()["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        str_at(annotations, &["prometheus.io/port"]),
        compose_port.to_string()
    );
    assert_eq!(str_at(annotations, &["prometheus.io/path"]), "/metrics");

    // The balancer's check in compose (HAProxy) is Kubernetes's readiness, the image's
    // HEALTHCHECK its liveness.
    let ready = probe_path(&container, "readinessProbe");
    let alive = probe_path(&container, "livenessProbe");
    let haproxy = read(HAPROXY_CFG);
    let balanced: Vec<&str> = haproxy
        .lines()
        .skip_while(|l| *l != "backend tally")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(char::is_whitespace))
        .map(str::trim)
        .collect();
    assert!(
        balanced.contains(&format!("option httpchk GET {ready}").as_str()),
        "{HAPROXY_CFG}: backend tally checks another path than readiness {ready}"
    );
    assert!(
        read("Dockerfile").contains(&format!("GET {alive} HTTP/1.0")),
        "the Dockerfile's HEALTHCHECK asks another path than liveness {alive}"
    );
}

/// The environment of the first compose node: the image's ENV, then compose's.
fn compose_env() -> BTreeMap<String, String> {
    let mut compose: Yaml = serde_yaml_ng::from_str(&read(COMPOSE)).unwrap();
    compose.apply_merge().unwrap();
    let mut env = dockerfile_env();
    let node = &compose["services"]["tally-1"]["environment"];
    for (k, v) in node.as_mapping().expect("tally-1 has an environment") {
        let value = v.as_str().unwrap();
        // Compose substitutes `${VAR:-default}` from the shell: take the default.
        let value = match (value.find("${"), value.find(":-"), value.find('}')) {
            (Some(start), Some(sep), Some(end)) if start < sep && sep < end => {
                format!(
                    "{}{}{}",
                    &value[..start],
                    &value[sep + 2..end],
                    &value[end + 1..]
                )
            }
            _ => value.to_owned(),
        };
        env.insert(k.as_str().unwrap().into(), value);
    }
    env
}

/// The variables the image's `ENV` sets (one instruction, `NAME=VALUE` pairs).
fn dockerfile_env() -> BTreeMap<String, String> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let line = text
        .lines()
        .find(|l| l.starts_with("ENV "))
        .expect("the Dockerfile sets ENV");
    line["ENV ".len()..]
        .split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("ENV NAME=VALUE");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Runs the binary under test with exactly `env` (and PATH), in an empty directory.
fn tally(args: &[&str], env: &BTreeMap<String, String>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .current_dir(dir.path())
        .output()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("`{text}` is not a duration: {e}"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
