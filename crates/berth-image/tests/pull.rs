//! Pulls from a real registry (Debian's docker-registry) on loopback, the test images pushed to
//! it with skopeo: by tag and by digest, an index resolved to this platform, auth, a tampered
//! blob, a registry killed mid-pull, a puller SIGKILLed mid-pull, concurrent pulls.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use berth_image::{ImageError, ImageStore, Puller, RegistryConfig};
use serde_json::json;
use support::registry::{Registry, SlowProxy, noise, wait_for};
use support::{Desc, INDEX, Layout, TAR, Tar, busybox, sha256, single_layer};

fn insecure(hosts: &[String]) -> RegistryConfig {
    RegistryConfig {
        insecure_registries: hosts.to_vec(),
        credentials_file: None,
    }
}

fn puller(dir: &Path, config: RegistryConfig) -> Puller {
    Puller::new(Arc::new(ImageStore::open(dir).unwrap()), config)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sizes of the manifest's config and layers, as the registry serves them.
fn blob_bytes(layout: &Layout, manifest: &Desc) -> u64 {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.blob_path(&manifest.digest)).unwrap()).unwrap();
    let mut n = m["config"]["size"].as_u64().unwrap();
    for l in m["layers"].as_array().unwrap() {
        n += l["size"].as_u64().unwrap();
    }
    n
}

/// The size of the manifest's (first) layer.
fn layer_size(layout: &Layout, manifest: &Desc) -> u64 {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.blob_path(&manifest.digest)).unwrap()).unwrap();
    m["layers"][0]["size"].as_u64().unwrap()
}

#[test]
fn pull_by_tag_then_by_digest_and_a_moved_tag_changes_nothing_pulled() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    reg.push(&layout.dir, "v1", "lib/busybox:v1");
    let p = puller(&tmp.path().join("images"), insecure(&[reg.host()]));
    let rt = runtime();

    let by_tag = format!("{}/lib/busybox:v1", reg.host());
    let pulled = rt.block_on(p.pull(&by_tag)).unwrap();
    assert_eq!(pulled.resolved.digest, manifest.digest);
    assert!(pulled.unpacked);
    assert_eq!(pulled.downloaded_bytes, blob_bytes(&layout, &manifest));
    let root = &pulled.resolved.rootfs;
    assert_eq!(
        fs::read(root.join("etc/motd")).unwrap(),
        b"hello from zstd\n"
    );
    assert!(root.join("bin/busybox").is_file());
    assert!(!root.join("tmp/gone").exists(), "the whiteout applied");
    assert_eq!(pulled.resolved.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(pulled.resolved.user.as_deref(), Some("user"));

    let by_digest = format!("{}/lib/busybox@{}", reg.host(), manifest.digest);
    let again = rt.block_on(p.pull(&by_digest)).unwrap();
    assert_eq!(again.resolved, pulled.resolved);
    assert!(!again.unpacked);
    assert_eq!(again.downloaded_bytes, 0);

    // The tag moves to another image: a pull of it gets the new one, and the image already
    // pulled stays as it was, under its digest.
    let (other, other_manifest) = single_layer(
        &tmp.path().join("other"),
        &Tar::new().file("moved", b"new", 0o644).finish(),
    );
    reg.push(&other.dir, "latest", "lib/busybox:v1");
    let moved = rt.block_on(p.pull(&by_tag)).unwrap();
    assert_eq!(moved.resolved.digest, other_manifest.digest);
    assert_ne!(moved.resolved.digest, pulled.resolved.digest);
    let kept = p.store().get(&manifest.digest).unwrap().unwrap();
    assert_eq!(kept, pulled.resolved);
    assert_eq!(
        fs::read(kept.rootfs.join("etc/motd")).unwrap(),
        b"hello from zstd\n"
    );

    let missing = format!("{}/lib/busybox:nope", reg.host());
    let e = rt.block_on(p.pull(&missing)).unwrap_err();
    assert!(matches!(e, ImageError::Registry { .. }), "{e}");
    assert!(e.to_string().contains(&reg.host()), "{e}");
}

