//! A machine's OCI bundle, `<machine dir>/bundle/`:
//! - `config.json` — built with `oci-spec` from the runtime's defaults (namespaces, masked and
//!   read-only paths, the default capability set), the machine's process, user, limits, volumes;
//! - `upper/`, `work/` — the machine's own writable layer over the image's shared read-only root
//!   (overlayfs; it lives as long as the machine, across restarts, and goes with destroy);
//! - `rootfs/` — where the shim mounts the overlay while the container runs.
//!
//! Nothing of berth's data dir is mounted in: the root is the image plus the machine's own
//! layer, and volumes are bind mounts of their own directories only.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use berth_types::MachineConfig;
use berth_types::workload::Network;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_maskedpaths,
    get_default_mounts, get_default_readonly_paths,
};

/// What the agent resolved from the image and the machine's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRun {
    /// The image's read-only unpacked root.
    pub rootfs: PathBuf,
    /// The program and its arguments (config `cmd`, else the image's Entrypoint + Cmd).
    pub args: Vec<String>,
    /// `KEY=VALUE`: the image's Env, overridden by the config's.
    pub env: Vec<String>,
    /// Working directory inside the root.
    pub cwd: String,
    /// Who the workload runs as.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

/// The bundle's directories.
#[derive(Debug, Clone)]
pub struct BundleDirs {
    /// The bundle.
    pub bundle: PathBuf,
    /// The overlay's writable layer.
    pub upper: PathBuf,
    /// overlayfs' work directory.
    pub work: PathBuf,
    /// The mount point of the machine's root.
    pub rootfs: PathBuf,
}

impl BundleDirs {
    /// The bundle of the machine whose directory is `machine_dir`.
    pub fn of(machine_dir: &Path) -> Self {
        let bundle = machine_dir.join("bundle");
        Self {
            upper: bundle.join("upper"),
            work: bundle.join("work"),
            rootfs: bundle.join("rootfs"),
            bundle,
        }
    }

    /// The directories of the bundle at `bundle`.
    pub fn of_bundle(bundle: &Path) -> Self {
        Self {
            upper: bundle.join("upper"),
            work: bundle.join("work"),
            rootfs: bundle.join("rootfs"),
            bundle: bundle.to_owned(),
        }
    }

    /// Creates the directories (idempotent). The overlay's root directory takes its attributes
    /// from `upper/`, so `upper/` gets the image root's mode (0755): made under berthd's private
    /// umask it would be 0700, and an image user other than root could not reach `/bin/sh`.
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for d in [&self.upper, &self.work, &self.rootfs] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::set_permissions(&self.upper, std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&self.rootfs, std::fs::Permissions::from_mode(0o755))
    }
}

fn oci_err(e: oci_spec::OciSpecError) -> String {
    format!("building config.json: {e}")
}

/// A bind mount of a volume's directory.
fn volume_mount(source: &Path, dest: &str, read_only: bool) -> Result<Mount, String> {
    let mut options = vec!["rbind".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
    options.push(if read_only { "ro" } else { "rw" }.to_owned());
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .map_err(oci_err)
}

/// The resources the runtime enforces: every device denied but the runtime's defaults, and
/// the machine's limits (memory with no swap beyond it, so that the limit holds).
fn resources(config: &MachineConfig) -> Result<oci_spec::runtime::LinuxResources, String> {
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(oci_err)?;
    let mut r = LinuxResourcesBuilder::default().devices(vec![deny_all]);
    let l = &config.resources;
    if let Some(mb) = l.memory_mb {
        let bytes = i64::try_from(mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
        r = r.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()
                .map_err(oci_err)?,
        );
    }
    if let Some(cpus) = l.cpus {
        let period = 100_000u64;
        let quota = ((cpus * period as f64).round() as i64).max(1000);
        r = r.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(quota)
                .build()
                .map_err(oci_err)?,
        );
    }
    if let Some(p) = l.pids {
        let p = i64::try_from(p).unwrap_or(i64::MAX);
        r = r.pids(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .map_err(oci_err)?,
        );
    }
    r.build().map_err(oci_err)
}

/// The default capability set of runc's and crun's own `spec` (AUDIT_WRITE, KILL,
/// NET_BIND_SERVICE), with nothing inheritable or ambient: a non-root user has none.
fn capabilities() -> oci_spec::runtime::LinuxCapabilities {
    let mut caps = oci_spec::runtime::LinuxCapabilities::default();
    caps.set_inheritable(Some(Capabilities::new()));
    caps.set_ambient(Some(Capabilities::new()));
    caps
}

