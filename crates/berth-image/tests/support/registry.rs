//! A real registry (Debian's `docker-registry`) on a free loopback port, its storage in a temp
//! dir, killed by pid, open or behind basic (htpasswd) or token auth; images pushed to it with
//! skopeo; and a throttling TCP proxy in front of it, so that a test can cut a pull off midway
//! at a point it chooses.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A running `docker-registry`.
#[derive(Debug)]
pub struct Registry {
    pub port: u16,
    pub storage: PathBuf,
    dir: PathBuf,
    auth: Auth,
    child: Option<Child>,
}

/// Who a registry lets in.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Anyone.
    Open,
    /// That user and password (htpasswd).
    Basic { user: String, password: String },
    /// Holders of a bearer token from a token issuer (distribution's `auth: token`); `user` and
    /// `password` are what the issuer wants for a push.
    Token(TokenAuth),
}

/// Distribution's `auth: token` settings, and the credentials the issuer grants a push for.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The issuer's token endpoint, `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// The `service` (the tokens' audience).
    pub service: String,
    /// The tokens' `iss`.
    pub issuer: String,
    /// A PEM file with the certificate the token signing key's chain ends at.
    pub rootcertbundle: PathBuf,
    pub user: String,
    pub password: String,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until `f` holds, or panics after `secs` seconds saying `what`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

impl Registry {
    /// Starts one with its storage and config under `dir`; with `htpasswd`, that user is the
    /// only one it lets in.
    pub fn start(dir: &Path, htpasswd: Option<(&str, &str)>) -> Self {
        let auth = match htpasswd {
            Some((u, p)) => Auth::Basic {
                user: u.to_owned(),
                password: p.to_owned(),
            },
            None => Auth::Open,
        };
        Self::start_with(dir, auth)
    }

    /// Starts one with its storage and config under `dir`, letting in whom `auth` says.
    pub fn start_with(dir: &Path, auth: Auth) -> Self {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut r = Self {
            port: 0,
            storage: dir.join("storage"),
            dir: dir.to_owned(),
            auth,
            child: None,
        };
        r.restart();
        r
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on a new free port, over the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.port = free_port();
        let auth = self.auth_config();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n{auth}",
            self.storage.display(),
            self.port
        );
        let path = self.dir.join("config.yml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir.join("registry.log")))
            .spawn()
            .expect("docker-registry installed");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_for(30, "the registry to listen", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        });
    }

    /// The config's `auth:` section.
    fn auth_config(&self) -> String {
        match &self.auth {
            Auth::Open => String::new(),
            Auth::Basic { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (apache2-utils) installed");
                assert!(out.status.success());
                let file = self.dir.join("htpasswd");
                std::fs::write(&file, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token(t) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                t.rootcertbundle.display()
            ),
        }
    }

    /// SIGKILLs it (by pid) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pushes `oci:LAYOUT:TAG` as `REPO:TAG` with skopeo, digests preserved (`--all`: every
    /// platform of an index).
    pub fn push(&self, layout: &Path, tag: &str, repo_tag: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        match &self.auth {
            Auth::Open => {}
            Auth::Basic { user, password } | Auth::Token(TokenAuth { user, password, .. }) => {
                cmd.arg(format!("--dest-creds={user}:{password}"));
            }
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()));
        let out = cmd.output().expect("skopeo installed");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the registry keeps a blob.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// Where the registry's log goes (appended across restarts), for a failing test's reader.
fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .into()
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on a free port that passes responses on slowly (about 8 MiB/s), to the upstream
/// address currently set.
#[derive(Debug, Clone)]
pub struct SlowProxy {
    pub port: u16,
    upstream: Arc<Mutex<u16>>,
}

impl SlowProxy {
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(Mutex::new(upstream_port));
        let up = upstream.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let port = *up.lock().unwrap();
                thread::spawn(move || relay(client, port));
            }
        });
        Self { port, upstream }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set_upstream(&self, port: u16) {
        *self.upstream.lock().unwrap() = port;
    }
}

fn relay(client: TcpStream, port: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        while let Ok(n) = c_in.read(&mut buf) {
            if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    let mut buf = [0u8; 16 << 10];
    while let Ok(n) = s_in.read(&mut buf) {
        if n == 0 || c_out.write_all(&buf[..n]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let _ = c_out.shutdown(Shutdown::Both);
}

/// `n` bytes no compressor shrinks (xorshift), for a big layer.
pub fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}
