//! A real berthd on a temporary data dir, and the built binaries, for the end-to-end tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_client::{Client, Endpoint};

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_agent-harness"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The path of a workspace binary, built (once per test process) so it is never stale when
/// this package's tests run on their own. It builds exactly what `cargo test --workspace
/// --all-targets` builds (same packages, same targets, so the same features), so under
/// `cargo xtask test` it is a no-op; building only the three binaries' packages would unify
/// features differently and compile a second copy of most dependencies.
pub fn built(name: &str, _package: &str) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--workspace", "--all-targets"])
            .status()
            .unwrap();
        assert!(ok.success(), "building the binaries failed");
    });
    bin_dir().join(name)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real berthd on a temporary data dir.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub config: PathBuf,
    /// Where berthd's stderr goes (appended across restarts), when not inherited.
    pub log: Option<PathBuf>,
}

impl Agent {
    pub fn start(dir: &Path, extra_config: &str) -> Agent {
        Self::start_with_log(dir, extra_config, None)
    }

    /// [`Agent::start`] with berthd's log appended to `<dir>/berthd.log` (see [`Agent::log_text`]).
    pub fn start_logged(dir: &Path, extra_config: &str) -> Agent {
        Self::start_with_log(dir, extra_config, Some(dir.join("berthd.log")))
    }

    fn start_with_log(dir: &Path, extra_config: &str, log: Option<PathBuf>) -> Agent {
        let port = free_port();
        let config = dir.join("berth.toml");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            &config,
            format!("[reconcile]\ninterval = \"200ms\"\n{extra_config}"),
        )
        .unwrap();
        let mut a = Agent {
            child: None,
            dir: dir.to_owned(),
            port,
            config,
            log,
        };
        a.spawn();
        a
    }

    /// berthd's stderr: the log file, or null when it is inherited.
    pub fn stderr(&self) -> Stdio {
        match &self.log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
                .into(),
            None => Stdio::inherit(),
        }
    }

    /// What berthd logged so far (empty unless started with [`Agent::start_logged`]).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The berthd command this agent runs, not started.
    pub fn command(&self) -> Command {
        let mut c = Command::new(built("berthd", "berthd"));
        c.args([
            "--data-dir",
            self.dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", self.port),
        ])
        .arg("--config")
        .arg(&self.config)
        .env("BERTH_SHIM", built("berth-shim", "berth-driver"))
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(self.stderr());
        c
    }

    pub fn spawn(&mut self) {
        let child = self.command().spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(self.dir.join("berth.sock").exists()
            && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok())
        {
            assert!(Instant::now() < deadline, "berthd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> Client {
        Client::new(Endpoint::Unix(self.dir.join("berth.sock")))
    }

    pub fn tcp(&self, token: Option<String>) -> Client {
        Client::new(Endpoint::Tcp {
            addr: format!("127.0.0.1:{}", self.port),
            token,
        })
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(built("berth", "berth"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .unwrap()
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Leave no workload behind: destroy everything, then stop the agent.
        if self.child.is_some() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let c = self.socket();
            if let Ok(ms) = rt.block_on(c.list(None, false)) {
                for m in ms {
                    let _ = rt.block_on(c.destroy(m.id.as_str(), true));
                }
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        kill_leftovers(&self.dir);
    }
}

/// Kills, by the identities each machine's `shim.json` records (pid and start time, so never a
/// reused pid), the workloads and supervisors the destroys left: those of an agent the test
/// killed and did not restart, or of a machine whose state could not be read. Workloads outlive
/// their agent by design; a test's must not outlive its temp dir.
pub fn kill_leftovers(data: &Path) {
    use berth_driver::files::{ShimState, read_json};
    let Ok(entries) = std::fs::read_dir(data.join("machines")) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(Some(st)) = read_json::<ShimState>(&e.path().join("shim.json")) else {
            continue;
        };
        for p in [&st.workload, &st.shim] {
            if let Some(fd) = p.pidfd() {
                let _ =
                    berth_driver::proc::pidfd_send_signal(&fd, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `POST /v1/machines` with `body` as it is: the status and the JSON answer (`null` if none).
pub async fn post_machine(c: &Client, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = c
        .raw(
            berth_client::Method::POST,
            "/v1/machines",
            Some(serde_json::to_vec(body).unwrap()),
            &[],
        )
        .await
        .unwrap();
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls `f` every 25 ms until it returns `Some`, for at most `within`; panics naming `what`.
pub fn poll_until<T>(
    what: &str,
    within: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// A child process killed (and reaped) when the guard drops: a test that fails before its own
/// clean stop leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
