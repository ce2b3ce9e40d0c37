//! A layout written by a third-party tool (Debian's umoci, as an operator would) imports too:
//! its media types, tag annotations, gzip layers and whiteouts.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use berth_image::{ImageStore, resolve_user};

fn umoci(args: &[&str], cwd: &Path) {
    let out = Command::new("umoci")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("umoci installed (cargo xtask test installs it)");
    assert!(out.status.success(), "umoci {args:?}: {out:?}");
}

#[test]
fn a_layout_written_by_umoci_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    umoci(&["init", "--layout", "layout"], cwd);
    umoci(&["new", "--image", "layout:app"], cwd);
    umoci(&["unpack", "--image", "layout:app", "bundle"], cwd);
    let rootfs = cwd.join("bundle/rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    symlink("busybox", rootfs.join("bin/sh")).unwrap();
    symlink("busybox", rootfs.join("bin/cat")).unwrap();
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\napp:x:500:500::/:/bin/sh\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/one"), "one\n").unwrap();
    fs::write(rootfs.join("etc/two"), "two\n").unwrap();
    umoci(&["repack", "--image", "layout:app", "bundle"], cwd);
    // A second layer that deletes a file: umoci writes a whiteout for it.
    umoci(&["unpack", "--image", "layout:app", "bundle2"], cwd);
    let rootfs = cwd.join("bundle2/rootfs");
    fs::remove_file(rootfs.join("etc/one")).unwrap();
    umoci(&["repack", "--image", "layout:app", "bundle2"], cwd);
    umoci(
        &[
            "config",
            "--image",
            "layout:app",
            "--config.entrypoint",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "cat /etc/two",
            "--config.env",
            "GREETING=hi",
            "--config.user",
            "app",
            "--config.workingdir",
            "/etc",
        ],
        cwd,
    );

    let store = ImageStore::open(cwd.join("images")).unwrap();
    let r = store
        .import(&format!("oci:{}:app", cwd.join("layout").display()))
        .unwrap();
    assert!(
        !r.rootfs.join("etc/one").exists(),
        "umoci's whiteout applied"
    );
    assert_eq!(
        fs::read_to_string(r.rootfs.join("etc/two")).unwrap(),
        "two\n"
    );
    assert_eq!(r.entrypoint, ["/bin/sh"]);
    assert_eq!(r.cmd, ["-c", "cat /etc/two"]);
    assert!(r.env.contains(&"GREETING=hi".to_owned()), "{:?}", r.env);
    assert_eq!(
        (r.user.as_deref(), r.workdir.as_deref()),
        (Some("app"), Some("/etc"))
    );
    assert_eq!(resolve_user(&r.rootfs, "app").unwrap().uid, 500);
    let out = Command::new("chroot")
        .arg(&r.rootfs)
        .args(r.entrypoint.iter().chain(&r.cmd))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\n", "{out:?}");
}
