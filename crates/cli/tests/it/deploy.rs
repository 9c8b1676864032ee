//! The deployment files (`deploy/`, `Dockerfile`) checked with what runs on this machine. The
//! compose stack itself needs a Docker engine, which the development machines and CI do not
//! have, so each part is checked on its own and against the others:
//!
//! - HAProxy parses the balancer config (`haproxy -c`), which checks `/ready` and never resends
//!   a request that may have reached a node;
//! - promtool checks the Prometheus config and the alert rules and runs the rules' unit tests;
//! - every metric and label that the dashboard and the alerts name appears in the `/metrics` of
//!   a real node, and the dashboard shows every metric Tally exports;
//! - a real Prometheus scrapes a real node, HAProxy in front of it and postgres_exporter on its
//!   database with the stack's jobs, relabelling and alert rules: every dashboard query returns
//!   data and every rule evaluates without error;
//! - every alert links to a section of the runbooks that a real node serves;
//! - the compose file agrees with haproxy.cfg, prometheus.yml and the Grafana provisioning, and
//!   `docker compose config` validates it where the compose plugin is installed;
//! - the Dockerfile has the expected shape, and its HEALTHCHECK command is run against a node.
//!
//! `haproxy`, `promtool`, `prometheus` and `prometheus-postgres-exporter` come from Debian's
//! packages of those names (`promtool` from `prometheus`), which scripts/test installs; a test
//! that misses one fails and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use crate::helpers::app::TestApp;
use crate::helpers::promql::{
    grouping_labels, label_replace_targets, label_value, parse_matchers, read_braces, selectors,
    tally_selectors,
};
use crate::helpers::root;
use crate::helpers::yaml::{seq, str_at, str_seq};

const COMPOSE: &str = "deploy/compose.yaml";
const HAPROXY_CFG: &str = "deploy/haproxy/haproxy.cfg";
const PROMETHEUS_YML: &str = "deploy/prometheus/prometheus.yml";
const ALERTS_YML: &str = "deploy/prometheus/alerts.yml";
const ALERT_TESTS_YML: &str = "deploy/prometheus/tests.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/tally.json";
const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/prometheus.yml";
const DASHBOARD_PROVIDERS: &str = "deploy/grafana/provisioning/dashboards/tally.yml";

// ---------------------------------------------------------------------------------------------
// HAProxy

#[test]
fn haproxy_accepts_the_balancer_config() {
    let out = run("haproxy", &["-c", "-f", HAPROXY_CFG]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "haproxy -c rejected {HAPROXY_CFG}:\n{text}"
    );
    // The node names resolve only inside compose; `init-addr ... none` lets HAProxy start
    // without them, with a warning. Any other warning is a mistake in the file.
    for line in text.lines().filter(|l| l.contains("[WARNING]")) {
        assert!(
            line.contains("could not resolve address 'tally-"),
            "haproxy -c warns about {HAPROXY_CFG}: {line}"
        );
    }
}

#[test]
fn haproxy_sends_requests_only_to_ready_nodes_and_never_resends_one() {
    let cfg = HaproxyConfig::parse(&read(HAPROXY_CFG));
    let backend = cfg.section("backend tally");
    for directive in [
        "option httpchk GET /ready",
        "http-check expect status 200",
        "http-reuse safe",
        "option redispatch 1",
    ] {
        assert!(
            backend.iter().any(|d| d == directive)
                || cfg.section("defaults").contains(&directive.to_owned()),
            "{HAPROXY_CFG}: the tally backend lacks `{directive}`"
        );
    }
    // An increment is not idempotent: the only retry allowed is one where the request was
    // never sent, wherever a `retry-on` is written.
    let retry_on: Vec<&String> = cfg
        .sections
        .iter()
        .flat_map(|(_, directives)| directives)
        .filter(|d| d.starts_with("retry-on"))
        .collect();
    assert_eq!(
        retry_on,
        ["retry-on conn-failure"],
        "{HAPROXY_CFG}: retry-on"
    );
    let (inter, fall) = cfg.check_timing();
    assert!(
        inter <= Duration::from_secs(2) && fall <= 3,
        "checks too slow to drain a node: inter {inter:?}, fall {fall}"
    );
    let servers: BTreeSet<String> = cfg.servers().into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        servers,
        compose_nodes(&compose()),
        "{HAPROXY_CFG}: one server per Tally node of {COMPOSE}"
    );
    for (name, addr) in cfg.servers() {
        assert_eq!(
            addr,
            format!("{name}:3333"),
            "{HAPROXY_CFG}: server {name} must name its compose service"
        );
    }
    // When no node is ready (PostgreSQL down), the live nodes take the traffic as backups:
    // one per node, tracking a /health check, never checked by /ready.
    let backups: BTreeSet<String> = cfg
        .section("backend tally")
        .iter()
        .filter(|d| d.starts_with("server ") && d.split(' ').any(|w| w == "backup"))
        .map(|d| {
            let words: Vec<&str> = d.split(' ').collect();
            let tracked = words
                .iter()
                .position(|w| *w == "track")
                .map(|i| words[i + 1]);
            assert_eq!(
                tracked,
                Some(format!("alive/{}", words[2].trim_end_matches(":3333")).as_str()),
                "{d}"
            );
            words[2].trim_end_matches(":3333").to_owned()
        })
        .collect();
    assert_eq!(
        backups,
        compose_nodes(&compose()),
        "{HAPROXY_CFG}: one backup per node"
    );
    assert!(
        cfg.section("backend alive")
            .iter()
            .any(|d| d == "option httpchk GET /health")
    );
}

