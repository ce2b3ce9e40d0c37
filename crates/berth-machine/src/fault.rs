//! A fault hook for tests and drills: `BERTH_FAULT_PAUSE_AT=KIND:STEP:WHEN` (e.g.
//! `update:spawn:before`; `WHEN` is `before` or `after` the step's effect, and "after" is
//! before the step is recorded) makes every operation of that kind stop there for good, after
//! logging `fault: operation paused at KIND:STEP:WHEN`. A test then SIGKILLs berthd at exactly
//! that point and checks that the restarted agent resumes the operation. Unset (always, outside
//! tests), it costs one comparison per step.

use std::sync::OnceLock;

use berth_types::OpKind;

/// The variable that names the pause point.
pub const PAUSE_ENV: &str = "BERTH_FAULT_PAUSE_AT";

fn point() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var(PAUSE_ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

fn kind_name(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Create => "create",
        OpKind::Start => "start",
        OpKind::Stop => "stop",
        OpKind::Restart => "restart",
        OpKind::Destroy => "destroy",
        OpKind::Update => "update",
    }
}

/// Waits forever if `kind:step:when` is the configured pause point; returns at once otherwise.
pub(crate) async fn pause(kind: OpKind, step: &str, when: &str) {
    let Some(at) = point() else { return };
    let here = format!("{}:{step}:{when}", kind_name(kind));
    if at == here {
        tracing::warn!(point = %here, "fault: operation paused at {here} ({PAUSE_ENV})");
        std::future::pending::<()>().await;
    }
}
