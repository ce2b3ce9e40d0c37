//! Talking to systemd: readiness (`READY=1`, for `Type=notify`), `STOPPING=1`, and the watchdog
//! (`WatchdogSec=`), all over the datagram socket named by `NOTIFY_SOCKET`.
//!
//! The watchdog is fed only while the agent itself is responsive: every check, a no-op write goes
//! through the store's writer queue and must be committed, and `GET /v1/health` must answer on
//! the agent's own unix socket — the path an operator's `berth` takes. If either does not
//! complete in time, no `WATCHDOG=1` is sent; systemd, hearing nothing for `WatchdogSec`, kills
//! berthd and `Restart=on-failure` starts it again. Workloads keep running (`KillMode=process`),
//! and the new agent reattaches to them. A store that refuses a write because a commit failed (a
//! full disk) answered promptly: its writer is alive and reopens the database by itself, and a
//! restart would not free the disk (nor could it repair the file without room for the copy it
//! keeps aside), so that counts as responsive; health says degraded.
//!
//! Checks run every quarter of the watchdog period, each bounded by a quarter: pings are at most
//! half a period apart while healthy, one slow check is forgiven, and systemd acts only after the
//! agent has been unresponsive for most of a whole period.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_api::Shared;
use sd_notify::NotifyState;

/// What systemd told this process through its environment, read once.
#[derive(Debug, Default)]
struct FromSystemd {
    notify_socket: Option<std::ffi::OsString>,
    watchdog_usec: Option<String>,
    watchdog_pid: Option<String>,
}

static FROM_SYSTEMD: std::sync::OnceLock<FromSystemd> = std::sync::OnceLock::new();

fn from_systemd() -> &'static FromSystemd {
    FROM_SYSTEMD.get_or_init(|| FromSystemd {
        notify_socket: std::env::var_os("NOTIFY_SOCKET"),
        watchdog_usec: std::env::var("WATCHDOG_USEC").ok(),
        watchdog_pid: std::env::var("WATCHDOG_PID").ok(),
    })
}

/// Keeps what systemd set for berthd and removes it from the environment, so that nothing
/// berthd starts inherits it (`berth_driver::oci::runtime::SERVICE_MANAGER_ENV`): runc given
/// `NOTIFY_SOCKET` waits for the container to send `READY=1`, so under `Type=notify` the
/// runtime probe timed out and image machines were refused; a check command or shim could
/// also have notified systemd in berthd's name.
///
/// # Safety
/// Must be called while the process has a single thread (first thing in `main`): changing the
/// environment races with any other thread reading it.
#[allow(unsafe_code)]
pub unsafe fn take_environment() {
    let _ = from_systemd();
    for v in berth_driver::oci::runtime::SERVICE_MANAGER_ENV {
        // SAFETY: the caller guarantees no other thread exists to read the environment.
        unsafe { std::env::remove_var(v) };
    }
}

/// Sends one notification (e.g. `READY=1`) to systemd, if it asked for them.
pub fn notify(state: &str) {
    if let Err(e) = send(&NotifyState::Custom(state)) {
        tracing::warn!(error = %e, state, "could not notify systemd");
    }
}

/// Sends `state` to the socket `NOTIFY_SOCKET` named when berthd started, if it was set: a path,
/// or an abstract name (`@name`, which systemd accepts). By hand rather than through
/// `sd_notify::notify`, which reads the variable [`take_environment`] removed.
fn send(state: &NotifyState) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(addr) = &from_systemd().notify_socket else {
        return Ok(());
    };
    let addr = match addr.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(addr)?,
    };
    let msg = format!("{state}\n");
    let sent = UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    if sent != msg.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "incomplete notification",
        ));
    }
    Ok(())
}