/// An index whose other entry is for a platform this host is not; the pull takes this host's.
#[test]
fn an_index_is_resolved_to_this_hosts_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let layout = Layout::new(&tmp.path().join("layout"));
    let mine = layout.image(
        &[layout.layer(TAR, &Tar::new().file("which", b"mine", 0o644).finish())],
        json!({}),
    );
    let theirs = layout.image(
        &[layout.layer(TAR, &Tar::new().file("which", b"theirs", 0o644).finish())],
        json!({}),
    );
    let other_arch = if support::crate_arch() == "s390x" {
        "arm64"
    } else {
        "s390x"
    };
    let entry = |d: &Desc, arch: &str| {
        let mut v = d.json();
        v["platform"] = json!({"os": "linux", "architecture": arch});
        v
    };
    let index = json!({"schemaVersion": 2, "mediaType": INDEX,
        "manifests": [entry(&theirs, other_arch), entry(&mine, support::crate_arch())]});
    let index = layout.blob(INDEX, &serde_json::to_vec(&index).unwrap());
    layout.tags(&[("multi", &index)]);
    reg.push(&layout.dir, "multi", "multi:v1");

    let p = puller(&tmp.path().join("images"), insecure(&[reg.host()]));
    let pulled = runtime()
        .block_on(p.pull(&format!("{}/multi:v1", reg.host())))
        .unwrap();
    assert_eq!(pulled.resolved.digest, mine.digest);
    assert_eq!(
        fs::read(pulled.resolved.rootfs.join("which")).unwrap(),
        b"mine"
    );
}

#[test]
fn auth_required_and_refused_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), Some(("alice", "s3cret")));
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    reg.push(&layout.dir, "v1", "busybox:v1");
    let reference = format!("{}/busybox:v1", reg.host());
    let rt = runtime();
    let images = tmp.path().join("images");

    let e = rt
        .block_on(puller(&images, insecure(&[reg.host()])).pull(&reference))
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImageError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains(&reg.host()) && msg.contains("unauthorized"),
        "{msg}"
    );
    assert!(msg.contains("requires credentials"), "{msg}");

    let creds = tmp.path().join("credentials.json");
    let write = |user: &str, password: &str| {
        fs::write(
            &creds,
            json!({"auths": {reg.host(): {"username": user, "password": password}}}).to_string(),
        )
        .unwrap();
        fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
    };
    let with_creds = RegistryConfig {
        insecure_registries: vec![reg.host()],
        credentials_file: Some(creds.clone()),
    };
    write("alice", "wrong");
    let e = rt
        .block_on(puller(&images, with_creds.clone()).pull(&reference))
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImageError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains("refused the credentials") && msg.contains(&reg.host()),
        "{msg}"
    );
    assert!(
        !msg.contains("wrong"),
        "the password is never in a message: {msg}"
    );

    write("alice", "s3cret");
    let pulled = rt
        .block_on(puller(&images, with_creds).pull(&reference))
        .unwrap();
    assert_eq!(pulled.resolved.digest, manifest.digest);
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    reg.push(&layout.dir, "v1", "busybox:v1");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.blob_path(&manifest.digest)).unwrap()).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let stored = reg.blob_path(&layer);
    let original = fs::read(&stored).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&stored, &bad).unwrap();

    let images = tmp.path().join("images");
    let p = puller(&images, insecure(&[reg.host()]));
    let rt = runtime();
    let reference = format!("{}/busybox:v1", reg.host());
    let e = rt.block_on(p.pull(&reference)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&layer) && msg.contains("does not match its digest"),
        "{msg}"
    );
    assert!(msg.contains(&reg.host()), "{msg}");
    assert!(p.store().list().unwrap().is_empty());
    let hex = layer.trim_start_matches("sha256:");
    assert!(!images.join("cache/blobs/sha256").join(hex).exists());
    assert!(
        !images.join("cache/partial").join(hex).exists(),
        "not kept to resume"
    );

    fs::write(&stored, &original).unwrap();
    let pulled = rt.block_on(p.pull(&reference)).unwrap();
    assert_eq!(pulled.resolved.digest, manifest.digest);
}

/// A one-layer image with a big layer of noise; returns the layout, manifest and layer digest.
fn big_image(dir: &Path, mib: usize) -> (Layout, Desc, String) {
    let tar = Tar::new().file("big", &noise(mib << 20), 0o644).finish();
    let (layout, manifest) = single_layer(dir, &tar);
    (layout, manifest, sha256(&tar))
}

