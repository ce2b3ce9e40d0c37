//! berth's domain types, shared by every other crate.
//!
//! Architecture invariant: this crate does no I/O and owns no policy beyond the rules that make a
//! value valid. The machine state machine lives here ([`state`]) because both the store (which
//! refuses to persist an illegal transition) and the operation runner need the same table.

pub mod config;
pub mod event;
pub mod id;
pub mod image_ref;
pub mod machine;
pub mod operation;
pub mod state;
pub mod time;
pub mod workload;

pub use config::{
    CheckAction, CheckConfig, CheckType, MachineConfig, ResourceLimits, RestartConfig,
    RestartPolicy, StopConfig,
};
pub use event::{Event, EventKind, ExitInfo, ExportHole, Source};
pub use id::{IdError, MachineId};
pub use machine::{CheckHealth, CheckStatus, ConfigVersion, MachineRecord};
pub use operation::{OpKind, OpParams, OperationRecord, StepRecord};
pub use state::{IllegalTransition, State};
pub use time::Timestamp;
