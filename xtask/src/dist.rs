//! `cargo xtask dist [--profile PROFILE] [--out DIR]`: builds berthd, berth and berth-shim
//! (release profile by default) and the Debian package `DIR/berth_<version>_<arch>.deb`
//! (default DIR: `target/dist`).
//!
//! The package is assembled here, file by file, in a staging tree (`DIR/berth_<version>_<arch>/`,
//! kept for inspection) and built with `dpkg-deb --build`, which every Debian host has; cargo-deb
//! would do the same but takes minutes to compile. What goes in:
//!
//! | path | from |
//! |---|---|
//! | `/usr/bin/{berthd,berth,berth-shim}` | the build, debug info stripped (symbols kept) |
//! | `/lib/systemd/system/berthd.service` | `packaging/systemd/` |
//! | `/etc/berth/berth.toml` (conffile) | `packaging/berth.toml` |
//! | `/usr/share/doc/berth/{README.md,copyright,runbooks/*.md}` | `README.md`, `runbooks/` |
//! | `/usr/share/berth/prometheus/*.yml`, `/usr/share/berth/grafana/*.json` | `packaging/prometheus/`, `packaging/grafana/`, whatever they hold |
//! | shell completions for bash, zsh, fish | `berth completions SHELL` |
//! | `/usr/share/man/man1/*.1.gz` | `berth man`, `berthd man` (clap_mangen), `gzip -9n` |
//! | `DEBIAN/{control,conffiles,md5sums,postinst,prerm,postrm}` | `packaging/debian/`, computed fields |
//!
//! `Depends` is computed from the binaries: the shared libraries they need (`readelf -d`), mapped
//! to their Debian packages, with the newest glibc symbol version they use.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, run};

/// The binaries, with the package that builds each.
const BINARIES: [(&str, &str); 3] = [
    ("berthd", "berthd"),
    ("berth", "berth"),
    ("berth-shim", "berth-driver"),
];

/// Shared libraries the binaries may need, and the Debian package that ships each.
/// A library not listed here fails the build, so a new dependency is not silently missed.
const LIBRARY_PACKAGES: &[(&str, &str)] = &[
    ("libc.so.6", "libc6"),
    ("libm.so.6", "libc6"),
    ("libpthread.so.0", "libc6"),
    ("libdl.so.2", "libc6"),
    ("librt.so.1", "libc6"),
    ("libutil.so.1", "libc6"),
    ("ld-linux-x86-64.so.2", "libc6"),
    ("ld-linux-aarch64.so.1", "libc6"),
    ("libgcc_s.so.1", "libgcc-s1"),
];

/// Completion scripts: shell, path in the package.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "usr/share/bash-completion/completions/berth"),
    ("zsh", "usr/share/zsh/vendor-completions/_berth"),
    ("fish", "usr/share/fish/vendor_completions.d/berth.fish"),
];

const CONFFILE: &str = "etc/berth/berth.toml";

