//! The monitoring assets under `deploy/`: the Prometheus alerting rules and scrape config
//! pass `promtool check`, the rules fire as intended (`promtool test rules`), the Grafana
//! dashboard is well formed, and every metric (and label) that a rule or a panel uses is
//! one the real binary exports, checked against a scrape of a running gate.
//!
//! Needs promtool (Debian package `prometheus`; scripts/test.sh installs it) and dig.
//! Everything listens on 127.0.0.1: the gate's only upstream is a dead loopback port and
//! its url list is a `file://` URL.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::config_head;
use crate::support::gate::{Gate, dig};
use crate::support::http::{connect, http};
use crate::support::metrics::promtool;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn promtool_ok(args: &[&str]) -> String {
    let (ok, text) = promtool(args, None);
    assert!(ok, "promtool {} failed:\n{text}", args.join(" "));
    text
}

// ---------------------------------------------------------------------------------------
// PromQL: a small tokenizer, enough to find metric names and label names.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// Metric names, label names, function names, keywords.
    Ident(String),
    /// A quoted string (label values); its content is never an identifier.
    Str,
    /// Numbers and durations (`5m`, `0.99`, `1e3`).
    Number,
    Punct(char),
}

fn tokenize(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            toks.push(Tok::Str);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            toks.push(Tok::Number);
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    toks
}

/// What one expression uses: metric names, the label names of each metric's selector, and
/// the label names of `by`/`without`/`on`/`ignoring`/`group_*` clauses.
#[derive(Debug, Default)]
struct Uses {
    metrics: BTreeSet<String>,
    selector_labels: BTreeSet<(String, String)>,
    grouping_labels: BTreeSet<String>,
}

fn uses(expr: &str) -> Uses {
    let toks = tokenize(expr);
    let mut out = Uses::default();
    // The identifiers between a `(`/`{` at `open` and its closing bracket.
    let idents_in = |open: usize, close: char| {
        let mut found = Vec::new();
        let mut j = open + 1;
        while j < toks.len() && toks[j] != Tok::Punct(close) {
            if let Tok::Ident(name) = &toks[j] {
                found.push(name.clone());
            }
            j += 1;
        }
        found
    };
    for (i, tok) in toks.iter().enumerate() {
        let Tok::Ident(name) = tok else { continue };
        let next_is = |c: char| toks.get(i + 1) == Some(&Tok::Punct(c));
        // The gate's own metrics and the standard process metrics it exports.
        if name.starts_with("portcullis_") || name.starts_with("process_") {
            out.metrics.insert(name.clone());
            if next_is('{') {
                for label in idents_in(i + 1, '}') {
                    out.selector_labels.insert((name.clone(), label));
                }
            }
        } else if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&name.as_str())
            && next_is('(')
        {
            out.grouping_labels.extend(idents_in(i + 1, ')'));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The alert rules file, read without a YAML parser: rule blocks and their `expr`.

#[derive(Debug)]
struct Rule {
    alert: String,
    /// The rule's lines, as written.
    block: Vec<String>,
    expr: String,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Every `- alert:` rule of a rules file, with its `expr` (inline, block scalar or a plain
/// scalar continued on more-indented lines).
fn alert_rules(yaml: &str) -> Vec<Rule> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut rules = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = lines[i].trim_start().strip_prefix("- alert:") else {
            i += 1;
            continue;
        };
        let dash = indent(lines[i]);
        let mut end = i + 1;
        while end < lines.len()
            && (lines[end].trim().is_empty()
                || lines[end].trim_start().starts_with('#')
                || indent(lines[end]) > dash)
        {
            end += 1;
        }
        let block: Vec<String> = lines[i..end].iter().map(|l| l.to_string()).collect();
        let mut expr = None;
        for (k, line) in lines[i..end].iter().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("expr:") else {
                continue;
            };
            let key = indent(line);
            let rest = rest.trim();
            let mut text = String::new();
            if !(rest.starts_with('|') || rest.starts_with('>')) {
                text.push_str(rest.trim_matches(|c| c == '"' || c == '\''));
            }
            for more in &lines[i + k + 1..end] {
                if !more.trim().is_empty() && indent(more) <= key {
                    break;
                }
                text.push('\n');
                text.push_str(more.trim());
            }
            expr = Some(text.trim().to_owned());
        }
        rules.push(Rule {
            alert: name.trim().to_owned(),
            expr: expr.unwrap_or_else(|| panic!("alert {name}: no expr")),
            block,
        });
        i = end;
    }
    rules
}

/// The rules file without its `annotations:` maps, for `promtool test rules`, which
/// compares annotations in full (the rules' texts are checked by `promtool check rules`).
fn without_annotations(yaml: &str) -> String {
    let mut out = String::new();
    let mut skip_deeper_than = None;
    for line in yaml.lines() {
        if let Some(level) = skip_deeper_than {
            if line.trim().is_empty() || indent(line) > level {
                continue;
            }
            skip_deeper_than = None;
        }
        if line.trim() == "annotations:" {
            skip_deeper_than = Some(indent(line));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn alerts_yml() -> String {
    read(&deploy("prometheus/alerts.yml"))
}

// ---------------------------------------------------------------------------------------
// The dashboard.

fn dashboard() -> serde_json::Value {
    let path = deploy("grafana/portcullis.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// (where, expr) of every panel target and every query variable.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?}: a target without an expr", panel["title"]));
            out.push((
                format!("panel {:?} target {}", panel["title"], target["refId"]),
                expr.to_owned(),
            ));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = var["query"]["query"]
                .as_str()
                .or_else(|| var["query"].as_str())
                .expect("query variable");
            out.push((format!("variable {}", var["name"]), query.to_owned()));
        }
    }
    out
}

/// Grafana's variables replaced by what a query could get, and `label_values(SELECTOR,
/// LABEL)` by its selector, for `promtool check rules`.
fn as_plain_promql(expr: &str) -> String {
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(args) => args.rsplit_once(',').map_or(args, |(selector, _)| selector),
        None => expr,
    };
    let mut e = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    for var in ["$job", "$instance"] {
        e = e.replace(var, ".*");
    }
    assert!(!e.contains('$'), "an unknown Grafana variable in {expr}");
    e
}

