//! A real Prometheus (Debian's `prometheus`) scraping a real berthd over TCP with its bearer token,
//! with the shipped alert rules loaded. It shows, through Prometheus's own HTTP API:
//!
//! - a destroyed machine's `machine_id` returns no series once Prometheus has scraped again, and a
//!   stopped machine's CPU and memory series are gone while its `up` (0) stays;
//! - during a `[fault] db_delay` drill, `BerthDatabaseSlowOperations` goes pending, then firing.
//!
//! The rules are the shipped file with one change: the slow-operation alert's `for: 1m` becomes
//! `for: 4s`, so that pending and firing both happen within seconds (scrapes and evaluations run
//! every second here). Everything else, expression included, is as shipped.
//!
//! Without the `prometheus` binary this test fails (`cargo xtask test` installs it); it never
//! skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The Prometheus server, killed and its storage removed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped rules with the slow-operation alert's `for:` shortened.
fn rules_for_test() -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus/berth-rules.yml"),
    )
    .unwrap();
    let alert = shipped
        .find("- alert: BerthDatabaseSlowOperations")
        .unwrap();
    let rel = shipped[alert..].find("for: 1m").unwrap();
    let at = alert + rel;
    assert!(
        !shipped[alert + 1..at].contains("- alert:"),
        "the slow-operation alert has no `for: 1m` of its own"
    );
    format!(
        "{}for: 4s{}",
        &shipped[..at],
        &shipped[at + "for: 1m".len()..]
    )
}

impl Prometheus {
    fn start(target: &str, token_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yml"), rules_for_test()).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: berth\n    authorization:\n      credentials_file: {}\n    \
             static_configs:\n      - targets: ['{target}']\n",
            token_file.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus is missing: install Debian's prometheus package (cargo xtask test does)");
        let p = Prometheus {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").is_none() {
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on Prometheus's HTTP API: the body of a 200, else `None`.
    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", "-f", "-G", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl is missing (cargo xtask test installs it)");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-s", "-f", "-G", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "query {promql} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a query that returns one series.
    fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        r.first()?["value"][1].as_str()?.parse().ok()
    }

    /// The state (`pending`, `firing`) of an alert, if active.
    fn alert(&self, name: &str) -> Option<(String, Value)> {
        let body = self.get("/api/v1/alerts")?;
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| {
                (
                    a["state"].as_str().unwrap_or_default().to_owned(),
                    a.clone(),
                )
            })
    }

    /// Waits until Prometheus has completed a scrape of berthd that started after `after`
    /// (Unix seconds).
    fn scraped_after(&self, after: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // `timestamp()` of a plain selector is the scrape's own time (of a computed vector it
            // would be the query's).
            if self
                .scalar(r#"timestamp(up{job="berth"})"#)
                .is_some_and(|t| t > after)
            {
                assert_eq!(
                    self.scalar(r#"up{job="berth"}"#),
                    Some(1.0),
                    "the scrape failed:\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no successful scrape after {after}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn create(agent: &Agent) -> String {
    let out = agent.cli(&["machine", "create", "--", "sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn prometheus_forgets_dead_machines_and_fires_the_slow_operation_alert() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        dir.path(),
        "[metrics]\nsample_interval = \"200ms\"\n[retention]\ninterval = \"1h\"\n\
         [fault]\ndb_delay = \"150ms\"\n",
    );
    let prom = Prometheus::start(
        &format!("127.0.0.1:{}", agent.port),
        &dir.path().join("token"),
    );

    // Scraped with the token, and no slow operation yet: the counter is there at 0, no alert.
    prom.scraped_after(now());
    assert_eq!(
        prom.scalar(r#"berth_db_slow_operations_total{job="berth",op="commit"}"#),
        Some(0.0),
        "{}",
        prom.log()
    );
    assert!(prom.alert("BerthDatabaseSlowOperations").is_none());

    // The drill: each create commits twice, each commit takes 150 ms (threshold 100 ms).
    let gone = create(&agent);
    let stopped = create(&agent);
    let kept = create(&agent);

    // The alert: pending first, firing once its `for:` has passed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending_at = None;
    let firing = loop {
        match prom.alert("BerthDatabaseSlowOperations") {
            Some((state, _)) if state == "pending" => {
                pending_at.get_or_insert_with(Instant::now);
            }
            Some((state, alert)) if state == "firing" => break alert,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the alert never fired:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let pending_at = pending_at.expect("the alert fired without being pending first");
    assert!(pending_at.elapsed() >= Duration::from_secs(3));
    assert_eq!(firing["labels"]["op"], "commit");
    assert_eq!(firing["labels"]["severity"], "warning");
    assert_eq!(
        firing["annotations"]["runbook_url"],
        "runbooks/db-slow-operations.md"
    );

    // Every machine is scraped with its per-machine series.
    let series = |id: &str| prom.query(&format!(r#"{{machine_id="{id}"}}"#));
    let deadline = Instant::now() + Duration::from_secs(15);
    while [&gone, &stopped, &kept].iter().any(|id| {
        prom.scalar(&format!(
            r#"berth_machine_memory_bytes{{machine_id="{id}"}}"#
        ))
        .is_none()
    }) {
        assert!(Instant::now() < deadline, "machines never scraped");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(series(&gone).len(), 4, "{:?}", series(&gone));

    // Stop one, destroy another; then wait for a scrape that began afterwards.
    let out = agent.cli(&["machine", "stop", &stopped]);
    assert!(out.status.success());
    let out = agent.cli(&["machine", "destroy", &gone, "--force"]);
    assert!(out.status.success());
    prom.scraped_after(now());

    assert!(
        series(&gone).is_empty(),
        "a destroyed machine still has series: {:?}",
        series(&gone)
    );
    let mut left: Vec<String> = series(&stopped)
        .iter()
        .map(|s| s["metric"]["__name__"].as_str().unwrap().to_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["berth_machine_restarts_total", "berth_machine_up"],
        "a stopped machine keeps only up and restarts"
    );
    assert_eq!(
        prom.scalar(&format!(r#"berth_machine_up{{machine_id="{stopped}"}}"#)),
        Some(0.0)
    );
    assert_eq!(series(&kept).len(), 4);
    assert_eq!(prom.scalar(r#"berth_machines{state="started"}"#), Some(1.0));
}