/// The directives of haproxy.cfg by section, comments and blank lines left out.
struct HaproxyConfig {
    sections: Vec<(String, Vec<String>)>,
}

impl HaproxyConfig {
    fn parse(text: &str) -> HaproxyConfig {
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            let content = line.split('#').next().unwrap().trim_end();
            if content.trim().is_empty() {
                continue;
            }
            let words = content.split_whitespace().collect::<Vec<_>>().join(" ");
            if content.starts_with(char::is_whitespace) {
                let (_, directives) = sections.last_mut().expect("a directive before any section");
                directives.push(words);
            } else {
                sections.push((words, Vec::new()));
            }
        }
        HaproxyConfig { sections }
    }

    fn section(&self, header: &str) -> &Vec<String> {
        &self
            .sections
            .iter()
            .find(|(h, _)| h == header)
            .unwrap_or_else(|| panic!("{HAPROXY_CFG} has no `{header}` section"))
            .1
    }

    /// `(name, address)` of each server of the tally backend.
    /// The regular (not backup) servers of the tally backend.
    fn servers(&self) -> Vec<(String, String)> {
        self.section("backend tally")
            .iter()
            .filter(|d| !d.split(' ').any(|w| w == "backup"))
            .filter_map(|d| d.strip_prefix("server "))
            .map(|rest| {
                let mut words = rest.split(' ');
                (
                    words.next().unwrap().to_owned(),
                    words.next().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The health check interval and the failures that take a server down, from
    /// `default-server` (HAProxy's defaults are 2 s and 3).
    fn check_timing(&self) -> (Duration, u32) {
        let default_server = self
            .section("backend tally")
            .iter()
            .find(|d| d.starts_with("default-server "))
            .expect("the tally backend has a default-server line");
        let words: Vec<&str> = default_server.split(' ').collect();
        let after = |key: &str| words.iter().position(|w| *w == key).map(|i| words[i + 1]);
        let inter = after("inter").map_or(Duration::from_secs(2), |v| {
            humantime::parse_duration(v).expect("inter is a duration")
        });
        let fall = after("fall").map_or(3, |v| v.parse().expect("fall is a number"));
        (inter, fall)
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus and the alert rules

#[test]
fn promtool_accepts_the_prometheus_config_and_the_alert_rules() {
    for args in [
        ["check", "config", PROMETHEUS_YML],
        ["check", "rules", ALERTS_YML],
    ] {
        let out = run("promtool", &args);
        assert!(
            out.status.success(),
            "promtool {}:\n{}",
            args.join(" "),
            output_text(&out)
        );
    }
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let out = run("promtool", &["test", "rules", ALERT_TESTS_YML]);
    assert!(
        out.status.success(),
        "promtool test rules {ALERT_TESTS_YML}:\n{}",
        output_text(&out)
    );
}

#[test]
fn every_alert_has_a_runbook_and_a_test_that_fires_it_beside_series_that_do_not() {
    let alerts = alert_rules();
    assert!(
        alerts.len() >= 5,
        "{ALERTS_YML} has only {} alerts",
        alerts.len()
    );
    let tests = yaml(ALERT_TESTS_YML);
    let runbook = read(RUNBOOK);
    for rule in &alerts {
        let name = str_at(rule, &["alert"]);
        let severity = str_at(rule, &["labels", "severity"]);
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description"] {
            assert!(
                !str_at(rule, &["annotations", key]).trim().is_empty(),
                "{name}: no {key}"
            );
        }
        let anchor = name.to_lowercase();
        assert_eq!(
            str_at(rule, &["annotations", "runbook_url"]),
            format!("{{{{ $externalLabels.runbooks }}}}#{anchor}"),
            "{name}: runbook_url"
        );
        assert!(
            has_anchor(&runbook, &anchor),
            "{RUNBOOK} has no heading for #{anchor} ({name})"
        );
        // A test where the alert fires for some instances while others have series too.
        let fires_beside_quiet_series = seq(&tests, "tests").iter().any(|test| {
            let instances: BTreeSet<String> = seq(test, "input_series")
                .iter()
                .filter_map(|s| label_value(str_at(s, &["series"]), "instance"))
                .collect();
            seq(test, "alert_rule_test").iter().any(|case| {
                let fired: BTreeSet<String> = seq(case, "exp_alerts")
                    .iter()
                    .map(|a| str_at(a, &["exp_labels", "instance"]).to_owned())
                    .collect();
                str_at(case, &["alertname"]) == name
                    && !fired.is_empty()
                    && fired.is_subset(&instances)
                    && fired.len() < instances.len()
            })
        });
        assert!(
            fires_beside_quiet_series,
            "{ALERT_TESTS_YML} has no test where {name} fires for one series and not for another"
        );
    }
    // The unit tests expand the links as Prometheus does, from the same base.
    let base = runbooks_base();
    for test in seq(&tests, "tests") {
        assert_eq!(
            str_at(test, &["external_labels", "runbooks"]),
            base,
            "{ALERT_TESTS_YML}: test `{}` links elsewhere than {PROMETHEUS_YML}",
            str_at(test, &["name"])
        );
    }
}

const RUNBOOK: &str = "docs/operations.md";

/// Where the alerts' runbook links start: the external label `runbooks` of prometheus.yml.
fn runbooks_base() -> String {
    str_at(
        &yaml(PROMETHEUS_YML),
        &["global", "external_labels", "runbooks"],
    )
    .to_owned()
}

#[tokio::test]
async fn every_alert_links_to_its_runbook_section_on_a_node() {
    // The stack's link goes through the balancer on the Docker host; each node serves the
    // same page, so the test asks a node the same path.
    let base = reqwest::Url::parse(&runbooks_base()).expect("runbooks is a URL");
    assert!(
        ["http", "https"].contains(&base.scheme()) && base.host_str().is_some(),
        "{PROMETHEUS_YML}: runbooks must be an absolute http(s) URL: {base}"
    );
    let compose = compose();
    let published = str_seq(service(&compose, "haproxy"), "ports");
    let port = base.port_or_known_default().unwrap();
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!("{port}:3333"))),
        "{base}: no service of {COMPOSE} is published on port {port}: {published:?}"
    );

    let app = TestApp::spawn_with(&["--auth", "required"]).await;
    let anonymous = reqwest::Client::new();
    let page = anonymous
        .get(app.url(base.path()))
        .send()
        .await
        .expect("request sent");
    assert_eq!(page.status(), StatusCode::OK, "GET {}", base.path());
    let kind = page.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/html"), "{kind}");
    let html = page.text().await.unwrap();
    for rule in alert_rules() {
        let name = str_at(&rule, &["alert"]);
        let link = str_at(&rule, &["annotations", "runbook_url"])
            .replace("{{ $externalLabels.runbooks }}", base.as_str());
        let link = reqwest::Url::parse(&link).unwrap_or_else(|e| panic!("{name}: {link}: {e}"));
        assert_eq!(link.path(), base.path(), "{name}: {link}");
        let anchor = link
            .fragment()
            .unwrap_or_else(|| panic!("{name}: {link} has no #"));
        assert!(
            html.contains(&format!("<h3 id=\"{anchor}\">{name}</h3>")),
            "{name}: the page at {link} has no section #{anchor}"
        );
    }
}

/// Whether a Markdown page has a heading whose GitHub anchor is `anchor`, or an explicit
/// `id`/`name` attribute with that value.
fn has_anchor(markdown: &str, anchor: &str) -> bool {
    markdown.lines().any(|line| {
        line.trim_start().starts_with('#')
            && tally::http::runbook_anchor(line.trim_start_matches('#')) == anchor
            || line.contains(&format!("id=\"{anchor}\""))
            || line.contains(&format!("name=\"{anchor}\""))
    })
}

fn alert_rules() -> Vec<Yaml> {
    seq(&yaml(ALERTS_YML), "groups")
        .iter()
        .flat_map(|g| seq(g, "rules").to_vec())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The dashboard

/// The rows of the dashboard that show what Tally's nodes depend on, each with the prefix of
/// its exporter's metrics and the template variable that selects its instances.
const DEPENDENCY_ROWS: &[(&str, &str, &str)] = &[
    ("PostgreSQL", "pg_", "$postgres"),
    ("HAProxy", "haproxy_", "$haproxy"),
];

#[test]
fn the_dashboard_is_provisioned_and_every_panel_queries_the_selected_nodes() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "tally");
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 36,
        "schemaVersion"
    );
    // The data source is a variable, so that the dashboard imports into any Grafana; the
    // stack's provisioned Prometheus is its default there.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a `{name}` template variable"))
    };
    let source = variable("datasource");
    assert_eq!(source["type"], "datasource");
    assert_eq!(source["query"], "prometheus");
    assert_eq!(
        variables[0]["name"], "datasource",
        "the data source comes first: the other variables query it"
    );
    assert_eq!(
        seq(&yaml(DATASOURCES), "datasources")[0]["isDefault"],
        Yaml::Bool(true),
        "{DATASOURCES}: the stack's Prometheus is the default data source"
    );
    const SOURCE: &str = "${datasource}";

    let node = variable("node");
    assert_eq!(
        node["query"]["query"],
        "label_values(tally_build_info, instance)"
    );
    for (_, prefix, var) in DEPENDENCY_ROWS {
        let v = variable(var.trim_start_matches('$'));
        let query = v["query"]["query"].as_str().unwrap();
        assert!(
            query.starts_with(&format!("label_values({prefix}")) && query.ends_with(", instance)"),
            "{var}: {query}"
        );
    }
    for v in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], SOURCE, "variable {}", v["name"]);
    }

    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut areas: Vec<(String, [u64; 4])> = Vec::new();
    // The row a panel is in: the last row above it (panels are listed top to bottom).
    let mut current_row = String::new();
    let mut rows = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "two panels with id {}",
            panel["id"]
        );
        let g = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {g}");
        for (other, [ox, oy, ow, oh]) in &areas {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels `{title}` and `{other}` overlap");
        }
        if let Some((_, [_, last_y, _, _])) = areas.last() {
            assert!(*last_y <= y, "`{title}` is listed after a panel below it");
        }
        areas.push((title.to_owned(), [x, y, w, h]));
        if panel["type"] == "row" {
            current_row = title.to_owned();
            rows.push(current_row.clone());
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], SOURCE, "{title}: data source");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        // A panel of a dependency's row reads its exporter's metrics, for the instances its
        // variable selects; any other panel reads a node's, for the selected nodes.
        let (prefixes, var): (Vec<&str>, &str) = match DEPENDENCY_ROWS
            .iter()
            .find(|(row, _, _)| current_row.starts_with(row))
        {
            Some((_, prefix, var)) => (vec![prefix], var),
            None => (crate::helpers::promql::NODE_METRICS.to_vec(), "$node"),
        };
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: an empty query");
            assert_eq!(target["datasource"]["uid"], SOURCE, "{title}: data source");
            let selectors = selectors(expr, &prefixes);
            assert!(
                !selectors.is_empty(),
                "{title}: `{expr}` reads none of {prefixes:?}"
            );
            for s in selectors {
                assert!(
                    s.matchers
                        .contains(&("instance".into(), "=~".into(), var.to_string())),
                    "{title}: {} ignores the selection {var} in `{expr}`",
                    s.metric
                );
            }
        }
    }
    for (row, _, _) in DEPENDENCY_ROWS {
        assert!(
            rows.iter().any(|r| r.starts_with(row)),
            "no row for {row}: {rows:?}"
        );
    }

    // Freshness is drawn against its 10 s bound.
    let freshness = panels
        .iter()
        .find(|p| {
            p["type"] == "timeseries"
                && exprs_of(p)
                    .iter()
                    .any(|e| e.contains("tally_oldest_unpersisted"))
        })
        .expect("a freshness graph");
    let defaults = &freshness["fieldConfig"]["defaults"];
    assert_ne!(
        defaults["custom"]["thresholdsStyle"]["mode"], "off",
        "freshness: threshold not drawn"
    );
    assert!(
        defaults["thresholds"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["value"] == 10),
        "freshness: no threshold at 10 s"
    );

    // Grafana finds the dashboard where compose mounts it.
    let providers = yaml(DASHBOARD_PROVIDERS);
    let provider = &seq(&providers, "providers")[0];
    let compose = compose();
    let grafana = service(&compose, "grafana");
    let mounts = bind_mounts(grafana);
    let path = str_at(provider, &["options", "path"]);
    assert!(
        mounts
            .iter()
            .any(|(src, dst)| dst == path && src == "./grafana/dashboards"),
        "compose does not mount deploy/grafana/dashboards at {path}: {mounts:?}"
    );
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool parses rule expressions: each query becomes a recording rule, with Grafana's
    // variables replaced by values Prometheus accepts.
    let rules: Vec<Json> = dashboard_queries()
        .iter()
        .enumerate()
        .map(|(i, (title, expr))| {
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": promql(expr, ".*"), "labels": {"panel": title}})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
    let out = run("promtool", &["check", "rules", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dashboard queries PromQL rejects:\n{}",
        output_text(&out)
    );
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_metrics_and_labels_a_node_exports() {
    let app = node_to_exercise().await;
    exercise(&app).await;
    let exposition = Exposition::parse(&wait_for_flush(&app).await);

    let mut queries: Vec<(String, String)> = dashboard_queries();
    queries.extend(alert_rules().iter().map(|r| {
        (
            str_at(r, &["alert"]).to_owned(),
            str_at(r, &["expr"]).to_owned(),
        )
    }));
    let mut used = BTreeSet::new();
    for (what, expr) in &queries {
        // The PostgreSQL and HAProxy panels read their exporters' metrics, which the real
        // Prometheus test below checks against the exporters themselves.
        if tally_selectors(expr).is_empty() {
            continue;
        }
        for s in tally_selectors(expr) {
            let labels = exposition.samples.get(&s.metric).unwrap_or_else(|| {
                panic!(
                    "{what}: `{}` is not exported by Tally (exported: {:?})",
                    s.metric,
                    exposition.samples.keys()
                )
            });
            for (label, _, _) in &s.matchers {
                assert!(
                    labels.contains(label) || ["instance", "job"].contains(&label.as_str()),
                    "{what}: {} has no label `{label}` (it has {labels:?})",
                    s.metric
                );
            }
            used.insert(s.metric);
        }
        let known: BTreeSet<&str> = exposition
            .samples
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        let made = label_replace_targets(expr);
        for label in grouping_labels(expr) {
            assert!(
                known.contains(label.as_str())
                    || ["instance", "job"].contains(&label.as_str())
                    || made.contains(&label),
                "{what}: groups by `{label}`, a label no Tally metric has"
            );
        }
    }

    // The dashboard shows every metric a node exports (a histogram through any of its series).
    let dashboard_used: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|(_, e)| tally_selectors(e))
        .map(|s| s.metric)
        .collect();
    for family in &exposition.families {
        let shown = dashboard_used.iter().any(|m| {
            m.strip_prefix(family.as_str())
                .is_some_and(|rest| ["", "_total", "_bucket", "_sum", "_count"].contains(&rest))
        });
        assert!(shown, "{DASHBOARD} has no panel for {family}: add one");
    }
}

#[tokio::test]
async fn a_real_prometheus_scraping_a_node_answers_every_dashboard_query_and_evaluates_every_rule()
{
    let app = node_to_exercise().await;
    let exporters = Dependencies::start(&app);
    let prometheus = Prometheus::start(&[
        ("tally", app.addr.port()),
        ("haproxy", exporters.haproxy_port),
        ("postgres", exporters.postgres_port),
    ]);
    let http = reqwest::Client::new();

    // The stack's relabelling names the node by host alone, and the `node` variable lists it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let instance = loop {
        exercise(&app).await;
        let values = prometheus
            .get(
                &http,
                "/api/v1/label/instance/values?match[]=tally_build_info",
            )
            .await;
        if let Some(v) = values["data"].as_array().and_then(|a| a.first()) {
            break v.as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the node: {values}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        instance, "127.0.0.1",
        "the tally job's relabelling keeps the port"
    );

    // Traffic until every query has data: rates need a few scrapes of a moving counter.
    let queries = dashboard_queries();
    let mut empty: Vec<String>;
    loop {
        exercise(&app).await;
        empty = Vec::new();
        for (title, expr) in &queries {
            let expr = promql(expr, &instance);
            let answer = prometheus.query(&http, &expr).await;
            assert_eq!(
                answer["status"], "success",
                "{title}: `{expr}` failed: {answer}"
            );
            if answer["data"]["result"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                empty.push(format!("{title}: {expr}"));
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );

    // Every alert rule has been evaluated against real series, without error.
    loop {
        let rules = prometheus.get(&http, "/api/v1/rules").await;
        let rules: Vec<&Json> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(
            rules.len(),
            alert_rules().len(),
            "Prometheus loaded other rules than {ALERTS_YML}"
        );
        if rules.iter().all(|r| r["health"] != "unknown") {
            for r in rules {
                assert_eq!(
                    r["health"], "ok",
                    "rule {} fails on real series: {}",
                    r["name"], r["lastError"]
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not evaluate the rules"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What a node depends on, with the exporters the stack scrapes: HAProxy in front of the node
/// with its own Prometheus exporter (served as in haproxy.cfg), and postgres_exporter on the
/// node's database (Debian's `prometheus-postgres-exporter`).
struct Dependencies {
    haproxy: Child,
    postgres: Child,
    haproxy_port: u16,
    postgres_port: u16,
    _dir: tempfile::TempDir,
}

impl Dependencies {
    fn start(app: &TestApp) -> Dependencies {
        // The stack serves HAProxy's metrics this way, on the port its haproxy job scrapes.
        let stats = HaproxyConfig::parse(&read(HAPROXY_CFG));
        let exporter = "http-request use-service prometheus-exporter if { path /metrics }";
        assert!(
            stats
                .section("frontend stats")
                .iter()
                .any(|d| d == exporter),
            "{HAPROXY_CFG}: the stats frontend does not serve /metrics"
        );
        let dir = tempfile::tempdir().unwrap();
        let (front, haproxy_port) = (free_port(), free_port());
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend tally\n  bind 127.0.0.1:{front}\n  default_backend tally\n\
                 backend tally\n  option httpchk GET /ready\n  server node {} check inter 1s\n\
                 frontend stats\n  bind 127.0.0.1:{haproxy_port}\n  {exporter}\n",
                app.addr
            ),
        )
        .unwrap();
        let haproxy = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| missing_program("haproxy", e));

        let config = app.db.config();
        let mut dsn = String::from("sslmode=disable");
        match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => dsn += &format!(" host={host}"),
            tokio_postgres::config::Host::Unix(dir) => dsn += &format!(" host={}", dir.display()),
        }
        if let Some(port) = config.get_ports().first() {
            dsn += &format!(" port={port}");
        }
        if let Some(user) = config.get_user() {
            dsn += &format!(" user={user}");
        }
        if let Some(password) = config.get_password() {
            dsn += &format!(" password={}", String::from_utf8_lossy(password));
        }
        if let Some(db) = config.get_dbname() {
            dsn += &format!(" dbname={db}");
        }
        let postgres_port = free_port();
        let postgres = Command::new("prometheus-postgres-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{postgres_port}"))
            .env("DATA_SOURCE_NAME", dsn)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| missing_program("prometheus-postgres-exporter", e));
        Dependencies {
            haproxy,
            postgres,
            haproxy_port,
            postgres_port,
            _dir: dir,
        }
    }
}

impl Drop for Dependencies {
    fn drop(&mut self) {
        for child in [&mut self.haproxy, &mut self.postgres] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Prometheus server, from Debian's package, scraping every second with the jobs of
/// prometheus.yml (the tally job's relabelling included), each on the target given, and the
/// stack's alert rules.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, u16)]) -> Prometheus {
        let mut config = yaml(PROMETHEUS_YML);
        let jobs = targets
            .iter()
            .map(|(name, port)| {
                let mut job = seq(&config, "scrape_configs")
                    .iter()
                    .find(|j| str_at(j, &["job_name"]) == *name)
                    .unwrap_or_else(|| panic!("a {name} scrape job"))
                    .clone();
                job["static_configs"] =
                    serde_yaml_ng::from_str(&format!("[{{targets: ['127.0.0.1:{port}']}}]"))
                        .unwrap();
                job
            })
            .collect();
        config["scrape_configs"] = Yaml::Sequence(jobs);
        config["global"]["scrape_interval"] = "1s".into();
        config["global"]["scrape_timeout"] = "1s".into();
        config["global"]["evaluation_interval"] = "1s".into();
        config["rule_files"] =
            Yaml::Sequence(vec![root().join(ALERTS_YML).to_str().unwrap().into()]);

        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| missing_program("prometheus", e));
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// GET a path of the HTTP API, waiting for the server to be up (it answers 503 in plain
    /// text while it starts).
    async fn get(&self, http: &reqwest::Client, path: &str) -> Json {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = match http.get(format!("{}{path}", self.url)).send().await {
                Ok(r) if r.status() == StatusCode::OK => {
                    return r.json().await.expect("Prometheus answers JSON");
                }
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "Prometheus does not answer {path}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn query(&self, http: &reqwest::Client, expr: &str) -> Json {
        let r = http
            .post(format!("{}/api/v1/query", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("query={}", crate::helpers::app::encode_path(expr)))
            .send()
            .await
            .expect("Prometheus answers");
        r.json().await.expect("Prometheus answers JSON")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

fn exprs_of(panel: &Json) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["expr"].as_str()).collect())
        .unwrap_or_default()
}

/// `(panel title, expr)` of every query of the dashboard, the `node` variable's included.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut queries: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            exprs_of(p)
                .into_iter()
                .map(move |e| (title.clone(), e.to_owned()))
        })
        .collect();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(metric, label) reads the series of that metric.
            let metric = q
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap();
            let query = if v["name"] == "node" {
                format!("{metric}{{instance=~\"$node\"}}")
            } else {
                metric.to_owned()
            };
            queries.push((format!("variable {}", v["name"]), query));
        }
    }
    queries
}

