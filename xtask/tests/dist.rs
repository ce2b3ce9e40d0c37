//! `cargo xtask dist`, checked from the outside: the package is built (once per run), then read
//! the way dpkg reads it and unpacked into temporary roots: every expected file in its place with
//! its mode, the control files right, the binaries running, the man pages valid, the unit
//! verified against the package's own files, and the maintainer scripts run against stubs of
//! the system tools they call.
//!
//! The package is built with `--profile dev`: under `cargo xtask test` those binaries are
//! already built for the end-to-end tests (the same package selection), so the test costs
//! seconds, not a release build. Everything the package format depends on — paths, modes,
//! control files, generated pages, scripts — is the same for both profiles; the release
//! binaries differ only in optimization.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-dist-test-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, returning its output; panics if it cannot start.
fn sh(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e} (cargo xtask test installs it)"))
}

fn ok(cmd: &mut Command) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn arch() -> String {
    ok(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_owned()
}

/// The package, built once per test process into the target directory (a build output,
/// overwritten by the next run).
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"));
        let out = target.join("dist-test");
        let _ = std::fs::remove_dir_all(&out);
        let printed = ok(Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["dist", "--profile", "dev", "--out"])
            .arg(&out));
        let deb = out.join(format!(
            "berth_{}_{}.deb",
            env!("CARGO_PKG_VERSION"),
            arch()
        ));
        assert_eq!(
            printed.trim(),
            deb.to_str().unwrap(),
            "dist prints the package"
        );
        assert!(deb.is_file());
        deb
    })
}

/// The package unpacked (`dpkg-deb -x`) into a fresh root, with its control files (`-e`) in
/// `<root>/DEBIAN`.
fn unpacked() -> TempDir {
    let root = TempDir::new("root");
    ok(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&root.0));
    ok(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb())
        .arg(root.0.join("DEBIAN")));
    root
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every subcommand page clap_mangen writes for `berth`, by running the packaged `berth man`.
fn berth_pages(root: &Path) -> Vec<String> {
    let dir = TempDir::new("man");
    ok(Command::new(root.join("usr/bin/berth"))
        .arg("man")
        .arg(&dir.0));
    let mut pages: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    pages
}

fn files_in(dir: &str, ext: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(repo().join(dir)) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(ext))
        .collect()
}

#[test]
fn the_package_holds_everything_in_its_place() {
    let listing = ok(Command::new("dpkg-deb").arg("--contents").arg(deb()));
    // path -> (mode string, owner)
    let entries: Vec<(String, String, String)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[5].trim_start_matches('.').to_owned(),
                f[0].to_owned(),
                f[1].to_owned(),
            )
        })
        .collect();
    let find = |path: &str| entries.iter().find(|(p, _, _)| p == path);
    let mut expected: Vec<(String, &str)> = vec![
        ("/usr/bin/berthd".into(), "-rwxr-xr-x"),
        ("/usr/bin/berth".into(), "-rwxr-xr-x"),
        ("/usr/bin/berth-shim".into(), "-rwxr-xr-x"),
        ("/lib/systemd/system/berthd.service".into(), "-rw-r--r--"),
        ("/etc/berth/berth.toml".into(), "-rw-r--r--"),
        ("/usr/share/doc/berth/README.md".into(), "-rw-r--r--"),
        ("/usr/share/doc/berth/copyright".into(), "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/berth".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/zsh/vendor-completions/_berth".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/fish/vendor_completions.d/berth.fish".into(),
            "-rw-r--r--",
        ),
        ("/usr/share/man/man1/berthd.1.gz".into(), "-rw-r--r--"),
    ];
    for f in files_in("runbooks", ".md") {
        expected.push((format!("/usr/share/doc/berth/runbooks/{f}"), "-rw-r--r--"));
    }
    let mut rules = files_in("packaging/prometheus", ".yml");
    rules.extend(files_in("packaging/prometheus", ".yaml"));
    for f in rules {
        expected.push((format!("/usr/share/berth/prometheus/{f}"), "-rw-r--r--"));
    }
    for f in files_in("packaging/grafana", ".json") {
        expected.push((format!("/usr/share/berth/grafana/{f}"), "-rw-r--r--"));
    }
    let root = unpacked();
    let pages = berth_pages(&root.0);
    assert!(
        pages.len() > 20 && pages.contains(&"berth-machine-create.1".to_owned()),
        "{pages:?}"
    );
    for page in &pages {
        expected.push((format!("/usr/share/man/man1/{page}.gz"), "-rw-r--r--"));
    }
    for (path, want) in &expected {
        let (_, got, owner) =
            find(path).unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        assert_eq!(got, want, "{path}");
        assert_eq!(owner, "root/root", "{path}");
    }
    // Nothing else but directories (0755, root) and the pages of hidden commands left out.
    for (path, mode, owner) in &entries {
        assert_eq!(owner, "root/root", "{path}");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "{path}");
        } else {
            assert!(
                expected.iter().any(|(p, _)| p == path),
                "unexpected file in the package: {path}"
            );
        }
    }
    assert!(find("/usr/share/man/man1/berth-man.1.gz").is_none());
    // The unit and the config are the repository's, byte for byte.
    for (packaged, source) in [
        (
            "lib/systemd/system/berthd.service",
            "packaging/systemd/berthd.service",
        ),
        ("etc/berth/berth.toml", "packaging/berth.toml"),
    ] {
        assert_eq!(
            std::fs::read(root.0.join(packaged)).unwrap(),
            std::fs::read(repo().join(source)).unwrap(),
            "{packaged}"
        );
    }
}