// ---------------------------------------------------------------------------------------
// Tests without a gate.

#[test]
fn the_tokenizer_finds_metrics_and_labels_only() {
    let u = uses(
        r#"histogram_quantile(0.99, sum by (upstream, le) (rate(portcullis_a_bucket{job=~"portcullis_not_a_metric", instance="x"}[5m])))
           / on (job) group_left (version) portcullis_b # portcullis_comment
           > 3 * portcullis_c offset 1d"#,
    );
    assert_eq!(
        u.metrics.iter().collect::<Vec<_>>(),
        ["portcullis_a_bucket", "portcullis_b", "portcullis_c"]
    );
    assert_eq!(
        u.selector_labels,
        BTreeSet::from([
            ("portcullis_a_bucket".to_owned(), "instance".to_owned()),
            ("portcullis_a_bucket".to_owned(), "job".to_owned()),
        ])
    );
    assert_eq!(
        u.grouping_labels,
        BTreeSet::from(["job", "le", "upstream", "version"].map(str::to_owned))
    );
}

#[test]
fn the_rules_reader_finds_every_alert_and_its_expr() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: One\n        expr: portcullis_x == 0\n        for: 1m\n\n      - alert: Two\n        expr: |\n          sum(portcullis_y)\n            > 1\n        labels:\n          severity: warning\n        annotations:\n          summary: s\n";
    let rules = alert_rules(yaml);
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].alert, "One");
    assert_eq!(rules[0].expr, "portcullis_x == 0");
    assert_eq!(rules[1].alert, "Two");
    assert_eq!(rules[1].expr, "sum(portcullis_y)\n> 1");
    assert!(!without_annotations(yaml).contains("summary"));
    assert!(without_annotations(yaml).contains("severity: warning"));
}

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config() {
    let rules = deploy("prometheus/alerts.yml");
    let out = promtool_ok(&["check", "rules", rules.to_str().unwrap()]);
    // promtool and the reader here must agree on the number of rules.
    let count = alert_rules(&alerts_yml()).len();
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "the reader found {count} alerts, promtool said:\n{out}"
    );
    let config = deploy("prometheus/prometheus.yml");
    let out = promtool_ok(&["check", "config", config.to_str().unwrap()]);
    assert!(out.contains("1 rule files found"), "{out}");
    let text = read(&config);
    assert!(text.contains("job_name: portcullis"), "{text}");
    assert!(text.contains("portcullis:9953"), "{text}");
}