fn partial_len(images: &Path, digest: &str) -> u64 {
    fs::metadata(
        images
            .join("cache/partial")
            .join(digest.trim_start_matches("sha256:")),
    )
    .map(|m| m.len())
    .unwrap_or(0)
}

#[test]
fn a_registry_killed_mid_pull_leaves_nothing_usable_and_the_next_pull_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, manifest, layer) = big_image(&tmp.path().join("layout"), 24);
    reg.push(&layout.dir, "latest", "big:v1");
    let proxy = SlowProxy::start(reg.port);
    let images = tmp.path().join("images");
    let p = puller(&images, insecure(&[proxy.host()]));
    let rt = runtime();
    let reference = format!("{}/big:v1", proxy.host());

    let pull = rt.spawn({
        let (p, reference) = (p.clone(), reference.clone());
        async move { p.pull(&reference).await }
    });
    wait_for(60, "the layer's download to start", || {
        partial_len(&images, &layer) >= 1 << 20
    });
    reg.kill();
    let e = rt.block_on(pull).unwrap().unwrap_err();
    assert!(matches!(e, ImageError::Registry { .. }), "{e}");
    assert!(e.to_string().contains(&proxy.host()), "{e}");
    assert!(
        p.store().list().unwrap().is_empty(),
        "no root after a cut-off pull"
    );
    assert!(p.store().get(&manifest.digest).unwrap().is_none());
    let kept = partial_len(&images, &layer);
    assert!(kept > 0, "the partial blob is kept for the next pull");

    reg.restart();
    proxy.set_upstream(reg.port);
    let pulled = rt.block_on(p.pull(&reference)).unwrap();
    assert_eq!(pulled.resolved.digest, manifest.digest);
    assert_eq!(
        pulled.downloaded_bytes,
        layer_size(&layout, &manifest) - kept,
        "resumed where the cut-off pull stopped (the config was whole already)"
    );
    assert_eq!(
        fs::read(pulled.resolved.rootfs.join("big")).unwrap().len(),
        24 << 20
    );
}

/// Not a test: the child process the SIGKILL test runs (and kills), pulling the reference the
/// environment names into the store it names.
#[test]
#[ignore = "run by a_puller_sigkilled_mid_pull_leaves_nothing_usable, as its child process"]
fn child_process_pull() {
    let (Ok(store), Ok(reference), Ok(host)) = (
        std::env::var("BERTH_PULL_CHILD_STORE"),
        std::env::var("BERTH_PULL_CHILD_REF"),
        std::env::var("BERTH_PULL_CHILD_INSECURE"),
    ) else {
        return;
    };
    runtime()
        .block_on(puller(Path::new(&store), insecure(&[host])).pull(&reference))
        .unwrap();
}

#[test]
fn a_puller_sigkilled_mid_pull_leaves_nothing_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, manifest, layer) = big_image(&tmp.path().join("layout"), 24);
    reg.push(&layout.dir, "latest", "big:v1");
    let proxy = SlowProxy::start(reg.port);
    let images = tmp.path().join("images");
    ImageStore::open(&images).unwrap();
    let reference = format!("{}/big:v1", proxy.host());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_pull", "--ignored", "--nocapture"])
        .env("BERTH_PULL_CHILD_STORE", &images)
        .env("BERTH_PULL_CHILD_REF", &reference)
        .env("BERTH_PULL_CHILD_INSECURE", proxy.host())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(60, "the child's download to start", || {
        assert!(child.try_wait().unwrap().is_none(), "the child ended first");
        partial_len(&images, &layer) >= 1 << 20
    });
    child.kill().unwrap(); // SIGKILL, by pid.
    child.wait().unwrap();

    let p = puller(&images, insecure(&[proxy.host()]));
    assert!(
        p.store().list().unwrap().is_empty(),
        "no root after a SIGKILL"
    );
    let kept = partial_len(&images, &layer);
    assert!(kept > 0);
    let pulled = runtime().block_on(p.pull(&reference)).unwrap();
    assert_eq!(pulled.resolved.digest, manifest.digest);
    assert_eq!(
        pulled.downloaded_bytes,
        layer_size(&layout, &manifest) - kept,
        "resumed where the killed pull stopped"
    );
    assert_eq!(
        fs::read(pulled.resolved.rootfs.join("big")).unwrap().len(),
        24 << 20
    );
}