/// A dashboard query as Prometheus takes it: Grafana's variables replaced, `$node` by `node`,
/// the exporters' instances by any.
fn promql(expr: &str, node: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$node", node)
        .replace("$postgres", ".*")
        .replace("$haproxy", ".*")
}

// ---------------------------------------------------------------------------------------------
// What a node exports

/// A node with access control on (auth and a rate limit no test reaches), whose client
/// (`app.http`) sends an API key with every request, so that [`exercise`] can make it export
/// the access metrics too.
async fn node_to_exercise() -> TestApp {
    let mut app = TestApp::spawn_with(&[
        "--auth",
        "required",
        "--signup",
        "open",
        "--insecure-cookies",
        "--rate-limit",
        "1000000/1s",
    ])
    .await;
    let account = r#"{"email": "deploy@example.org", "password": "a deploy password"}"#;
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    for path in ["/api/users", "/api/sessions"] {
        let r = browser
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(account)
            .send()
            .await
            .expect("request sent");
        assert_eq!(r.status(), StatusCode::CREATED, "{path}");
    }
    let made: Json = browser
        .post(app.url("/api/keys"))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", made["key"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    app.http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    app
}

/// Sends the requests that make a node export every labelled series: accepted, rejected
/// (invalid input) and answered increments, reads, probes, an unknown route, and requests
/// without credentials and with wrong ones.
async fn exercise(app: &TestApp) {
    let anonymous = reqwest::Client::new();
    for key in [None, Some("Bearer tally_0000000000000000_wrong")] {
        let mut request = anonymous.get(app.url("/counters/deploy-check"));
        if let Some(key) = key {
            request = request.header(reqwest::header::AUTHORIZATION, key);
        }
        let r = request.send().await.expect("request sent");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.increment("deploy-check", 1).await, StatusCode::ACCEPTED);
    let batch = r#"[{"key": "deploy-a", "value": 2}, {"key": "deploy-b", "value": 3}]"#;
    assert_eq!(
        app.post_json("/increments", batch).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.increment("deploy-check", 0).await,
        StatusCode::BAD_REQUEST
    );
    app.counter("deploy-check").await;
    let items = r#"[{"id": "i", "tenant": "deploy"}]"#;
    assert_eq!(
        app.post_json("/items", items).await.status(),
        StatusCode::ACCEPTED
    );
    let once = app
        .http
        .post(app.url("/increment"))
        .header("content-type", "application/json")
        .header("idempotency-key", "deploy-check")
        .body(r#"{"key": "deploy-once", "value": 1}"#)
        .send()
        .await
        .expect("request sent");
    assert_eq!(once.status(), StatusCode::ACCEPTED);
    let invalid = r#"[{"id": "", "tenant": "deploy"}]"#;
    assert_eq!(
        app.post_json("/items", invalid).await.status(),
        StatusCode::BAD_REQUEST
    );
    for path in [
        "/health",
        "/ready",
        "/openapi.json",
        "/items/deploy/count",
        "/no-such-route",
    ] {
        app.http
            .get(app.url(path))
            .send()
            .await
            .expect("request sent");
    }
}

/// The node's /metrics once a flush has been applied, so flush series exist.
async fn wait_for_flush(app: &TestApp) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = app.metrics().await;
        if text.contains("tally_flushes_total{outcome=\"applied\"}") {
            return text;
        }
        assert!(Instant::now() < deadline, "no flush applied:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sample names of an exposition with their label names, and its metric families.
struct Exposition {
    samples: BTreeMap<String, BTreeSet<String>>,
    families: BTreeSet<String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut families = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let labels = samples.entry(line[..name_end].to_owned()).or_default();
                if line[name_end..].starts_with('{') {
                    let (block, _) = read_braces(&line[name_end..]);
                    labels.extend(parse_matchers(&block).into_iter().map(|(l, _, _)| l));
                }
            }
        }
        Exposition { samples, families }
    }
}