#[test]
fn every_alert_has_a_duration_a_severity_and_instructions() {
    let rules = alert_rules(&alerts_yml());
    assert!(rules.len() >= 8, "{rules:#?}");
    let mut names = BTreeSet::new();
    for rule in &rules {
        assert!(names.insert(&rule.alert), "alert {} twice", rule.alert);
        assert!(rule.alert.starts_with("Portcullis"), "{}", rule.alert);
        let has = |key: &str| rule.block.iter().any(|l| l.trim_start().starts_with(key));
        for key in [
            "for:",
            "labels:",
            "annotations:",
            "summary:",
            "description:",
        ] {
            assert!(has(key), "alert {} has no `{key}`", rule.alert);
        }
        let severity = rule
            .block
            .iter()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .unwrap_or_else(|| panic!("alert {} has no severity label", rule.alert))
            .trim();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "alert {}: severity {severity}",
            rule.alert
        );
    }
    // The conditions the gate's operators are promised an alert for.
    for name in [
        "PortcullisDown",
        "PortcullisAllUpstreamsDown",
        "PortcullisUpstreamErrors",
        "PortcullisListStale",
        "PortcullisListRefreshFailing",
        "PortcullisDnsRefusalSpike",
        "PortcullisPossibleDnsTunnel",
        "PortcullisConfigReloadFailed",
        "PortcullisProxyConnectionLimit",
        "PortcullisLogLinesDropped",
    ] {
        assert!(names.contains(&name.to_owned()), "no alert {name}");
    }
}

/// Unit tests of the rules: each alert fires on the situation it is for, not before.
const RULE_TESTS: &str = r#"
rule_files:
  - RULES
