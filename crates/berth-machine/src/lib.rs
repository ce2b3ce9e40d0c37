//! Durable machine operations: what create, start, stop, restart and destroy do, step by step,
//! and how an operation interrupted by a crash is resumed.
//!
//! Architecture invariant: every step's effect on the store (its transition, its being done, and
//! for the last step the operation's removal) is one store write, so a crash leaves each step
//! either wholly done or not done. Steps that act outside the store ([`Effects`]) may run again
//! after a crash and must be idempotent. This crate never touches redb or HTTP directly.

mod plan;
mod runner;

pub use plan::{Effect, PlanStep, plan};
pub use runner::{CreateRequest, EffectError, Effects, Machines, OpError, OpOutcome};