#[test]
fn the_control_files_describe_the_package() {
    let root = unpacked();
    let control = std::fs::read_to_string(root.0.join("DEBIAN/control")).unwrap();
    let field = |name: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{control}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "berth");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Architecture"), arch());
    assert!(field("Maintainer").contains('@'));
    assert!(!field("Description").is_empty());
    for placeholder in ["@VERSION@", "@ARCH@", "@DEPENDS@", "@INSTALLED_SIZE@"] {
        assert!(!control.contains(placeholder), "{control}");
    }
    assert!(!control.lines().any(|l| l.starts_with('#')), "{control}");
    let depends = field("Depends");
    assert!(depends.starts_with("libc6 (>= 2."), "{depends}");
    let size: u64 = field("Installed-Size").parse().unwrap();
    let binaries: u64 = ["berthd", "berth", "berth-shim"]
        .iter()
        .map(|b| {
            std::fs::metadata(root.0.join("usr/bin").join(b))
                .unwrap()
                .len()
        })
        .sum();
    assert!(size >= binaries / 1024, "Installed-Size {size} KiB");
    // dpkg agrees with all of it.
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(deb()));
    assert!(info.contains(" Package: berth\n"), "{info}");

    assert_eq!(
        std::fs::read_to_string(root.0.join("DEBIAN/conffiles")).unwrap(),
        "/etc/berth/berth.toml\n"
    );
    // md5sums lists every file but the conffile, and the files match.
    let sums = std::fs::read_to_string(root.0.join("DEBIAN/md5sums")).unwrap();
    assert!(sums.contains("  usr/bin/berthd\n"), "{sums}");
    assert!(!sums.contains("etc/berth"), "{sums}");
    ok(Command::new("md5sum")
        .args(["--check", "--quiet", "--strict"])
        .arg(root.0.join("DEBIAN/md5sums"))
        .current_dir(&root.0));

    for script in ["postinst", "prerm", "postrm"] {
        let path = root.0.join("DEBIAN").join(script);
        assert_eq!(mode(&path), 0o755, "{script}");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("#!/bin/sh\n"),
            "{script}"
        );
        ok(Command::new("sh").arg("-n").arg(&path));
        ok(Command::new("shellcheck").arg(&path));
    }
}

