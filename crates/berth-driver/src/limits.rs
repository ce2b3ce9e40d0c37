//! Process limits: what berthd needs for itself, and what its workloads get instead.
//!
//! berthd holds a pidfd for every running machine plus its connections, so it raises its own
//! soft `RLIMIT_NOFILE` to the hard limit at start. Workloads must not inherit that (programs
//! using `select(2)` break above 1024 descriptors; some allocate tables sized by the limit):
//! each one gets the limits berthd started with. Likewise a workload's `oom_score_adj` is reset
//! to 0, so an agent protected from the OOM killer does not pass that protection on.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// A soft and hard limit.
pub type Limit = (u64, u64);

/// Raises this process's soft open-files limit to its hard limit. Returns the limits it had
/// before, which are what workloads should get ([`crate::DriverConfig::workload_nofile`]).
pub fn raise_nofile_limit() -> std::io::Result<Limit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok((soft, hard))
}

/// This process's open-files limits.
pub fn nofile_limit() -> std::io::Result<Limit> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)
}

/// In a forked child before exec: applies `nofile`, capped at the hard limit the child has (a
/// supervisor started by an older, lower-limited agent cannot raise it). Only system calls.
pub(crate) fn apply_nofile(nofile: Option<Limit>) -> nix::Result<()> {
    match nofile {
        Some((soft, hard)) => {
            let (_, current_hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            let hard = hard.min(current_hard);
            setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)
        }
        None => Ok(()),
    }
}