// ---------------------------------------------------------------------------------------------
// The compose file

#[test]
fn the_compose_file_gives_each_node_its_own_id_and_volume_behind_the_balancer() {
    let compose = compose();
    let services: BTreeSet<&str> = compose["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    for s in [
        "postgres",
        "haproxy",
        "prometheus",
        "postgres-exporter",
        "grafana",
    ] {
        assert!(services.contains(s), "{COMPOSE} has no service {s}");
    }
    // The nodes are the same in compose, HAProxy (checked above) and Prometheus, so that a
    // node added to one is added to all.
    let nodes = compose_nodes(&compose);
    assert!(nodes.len() >= 3, "{COMPOSE}: Tally nodes {nodes:?}");
    let targets: BTreeSet<String> = seq(&yaml(PROMETHEUS_YML), "scrape_configs")
        .iter()
        .filter(|j| str_at(j, &["job_name"]) == "tally")
        .flat_map(|j| seq(j, "static_configs").to_vec())
        .flat_map(|c| seq(&c, "targets").to_vec())
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        targets,
        nodes.iter().map(|n| format!("{n}:3333")).collect(),
        "{PROMETHEUS_YML}: tally targets"
    );

    let declared: BTreeSet<&str> = compose["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    let haproxy = HaproxyConfig::parse(&read(HAPROXY_CFG));
    let (inter, fall) = haproxy.check_timing();
    let (mut ids, mut volumes) = (BTreeSet::new(), BTreeSet::new());
    for name in &nodes {
        let node = service(&compose, name);
        let env = |key: &str| str_at(node, &["environment", key]);
        assert!(
            ids.insert(env("TALLY_NODE_ID").to_owned()),
            "{name}: TALLY_NODE_ID shared with another node"
        );
        assert!(
            env("DATABASE_URL").contains("@postgres:5432/"),
            "{name}: DATABASE_URL must name the postgres service (without it Tally starts its own PostgreSQL)"
        );
        assert_eq!(env("TALLY_DATA_DIR"), "/var/lib/tally", "{name}");
        assert_eq!(env("TALLY_LOG_FORMAT"), "json", "{name}");
        let volume = str_seq(node, "volumes")
            .into_iter()
            .find_map(|v| v.strip_suffix(":/var/lib/tally").map(str::to_owned))
            .unwrap_or_else(|| panic!("{name}: no volume at /var/lib/tally"));
        assert!(
            declared.contains(volume.as_str()),
            "{name}: {volume} is not a named volume"
        );
        assert!(
            volumes.insert(volume.clone()),
            "{name}: volume {volume} shared with another node"
        );
        assert_eq!(
            str_at(node, &["depends_on", "postgres", "condition"]),
            "service_healthy",
            "{name}: must wait for PostgreSQL"
        );
        assert_eq!(
            str_at(node, &["build", "context"]),
            "..",
            "{name}: built from the repository root"
        );
        assert!(
            root()
                .join(str_at(node, &["build", "dockerfile"]))
                .is_file(),
            "{name}: no Dockerfile"
        );

        // The balancer must have taken the node out before it stops accepting, and Docker must
        // leave it time to drain and flush before its SIGKILL.
        let drain = duration(env("TALLY_DRAIN_DELAY"));
        let detection = inter * fall;
        assert!(
            drain > detection && drain <= detection * 3,
            "{name}: TALLY_DRAIN_DELAY {drain:?} should be a bit above HAProxy's {detection:?} to mark it down"
        );
        let in_flight = duration(env("TALLY_DRAIN_TIMEOUT"));
        let grace = duration(str_at(node, &["stop_grace_period"]));
        assert!(
            grace >= drain + in_flight + Duration::from_secs(10),
            "{name}: stop_grace_period {grace:?} leaves no time to finish requests and flush"
        );
    }

    let postgres = service(&compose, "postgres");
    assert!(
        str_at(postgres, &["image"]).starts_with("postgres:15"),
        "postgres image"
    );
    assert!(
        str_seq(postgres, "volumes")
            .iter()
            .any(|v| v.ends_with(":/var/lib/postgresql/data"))
    );
    assert!(
        str_seq(&postgres["healthcheck"], "test")
            .iter()
            .any(|t| t.contains("pg_isready")),
        "postgres: healthcheck with pg_isready"
    );

    let balancer = service(&compose, "haproxy");
    assert!(
        str_at(balancer, &["image"]).starts_with("haproxy:2.6"),
        "haproxy image"
    );
    assert!(
        str_seq(balancer, "ports")
            .iter()
            .any(|p| p.ends_with("3333:3333")),
        "haproxy: port 3333 not published"
    );
    assert!(bind_mounts(balancer).contains(&(
        "./haproxy/haproxy.cfg".into(),
        "/usr/local/etc/haproxy/haproxy.cfg".into()
    )));

    // Prometheus reads its rule files where compose mounts them.
    let prometheus = service(&compose, "prometheus");
    let mounts = bind_mounts(prometheus);
    for file in str_seq(&yaml(PROMETHEUS_YML), "rule_files") {
        let target = format!("/etc/prometheus/{file}");
        assert!(
            mounts.iter().any(|(_, dst)| *dst == target),
            "prometheus: {file} is not mounted at {target}"
        );
    }
    assert!(
        mounts
            .iter()
            .any(|(_, dst)| dst == "/etc/prometheus/prometheus.yml")
    );

    let exporter = service(&compose, "postgres-exporter");
    assert!(str_at(exporter, &["environment", "DATA_SOURCE_NAME"]).contains("@postgres:5432/"));

    let grafana = service(&compose, "grafana");
    assert!(bind_mounts(grafana).contains(&(
        "./grafana/provisioning".into(),
        "/etc/grafana/provisioning".into()
    )));

    // Every file or directory mounted from the repository exists.
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        for (src, _) in bind_mounts(svc) {
            assert!(
                root().join("deploy").join(&src).exists(),
                "{name:?}: {src} does not exist"
            );
        }
    }
}

