//! Tables and lines for people. (`--json` prints the API's values unchanged.)

use berth_api_types::{
    ApproveReport, CompactionReport, DbCheck, DbStats, GuardAction, Health, HostInfo,
    ReconcileReport, SlowOp,
};
use berth_types::{Event, MachineRecord, Timestamp};
use comfy_table::presets::NOTHING;
use std::sync::atomic::{AtomicBool, Ordering};

use comfy_table::{ColumnConstraint, ContentArrangement, Row, Table};

/// `--wide`: tables print every cell whole instead of fitting the terminal.
static WIDE: AtomicBool = AtomicBool::new(false);

/// Sets `--wide` for every table this process prints.
pub fn set_wide(wide: bool) {
    WIDE.store(wide, Ordering::Relaxed);
}

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

/// A time for people: to the second, with how long ago (`2026-12-04T16:23:56Z (3s ago)`).
pub fn when(t: Timestamp) -> String {
    format!(
        "{} ({})",
        humantime::format_rfc3339_seconds(t.to_system_time()),
        ago(t)
    )
}

/// A value's name as the API spells it (`on-failure`, `user`), not Rust's (`OnFailure`, `User`).
pub fn spelled<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// `1.5 GiB`, `12.0 MiB`, `512 KiB`, `100 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`: a duration to the second, its two largest units.
pub fn span(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{mins}m {secs}s"),
        (0, _, _) => format!("{hours}h {mins}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// A table for people: on a terminal it fits the width (long cells cut with `…`, one line per
/// row) unless `--wide`; piped, cells are whole. The first column (an id or a key) is never cut.
fn table(header: &[&str]) -> Table {
    let mut t = pairs();
    t.set_header(header.to_vec());
    keep_whole(&mut t, &[0]);
    t
}

/// A table of key and value rows, without a header, fitted like [`table`] (call [`keep_whole`]
/// for the key column once the rows are in: columns exist only then).
fn pairs() -> Table {
    let mut t = Table::new();
    let arrangement = if WIDE.load(Ordering::Relaxed) {
        ContentArrangement::Disabled
    } else {
        ContentArrangement::Dynamic
    };
    t.load_preset(NOTHING)
        .set_content_arrangement(arrangement)
        .set_truncation_indicator("…");
    t
}

/// Columns that are never cut to fit the terminal (ids, states, times).
fn keep_whole(t: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(c) = t.column_mut(i) {
            c.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
}

/// Adds a row of one line: control characters in cells (a newline in a command, an escape in a
/// name) are shown escaped.
fn add(t: &mut Table, cells: Vec<String>) {
    let mut row = Row::from(cells.iter().map(|c| clean(c)));
    row.max_height(1);
    t.add_row(row);
}

pub fn machines(ms: &[MachineRecord]) -> String {
    let mut t = table(&[
        "ID", "NAME", "STATE", "PID", "COMMAND", "UPDATED", "CREATED",
    ]);
    keep_whole(&mut t, &[0, 2, 3, 5, 6]);
    for m in ms {
        add(
            &mut t,
            vec![
                m.id.to_string(),
                m.name.clone(),
                m.state.to_string(),
                m.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                m.config.cmd.join(" "),
                ago(m.updated_at),
                ago(m.created_at),
            ],
        );
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
        add(
            &mut t,
            vec![
                e.seq.to_string(),
                spelled(&e.kind),
                e.from.map_or_else(|| "-".into(), |s| s.to_string()),
                e.to.to_string(),
                spelled(&e.source),
                ago(e.at),
                e.reason.clone(),
            ],
        );
    }
    t.to_string()
}

/// `berth machine versions`: newest first, with what each version runs.
pub fn versions(vs: &[berth_api_types::ConfigVersion]) -> String {
    let mut t = table(&["VERSION", "CREATED", "COMMAND", "IMAGE", "ENV", "RESTART"]);
    for v in vs {
        add(
            &mut t,
            vec![
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
                spelled(&v.config.restart.policy),
            ],
        );
    }
    t.to_string()
}

/// One line of `berth events`: seq, time, machine (with its name when it has one), transition,
/// who caused it and why.
pub fn event_line(e: &Event, name: Option<&str>) -> String {
    let from = e.from.map_or_else(|| "-".into(), |s| s.to_string());
    let machine = match name {
        Some(n) => format!("{} ({})", e.machine_id, clean(n)),
        None => e.machine_id.to_string(),
    };
    format!(
        "{:>8} {} {machine} {from} → {} ({}) {}",
        e.seq,
        humantime::format_rfc3339_seconds(e.at.to_system_time()),
        e.to,
        spelled(&e.source),
        clean(&e.reason)
    )
}

/// `s` with control characters (newlines, escapes, ...) shown escaped, so a name or a command
/// cannot split a row or drive the terminal.
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What `berth machine status` shows besides the machine: read at the same time, each absent
/// when it could not be read.
#[derive(Default)]
pub struct StatusExtras {
    /// Current usage.
    pub stats: Option<berth_api_types::MachineStats>,
    /// The lease: `Some(None)` when no lease is held, `None` when it could not be read.
    pub lease: Option<Option<berth_api_types::Lease>>,
}

fn exit_words(m: &MachineRecord) -> String {
    let Some(e) = &m.exit else {
        return "-".into();
    };
    let how = match (e.code, &e.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by {s}"),
        _ => "ended (how is unknown)".into(),
    };
    let mut parts = vec![how];
    if e.oom_killed {
        parts.push("out of memory".into());
    }
    if e.requested_stop {
        parts.push("stop requested".into());
    }
    format!("{}, {}", parts.join(", "), when(e.at))
}

fn restart_words(m: &MachineRecord) -> String {
    let r = &m.config.restart;
    let policy = spelled(&r.policy);
    let budget = match (r.policy, r.max_retries) {
        (berth_types::RestartPolicy::OnFailure, n) => {
            format!(", at most {} times", n.unwrap_or(10))
        }
        _ => String::new(),
    };
    format!(
        "{policy}{budget} ({} restarts since the last start)",
        m.restarts
    )
}

fn check_words(c: &berth_types::CheckConfig) -> String {
    let what = match c.kind {
        berth_types::CheckType::Http => format!(
            "http :{}{}",
            c.port.unwrap_or(0),
            c.path.as_deref().unwrap_or("/")
        ),
        berth_types::CheckType::Tcp => format!("tcp :{}", c.port.unwrap_or(0)),
        berth_types::CheckType::Exec => format!("exec {}", c.command.join(" ")),
    };
    let action = match c.action {
        berth_types::CheckAction::None => "report".to_owned(),
        berth_types::CheckAction::Restart => format!("restart after {} failures", c.failures),
    };
    format!(
        "{what} every {} (timeout {}, grace {}), {action}",
        c.interval, c.timeout, c.grace_period
    )
}

fn usage_words(s: &berth_api_types::MachineStats) -> String {
    let mut parts = Vec::new();
    match s.cpu_seconds {
        Some(c) => parts.push(format!("CPU {c:.2}s")),
        None if s.state.expects_process() => parts.push("CPU unknown".into()),
        None => {}
    }
    match (s.memory_bytes, s.memory_limit_bytes) {
        (Some(m), Some(l)) => parts.push(format!("memory {} of {}", bytes(m), bytes(l))),
        (Some(m), None) => parts.push(format!("memory {}", bytes(m))),
        (None, _) if s.state.expects_process() => parts.push("memory unknown".into()),
        _ => {}
    }
    if let Some(t) = s.started_at {
        parts.push(format!("up {}", span(Timestamp::now().saturating_since(t))));
    }
    if parts.is_empty() {
        "- (runs nothing)".into()
    } else {
        parts.join(", ")
    }
}

/// `berth machine status`: the machine's state, its whole config in words (env values are not
/// shown: they may be secrets; `--json` has them), lease, usage, checks, then its event log.
pub fn status(m: &MachineRecord, evs: &[Event], extras: &StatusExtras) -> String {
    let mut rows = identity_rows(m, evs);
    rows.extend(workload_rows(m));
    rows.extend(policy_rows(m));
    rows.push((
        "Usage".into(),
        extras
            .stats
            .as_ref()
            .map_or_else(|| "unknown (could not be read)".into(), usage_words),
    ));
    rows.push(("Lease".into(), lease_words(extras)));
    rows.extend(check_rows(m));
    rows.push(("Last exit".into(), exit_words(m)));
    rows.push((
        "Version".into(),
        format!("config {} (record {})", m.config_version, m.version),
    ));
    rows.push(("Created".into(), when(m.created_at)));
    let mut t = pairs();
    for (k, v) in rows {
        add(&mut t, vec![k, v]);
    }
    keep_whole(&mut t, &[0]);
    format!("{t}\n\nEvent log\n{}", events(evs))
}

/// A row of `berth machine status`: its label and its words.
type Pair = (String, String);

/// Which machine, and its state since it last changed.
fn identity_rows(m: &MachineRecord, evs: &[Event]) -> Vec<Pair> {
    let since = evs
        .iter()
        .rev()
        .find(|e| e.to == m.state && e.from != Some(m.state))
        .map_or(m.updated_at, |e| e.at);
    vec![
        ("ID".into(), m.id.to_string()),
        ("Name".into(), m.name.clone()),
        ("State".into(), format!("{} since {}", m.state, when(since))),
        (
            "PID".into(),
            m.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        ),
    ]
}

/// What runs, as whom, with what: image, command, user, workdir, env names, network, mounts
/// and files.
fn workload_rows(m: &MachineRecord) -> Vec<Pair> {
    let c = &m.config;
    let mut rows = Vec::new();
    if let Some(image) = &c.image {
        let digest = m
            .image_digest
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        rows.push(("Image".into(), format!("{image}{digest}")));
    }
    let cmd = if c.cmd.is_empty() {
        "(the image's entrypoint and cmd)".to_owned()
    } else {
        c.cmd.join(" ")
    };
    rows.push(("Command".into(), cmd));
    rows.push((
        "User".into(),
        c.user.clone().unwrap_or_else(|| match c.image {
            Some(_) => "(the image's)".into(),
            None => "root (berth's)".into(),
        }),
    ));
    if let Some(w) = &c.workdir {
        rows.push(("Workdir".into(), w.clone()));
    }
    let env = if c.env.is_empty() {
        "-".to_owned()
    } else {
        c.env.keys().cloned().collect::<Vec<_>>().join(", ")
    };
    rows.push(("Env".into(), env));
    if let Some(n) = &c.network {
        rows.push(("Network".into(), spelled(n)));
    }
    for mount in &c.mounts {
        let ro = if mount.read_only { " (read-only)" } else { "" };
        rows.push((
            "Mount".into(),
            format!("volume {} at {}{ro}", mount.volume, mount.path),
        ));
    }
    for f in &c.files {
        rows.push(("File".into(), format!("{} (mode {:o})", f.path, f.mode)));
    }
    rows
}

/// How it is restarted, stopped and limited.
fn policy_rows(m: &MachineRecord) -> Vec<Pair> {
    let c = &m.config;
    let mut limits = Vec::new();
    if let Some(mb) = c.resources.memory_mb {
        limits.push(format!("memory {mb} MiB"));
    }
    if let Some(cpus) = c.resources.cpus {
        limits.push(format!("{cpus} CPUs"));
    }
    let limits = if limits.is_empty() {
        "none".into()
    } else {
        limits.join(", ")
    };
    vec![
        ("Restart".into(), restart_words(m)),
        (
            "Stop".into(),
            format!("{}, then SIGKILL after {}", c.stop.signal, c.stop.timeout),
        ),
        ("Limits".into(), limits),
    ]
}

/// Who holds the machine's lease, and until when.
fn lease_words(extras: &StatusExtras) -> String {
    match &extras.lease {
        None => "unknown (could not be read)".into(),
        Some(None) => "none".into(),
        Some(Some(l)) => format!(
            "held{} until {}",
            l.description
                .as_deref()
                .map(|d| format!(" by {d}"))
                .unwrap_or_default(),
            humantime::format_rfc3339_seconds(l.expires_at.to_system_time())
        ),
    }
}

/// One row per health check: how it stands (and since when) and what it is.
fn check_rows(m: &MachineRecord) -> Vec<Pair> {
    m.config
        .checks
        .iter()
        .map(|(name, check)| {
            let status = m.checks.get(name).map_or_else(
                || "not run yet".to_owned(),
                |s| {
                    let out = if s.output.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", s.output.trim())
                    };
                    format!("{} since {}{out}", spelled(&s.status), when(s.since))
                },
            );
            (
                format!("Check {name}"),
                format!("{status}; {}", check_words(check)),
            )
        })
        .collect()
}

/// `berth machine stats`: one row per machine; `?` where a value could not be read.
pub fn stats(all: &[berth_api_types::MachineStats]) -> String {
    let mut t = table(&[
        "ID", "NAME", "STATE", "PID", "CPU", "MEMORY", "LIMIT", "RESTARTS", "UP",
    ]);
    keep_whole(&mut t, &[0, 2, 3, 4, 5, 6, 7, 8]);
    let unknown = |s: &berth_api_types::MachineStats| {
        if s.state.expects_process() { "?" } else { "-" }.to_owned()
    };
    for s in all {
        add(
            &mut t,
            vec![
                s.id.clone(),
                s.name.clone(),
                s.state.to_string(),
                s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                s.cpu_seconds
                    .map_or_else(|| unknown(s), |c| format!("{c:.2}s")),
                s.memory_bytes.map_or_else(|| unknown(s), bytes),
                s.memory_limit_bytes.map_or_else(|| "-".into(), bytes),
                s.restarts.to_string(),
                s.started_at.map_or_else(
                    || "-".into(),
                    |t| span(Timestamp::now().saturating_since(t)),
                ),
            ],
        );
    }
    t.to_string()
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
        add(
            &mut t,
            vec![
                name.clone(),
                if c.ok { "yes" } else { "NO" }.to_owned(),
                c.detail.clone(),
            ],
        );
    }
    out.push_str(&t.to_string());
    out
}

/// `berth host status`: the host's facts, health, capabilities and supervision.
pub fn host(h: &HostInfo, health: &Health) -> String {
    let mut t = table(&["", ""]);
    let health = if health.status == "ok" {
        "ok".to_owned()
    } else {
        format!("{} (failing: {})", health.status, failing(health))
    };
    let counts: Vec<String> = h.machines.iter().map(|(s, n)| format!("{s}={n}")).collect();
    let machines = if counts.is_empty() {
        "none".into()
    } else {
        counts.join(" ")
    };
    let rows = [
        ("Hostname", h.hostname.clone()),
        ("Health", health),
        ("Version", h.version.clone()),
        ("Data dir", h.data_dir.clone()),
        ("Cordoned", h.cordoned.to_string()),
        ("Machines", machines),
    ];
    for (k, v) in rows
        .into_iter()
        .chain(capability_rows(h))
        .chain(supervision_rows(h))
    {
        add(&mut t, vec![k.to_owned(), v]);
    }
    t.to_string()
}

/// What the kernel lets berth do: cgroups and which limits.
fn capability_rows(h: &HostInfo) -> [(&'static str, String); 2] {
    let caps = &h.capabilities;
    let yes = |b: bool| if b { "yes" } else { "no" };
    [
        (
            "cgroup",
            format!("{} (kill: {})", yes(caps.cgroup), yes(caps.cgroup_kill)),
        ),
        (
            "Limits",
            format!(
                "memory: {}, cpu: {}, pids: {}",
                yes(caps.memory_limit),
                yes(caps.cpu_limit),
                yes(caps.pids_limit)
            ),
        ),
    ]
}

/// Whether supervision acts: the last reconciliation, the blast-radius guard, the export.
fn supervision_rows(h: &HostInfo) -> [(&'static str, String); 3] {
    let blocked = h
        .supervision
        .last_reconcile
        .as_ref()
        .is_some_and(|r| r.blocked);
    let reconcile = if blocked {
        "BLOCKED by the blast-radius guard".into()
    } else {
        "ok".into()
    };
    let guard = &h.supervision.guard;
    let guard = if guard.tripped {
        format!(
            "HOLDING {} decision(s): {} (berth host approve)",
            guard.held.len(),
            guard.tripped_because.as_deref().unwrap_or("tripped")
        )
    } else if !guard.enabled {
        "off".into()
    } else {
        "armed".into()
    };
    [
        ("Reconcile", reconcile),
        ("Guard", guard),
        ("Export", export(h.export.as_ref())),
    ]
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
    add(
        &mut t,
        vec![
            "File size".to_owned(),
            format!("{:.1} MiB", mib(v.file_size_bytes)),
        ],
    );
    add(
        &mut t,
        vec![
            "On disk".to_owned(),
            format!("{:.1} MiB", mib(v.file_allocated_bytes)),
        ],
    );
    add(
        &mut t,
        vec![
            "Live bytes".to_owned(),
            format!("{:.1} MiB", mib(v.live_bytes)),
        ],
    );
    add(
        &mut t,
        vec![
            "Garbage ratio".to_owned(),
            format!("{:.2}", v.garbage_ratio),
        ],
    );
    for (k, n) in &v.tables {
        add(&mut t, vec![format!("rows in {k}"), n.to_string()]);
    }
    if let Some(first) = v.first_seq {
        add(
            &mut t,
            vec![
                "Event seqs kept".to_owned(),
                format!("{first} .. {}", v.next_seq.saturating_sub(1)),
            ],
        );
    }
    add(
        &mut t,
        vec![
            "Last compaction".to_owned(),
            v.last_compaction
                .as_ref()
                .map_or_else(|| "never".into(), compaction),
        ],
    );
    if let Some(c) = &v.compaction {
        add(
            &mut t,
            vec![
                "Compaction running".to_owned(),
                format!(
                    "phase {}, {} rows copied, {} catch-up rounds",
                    c.phase, c.rows_copied, c.catch_up_rounds
                ),
            ],
        );
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
        add(
            &mut t,
            vec![
                ago(o.at),
                o.op.clone(),
                format!("{:.1}", o.duration_ms),
                o.batch_size.to_string(),
                o.bytes.to_string(),
                o.detail.clone(),
            ],
        );
    }
    t.to_string()
}

/// What `berth doctor` found (its `--json`).
#[derive(Debug, serde::Serialize)]
pub struct Doctor {
    /// Whether `last_reconcile` is the pass doctor ran itself (else the last periodic one).
    pub fresh_pass: bool,
    /// What that pass found recorded wrongly and set right.
    pub corrected: Vec<String>,
    /// The reconciliation pass the report is from.
    pub last_reconcile: Option<ReconcileReport>,
    /// Machines compared.
    pub machines: usize,
    /// Every disagreement found; empty means healthy.
    pub problems: Vec<String>,
}

/// Compares what the agent recorded with what runs on this host.
/// `fresh` is the pass doctor just ran; without it, the host's last periodic pass is used.
pub fn doctor(h: &HostInfo, ms: &[MachineRecord], fresh: Option<ReconcileReport>) -> Doctor {
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
    let fresh_pass = fresh.is_some();
    let last = fresh.or_else(|| h.supervision.last_reconcile.clone());
    // What the pass found and (unless the guard blocked it) set right: not a disagreement
    // any more, but worth saying.
    let corrected = last
        .iter()
        .filter(|r| !r.blocked)
        .flat_map(|r| &r.planned)
        .map(|p| {
            format!(
                "machine {} was recorded {} but {}; recorded so now",
                p.machine_id, p.recorded, p.observed
            )
        })
        .collect();
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
        fresh_pass,
        corrected,
        last_reconcile: last,
        machines: ms.len(),
        problems,
    }
}

pub fn doctor_text(v: &Doctor) -> String {
    let mut s = String::new();
    if !v.fresh_pass {
        s.push_str("(from the last periodic reconciliation pass)\n");
    }
    for c in &v.corrected {
        s.push_str(&format!("corrected: {c}\n"));
    }
    if v.problems.is_empty() {
        s.push_str(&format!(
            "{} machines; the database and the live processes agree",
            v.machines
        ));
        return s;
    }
    s.push_str(&format!("{} problem(s):\n", v.problems.len()));
    for p in &v.problems {
        s.push_str(&format!("  - {p}\n"));
    }
    s
}
