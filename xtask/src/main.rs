//! Repository automation, run as `cargo xtask <task>`.
//!
//! - `cargo xtask test`: the whole test suite. Installs the system packages the tests need (on
//!   Debian, with apt-get) and then runs `cargo test --workspace`. This is the README's test
//!   command and what `.ci/run` calls.
//! - `cargo xtask bench <suite>`: a benchmark, built in release mode (`store`, `driver`, `api`,
//!   `compaction`, `metrics`, `aging`, `restart`, `fleet`, `images`, `checks`).
//! - `cargo xtask dist`: release binaries and the Debian package (see `dist.rs`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod dist;

use std::process::{Command, ExitCode};

/// Commands the test suite needs, with the Debian package that provides each.
const SYSTEM_PACKAGES: &[(&str, &str)] = &[
    // `systemd-analyze verify` on the unit (tests/systemd.rs, xtask/tests/dist.rs).
    ("systemd-analyze", "systemd"),
    // `cargo xtask dist` and its test: building and reading the package.
    ("dpkg-deb", "dpkg"),
    ("readelf", "binutils"),
    ("strip", "binutils"),
    ("md5sum", "coreutils"),
    ("gzip", "gzip"),
    // The package's maintainer scripts and man pages, checked.
    ("shellcheck", "shellcheck"),
    ("man", "man-db"),
    ("unshare", "util-linux"),
    // The hostile tests: squeezing a live berthd's open-files limit, and a small full disk.
    ("prlimit", "util-linux"),
    ("mount", "mount"),
    ("umount", "mount"),
    // `promtool check metrics|rules`, `promtool test rules`, and a real Prometheus scraping a
    // real berthd (tests/packaging.rs, tests/metrics.rs, tests/prometheus.rs).
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    // The runbooks' commands, run by tests/runbooks.rs.
    ("curl", "curl"),
    ("jq", "jq"),
    // The image store's tests build an OCI image layout from the static busybox
    // (crates/berth-image/tests).
    ("busybox", "busybox-static"),
    // Image machines run under runc (crates/berth-driver, tests/isolation.rs); crun is not
    // needed: on hybrid-cgroup hosts Debian's crun refuses to run anything, and `runtime.oci
    // = "auto"` probes past it.
    ("runc", "runc"),
    // ... and import one written by umoci, as an operator would write it.
    ("umoci", "umoci"),
    // Registry pulls are tested against a real registry on loopback, the test images pushed
    // with skopeo, htpasswd for its basic auth (crates/berth-image/tests/pull.rs).
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("htpasswd", "apache2-utils"),
    // The token-auth test's issuer signs with a key and certificate made by the openssl CLI
    // (tests/common/token_issuer.rs).
    ("openssl", "openssl"),
    // A real JetStream for the fleet export (tests/fleet.rs, `cargo xtask bench fleet`).
    ("nats-server", "nats-server"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("dist") => dist::dist(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test [-- CARGO TEST ARGS] \
                 | cargo xtask bench <store|driver|api|compaction|metrics|aging|restart|fleet|images|checks> [SUITE ARGS] \
                 | cargo xtask dist [--profile PROFILE] [--out DIR]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Installs missing system packages with apt-get (as root, or through sudo).
fn ensure_system_packages() -> Result<(), String> {
    let mut missing: Vec<&str> = SYSTEM_PACKAGES
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        return Err(format!(
            "the tests need {missing:?} and there is no apt-get to install them"
        ));
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut c = if is_root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install)
}

fn test(extra: &[String]) -> Result<(), String> {
    ensure_system_packages()?;
    let mut totals = Totals::default();
    // Doc tests are not part of --all-targets.
    let doc = run_counted(cargo().args(["test", "--workspace", "--doc"]), &mut totals);
    let mut cmd = cargo();
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    cmd.args(["test", "--workspace", "--all-targets", "--no-fail-fast"]);
    cmd.args(extra);
    let all = run_counted(&mut cmd, &mut totals);
    // The plain closing line: a summary of every cargo test binary above.
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    doc.and(all)
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Adds the counts of a libtest `test result:` line to `totals`.
fn count_line(line: &str, totals: &mut Totals) {
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => totals.passed += n,
            "failed" => totals.failed += n,
            "ignored" => totals.ignored += n,
            _ => {}
        }
    }
}

/// Runs a cargo test command, passing its output through and counting its results.
fn run_counted(cmd: &mut Command, totals: &mut Totals) -> Result<(), String> {
    use std::io::{BufRead, Write};
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    // Lines are read on a thread: a stray process that inherited cargo's stdout could keep the
    // pipe open after cargo exits, and must not hang the test command.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let stdout = std::io::stdout();
    let print = |line: String, totals: &mut Totals| {
        count_line(&line, totals);
        let mut lock = stdout.lock();
        let _ = writeln!(lock, "{line}");
    };
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(line) => print(line, totals),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait().ok().flatten().is_some() {
                    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
                        print(line, totals);
                    }
                    break;
                }
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    args.first().ok_or(
        "usage: cargo xtask bench <store|driver|api|compaction|metrics|aging|restart|fleet|images|checks> [SUITE ARGS]",
    )?;
    // The driver suite launches the real supervisor, found beside the bench binary.
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "berth-driver",
        "--bin",
        "berth-shim",
        "-p",
        "berthd",
        "--bin",
        "berthd",
    ]))?;
    run(cargo()
        .args(["run", "--release", "--quiet", "-p", "berth-bench", "--"])
        .args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_summaries() {
        let mut t = Totals::default();
        count_line(
            "test result: ok. 7 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.81s",
            &mut t,
        );
        count_line(
            "test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
            &mut t,
        );
        count_line("running 7 tests", &mut t);
        assert_eq!((t.passed, t.failed, t.ignored), (8, 3, 2));
    }
}