#[test]
fn docker_compose_accepts_the_compose_file_where_its_plugin_is_installed() {
    let has_compose = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_compose {
        // Parsing alone needs no engine, but it needs the compose plugin, which the Debian
        // machines of this project do not have; the test above checks the file's content.
        eprintln!(
            "`docker compose` is not installed: {COMPOSE} was not validated by Compose itself"
        );
        return;
    }
    let out = run("docker", &["compose", "-f", COMPOSE, "config", "--quiet"]);
    assert!(
        out.status.success(),
        "docker compose config:\n{}",
        output_text(&out)
    );
}

fn compose() -> Yaml {
    yaml(COMPOSE)
}

/// The Tally nodes of the compose file: its services named `tally-*`.
fn compose_nodes(compose: &Yaml) -> BTreeSet<String> {
    compose["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|s| s.starts_with("tally-"))
        .map(str::to_owned)
        .collect()
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("{COMPOSE}: no service {name}"))
}

/// `(source, target)` of a service's bind mounts (those whose source is a relative path).
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    if service.get("volumes").is_none() {
        return Vec::new();
    }
    str_seq(service, "volumes")
        .into_iter()
        .filter(|v| v.starts_with('.'))
        .map(|v| {
            let mut parts = v.split(':');
            (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            )
        })
        .collect()
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("`{text}` is not a duration: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_as_a_non_root_user() {
    let instructions = dockerfile();
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS builder"),
        "{}",
        froms[0]
    );
    let runtime_at = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .unwrap();
    let (build, runtime) = instructions.split_at(runtime_at);
    assert!(
        runtime[0].contains("-slim"),
        "a small runtime image: {}",
        runtime[0]
    );

    assert!(
        build
            .iter()
            .any(|i| i.contains("cargo build --release --locked"))
    );
    // The sources the build reads: the workspace's manifests and its crates, among them the
    // service's migrations, which it embeds, and the runbooks it serves.
    let copied: Vec<&str> = build
        .iter()
        .filter_map(|i| i.strip_prefix("COPY "))
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "crates", "docs/operations.md"] {
        assert!(
            copied.iter().any(|c| c
                .split(' ')
                .any(|w| w == needed || w == format!("./{needed}"))),
            "the builder does not copy {needed}: {copied:?}"
        );
    }

    let user = runtime
        .iter()
        .filter_map(|i| i.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets a USER");
    let uid = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&uid), "runs as root: USER {user}");
    for line in [
        "EXPOSE 3333",
        "VOLUME /var/lib/tally",
        "ENTRYPOINT [\"tally\"]",
        "CMD [\"serve\"]",
    ] {
        assert!(
            runtime.iter().any(|i| i == line),
            "the runtime stage lacks `{line}`"
        );
    }
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("COPY --from=builder "))
    );
    assert!(
        runtime
            .iter()
            .any(|i| i.contains("TALLY_DATA_DIR=/var/lib/tally"))
    );

    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for path in ["target", "tally-data", ".git"] {
        assert!(
            ignored.iter().any(|i| i == path),
            ".dockerignore lacks {path}"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "crates"] {
        assert!(
            !ignored.iter().any(|i| i == needed),
            ".dockerignore leaves out {needed}, which the build needs"
        );
    }
    // docs/ stays out but for the runbooks, let back in after every pattern that drops them.
    assert_eq!(
        ignored.last().map(String::as_str),
        Some("!docs/operations.md"),
        ".dockerignore must let docs/operations.md in, last"
    );
}