/// Inputs of `config.json` beyond the machine's config.
#[derive(Debug, Clone, Copy)]
pub struct BundleContext<'a> {
    /// The machine's id (its hostname and cgroup name).
    pub machine_id: &'a str,
    /// Where named volumes live.
    pub volumes_dir: &'a Path,
    /// `RLIMIT_NOFILE` for the workload.
    pub nofile: Option<(u64, u64)>,
    /// `oom_score_adj` for the workload.
    pub oom_score_adj: Option<i32>,
}

/// The workload's process: its program, environment, user, the default capabilities, its
/// open-files limit and `oom_score_adj`, no new privileges.
fn process(run: &ImageRun, ctx: BundleContext<'_>) -> Result<oci_spec::runtime::Process, String> {
    let user = UserBuilder::default()
        .uid(run.uid)
        .gid(run.gid)
        .additional_gids(run.groups.clone())
        .build()
        .map_err(oci_err)?;
    let (soft, hard) = ctx.nofile.unwrap_or((1024, 1024));
    let rlimit = oci_spec::runtime::PosixRlimitBuilder::default()
        .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
        .soft(soft)
        .hard(hard)
        .build()
        .map_err(oci_err)?;
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(run.args.clone())
        .env(run.env.clone())
        .cwd(&run.cwd)
        .capabilities(capabilities())
        .rlimits(vec![rlimit])
        .no_new_privileges(true)
        .build()
        .map_err(oci_err)?;
    process.set_oom_score_adj(ctx.oom_score_adj);
    Ok(process)
}

/// Its own pid, ipc, uts, mount and cgroup namespaces, and a network namespace of its own
/// (with only `lo`) for `network: "none"`.
fn namespaces(config: &MachineConfig) -> Result<Vec<oci_spec::runtime::LinuxNamespace>, String> {
    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if config.network == Some(Network::None) {
        kinds.push(LinuxNamespaceType::Network);
    }
    kinds
        .into_iter()
        .map(|typ| {
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(oci_err)
        })
        .collect()
}

/// The Linux part: namespaces, the runtime's default masked and read-only paths, resources,
/// the cgroup (`/berth/<id>`).
fn linux(
    config: &MachineConfig,
    ctx: BundleContext<'_>,
) -> Result<oci_spec::runtime::Linux, String> {
    LinuxBuilder::default()
        .namespaces(namespaces(config)?)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .resources(resources(config)?)
        .cgroups_path(PathBuf::from(format!("/berth/{}", ctx.machine_id)))
        .build()
        .map_err(oci_err)
}

/// The runtime's default mounts (`/proc`, `/dev`, `/sys`, …) and the machine's volumes.
fn mounts(config: &MachineConfig, ctx: BundleContext<'_>) -> Result<Vec<Mount>, String> {
    let mut mounts = get_default_mounts();
    for m in &config.mounts {
        mounts.push(volume_mount(
            &ctx.volumes_dir.join(&m.volume),
            &m.path,
            m.read_only,
        )?);
    }
    Ok(mounts)
}

/// `config.json` for a machine.
pub fn build_spec(
    config: &MachineConfig,
    run: &ImageRun,
    ctx: BundleContext<'_>,
) -> Result<Spec, String> {
    let process = process(run, ctx)?;
    let linux = linux(config, ctx)?;
    let mounts = mounts(config, ctx)?;
    let root = RootBuilder::default()
        .path("rootfs")
        .readonly(false)
        .build()
        .map_err(oci_err)?;
    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_owned());
    spec.set_hostname(Some(ctx.machine_id.chars().take(63).collect()));
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    spec.set_annotations(None);
    Ok(spec)
}