const USAGE: &str = "usage: cargo xtask dist [--profile PROFILE] [--out DIR]";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Runs `cmd` and returns its standard output.
fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{cmd:?}: output is not UTF-8: {e}"))
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> String {
    let path = path.display().to_string();
    let what = what.to_owned();
    move |e| format!("{what} {path}: {e}")
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(io("creating", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// Writes `bytes` to `stage/rel` with `mode`, creating directories.
fn put(stage: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    let dest = stage.join(rel);
    if let Some(dir) = dest.parent() {
        mkdir(dir)?;
    }
    std::fs::write(&dest, bytes).map_err(io("writing", &dest))?;
    set_mode(&dest, mode)
}

fn copy(stage: &Path, rel: &str, from: &Path, mode: u32) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(io("reading", from))?;
    put(stage, rel, &bytes, mode)
}

/// The regular files directly in `dir` whose names end with one of `exts`, sorted; none if
/// `dir` does not exist.
fn files_in(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io("reading", dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if path.is_file() && name.is_some_and(|n| exts.iter().any(|x| n.ends_with(x))) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every file and directory under `dir`, relative to it, sorted.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<(), String> {
    for entry in std::fs::read_dir(dir.join(rel)).map_err(io("reading", &dir.join(rel)))? {
        let entry = entry.map_err(io("reading", dir))?;
        let r = rel.join(entry.file_name());
        let is_dir = entry.file_type().map_err(io("stat", &r))?.is_dir();
        out.push((r.clone(), is_dir));
        if is_dir {
            walk(dir, &r, out)?;
        }
    }
    out.sort();
    Ok(())
}

/// The package's `Depends`: the packages of the shared libraries the binaries need, libc6 at
/// least at the newest GLIBC_ symbol version they use.
fn depends(binaries: &[PathBuf]) -> Result<String, String> {
    let mut packages = std::collections::BTreeSet::new();
    let mut glibc: Vec<u32> = Vec::new();
    for bin in binaries {
        let dynamic = output(Command::new("readelf").arg("-d").arg(bin))?;
        for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
            let lib = line
                .split_once('[')
                .and_then(|(_, r)| r.split_once(']'))
                .map(|(l, _)| l)
                .ok_or_else(|| format!("readelf -d {}: cannot read {line:?}", bin.display()))?;
            let (_, pkg) = LIBRARY_PACKAGES
                .iter()
                .find(|(l, _)| *l == lib)
                .ok_or_else(|| {
                    format!(
                        "{} needs {lib}, which xtask/src/dist.rs does not map to a Debian package \
                         (add it to LIBRARY_PACKAGES)",
                        bin.display()
                    )
                })?;
            packages.insert(*pkg);
        }
        let versions = output(Command::new("readelf").args(["-V", "-W"]).arg(bin))?;
        for word in versions.split_whitespace() {
            if let Some(v) = word.strip_prefix("GLIBC_") {
                let parsed: Result<Vec<u32>, _> = v.split('.').map(str::parse).collect();
                if let Ok(parsed) = parsed {
                    glibc = glibc.max(parsed);
                }
            }
        }
    }
    Ok(packages
        .into_iter()
        .map(|p| {
            if p == "libc6" && !glibc.is_empty() {
                let v: Vec<String> = glibc.iter().map(u32::to_string).collect();
                format!("libc6 (>= {})", v.join("."))
            } else {
                p.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", "))
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: berth\n\
     \n\
     Files: *\n\
     Copyright: the berth authors\n\
     License: Apache-2.0\n\
     \x20On Debian systems the full text of the Apache License, Version 2.0, is in\n\
     \x20/usr/share/common-licenses/Apache-2.0.\n"
        .to_owned()
}

/// `cargo xtask dist`.
pub fn dist(args: &[String]) -> Result<(), String> {
    let mut profile = "release".to_owned();
    let mut out = target_dir().join("dist");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--profile" => profile = it.next().ok_or(USAGE)?.clone(),
            "--out" => out = PathBuf::from(it.next().ok_or(USAGE)?),
            _ => return Err(USAGE.into()),
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let built = build(&profile)?;

    let name = format!("berth_{version}_{arch}");
    let stage = out.join(&name);
    match std::fs::remove_dir_all(&stage) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("removing {}: {e}", stage.display()));
        }
        _ => {}
    }
    mkdir(&stage)?;
    let shipped = stage_files(&stage, &built)?;
    stage_generated(&stage, &out.join(format!("{name}.man")))?;
    stage_control(&stage, version, &arch, &shipped)?;

    let deb = out.join(format!("{name}.deb"));
    // Its chatter goes to stderr: stdout is for the package's path alone.
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .stdout(std::io::stderr()))?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the shipped binaries in `profile`; the directory they are in.
fn build(profile: &str) -> Result<PathBuf, String> {
    // The same package selection as the end-to-end tests' build, so that with `--profile dev`
    // under `cargo xtask test` this is a no-op.
    let mut build = cargo();
    build.args(["build", "--profile", profile]);
    for (bin, package) in BINARIES {
        build.args(["-p", package, "--bin", bin]);
    }
    run(&mut build)?;
    Ok(target_dir().join(match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }))
}

/// The binaries (stripped) and the files taken from the tree as they are; the binaries' paths.
fn stage_files(stage: &Path, built: &Path) -> Result<Vec<PathBuf>, String> {
    let root = workspace();
    // Binaries, without their debug info (the unstripped ones stay in the target directory).
    let mut shipped = Vec::new();
    for (bin, _) in BINARIES {
        let dest = stage.join("usr/bin").join(bin);
        mkdir(&stage.join("usr/bin"))?;
        run(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&dest)
            .arg(built.join(bin)))?;
        set_mode(&dest, 0o755)?;
        shipped.push(dest);
    }

    // The unit, the config, the documentation, the dashboards.
    copy(
        stage,
        "lib/systemd/system/berthd.service",
        &root.join("packaging/systemd/berthd.service"),
        0o644,
    )?;
    copy(stage, CONFFILE, &root.join("packaging/berth.toml"), 0o644)?;
    copy(
        stage,
        "usr/share/doc/berth/README.md",
        &root.join("README.md"),
        0o644,
    )?;
    put(
        stage,
        "usr/share/doc/berth/copyright",
        copyright().as_bytes(),
        0o644,
    )?;
    for (dir, exts, dest) in [
        ("runbooks", &[".md"][..], "usr/share/doc/berth/runbooks"),
        (
            "packaging/prometheus",
            &[".yml", ".yaml"][..],
            "usr/share/berth/prometheus",
        ),
        (
            "packaging/grafana",
            &[".json"][..],
            "usr/share/berth/grafana",
        ),
    ] {
        for file in files_in(&root.join(dir), exts)? {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let rel = format!("{dest}/{}", name.unwrap_or_default());
            copy(stage, &rel, &file, 0o644)?;
        }
    }

    Ok(shipped)
}