evaluation_interval: 1m
tests:
  - name: gate and upstreams
    interval: 1m
    input_series:
      - series: 'up{job="portcullis", instance="gate:9953"}'
        values: '1 1 0x20'
      - series: 'portcullis_upstream_healthy{job="portcullis", instance="gate:9953", upstream="a"}'
        values: '1 1 0x20'
      - series: 'portcullis_upstream_healthy{job="portcullis", instance="gate:9953", upstream="b"}'
        values: '1 1 1 1 0x20'
    alert_rule_test:
      - eval_time: 3m
        alertname: PortcullisDown
        exp_alerts: []
      - eval_time: 10m
        alertname: PortcullisDown
        exp_alerts:
          - exp_labels: {severity: critical, job: portcullis, instance: "gate:9953"}
      - eval_time: 4m
        alertname: PortcullisAllUpstreamsDown
        exp_alerts: []
      - eval_time: 8m
        alertname: PortcullisAllUpstreamsDown
        exp_alerts:
          - exp_labels: {severity: critical, job: portcullis, instance: "gate:9953"}
      - eval_time: 8m
        alertname: PortcullisUpstreamUnhealthy
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953", upstream: a}

  - name: upstream errors
    interval: 1m
    input_series:
      - series: 'portcullis_upstream_errors_total{job="portcullis", instance="gate:9953", upstream="a"}'
        values: '0+0x10 0+30x30'
      - series: 'portcullis_upstream_request_duration_seconds_count{job="portcullis", instance="gate:9953", upstream="a"}'
        values: '0+100x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: PortcullisUpstreamErrors
        exp_alerts: []
      - eval_time: 30m
        alertname: PortcullisUpstreamErrors
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953", upstream: a}

  - name: lists
    interval: 1m
    input_series:
      - series: 'portcullis_list_last_success_timestamp_seconds{job="portcullis", instance="gate:9953", list="stuck"}'
        values: '0x800'
      - series: 'portcullis_list_last_success_timestamp_seconds{job="portcullis", instance="gate:9953", list="fresh"}'
        values: '0+60x800'
      - series: 'portcullis_list_failing{job="portcullis", instance="gate:9953", list="stuck"}'
        values: '0 0 1x800'
      - series: 'portcullis_list_ready{job="portcullis", instance="gate:9953", list="stuck"}'
        values: '1x800'
    alert_rule_test:
      - eval_time: 12h10m
        alertname: PortcullisListStale
        exp_alerts: []
      - eval_time: 13h
        alertname: PortcullisListStale
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953", list: stuck}
      - eval_time: 30m
        alertname: PortcullisListRefreshFailing
        exp_alerts: []
      - eval_time: 70m
        alertname: PortcullisListRefreshFailing
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953", list: stuck}
      - eval_time: 70m
        alertname: PortcullisListNotLoaded
        exp_alerts: []

  - name: refusal spike against a day of baseline
    interval: 1m
    input_series:
      - series: 'portcullis_dns_queries_total{job="portcullis", instance="gate:9953", qtype="A", outcome="blocked"}'
        values: '0+6x1500 9000+60x60'
      - series: 'portcullis_dns_queries_total{job="portcullis", instance="gate:9953", qtype="A", outcome="forwarded"}'
        values: '0+600x1560'
    alert_rule_test:
      - eval_time: 1490m
        alertname: PortcullisDnsRefusalSpike
        exp_alerts: []
      - eval_time: 1530m
        alertname: PortcullisDnsRefusalSpike
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953"}

  - name: dns tunnel and rate limit
    interval: 1m
    input_series:
      - series: 'portcullis_dns_guard_trips_total{job="portcullis", instance="gate:9953", group="agent", action="block", reason="encoded_label"}'
        values: '0x10 1x30'
      - series: 'portcullis_dns_refusals_total{job="portcullis", instance="gate:9953", group="agent", reason="rate_limited"}'
        values: '0x10 0+600x20'
    alert_rule_test:
      - eval_time: 9m
        alertname: PortcullisPossibleDnsTunnel
        exp_alerts: []
      - eval_time: 12m
        alertname: PortcullisPossibleDnsTunnel
        exp_alerts:
          - exp_labels: {severity: critical, job: portcullis, instance: "gate:9953", group: agent, action: block}
      - eval_time: 25m
        alertname: PortcullisPossibleDnsTunnel
        exp_alerts: []
      - eval_time: 13m
        alertname: PortcullisDnsRateLimited
        exp_alerts: []
      - eval_time: 20m
        alertname: PortcullisDnsRateLimited
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953", group: agent}

  - name: reloads and proxy limits
    interval: 1m
    input_series:
      - series: 'portcullis_config_last_reload_successful{job="portcullis", instance="gate:9953"}'
        values: '1x10 0x20 1x20'
      - series: 'portcullis_proxy_connections{job="portcullis", instance="gate:9953"}'
        values: '100x5 900x20'
      - series: 'portcullis_proxy_max_connections{job="portcullis", instance="gate:9953"}'
        values: '1000x25'
      - series: 'process_open_fds{job="portcullis", instance="gate:9953"}'
        values: '10x5 950x20'
      - series: 'process_max_fds{job="portcullis", instance="gate:9953"}'
        values: '1024x25'
      - series: 'portcullis_proxy_decisions_total{job="portcullis", instance="gate:9953", door="proxy", decision="refused", reason="overloaded"}'
        values: '0x5 1+1x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: PortcullisConfigReloadFailed
        exp_alerts: []
      - eval_time: 15m
        alertname: PortcullisConfigReloadFailed
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953"}
      - eval_time: 35m
        alertname: PortcullisConfigReloadFailed
        exp_alerts: []
      - eval_time: 8m
        alertname: PortcullisProxyConnectionsHigh
        exp_alerts: []
      - eval_time: 12m
        alertname: PortcullisProxyConnectionsHigh
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953"}
      - eval_time: 8m
        alertname: PortcullisFileDescriptorsHigh
        exp_alerts: []
      - eval_time: 12m
        alertname: PortcullisFileDescriptorsHigh
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953"}
      - eval_time: 4m
        alertname: PortcullisProxyConnectionLimit
        exp_alerts: []
      - eval_time: 10m
        alertname: PortcullisProxyConnectionLimit
        exp_alerts:
          - exp_labels: {severity: critical, job: portcullis, instance: "gate:9953"}

  - name: decision log lines dropped
    interval: 1m
    input_series:
      - series: 'portcullis_log_lines_dropped_total{job="portcullis", instance="gate:9953"}'
        values: '0x10 0+600x10 6000x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: PortcullisLogLinesDropped
        exp_alerts: []
      - eval_time: 13m
        alertname: PortcullisLogLinesDropped
        exp_alerts: []
      - eval_time: 19m
        alertname: PortcullisLogLinesDropped
        exp_alerts:
          - exp_labels: {severity: warning, job: portcullis, instance: "gate:9953"}
      - eval_time: 32m
        alertname: PortcullisLogLinesDropped
        exp_alerts: []
"#;