/// Opens (creating as needed) each directory of `rel` below `root`, never following a symlink:
/// the writable layer is the workload's to shape, so a link it planted cannot send a write
/// outside the machine.
///
/// A directory made here shadows the image's directory of the same path in the overlay, whose
/// mode and owner the merged directory then takes from this one: it gets the image's (so a
/// file written into `/etc` does not make `/etc` root-only under berthd's umask 077), or
/// 0755 root when the image has none.
fn open_parent(root: &Path, lower: &Path, rel: &[&str]) -> Result<OwnedFd, String> {
    use std::os::unix::fs::MetadataExt as _;
    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut fd = nix::fcntl::open(root, dir_flags, Mode::empty())
        .map_err(|e| format!("open {}: {e}", root.display()))?;
    let mut image_dir = lower.to_owned();
    for comp in rel {
        image_dir.push(comp);
        let made = match nix::sys::stat::mkdirat(fd.as_fd(), *comp, Mode::from_bits_truncate(0o755))
        {
            Ok(()) => true,
            Err(nix::errno::Errno::EEXIST) => false,
            Err(e) => return Err(format!("mkdir {comp}: {e}")),
        };
        fd = nix::fcntl::openat(fd.as_fd(), *comp, dir_flags, Mode::empty())
            .map_err(|e| format!("open {comp} (not a directory, or a symlink): {e}"))?;
        if made {
            // The image's own directory, never through a link it holds.
            let (mode, uid, gid) = match std::fs::symlink_metadata(&image_dir) {
                Ok(m) if m.is_dir() => (m.mode() & 0o7777, m.uid(), m.gid()),
                _ => (0o755, 0, 0),
            };
            nix::unistd::fchown(fd.as_fd(), Some(uid.into()), Some(gid.into()))
                .map_err(|e| format!("chown {comp}: {e}"))?;
            nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode as libc::mode_t))
                .map_err(|e| format!("chmod {comp}: {e}"))?;
        }
    }
    Ok(fd)
}

/// Writes `config.files` into the writable layer `upper` (the overlay not mounted), each with
/// its mode and owned by the workload's user.
pub fn write_files(
    config: &MachineConfig,
    upper: &Path,
    lower: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    for (i, f) in config.files.iter().enumerate() {
        let bytes = f.bytes().map_err(|e| format!("files[{i}]: {e}"))?;
        let comps: Vec<&str> = f
            .path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let Some((name, dirs)) = comps.split_last() else {
            return Err(format!("files[{i}].path: names no file"));
        };
        let parent =
            open_parent(upper, lower, dirs).map_err(|e| format!("files[{i}] ({}): {e}", f.path))?;
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(
            parent.as_fd(),
            *name,
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| format!("files[{i}] ({}): open: {e}", f.path))?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, &bytes)
            .map_err(|e| format!("files[{i}] ({}): write: {e}", f.path))?;
        nix::unistd::fchown(file.as_fd(), Some(uid.into()), Some(gid.into()))
            .map_err(|e| format!("files[{i}] ({}): chown: {e}", f.path))?;
        nix::sys::stat::fchmod(
            file.as_fd(),
            Mode::from_bits_truncate(f.mode as libc::mode_t),
        )
        .map_err(|e| format!("files[{i}] ({}): chmod: {e}", f.path))?;
    }
    Ok(())
}

/// Whether something is mounted at `path` (per `/proc/self/mountinfo`; unreadable counts as
/// mounted: unknown is never absent).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    let want = path.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_ref()))
}

/// Prepares a machine's bundle: directories, `config.json`, files, volume directories (created
/// private and owned by the workload's user when new).
pub fn prepare(
    machine_dir: &Path,
    config: &MachineConfig,
    run: &ImageRun,
    ctx: BundleContext<'_>,
) -> Result<(), String> {
    let dirs = BundleDirs::of(machine_dir);
    dirs.create()
        .map_err(|e| format!("create the bundle {}: {e}", dirs.bundle.display()))?;
    if is_mounted(&dirs.rootfs) {
        let _ = nix::mount::umount2(&dirs.rootfs, nix::mount::MntFlags::MNT_DETACH);
    }
    let spec = build_spec(config, run, ctx)?;
    crate::files::write_json_fast(&dirs.bundle.join("config.json"), &spec)
        .map_err(|e| format!("write config.json: {e}"))?;
    write_files(config, &dirs.upper, &run.rootfs, run.uid, run.gid)?;
    let volumes = crate::volumes::Volumes::new(ctx.volumes_dir.to_owned());
    for (i, m) in config.mounts.iter().enumerate() {
        volumes
            .prepare_for(&m.volume, run.uid, run.gid, !m.read_only)
            .map_err(|e| format!("mounts[{i}]: {e}"))?;
    }
    Ok(())
}