#[tokio::test]
async fn the_image_healthcheck_passes_on_a_live_node_and_fails_without_one() {
    let command = dockerfile()
        .into_iter()
        .find_map(|i| {
            i.split_once(" CMD ")
                .filter(|_| i.starts_with("HEALTHCHECK "))
                .map(|(_, c)| c.to_owned())
        })
        .expect("a HEALTHCHECK with a CMD");
    let argv: Vec<String> = serde_json::from_str(&command).expect("HEALTHCHECK CMD in exec form");
    let on_port = |port: u16| {
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.replace("/3333", &format!("/{port}")))
            .collect();
        let program = argv[0].clone();
        tokio::task::spawn_blocking(move || {
            Command::new(&program).args(&argv[1..]).status().unwrap()
        })
    };
    assert!(
        command.contains("/3333"),
        "the healthcheck asks port 3333: {command}"
    );

    let app = TestApp::spawn().await;
    assert!(
        on_port(app.addr.port()).await.unwrap().success(),
        "healthcheck failed on a live node"
    );
    assert!(
        !on_port(free_port()).await.unwrap().success(),
        "healthcheck passed with no node"
    );
}

/// The Dockerfile's instructions, continuation lines joined, comments left out.
fn dockerfile() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part.trim_end()),
            None => {
                current.push_str(line);
                instructions.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
                current.clear();
                continue;
            }
        }
        current.push(' ');
    }
    instructions
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A YAML file with its merge keys (`<<: *anchor`) applied, as Compose applies them.
fn yaml(path: &str) -> Yaml {
    let mut value: Yaml =
        serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    value
}

/// Runs a program the tests take from the system, in the repository root.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| missing_program(program, e))
}

fn missing_program(program: &str, e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::NotFound {
        let package = match program {
            "haproxy" | "prometheus-postgres-exporter" => program,
            _ => "prometheus",
        };
        panic!(
            "`{program}` is not installed: run scripts/test, which installs it (Debian package `{package}`)"
        );
    }
    panic!("cannot run {program}: {e}")
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A local port that nothing listens on (the OS picks it; it is free once we let it go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
