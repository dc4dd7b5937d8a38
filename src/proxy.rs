//! A TCP proxy for tests and the cluster harness: it stands between a member and the
//! address of one of its peers, and can cut that link (a partition: live connections
//! closed, new ones refused) or slow it (each direction of each connection limited to a
//! rate, as a thin network link would carry it).
//!
//! One proxy per ordered pair of members gives every link its own switch: member `i`
//! is started with `--peers` naming, for each other member `j`, the proxy of `i → j`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct State {
    target: String,
    blocked: AtomicBool,
    /// Bytes per second each direction of each connection may carry (0: no limit).
    rate: AtomicU64,
    stop: AtomicBool,
    /// The live connections (both ends), to cut at once.
    live: Mutex<Vec<TcpStream>>,
}

/// A proxy to one address, listening on a port of its own on loopback.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`).
    ///
    /// # Errors
    /// It cannot listen.
    pub fn start(target: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(State {
            target: target.to_string(),
            blocked: AtomicBool::new(false),
            rate: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        let accepting = std::thread::Builder::new()
            .name("proxy".into())
            .spawn(move || accept(listener, s))?;
        Ok(Proxy {
            addr,
            state,
            accepting: Some(accepting),
        })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link (`true`: every live connection closed, new ones refused) or
    /// heals it.
    pub fn block(&self, blocked: bool) {
        self.state.blocked.store(blocked, Ordering::Release);
        if blocked {
            cut(&self.state);
        }
    }

    /// Limits each direction of each connection to `bytes_per_sec` (0: no limit).
    pub fn limit(&self, bytes_per_sec: u64) {
        self.state.rate.store(bytes_per_sec, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        cut(&self.state);
        if let Some(t) = self.accepting.take() {
            let _ = t.join();
        }
    }
}

fn cut(state: &State) {
    for s in state.live.lock().expect("proxy lock").drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn accept(listener: TcpListener, state: Arc<State>) {
    while !state.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((inbound, _)) => {
                if state.blocked.load(Ordering::Acquire) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = inbound.set_nonblocking(false);
                let Ok(outbound) = TcpStream::connect(&state.target) else {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let pumps = (
                    inbound.try_clone(),
                    outbound.try_clone(),
                    inbound.try_clone(),
                    outbound.try_clone(),
                );
                let (Ok(a), Ok(b), Ok(c), Ok(d)) = pumps else {
                    continue;
                };
                {
                    let mut live = state.live.lock().expect("proxy lock");
                    live.push(inbound);
                    live.push(outbound);
                }
                for (from, to) in [(a, b), (d, c)] {
                    let s = state.clone();
                    let _ = std::thread::Builder::new()
                        .name("proxy-pump".into())
                        .spawn(move || pump(from, to, &s));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Copies `from` to `to`, no faster than the rate allows, until either end closes.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State) {
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes carried since the rate was last set, and when that was.
    let (mut rate_seen, mut since, mut carried) = (0u64, Instant::now(), 0u64);
    loop {
        let rate = state.rate.load(Ordering::Acquire);
        if rate != rate_seen {
            (rate_seen, since, carried) = (rate, Instant::now(), 0);
        }
        // Small reads under a limit, so that one read is never a long burst.
        let want = if rate == 0 {
            buf.len()
        } else {
            buf.len().min((rate / 50).max(512) as usize)
        };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if rate > 0 {
            // Idle time earns no credit beyond a tenth of a second: no burst after it.
            let earned = Duration::from_secs_f64(carried as f64 / rate as f64);
            if since.elapsed() > earned + Duration::from_millis(100) {
                (since, carried) = (Instant::now(), 0);
            }
            carried += n as u64;
            let due = Duration::from_secs_f64(carried as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(since.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() || state.blocked.load(Ordering::Acquire) {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