/// What the shipped `berth` and `berthd` generate: shell completions and man pages (made in
/// `pages`, then compressed into the stage).
fn stage_generated(stage: &Path, pages: &Path) -> Result<(), String> {
    let berth = stage.join("usr/bin/berth");
    for (shell, rel) in COMPLETIONS {
        let script = output(Command::new(&berth).args(["completions", shell]))?;
        put(stage, rel, script.as_bytes(), 0o644)?;
    }
    let _ = std::fs::remove_dir_all(pages);
    mkdir(pages)?;
    run(Command::new(&berth).arg("man").arg(pages))?;
    run(Command::new(stage.join("usr/bin/berthd"))
        .arg("man")
        .arg(pages))?;
    for page in files_in(pages, &[".1"])? {
        let name = page.file_name().map(|n| n.to_string_lossy().into_owned());
        let rel = format!("usr/share/man/man1/{}.gz", name.unwrap_or_default());
        let gz = Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .arg(&page)
            .output()
            .map_err(|e| format!("gzip {}: {e}", page.display()))?;
        if !gz.status.success() {
            return Err(format!("gzip {} failed: {}", page.display(), gz.status));
        }
        put(stage, &rel, &gz.stdout, 0o644)?;
    }
    std::fs::remove_dir_all(pages).map_err(io("removing", pages))?;

    Ok(())
}

/// `DEBIAN/`: control (with the installed size and the binaries' dependencies), conffiles,
/// md5sums and the maintainer scripts; every directory 0755.
fn stage_control(
    stage: &Path,
    version: &str,
    arch: &str,
    shipped: &[PathBuf],
) -> Result<(), String> {
    let root = workspace();
    // Directories 0755 whatever the umask; sizes and checksums of what will be installed.
    let mut tree = Vec::new();
    walk(stage, Path::new(""), &mut tree)?;
    let mut kib = 0u64;
    let mut sums = Vec::new();
    for (rel, is_dir) in &tree {
        let path = stage.join(rel);
        if *is_dir {
            set_mode(&path, 0o755)?;
            kib += 1;
        } else {
            kib += std::fs::metadata(&path)
                .map_err(io("stat", &path))?
                .len()
                .div_ceil(1024);
            // dpkg tracks conffiles' checksums itself.
            if rel != Path::new(CONFFILE) {
                sums.push(rel.clone());
            }
        }
    }
    let md5sums = output(
        Command::new("md5sum")
            .arg("--")
            .args(&sums)
            .current_dir(stage),
    )?;

    let template = std::fs::read_to_string(root.join("packaging/debian/control"))
        .map_err(|e| format!("reading packaging/debian/control: {e}"))?;
    let control: String = template
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            l.replace("@VERSION@", version)
                .replace("@ARCH@", arch)
                .replace("@INSTALLED_SIZE@", &kib.to_string())
                + "\n"
        })
        .collect::<String>()
        .replace("@DEPENDS@", &depends(shipped)?);
    put(stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        stage,
        "DEBIAN/conffiles",
        format!("/{CONFFILE}\n").as_bytes(),
        0o644,
    )?;
    put(stage, "DEBIAN/md5sums", md5sums.as_bytes(), 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            stage,
            &format!("DEBIAN/{script}"),
            &root.join("packaging/debian").join(script),
            0o755,
        )?;
    }
    set_mode(&stage.join("DEBIAN"), 0o755)?;

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copyright_file_is_machine_readable() {
        let c = copyright();
        assert!(c.starts_with("Format: https://www.debian.org/doc/packaging-manuals/"));
        assert!(c.contains("\nLicense: Apache-2.0\n"));
        assert_eq!(
            env!("CARGO_PKG_LICENSE"),
            "Apache-2.0",
            "the workspace's license changed: update copyright()"
        );
        assert!(
            c.lines()
                .skip_while(|l| !l.starts_with("License:"))
                .skip(1)
                .all(|l| l.starts_with(' '))
        );
    }

    #[test]
    fn unknown_arguments_are_refused() {
        assert_eq!(dist(&["--fast".into()]), Err(USAGE.to_owned()));
        assert_eq!(dist(&["--out".into()]), Err(USAGE.to_owned()));
    }
}