#[test]
fn the_unpacked_binaries_pages_and_completions_work() {
    let root = unpacked();
    let bin = root.0.join("usr/bin");
    let help = ok(Command::new(bin.join("berth")).arg("--help"));
    assert!(
        help.contains("machine") && help.contains("doctor"),
        "{help}"
    );
    let version = ok(Command::new(bin.join("berthd")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("berthd {}", env!("CARGO_PKG_VERSION"))
    );
    // The supervisor runs (and refuses to run without its machine directory).
    let shim = sh(&mut Command::new(bin.join("berth-shim")));
    assert!(!shim.status.success());
    assert!(shim.status.code().is_some(), "berth-shim crashed: {shim:?}");

    let bash = root.0.join("usr/share/bash-completion/completions/berth");
    ok(Command::new("bash").arg("-n").arg(&bash));
    assert!(
        std::fs::read_to_string(&bash)
            .unwrap()
            .contains("-F _clap_complete_berth berth")
    );
    let zsh =
        std::fs::read_to_string(root.0.join("usr/share/zsh/vendor-completions/_berth")).unwrap();
    assert!(zsh.starts_with("#compdef berth"), "{}", &zsh[..40]);
    let fish = std::fs::read_to_string(
        root.0
            .join("usr/share/fish/vendor_completions.d/berth.fish"),
    )
    .unwrap();
    assert!(fish.contains("--command berth") && fish.contains("COMPLETE=fish berth"));

    let man1 = root.0.join("usr/share/man/man1");
    for entry in std::fs::read_dir(&man1).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let page = name.strip_suffix(".1.gz").unwrap();
        ok(Command::new("gzip").arg("--test").arg(&path));
        let troff = ok(Command::new("gzip").arg("-dc").arg(&path));
        assert!(troff.contains(&format!("\n.TH {page} 1 ")), "{name}");
        // man renders it, with a NAME section naming the page.
        let text = ok(Command::new("man")
            .arg("--local-file")
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("PAGER", "cat"));
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains(&format!("NAME {page} - ")),
            "{name}:\n{text}"
        );
    }
}

/// The unit as packaged, verified against the package's own files: ExecStart is pointed at the
/// unpacked berthd (verify insists that it exists), and man looks for the pages Documentation=
/// names in the unpacked tree.
#[test]
fn the_packaged_unit_verifies_against_the_package() {
    let root = unpacked();
    let unit = std::fs::read_to_string(root.0.join("lib/systemd/system/berthd.service")).unwrap();
    let unit = unit.replace(
        "\nExecStart=/usr/bin/berthd\n",
        &format!("\nExecStart={}\n", root.0.join("usr/bin/berthd").display()),
    );
    let dir = TempDir::new("unit");
    let path = dir.0.join("berthd.service");
    std::fs::write(&path, unit).unwrap();
    let out = sh(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", root.0.join("usr/share/man")));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// Runs a maintainer script with stubs of the tools it calls (each appends its name and
/// arguments to a log), so nothing on the real system is touched; `systemd` says whether
/// `/run/systemd/system` exists for the script. Returns the exit code and the calls, or None
/// if that situation cannot be arranged here (it needs a private mount namespace).
fn run_script(
    root: &Path,
    script: &str,
    args: &[&str],
    systemd: bool,
    was_enabled: bool,
) -> Option<(i32, Vec<String>)> {
    let dir = TempDir::new("stubs");
    let log = dir.0.join("calls");
    for tool in ["systemctl", "deb-systemd-helper", "deb-systemd-invoke"] {
        let stub = dir.0.join(tool);
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> \"$STUB_LOG\"\n\
                 [ \"$2\" = was-enabled ] && exit \"$STUB_WAS_ENABLED\"\nexit 0\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = root.join("DEBIAN").join(script);
    let real_systemd = Path::new("/run/systemd/system").is_dir();
    let mut cmd = if systemd == real_systemd {
        Command::new(&script)
    } else {
        // A private mount namespace with an empty /run, holding /run/systemd/system if asked.
        let probe = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "true"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            return None;
        }
        let setup = if systemd {
            "mount -t tmpfs berth-test /run && mkdir -p /run/systemd/system && exec \"$0\" \"$@\""
        } else {
            "mount -t tmpfs berth-test /run && exec \"$0\" \"$@\""
        };
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c", setup])
            .arg(&script);
        c
    };
    let out = sh(cmd
        .args(args)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dir.0.display()),
        )
        .env("STUB_LOG", &log)
        .env("STUB_WAS_ENABLED", if was_enabled { "0" } else { "1" }));
    let calls = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    Some((out.status.code().unwrap_or(-1), calls))
}