/// The watchdog period systemd expects, from `WATCHDOG_USEC` and `WATCHDOG_PID` (as
/// `sd_watchdog_enabled` reads them): none when unset, zero or unparsable, or when
/// `WATCHDOG_PID` names another process (the variables were inherited, not meant for us).
///
/// Not `sd_notify::watchdog_enabled`: that returns a zero period for `WATCHDOG_USEC=0` (a check
/// loop with no pause) and ignores an unparsable `WATCHDOG_PID` instead of declining, and it reads
/// the environment itself, so it cannot be tested without changing the test process's environment.
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// Starts feeding systemd's watchdog, if it asked for one (`WATCHDOG_USEC`). Call once the agent
/// serves its socket and has said `READY=1`: systemd arms the watchdog when start-up completes.
/// When `stopping` turns true the agent is draining: the watchdog stops checking (the API
/// closing is then expected, not a fault).
pub fn spawn_watchdog(
    shared: Arc<Shared>,
    socket: PathBuf,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let env = from_systemd();
    let Some(period) = watchdog_period(
        env.watchdog_usec.as_deref(),
        env.watchdog_pid.as_deref(),
        std::process::id(),
    ) else {
        return;
    };
    if env.notify_socket.is_none() {
        tracing::warn!("WATCHDOG_USEC is set without NOTIFY_SOCKET; no watchdog");
        return;
    }
    let step = period / 4;
    tracing::info!(period = ?period, every = ?step, "feeding systemd's watchdog while the store and the API respond");
    tokio::spawn(async move {
        // A fresh connection per check: the question is whether the API accepts connections.
        let client =
            berth_client::Client::new(berth_client::Endpoint::Unix(socket)).fresh_connections();
        loop {
            let outcome = tokio::select! {
                _ = stopping.wait_for(|s| *s) => break,
                outcome = check(&shared, &client, step) => outcome,
            };
            match outcome {
                Ok(()) => {
                    if let Err(e) = send(&NotifyState::Watchdog) {
                        tracing::warn!(error = %e, "could not ping systemd's watchdog");
                    }
                }
                Err(why) => tracing::warn!(
                    "not feeding systemd's watchdog: {why}; systemd restarts berthd if this lasts {} (workloads keep running)",
                    humantime::format_duration(period)
                ),
            }
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(step) => {}
            }
        }
    });
}

/// One liveness check: a no-op store write and the health route, concurrently, each bounded.
async fn check(
    shared: &Shared,
    client: &berth_client::Client,
    limit: Duration,
) -> Result<(), String> {
    let store = shared.agent().store().clone();
    let write = tokio::time::timeout(limit, store.write(|_| Ok(())));
    let health = tokio::time::timeout(limit, client.health());
    let (write, health) = tokio::join!(write, health);
    let within = humantime::format_duration(limit);
    match write {
        Err(_) => return Err(format!("a store write did not commit within {within}")),
        Ok(Err(
            berth_store::StoreError::Poisoned(_) | berth_store::StoreError::CommitFailed(_),
        )) => {}
        Ok(Err(e)) => return Err(format!("the store refused a write: {e}")),
        Ok(Ok(())) => {}
    }
    match health {
        Err(_) => Err(format!("GET /v1/health did not answer within {within}")),
        Ok(Err(e)) => Err(format!("GET /v1/health failed: {e}")),
        // Answered, even if degraded: a degraded host needs an operator, not a restart.
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_period_follows_sd_watchdog_enabled() {
        let s = Some;
        assert_eq!(
            watchdog_period(s("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_period(s("500000"), s("7"), 7),
            Some(Duration::from_millis(500))
        );
        for (usec, pid) in [
            (None, None),
            (s("0"), None),
            (s("soon"), None),
            (s("30000000"), s("8")),
            (s("30000000"), s("me")),
        ] {
            assert_eq!(watchdog_period(usec, pid, 7), None, "{usec:?} {pid:?}");
        }
    }

    /// The variable that makes [`child_sends_one_watchdog_ping`] act, naming what it expects.
    const CHILD: &str = "BERTHD_TEST_NOTIFY_CHILD";

    /// Runs [`child_sends_one_watchdog_ping`] in a child test process with `NOTIFY_SOCKET` set
    /// (`send` reads it from the environment, which a test must not change in its own process).
    fn child_sends(notify_socket: &std::ffi::OsStr, expect: &str) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "systemd::tests::child_sends_one_watchdog_ping",
                "--nocapture",
            ])
            .env("NOTIFY_SOCKET", notify_socket)
            .env(CHILD, expect)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Does nothing unless started by [`child_sends`].
    #[test]
    fn child_sends_one_watchdog_ping() {
        let Ok(expect) = std::env::var(CHILD) else {
            return;
        };
        let sent = send(&NotifyState::Watchdog);
        match expect.as_str() {
            "ok" => sent.unwrap(),
            _ => assert!(sent.is_err(), "{sent:?}"),
        }
    }

    #[test]
    fn notifications_reach_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        child_sends(path.as_os_str(), "ok");
        let mut buf = [0u8; 32];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
        child_sends(dir.path().join("nobody").as_os_str(), "err");
    }

    #[test]
    fn notifications_reach_an_abstract_datagram_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("berthd-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        child_sends(format!("@{name}").as_ref(), "ok");
        let mut buf = [0u8; 32];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }
}
