//! What `packaging/` ships for monitoring, checked: the Prometheus rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), every alert names a runbook that exists,
//! and every query of the rules and of the Grafana dashboard is valid PromQL over metrics berthd
//! exports (`tests/metrics.rs` checks a real berthd exports each of them).
//!
//! promtool comes with Debian's `prometheus` package, which `cargo xtask test` installs. Without
//! it these tests fail: they never skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_agent::telemetry::{DB_OP_DURATION, Kind, MACHINE_METRICS, METRICS, PROCESS_CPU};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is missing: install Debian's prometheus package (cargo xtask test does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Every series name berthd exports (histograms with their `_bucket`, `_sum` and `_count`), plus
/// `up`, which Prometheus adds to every target.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::from(["up".to_owned()]);
    for m in METRICS
        .iter()
        .chain(MACHINE_METRICS)
        .chain([&PROCESS_CPU, &DB_OP_DURATION])
    {
        names.insert(m.name.to_owned());
        if m.kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", m.name));
            }
        }
    }
    names
}

/// The metric names a PromQL expression uses: every `berth_*` identifier, and `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            // Label values sit inside quotes; `up` only counts as a selector.
            let quoted = start > 0 && bytes[start - 1] == b'"';
            if !quoted
                && (word.starts_with("berth_")
                    || (word == "up" && bytes.get(i).is_some_and(|c| *c == b'{')))
            {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The `expr`s of the rules file (each may span several `>-` lines).
fn rule_exprs(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = rules.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        if let Some(rest) = t.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == ">-" || rest == ">" || rest == "|" {
                let indent = lines[i].len() - lines[i].trim_start().len();
                let mut expr = String::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    if !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent {
                        break;
                    }
                    expr.push_str(l.trim());
                    expr.push(' ');
                    i += 1;
                }
                out.push(expr.trim().to_owned());
                continue;
            }
            out.push(rest.to_owned());
        }
        i += 1;
    }
    out
}

#[test]
fn rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("packaging/prometheus");
    let checked = promtool(&["check", "rules", "berth-rules.yml"], &dir);
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "berth-rules.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_names_a_runbook_that_exists() {
    let rules =
        std::fs::read_to_string(repo().join("packaging/prometheus/berth-rules.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    let urls: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        alerts,
        [
            "BerthDatabaseSlowOperations",
            "BerthDatabaseCommitLatencyHigh",
            "BerthDatabaseGarbageHigh",
            "BerthDatabaseGrowthPredicted",
            "BerthMachineWedged",
            "BerthGuardHolding",
            "BerthExportLagging",
            "BerthExportHole",
            "BerthImageStoreFull",
            "BerthAgentDown"
        ]
    );
    assert_eq!(urls.len(), alerts.len(), "an alert without a runbook_url");
    for url in urls {
        let file = url.strip_prefix("runbooks/").expect(url);
        let path = repo().join("runbooks").join(file);
        assert!(path.is_file(), "{url}: no such runbook");
        // The runbook names the alerts that send people to it.
        let text = std::fs::read_to_string(&path).unwrap();
        for (alert, u) in alerts.iter().zip(
            rules
                .lines()
                .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
                .map(str::trim),
        ) {
            if u == url {
                assert!(text.contains(alert), "{url} does not mention {alert}");
            }
        }
    }
}

#[test]
fn rules_use_only_exported_metrics() {
    let rules =
        std::fs::read_to_string(repo().join("packaging/prometheus/berth-rules.yml")).unwrap();
    let exprs = rule_exprs(&rules);
    assert_eq!(exprs.len(), 10, "{exprs:?}");
    let exported = exported();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr}");
        for n in names {
            assert!(
                exported.contains(&n),
                "the rule `{expr}` uses {n}, which berthd does not export"
            );
        }
    }
}

#[test]
fn the_dashboard_is_valid_json_and_queries_exported_metrics_in_valid_promql() {
    let text = std::fs::read_to_string(repo().join("packaging/grafana/berth.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("berth.json is not JSON");
    assert_eq!(dash["uid"], "berth-host");
    let mut exprs = Vec::new();
    let mut titles = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        titles.push(p["title"].as_str().unwrap().to_owned());
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    // What an on-call engineer looks for first.
    for want in [
        "Slow DB ops (5m)",
        "Operation latency (p99 by op)",
        "File size vs live bytes",
        "Machines by state",
        "Requests by route and status",
        "Request latency (p99 by route)",
    ] {
        assert!(titles.iter().any(|t| t == want), "no panel {want:?}");
    }
    let exported = exported();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for n in metric_names(expr) {
            assert!(
                exported.contains(&n),
                "the query `{expr}` uses {n}, which berthd does not export"
            );
            used.insert(n);
        }
    }
    // The panels together show every per-machine series and the size/live pair.
    for n in [
        "berth_db_file_size_bytes",
        "berth_db_file_allocated_bytes",
        "berth_db_live_bytes",
        "berth_machines",
        "berth_machine_transient_seconds",
        "berth_machine_cpu_seconds_total",
        "berth_machine_memory_bytes",
        "berth_api_requests_total",
        "berth_api_request_duration_seconds_bucket",
        "berth_db_slow_operations_total",
    ] {
        assert!(used.contains(n), "no panel shows {n}");
    }

    // Valid PromQL: promtool parses every query as a recording rule (Grafana's variables
    // replaced by what they expand to).
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace('\'', "''");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: '{e}'\n"
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    let out = promtool(&["check", "rules", "dashboard.yml"], dir.path());
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

#[test]
fn metric_names_finds_selectors_not_label_values() {
    assert_eq!(
        metric_names(
            r#"sum by (op) (rate(berth_db_x_bucket{op="berth_y"}[5m])) or up{job="berth"} > up"#
        ),
        BTreeSet::from(["berth_db_x_bucket".to_owned(), "up".to_owned()])
    );
}