#[test]
fn concurrent_pulls_of_one_image_pull_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    reg.push(&layout.dir, "v1", "busybox:v1");
    let p = puller(&tmp.path().join("images"), insecure(&[reg.host()]));
    let reference = format!("{}/busybox:v1", reg.host());
    let rt = runtime();
    let pulls: Vec<_> = (0..8)
        .map(|_| {
            let (p, reference) = (p.clone(), reference.clone());
            rt.spawn(async move { p.pull(&reference).await })
        })
        .collect();
    let results: Vec<_> = pulls
        .into_iter()
        .map(|h| rt.block_on(h).unwrap().unwrap())
        .collect();
    assert!(results.iter().all(|r| r.resolved.digest == manifest.digest));
    assert_eq!(results.iter().filter(|r| r.unpacked).count(), 1);
    let downloaded: u64 = results.iter().map(|r| r.downloaded_bytes).sum();
    assert_eq!(downloaded, blob_bytes(&layout, &manifest), "each blob once");
}

#[test]
fn a_pulled_image_unused_is_collected_with_its_blobs_and_one_in_use_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    reg.push(&layout.dir, "v1", "busybox:v1");
    let images = tmp.path().join("images");
    let p = puller(&images, insecure(&[reg.host()]));
    let reference = format!("{}/busybox:v1", reg.host());
    let rt = runtime();
    rt.block_on(p.pull(&reference)).unwrap();
    let blobs = || {
        fs::read_dir(images.join("cache/blobs/sha256"))
            .unwrap()
            .count()
    };
    assert_eq!(blobs(), 5, "manifest, config and three layers");

    let uses = |d: &str| d == manifest.digest;
    let kept = p
        .store()
        .collect_garbage(std::time::Duration::ZERO, &uses, 100)
        .unwrap();
    assert!(
        kept.removed.is_empty() && kept.blobs_removed == 0,
        "{kept:?}"
    );
    let e = p
        .store()
        .remove_unused(&manifest.digest, &uses)
        .unwrap_err();
    assert!(matches!(e, ImageError::InUse { .. }), "{e}");

    let gone = p
        .store()
        .collect_garbage(std::time::Duration::ZERO, &|_| false, 100)
        .unwrap();
    assert_eq!(gone.removed, vec![manifest.digest.clone()]);
    assert_eq!(gone.blobs_removed, 5);
    assert_eq!(blobs(), 0);
    assert!(p.store().list().unwrap().is_empty());
    let again = rt.block_on(p.pull(&reference)).unwrap();
    assert_eq!(again.downloaded_bytes, blob_bytes(&layout, &manifest));
}

/// Blobs are not synced one by one (the unpack's one syncfs makes them durable with the root),
/// so a crash can leave a cached blob half-written: a later pull hashes a cached blob before it
/// trusts it, and downloads again one that fails.
#[test]
fn a_cached_blob_a_crash_left_half_written_is_downloaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    reg.push(&layout.dir, "v1", "busybox:v1");
    let images = tmp.path().join("images");
    let p = puller(&images, insecure(&[reg.host()]));
    let reference = format!("{}/busybox:v1", reg.host());
    let rt = runtime();
    rt.block_on(p.pull(&reference)).unwrap();
    // The root goes (as if the crash came before its rename); the blobs stay, one of them with
    // its second half zeroed (what a crash before the writeback leaves).
    assert!(p.store().remove(&manifest.digest).unwrap());
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.blob_path(&manifest.digest)).unwrap()).unwrap();
    let layer = &m["layers"][1];
    let hex = layer["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let cached = images.join("cache/blobs/sha256").join(hex);
    let whole = fs::read(&cached).unwrap();
    let mut torn = whole.clone();
    let half = torn.len() / 2;
    torn[half..].fill(0);
    fs::write(&cached, &torn).unwrap();

    let again = rt.block_on(p.pull(&reference)).unwrap();
    assert!(again.unpacked);
    assert_eq!(again.downloaded_bytes, layer["size"].as_u64().unwrap());
    assert_eq!(fs::read(&cached).unwrap(), whole);
    assert_eq!(
        fs::read(again.resolved.rootfs.join("app/new.txt")).unwrap(),
        b"from the second layer"
    );
}