/// One run of a maintainer script and what it must do.
struct Case {
    run: &'static str,
    systemd: bool,
    was_enabled: bool,
    calls: Vec<String>,
}

#[test]
fn the_maintainer_scripts_follow_debian_conventions_and_touch_nothing_else() {
    let root = unpacked();
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/berthd.service");
    let before = wants.exists();
    let dsh = |what: &str| format!("deb-systemd-helper {what} berthd.service");
    let enable = [dsh("unmask"), dsh("--quiet was-enabled"), dsh("enable")];
    let reload = "systemctl --system daemon-reload".to_owned();
    let invoke = |what: &str| format!("deb-systemd-invoke {what} berthd.service");
    // (script and arguments, systemd running, unit was enabled, the calls it must make)
    let case = |run: &'static str, systemd: bool, was_enabled: bool, calls: Vec<String>| Case {
        run,
        systemd,
        was_enabled,
        calls,
    };
    let cases = [
        // Without a running systemd: the unit is enabled for the next boot, nothing started.
        case("postinst configure", false, true, enable.to_vec()),
        case(
            "postinst configure",
            false,
            false,
            vec![
                dsh("unmask"),
                dsh("--quiet was-enabled"),
                dsh("update-state"),
            ],
        ),
        case("prerm remove", false, true, vec![]),
        case("postrm remove", false, true, vec![dsh("mask")]),
        case(
            "postrm purge",
            false,
            true,
            vec![dsh("purge"), dsh("unmask")],
        ),
        // With systemd: started on installation, restarted on upgrade (machines keep running:
        // KillMode=process), stopped on removal but not on upgrade.
        case(
            "postinst configure",
            true,
            true,
            [&enable[..], &[reload.clone(), invoke("start")]].concat(),
        ),
        case(
            "postinst configure 0.0.1",
            true,
            true,
            [&enable[..], &[reload.clone(), invoke("restart")]].concat(),
        ),
        case("prerm upgrade 0.2.0", true, true, vec![]),
        case("prerm remove", true, true, vec![invoke("stop")]),
        case(
            "postrm remove",
            true,
            true,
            vec![reload.clone(), dsh("mask")],
        ),
        case("postrm upgrade 0.2.0", true, true, vec![]),
    ];
    let mut skipped = 0;
    for c in cases {
        let mut words = c.run.split_whitespace();
        let script = words.next().unwrap();
        let args: Vec<&str> = words.collect();
        let Some((code, calls)) = run_script(&root.0, script, &args, c.systemd, c.was_enabled)
        else {
            skipped += 1;
            continue;
        };
        let what = format!(
            "{} (systemd: {}, enabled: {})",
            c.run, c.systemd, c.was_enabled
        );
        assert_eq!(code, 0, "{what}");
        assert_eq!(calls, c.calls, "{what}");
    }
    if skipped > 0 {
        eprintln!("{skipped} cases need a private mount namespace (unshare) and were not run");
    }
    assert!(skipped < 6, "the cases matching this host always run");
    for script in ["postinst", "prerm", "postrm"] {
        let (code, _) = run_script(&root.0, script, &["bogus"], false, true)
            .or_else(|| run_script(&root.0, script, &["bogus"], true, true))
            .unwrap();
        assert_eq!(code, 1, "{script} refuses an unknown action");
    }
    assert_eq!(
        wants.exists(),
        before,
        "the real system's units are untouched"
    );
}

