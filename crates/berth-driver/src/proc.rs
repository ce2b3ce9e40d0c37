//! Process identity and pidfds.
//!
//! A pid alone is not an identity: after a process exits its pid can be reused. berth records a
//! process as (pid, start time in clock ticks since boot, boot id); a recorded process is "alive"
//! only if a process with that pid exists *and* started at that tick on this boot.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// Who a process is, robust against pid reuse and reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid.
    pub pid: i32,
    /// Start time, in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or empty if unreadable.
pub fn boot_id() -> String {
    try_boot_id().unwrap_or_default()
}

/// This boot's id, or why it could not be read (an unreadable boot id proves nothing).
pub fn try_boot_id() -> std::io::Result<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let id = id.trim();
    if id.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/sys/kernel/random/boot_id is empty",
        ));
    }
    Ok(id.to_owned())
}

/// What `/proc/<pid>/stat` says, as evidence: `Ok(None)` only when no process has that pid
/// (ENOENT, ESRCH); any other failure to read or parse it is an error, never "gone".
fn read_stat(pid: i32) -> std::io::Result<Option<(char, u64)>> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) is in parentheses and may contain anything, so parse from the
    // last ')': field 3 (state) follows it, and the start time is field 22.
    let garbled = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat is not in the expected format"),
        )
    };
    let rest = &stat[stat.rfind(')').ok_or_else(garbled)? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields
        .next()
        .and_then(|f| f.chars().next())
        .ok_or_else(garbled)?;
    let ticks = fields
        .nth(18)
        .and_then(|f| f.parse().ok())
        .ok_or_else(garbled)?;
    Ok(Some((state, ticks)))
}

/// The start time of `pid`, if it exists.
pub fn start_ticks(pid: i32) -> Option<u64> {
    read_stat(pid).ok().flatten().map(|(_, t)| t)
}

/// Whether `pid` is a zombie (exited, not yet reaped).
pub fn is_zombie(pid: i32) -> bool {
    matches!(read_stat(pid), Ok(Some(('Z', _))))
}

impl ProcessId {
    /// The identity of a live process.
    pub fn of(pid: i32) -> Option<Self> {
        start_ticks(pid).map(|start_ticks| Self { pid, start_ticks })
    }

    /// Whether this very process still runs (not merely some process with its pid).
    pub fn is_alive(&self) -> bool {
        self.liveness().unwrap_or(false)
    }

    /// Whether this very process still runs, as evidence: `Ok(false)` only when it is proven
    /// gone (no such pid, another start time, a zombie); an error reading `/proc` is `Err`.
    pub fn liveness(&self) -> std::io::Result<bool> {
        Ok(match read_stat(self.pid)? {
            None => false,
            Some((state, ticks)) => ticks == self.start_ticks && state != 'Z',
        })
    }

    /// A pidfd for this very process: `Ok(None)` when it is proven gone (or its pid now names
    /// another), `Err` when that cannot be told (pidfd_open failing with EMFILE, say).
    pub fn try_pidfd(&self) -> std::io::Result<Option<OwnedFd>> {
        match read_stat(self.pid)? {
            Some((_, ticks)) if ticks == self.start_ticks => {}
            _ => return Ok(None),
        }
        let fd = match pidfd_open(self.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        match read_stat(self.pid)? {
            Some((_, ticks)) if ticks == self.start_ticks => Ok(Some(fd)),
            _ => Ok(None),
        }
    }

    /// A pidfd for this very process, or `None` if it is gone (or its pid now names another).
    ///
    /// The identity is checked again after opening, so a pid reused between the check and the
    /// open cannot hand back a pidfd for the wrong process.
    pub fn pidfd(&self) -> Option<OwnedFd> {
        if start_ticks(self.pid) != Some(self.start_ticks) {
            return None;
        }
        let fd = pidfd_open(self.pid).ok()?;
        (start_ticks(self.pid) == Some(self.start_ticks)).then_some(fd)
    }
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd or -1; no memory is
    // passed to the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`: signals exactly the process the pidfd refers to.
pub fn pidfd_send_signal(fd: &OwnedFd, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is a valid pidfd we own; siginfo is NULL (allowed, acts like kill(2)); flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal as i32,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_this_process_and_a_dead_one() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert!(me.pidfd().is_some());
        let reused = ProcessId {
            pid: me.pid,
            start_ticks: me.start_ticks + 1,
        };
        assert!(
            !reused.is_alive(),
            "same pid, other start time: not the same process"
        );
        assert!(reused.pidfd().is_none());
        assert!(!boot_id().is_empty());
    }
}
