//! Tables and lines for people. (`--json` prints the API's values unchanged.)

use berth_api_types::{
    ApproveReport, CompactionReport, DbCheck, DbStats, GuardAction, Health, HostInfo,
    ReconcileReport, SlowOp,
};
use berth_types::{Event, MachineRecord, Timestamp};
use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};

/// "3s ago", "5m ago", "2h ago", "4d ago".
pub fn ago(t: Timestamp) -> String {
    let d = Timestamp::now().saturating_since(t).as_secs();
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

fn exit_text(m: &MachineRecord) -> String {
    m.exit
        .as_ref()
        .map_or_else(String::new, |e| match (e.code, &e.signal) {
            (Some(c), _) => format!("code {c}"),
            (None, Some(s)) => s.clone(),
            _ => "unknown".into(),
        })
}

pub fn machines(ms: &[MachineRecord]) -> String {
    let mut t = table(&[
        "ID", "NAME", "STATE", "PID", "COMMAND", "UPDATED", "CREATED",
    ]);
    for m in ms {
        t.add_row(vec![
            m.id.to_string(),
            m.name.clone(),
            m.state.to_string(),
            m.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            m.config.cmd.join(" "),
            ago(m.updated_at),
            ago(m.created_at),
        ]);
    }
    t.to_string()
}

pub fn machine_line(m: &MachineRecord) -> String {
    let pid = m.pid.map(|p| format!(" pid {p}")).unwrap_or_default();
    format!("{} {}{pid}", m.id, m.state)
}

pub fn events(evs: &[Event]) -> String {
    let mut t = table(&["SEQ", "TYPE", "FROM", "TO", "SOURCE", "WHEN", "REASON"]);
    for e in evs {
        t.add_row(vec![
            e.seq.to_string(),
            format!("{:?}", e.kind).to_lowercase(),
            e.from.map_or_else(|| "-".into(), |s| s.to_string()),
            e.to.to_string(),
            format!("{:?}", e.source).to_lowercase(),
            ago(e.at),
            e.reason.clone(),
        ]);
    }
    t.to_string()
}

/// `berth machine versions`: newest first, with what each version runs.
pub fn versions(vs: &[berth_api_types::ConfigVersion]) -> String {
    let mut t = table(&["VERSION", "CREATED", "COMMAND", "IMAGE", "ENV", "RESTART"]);
    for v in vs {
        t.add_row(vec![
            v.version.to_string(),
            ago(v.created_at),
            v.config.cmd.join(" "),
            v.config.image.clone().unwrap_or_else(|| "-".into()),
            v.config
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            format!("{:?}", v.config.restart.policy).to_lowercase(),
        ]);
    }
    t.to_string()
}

pub fn event_line(e: &Event) -> String {
    let from = e.from.map_or_else(|| "-".into(), |s| s.to_string());
    format!(
        "{:>8} {} {} {from} → {} ({:?}) {}",
        e.seq, e.at, e.machine_id, e.to, e.source, e.reason
    )
}

pub fn status(m: &MachineRecord, evs: &[Event]) -> String {
    let mut t = table(&["", ""]);
    let rows: Vec<(&str, String)> = vec![
        ("ID", m.id.to_string()),
        ("Name", m.name.clone()),
        ("State", m.state.to_string()),
        ("PID", m.pid.map_or_else(|| "-".into(), |p| p.to_string())),
        ("Command", m.config.cmd.join(" ")),
        (
            "Restart",
            format!("{:?} (restarts: {})", m.config.restart.policy, m.restarts),
        ),
        ("Last exit", exit_text(m)),
        ("Version", m.version.to_string()),
        ("Config version", m.config_version.to_string()),
        (
            "Created",
            format!("{} ({})", m.created_at, ago(m.created_at)),
        ),
        (
            "Updated",
            format!("{} ({})", m.updated_at, ago(m.updated_at)),
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    format!("{t}\n\nEvent log\n{}", events(evs))
}

/// The names of the failing checks, comma-separated.
pub fn failing(h: &Health) -> String {
    let names: Vec<&str> = h
        .checks
        .iter()
        .filter(|(_, c)| !c.ok)
        .map(|(n, _)| n.as_str())
        .collect();
    names.join(", ")
}

pub fn health(h: &Health) -> String {
    let mut out = if h.status == "ok" {
        "status: ok\n".to_owned()
    } else {
        format!("status: {} (failing: {})\n", h.status, failing(h))
    };
    let mut t = table(&["CHECK", "OK", "DETAIL"]);
    for (name, c) in &h.checks {
        t.add_row(vec![
            name.clone(),
            if c.ok { "yes" } else { "NO" }.to_owned(),
            c.detail.clone(),
        ]);
    }
    out.push_str(&t.to_string());
    out
}

pub fn host(h: &HostInfo, health: &Health) -> String {
    let mut t = table(&["", ""]);
    t.add_row(vec!["Hostname".to_owned(), h.hostname.clone()]);
    t.add_row(vec![
        "Health".to_owned(),
        if health.status == "ok" {
            "ok".to_owned()
        } else {
            format!("{} (failing: {})", health.status, failing(health))
        },
    ]);
    t.add_row(vec!["Version".to_owned(), h.version.clone()]);
    t.add_row(vec!["Data dir".to_owned(), h.data_dir.clone()]);
    t.add_row(vec!["Cordoned".to_owned(), h.cordoned.to_string()]);
    let counts: Vec<String> = h.machines.iter().map(|(s, n)| format!("{s}={n}")).collect();
    t.add_row(vec![
        "Machines".to_owned(),
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(" ")
        },
    ]);
    let caps = &h.capabilities;
    let yes = |b: bool| if b { "yes" } else { "no" };
    t.add_row(vec![
        "cgroup".to_owned(),
        format!("{} (kill: {})", yes(caps.cgroup), yes(caps.cgroup_kill)),
    ]);
    t.add_row(vec![
        "Limits".to_owned(),
        format!(
            "memory: {}, cpu: {}, pids: {}",
            yes(caps.memory_limit),
            yes(caps.cpu_limit),
            yes(caps.pids_limit)
        ),
    ]);
    let blocked = h
        .supervision
        .last_reconcile
        .as_ref()
        .is_some_and(|r| r.blocked);
    t.add_row(vec![
        "Reconcile".to_owned(),
        if blocked {
            "BLOCKED by the blast-radius guard".into()
        } else {
            "ok".into()
        },
    ]);
    let guard = &h.supervision.guard;
    t.add_row(vec![
        "Guard".to_owned(),
        if guard.tripped {
            format!(
                "HOLDING {} decision(s): {} (berth host approve)",
                guard.held.len(),
                guard.tripped_because.as_deref().unwrap_or("tripped")
            )
        } else if !guard.enabled {
            "off".into()
        } else {
            "armed".into()
        },
    ]);
    t.add_row(vec!["Export".to_owned(), export(h.export.as_ref())]);
    t.to_string()
}

/// The fleet export's row of `berth host status`.
fn export(e: Option<&berth_api_types::ExportStatus>) -> String {
    let Some(e) = e else {
        return "off".into();
    };
    let mut s = format!(
        "{} as {}: acked seq {}, lag {} event(s)",
        if e.connected {
            "connected"
        } else {
            "NOT CONNECTED"
        },
        e.host_id,
        e.acked_seq,
        e.lag_events,
    );
    let holes = e.holes.len();
    if holes > 0 {
        s.push_str(&format!(
            "; {holes} HOLE(S) in the stream (runbooks/export-lagging.md)"
        ));
    }
    if let Some(err) = &e.last_error {
        s.push_str(&format!("; last error: {err}"));
    }
    s
}

/// What `berth host approve` released.
pub fn approve(r: &ApproveReport) -> String {
    let mut s = format!(
        "approved: {} held decision(s) released; {} restart(s) running",
        r.released.len(),
        r.restarted.len()
    );
    if !r.skipped.is_empty() {
        s.push_str(&format!(
            "; {} skipped (the machine changed since it was held)",
            r.skipped.len()
        ));
    }
    if let Some(rec) = &r.reconcile {
        s.push_str(&format!(
            "; reconciliation applied {} correction(s)",
            rec.applied
        ));
    }
    s
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

pub fn db_stats(v: &DbStats) -> String {
    let mut t = table(&["", ""]);
    t.add_row(vec![
        "File size".to_owned(),
        format!("{:.1} MiB", mib(v.file_size_bytes)),
    ]);
    t.add_row(vec![
        "On disk".to_owned(),
        format!("{:.1} MiB", mib(v.file_allocated_bytes)),
    ]);
    t.add_row(vec![
        "Live bytes".to_owned(),
        format!("{:.1} MiB", mib(v.live_bytes)),
    ]);
    t.add_row(vec![
        "Garbage ratio".to_owned(),
        format!("{:.2}", v.garbage_ratio),
    ]);
    for (k, n) in &v.tables {
        t.add_row(vec![format!("rows in {k}"), n.to_string()]);
    }
    if let Some(first) = v.first_seq {
        t.add_row(vec![
            "Event seqs kept".to_owned(),
            format!("{first} .. {}", v.next_seq.saturating_sub(1)),
        ]);
    }
    t.add_row(vec![
        "Last compaction".to_owned(),
        v.last_compaction
            .as_ref()
            .map_or_else(|| "never".into(), compaction),
    ]);
    if let Some(c) = &v.compaction {
        t.add_row(vec![
            "Compaction running".to_owned(),
            format!(
                "phase {}, {} rows copied, {} catch-up rounds",
                c.phase, c.rows_copied, c.catch_up_rounds
            ),
        ]);
    }
    t.to_string()
}

/// One line for a compaction report: when, sizes, duration, longest pause.
pub fn compaction(c: &CompactionReport) -> String {
    // Reports written before berth recorded disk usage have no allocated sizes.
    let on_disk = if c.allocated_after > 0 {
        format!(
            " (on disk {:.1} MiB -> {:.1} MiB)",
            mib(c.allocated_before),
            mib(c.allocated_after)
        )
    } else {
        String::new()
    };
    format!(
        "{}: {:.1} MiB -> {:.1} MiB{on_disk} in {:.1} s, longest write pause {:.1} ms",
        ago(c.at),
        mib(c.size_before),
        mib(c.size_after),
        c.duration_ms as f64 / 1000.0,
        c.max_pause_ms
    )
}

/// The consistency and page check, for people (`berth db check`); the offline check says the
/// page check first, the agent's the consistency check.
pub fn db_check(v: &DbCheck, integrity_first: bool) -> String {
    let mut s = String::new();
    if v.repaired_on_open == Some(true) {
        s.push_str("the file was not closed cleanly; it was repaired (--repair)\n");
    }
    let r = &v.report;
    let consistency = format!(
        "consistency: {} machines, {} events, {} operations in flight\n",
        r.machines, r.events, r.operations
    );
    let integrity = format!(
        "redb integrity: {} ({})\n",
        if v.pages.passed { "ok" } else { "FAILED" },
        v.pages.detail
    );
    if integrity_first {
        s.push_str(&integrity);
        s.push_str(&consistency);
    } else {
        s.push_str(&consistency);
        s.push_str(&integrity);
    }
    for p in &r.problems {
        s.push_str(&format!("  problem: {p}\n"));
    }
    s.push_str(if v.ok {
        "database OK"
    } else {
        "database has problems"
    });
    s
}

pub fn slow_ops(ops: &[SlowOp]) -> String {
    if ops.is_empty() {
        return "no slow database operations recorded".into();
    }
    let mut t = table(&["WHEN", "OP", "MS", "BATCH", "BYTES", "DETAIL"]);
    for o in ops {
        t.add_row(vec![
            ago(o.at),
            o.op.clone(),
            format!("{:.1}", o.duration_ms),
            o.batch_size.to_string(),
            o.bytes.to_string(),
            o.detail.clone(),
        ]);
    }
    t.to_string()
}

/// What `berth doctor` found (its `--json`).
#[derive(Debug, serde::Serialize)]
pub struct Doctor {
    /// The last reconciliation pass.
    pub last_reconcile: Option<ReconcileReport>,
    /// Machines compared.
    pub machines: usize,
    /// Every disagreement found; empty means healthy.
    pub problems: Vec<String>,
}

/// Compares what the agent recorded with what runs on this host.
pub fn doctor(h: &HostInfo, ms: &[MachineRecord]) -> Doctor {
    let mut problems: Vec<String> = Vec::new();
    for m in ms {
        if m.state == berth_types::State::Started {
            let alive = m
                .pid
                .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                problems.push(format!(
                    "machine {} is recorded started but pid {:?} is not running",
                    m.id, m.pid
                ));
            }
        }
        if m.state.is_transient() && m.active_op.is_none() {
            problems.push(format!(
                "machine {} is {} with no operation in flight",
                m.id, m.state
            ));
        }
    }
    let last = h.supervision.last_reconcile.clone();
    for o in last.iter().flat_map(|r| &r.orphans) {
        problems.push(format!(
            "orphan supervisor {o:?}: a workload runs with no machine record"
        ));
    }
    for u in &h.supervision.unknown {
        problems.push(format!(
            "machine {} is unknown: its state cannot be read ({}); left as recorded, nothing removed",
            u.machine_id, u.reason
        ));
    }
    let guard = &h.supervision.guard;
    if guard.tripped {
        let held: Vec<String> = guard
            .held
            .iter()
            .map(|x| {
                let action = match x.action {
                    GuardAction::Restart => "restart",
                    GuardAction::Reconcile => "reconcile",
                };
                format!("{action} {} ({})", x.machine_id, x.observed)
            })
            .collect();
        problems.push(format!(
            "the blast-radius guard is holding automated decisions back ({}): {}; check the host, then run `berth host approve`",
            guard.tripped_because.as_deref().unwrap_or("tripped"),
            if held.is_empty() { "none listed".to_owned() } else { held.join("; ") }
        ));
    } else if last.as_ref().is_some_and(|r| r.blocked) {
        problems.push(
            "the blast-radius guard blocked reconciliation; inspect, then run `berth host approve`"
                .into(),
        );
    }
    Doctor {
        last_reconcile: last,
        machines: ms.len(),
        problems,
    }
}

pub fn doctor_text(v: &Doctor) -> String {
    if v.problems.is_empty() {
        return format!(
            "{} machines; the database and the live processes agree",
            v.machines
        );
    }
    let mut s = format!("{} problem(s):\n", v.problems.len());
    for p in &v.problems {
        s.push_str(&format!("  - {p}\n"));
    }
    s
}