#[test]
fn the_alerts_fire_on_what_they_are_for() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.yml");
    std::fs::write(&rules, without_annotations(&alerts_yml())).unwrap();
    let tests = dir.path().join("alerts_test.yml");
    std::fs::write(&tests, RULE_TESTS.replace("RULES", rules.to_str().unwrap())).unwrap();
    promtool_ok(&["test", "rules", tests.to_str().unwrap()]);
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "a DS_PROMETHEUS datasource variable"
    );

    // Panels by row; rows in the order they appear.
    let mut rows: Vec<(String, usize)> = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in d["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "id twice"
        );
        if panel["type"] == "row" {
            let nested = panel["panels"].as_array().map_or(0, Vec::len);
            rows.push((title, nested));
            for p in panel["panels"].as_array().into_iter().flatten() {
                assert!(ids.insert(p["id"].as_u64().expect("panel id")), "id twice");
            }
            continue;
        }
        let row = rows
            .last_mut()
            .unwrap_or_else(|| panic!("panel {title:?} before the first row"));
        row.1 += 1;
    }
    for area in ["DNS", "Lists", "Proxy", "Operations"] {
        let count = rows
            .iter()
            .find(|(title, _)| title == area)
            .unwrap_or_else(|| panic!("no row {area:?}; rows: {rows:?}"))
            .1;
        assert!(count >= 1, "row {area:?} has no panel");
    }

    for panel in all_panels(&d).into_iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        let pos = &panel["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && pos["h"].as_u64().unwrap() > 0,
            "{title}: {pos}"
        );
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no target");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{title}: empty expr"
            );
        }
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool has no "check this expression": every query becomes a recording rule.
    let exprs = dashboard_exprs(&dashboard());
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let promql = serde_json::to_string(&as_plain_promql(expr)).unwrap();
        yaml.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {promql}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.yml");
    std::fs::write(&path, &yaml).unwrap();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()], None);
    assert!(
        ok,
        "a dashboard query is not valid PromQL:\n{out}\n{exprs:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Against the real binary.

/// Sample names of a scrape in the Prometheus text format, each with the label names
/// seen on it.
fn scraped(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        let Some(mut rest) = line[end..].strip_prefix('{') else {
            continue;
        };
        // name="value" pairs; values may hold escaped quotes.
        while let Some((name, after)) = rest.split_once("=\"") {
            labels.insert(name.trim_start_matches(',').trim().to_owned());
            let mut chars = after.char_indices();
            let mut close = after.len();
            while let Some((k, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        close = k;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &after[(close + 1).min(after.len())..];
            if rest.starts_with('}') {
                break;
            }
        }
    }
    out
}

/// Metric families (histograms under their base name) by `# TYPE` line.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// What `expr` (from `place`) uses that the scrape does not have.
fn missing_in(place: &str, expr: &str, scrape: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let u = uses(expr);
    let mut problems = Vec::new();
    for metric in &u.metrics {
        if !scrape.contains_key(metric) {
            problems.push(format!("{place}: metric {metric} is not exported"));
        }
    }
    for (metric, label) in &u.selector_labels {
        if let Some(labels) = scrape.get(metric)
            && !labels.contains(label)
            && !TARGET_LABELS.contains(&label.as_str())
        {
            problems.push(format!("{place}: {metric} has no label {label:?}"));
        }
    }
    if !u.metrics.is_empty() {
        let available: BTreeSet<&String> = u
            .metrics
            .iter()
            .filter_map(|m| scrape.get(m))
            .flatten()
            .collect();
        for label in &u.grouping_labels {
            if !available.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "{place}: no metric of the expression has label {label:?}"
                ));
            }
        }
    }
    problems
}

const CONFIG: &str = concat!(
    config_head!(),
    r#"name = "dead"
url = "udp://127.0.0.1:9"

[sources]
cache_dir = "cache"

[[lists]]
name = "threats"
inline = """
evil.example
"""

[[lists]]
name = "feed"
url = "FEED_URL"
"#
);

