//! Durable machine operations: what create, start, stop, restart, destroy and update do, step by step,
//! how an operation interrupted by a crash is resumed, and supervision (exits, restart policy,
//! reconciliation with its blast-radius guard).
//!
//! Architecture invariant: every step's effect on the store (its transition, its being done, and
//! for the last step the operation's removal) is one store write, so a crash leaves each step
//! either wholly done or not done. Steps that act outside the store ([`Effects`]) may run again
//! after a crash and must be idempotent. Decisions about a workload's exit are made inside the
//! write that records them, against the committed record. This crate never touches redb, HTTP or
//! processes directly.

mod admission;
mod fault;
mod guard;
mod leases;
mod plan;
mod runner;
mod supervise;
mod update;

pub use admission::{Admission, AdmissionError, Admitted, Created};
pub use guard::{Guard, GuardAction, GuardConfig, GuardStatus, Held, Verdict};
pub use leases::{DEFAULT_LEASE_TTL, LeaseError, LeaseRecord, MAX_LEASE_TTL};
pub use plan::{Effect, PlanStep, plan};
pub use runner::{CreateRequest, EffectError, Effects, ImageError, Machines, OpError, OpOutcome};
pub use supervise::{
    AfterExit, DEFAULT_MAX_RETRIES, ExitOutcome, Observed, Planned, ReconcileConfig,
    ReconcileReport, after_exit, backoff, describe_exit,
};
pub use update::{UpdateRequest, Updated, changed_fields};
