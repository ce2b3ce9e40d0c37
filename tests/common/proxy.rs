//! A TCP proxy on a free loopback port whose faults the test chooses: it forwards both ways,
//! or swallows what the client sends (the bytes are read and dropped, as a server that died
//! with them unread would), or cuts every connection and refuses new ones (accepted, then
//! closed at once). Threads and std::net only; the listener thread ends with the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FORWARD: u8 = 0;
const SWALLOW: u8 = 1;
const REFUSE: u8 = 2;

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
}

/// What the proxy did to its clients.
#[derive(Default)]
pub struct Counts {
    /// Bytes clients sent that were dropped.
    pub swallowed: AtomicU64,
    /// Connections closed as soon as accepted.
    pub refused: AtomicU64,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` (chosen here) to 127.0.0.1:`to`.
    pub fn start(to: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (m, c, s, n) = (mode.clone(), conns.clone(), stop.clone(), counts.clone());
        std::thread::spawn(move || accept_loop(listener, to, m, c, s, n));
        Proxy {
            port,
            mode,
            conns,
            stop,
            counts,
        }
    }

    pub fn swallowed(&self) -> u64 {
        self.counts.swallowed.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn forward(&self) {
        self.mode.store(FORWARD, Ordering::SeqCst);
    }

    /// From now on what clients send is read and dropped; the server's answers still flow.
    pub fn swallow(&self) {
        self.mode.store(SWALLOW, Ordering::SeqCst);
    }

    /// Cuts every connection; until [`Proxy::forward`], new ones are closed at once.
    pub fn refuse(&self) {
        self.mode.store(REFUSE, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    to: u16,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => return,
        };
        if mode.load(Ordering::SeqCst) == REFUSE {
            counts.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        client.set_nonblocking(false).unwrap();
        let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
            continue;
        };
        {
            let mut all = conns.lock().unwrap();
            all.push(client.try_clone().unwrap());
            all.push(server.try_clone().unwrap());
        }
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (m, n) = (mode.clone(), counts.clone());
        std::thread::spawn(move || pump(client, server, Some((m, n))));
        std::thread::spawn(move || pump(s2, c2, None));
    }
}

/// Copies `from` to `to` until either ends; with `mode`, drops the bytes while it says so.
fn pump(mut from: TcpStream, mut to: TcpStream, mode: Option<(Arc<AtomicU8>, Arc<Counts>)>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let swallowed = match &mode {
            Some((m, counts)) if m.load(Ordering::SeqCst) != FORWARD => {
                counts.swallowed.fetch_add(n as u64, Ordering::SeqCst);
                true
            }
            _ => false,
        };
        if !swallowed && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