/// The whole life of the package with the real dpkg, in a throwaway copy of this system: a
/// private mount namespace whose root is an overlay over `/` (writes land in a tmpfs), entered
/// with chroot. Install (enabled for the next boot), the installed berthd running a machine
/// with the installed berth-shim, an upgrade in place, remove (conffile kept, unit masked),
/// purge (conffile gone, /var/lib/berth kept). Needs root and mount namespaces; where those are
/// missing it says so and checks nothing.
#[test]
fn dpkg_installs_upgrades_removes_and_purges_it_in_a_throwaway_root() {
    const SETUP: &str = r#"
set -eu
base=$1 deb=$2
mount -t tmpfs berth-test "$base" || exit 77
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root" || exit 77
mount -t proc proc "$base/root/proc" || exit 77
mount --rbind /dev "$base/root/dev" || exit 77
mount -t tmpfs tmpfs "$base/root/run"
mount -t tmpfs tmpfs "$base/root/tmp"
cp "$deb" "$base/root/tmp/berth.deb"
exec chroot "$base/root" /bin/sh -eu -c "$INNER"
"#;
    const INNER: &str = r#"
cleanup() {
    kill -TERM "${pid:-0}" 2>/dev/null || true
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/bin/berth-shim ] && kill -KILL "${p#/proc/}" 2>/dev/null
    done
    true
}
trap cleanup EXIT
step() { echo "step: $*"; }

dpkg -i /tmp/berth.deb >/dev/null
test "$(dpkg-query -W -f='${Status}' berth)" = "install ok installed"
test "$(readlink /etc/systemd/system/multi-user.target.wants/berthd.service)" = /lib/systemd/system/berthd.service
step installed and enabled

test "$(berth --version)" = "berth $VERSION"
berthd --listen off >/tmp/berthd.log 2>&1 &
pid=$!
i=0
until [ -S /var/lib/berth/berth.sock ]; do
    i=$((i + 1))
    [ "$i" -lt 150 ] || { cat /tmp/berthd.log; exit 1; }
    sleep 0.1
done
berth machine create --name probe -- sleep 60 >/dev/null
id=$(berth machine ls -q)
berth machine status "$id" --json | grep -q '"state": "started"'
shims=0
for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/bin/berth-shim ] && shims=$((shims + 1))
done
test "$shims" -ge 1
berth machine destroy --force "$id" >/dev/null
step the installed berthd ran a machine under /usr/bin/berth-shim

dpkg -i /tmp/berth.deb >/dev/null
kill -TERM "$pid"
wait "$pid"
test -s /var/lib/berth/berth.redb
step upgraded in place, berthd stopped cleanly

dpkg -r berth >/dev/null
test ! -e /usr/bin/berthd
test -f /etc/berth/berth.toml
test "$(readlink /etc/systemd/system/berthd.service)" = /dev/null
step removed: conffile kept, unit masked

dpkg -P berth >/dev/null 2>/tmp/purge.err
grep -q 'berth: /var/lib/berth' /tmp/purge.err
test ! -e /etc/berth
test ! -e /etc/systemd/system/berthd.service
test ! -e /etc/systemd/system/multi-user.target.wants/berthd.service
test -s /var/lib/berth/berth.redb
step purged: conffile and unit state gone, the database kept
"#;
    let base = TempDir::new("overlay");
    let out = sh(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SETUP,
            "setup",
        ])
        .arg(&base.0)
        .arg(deb())
        .env("INNER", INNER)
        .env("VERSION", env!("CARGO_PKG_VERSION")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77)
        || (!out.status.success() && stdout.is_empty() && stderr.contains("unshare"))
    {
        eprintln!("SKIPPED: no private mount namespace with an overlay root here: {stderr}");
        return;
    }
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step: ")).collect();
    assert_eq!(steps.len(), 5, "{stdout}\n{stderr}");
}