/// Runs the gate, sends a little of every kind of traffic (so that labelled families
/// have series), and returns its /metrics.
fn scrape_a_busy_gate() -> String {
    let feed_dir = tempfile::tempdir().unwrap();
    let feed = feed_dir.path().join("feed.txt");
    std::fs::write(&feed, "tracker.example\n").unwrap();
    let config = CONFIG.replace("FEED_URL", &format!("file://{}", feed.display()));
    let gate = Gate::start(&config);
    let admin = gate.admin_addr();

    // The url list's first download check (a local file) fills its gauges.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http(&admin, "GET", "/metrics");
        assert_eq!(status, 200, "{body}");
        if body.contains(r#"portcullis_list_last_success_timestamp_seconds{list="feed"}"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the feed list was never refreshed:\n{body}\n{}",
            gate.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // DNS: blocked by each list, local, and forwarded to the dead loopback upstream.
    assert_eq!(dig(gate.dns, "evil.example", "A", &[]).status, "NXDOMAIN");
    assert_eq!(
        dig(gate.dns, "tracker.example", "AAAA", &[]).status,
        "NXDOMAIN"
    );
    assert_eq!(dig(gate.dns, "localhost", "A", &[]).status, "NOERROR");
    assert_eq!(dig(gate.dns, "n1.example", "A", &[]).status, "SERVFAIL");

    // Proxy: one refused CONNECT (a threat-listed name; nothing is dialled).
    let proxy = gate.proxy_addr();
    let head = connect(&proxy, "evil.example:443");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    let (status, body) = http(&admin, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let metrics = scrape_a_busy_gate();
    let scrape = scraped(&metrics);
    for must in [
        "portcullis_dns_blocked_total",
        "portcullis_upstream_errors_total",
        "portcullis_upstream_request_duration_seconds_bucket",
        "portcullis_proxy_decisions_total",
        "portcullis_list_failing",
    ] {
        assert!(
            scrape.contains_key(must),
            "the traffic made no {must}:\n{metrics}"
        );
    }

    let mut problems = Vec::new();
    let rules = alert_rules(&alerts_yml());
    for rule in &rules {
        problems.extend(missing_in(
            &format!("alert {}", rule.alert),
            &rule.expr,
            &scrape,
        ));
    }
    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    for (place, expr) in &exprs {
        problems.extend(missing_in(place, expr, &scrape));
    }
    assert!(
        problems.is_empty(),
        "{}\n--- /metrics ---\n{metrics}",
        problems.join("\n")
    );

    // The other way round: the dashboard shows every family the gate exports.
    let used: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| uses(e).metrics).collect();
    let mut unshown = Vec::new();
    for (family, kind) in families(&metrics) {
        let names: Vec<String> = if kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{family}{s}"))
                .collect()
        } else {
            vec![family.clone()]
        };
        if !names.iter().any(|n| used.contains(n)) {
            unshown.push(family);
        }
    }
    assert!(
        unshown.is_empty(),
        "exported but on no dashboard panel: {unshown:?}"
    );

    // The alert rules cover the families an operator must be woken for.
    let alerted: HashMap<&str, bool> = [
        "portcullis_upstream_healthy",
        "portcullis_list_last_success_timestamp_seconds",
        "portcullis_list_failing",
        "portcullis_dns_queries_total",
        "portcullis_config_last_reload_successful",
        "portcullis_proxy_decisions_total",
    ]
    .into_iter()
    .map(|m| (m, rules.iter().any(|r| uses(&r.expr).metrics.contains(m))))
    .collect();
    assert!(alerted.values().all(|&a| a), "{alerted:?}");
}

/// A real Prometheus server (Debian's) scrapes the running gate with the shipped alert
/// rules loaded: the target is up, the gate's series are stored, and every rule
/// evaluates without error against them. Everything on 127.0.0.1; the server is stopped
/// at the end.
#[test]
fn a_real_prometheus_scrapes_the_gate_and_evaluates_the_rules() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "prometheus (Debian package prometheus) must be installed: scripts/test.sh installs it"
        );
    }
    let gate = Gate::start(&CONFIG.replace("FEED_URL", "file:///nonexistent/feed.txt"));
    let admin = gate.admin_addr();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        deploy("prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: portcullis\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web = format!("127.0.0.1:{port}");
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    // curl: Prometheus answers large bodies chunked.
    let api = |query: &str| -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", &format!("http://{web}{query}")])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "prometheus never saw the gate: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
        let Some(up) = api("/api/v1/query?query=up%7Bjob%3D%22portcullis%22%7D") else {
            continue;
        };
        let ready = up["data"]["result"][0]["value"][1] == "1";
        let series = api("/api/v1/query?query=portcullis_build_info");
        let rules = api("/api/v1/rules");
        last = Some((up.clone(), rules.clone()));
        let Some(rules) = rules else { continue };
        let groups = rules["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let evaluated: Vec<&serde_json::Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let all_ok = !evaluated.is_empty()
            && evaluated
                .iter()
                .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z");
        let stored = series.is_some_and(|s| {
            s["data"]["result"][0]["metric"]["version"] == env!("CARGO_PKG_VERSION")
        });
        if ready && stored && all_ok {
            // Rule names as loaded equal the file's alerts.
            let loaded: BTreeSet<String> = evaluated
                .iter()
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect();
            let declared: BTreeSet<String> = alert_rules(&alerts_yml())
                .into_iter()
                .map(|r| r.alert)
                .collect();
            assert_eq!(loaded, declared);
            break;
        }
    }
}
