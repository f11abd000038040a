//! `cargo xtask bench --attack`: failovers while the controllers are attacked, and what the
//! attacks cost them. From the client namespace, for the whole series and against every
//! controller at once:
//! - **readers that never read**: pipelined `SENTINEL MASTERS` and `INFO`, whose replies are
//!   far larger than the requests, written as fast as the socket takes them;
//! - **a connection flood**: idle connections opened up to a bound and held;
//! - **a trickle**: a large command sent one byte at a time;
//! - **a datagram flood**: random bytes to the peer port (UDP), at a bounded rate.
//!
//! Every loop is bounded in count and stops with the series. The controllers' resident memory
//! is sampled every 200 ms; the report gives the largest value seen per controller.

use std::{
    io::Write as _,
    net::{SocketAddrV4, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use redis_ha_tests::vm_rss_kib;

/// Bounds on what the attackers do, whatever the series' length.
const PIPELINERS: usize = 4;
const FLOOD_CONNECTIONS: usize = 400;
const TRICKLERS: usize = 8;
const DATAGRAMS_PER_SECOND: u64 = 2_000;
/// No attack outlives this, even if nobody stops it.
const MAX_DURATION: Duration = Duration::from_secs(30 * 60);

/// What the attackers did, summed over the run.
#[derive(Default, Debug)]
pub struct Counters {
    pub pipelined_bytes: AtomicU64,
    pub pipeline_reconnects: AtomicU64,
    pub flood_open: AtomicU64,
    pub flood_refused_or_closed: AtomicU64,
    pub trickled_bytes: AtomicU64,
    pub trickle_reconnects: AtomicU64,
    pub datagrams: AtomicU64,
}

/// A running attack; [`Attack::stop`] ends it and reports.
pub struct Attack {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counters: Arc<Counters>,
    /// Largest VmRSS seen per controller pid, in KiB.
    pub rss_max_kib: Arc<Mutex<Vec<(u32, u64)>>>,
}

/// Starts a thread inside the network namespace at `ns`, running `f` until `stop`.
fn spawn_in(
    ns: &Path,
    stop: &Arc<AtomicBool>,
    f: impl FnOnce(&AtomicBool) + Send + 'static,
) -> Result<JoinHandle<()>> {
    let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    let stop = stop.clone();
    Ok(std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on an open namespace fd; it changes only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!("attack: setns: {}", std::io::Error::last_os_error());
            return;
        }
        f(&stop)
    }))
}

fn over(stop: &AtomicBool, started: Instant) -> bool {
    stop.load(Ordering::Relaxed) || started.elapsed() > MAX_DURATION
}

fn connect(addr: SocketAddrV4) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(200))).ok()?;
    Some(s)
}

impl Attack {
    /// Attacks every API address in `apis` from the namespace at `client_ns`, and samples the
    /// memory of `pids`.
    pub fn start(client_ns: &Path, apis: &[SocketAddrV4], pids: Vec<u32>) -> Result<Attack> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        let client_ns: PathBuf = client_ns.to_owned();
        for (i, &api) in apis
            .iter()
            .cycle()
            .take(PIPELINERS.max(apis.len()))
            .enumerate()
        {
            let c = counters.clone();
            threads.push(spawn_in(&client_ns, &stop, move |stop| {
                let request: &[u8] = if i % 2 == 0 {
                    b"*2\r\n$8\r\nSENTINEL\r\n$7\r\nMASTERS\r\n"
                } else {
                    b"*1\r\n$4\r\nINFO\r\n"
                };
                let batch = request.repeat(256);
                let started = Instant::now();
                let mut reconnects = 0u64;
                while !over(stop, started) && reconnects < 100_000 {
                    let Some(mut s) = connect(api) else {
                        reconnects += 1;
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    c.pipeline_reconnects.fetch_add(1, Ordering::Relaxed);
                    // Never reads: the replies pile up in the controller (or in the kernel's
                    // buffers, once the controller stops writing to a full socket).
                    while !over(stop, started) {
                        match s.write(&batch) {
                            Ok(n) if n > 0 => {
                                c.pipelined_bytes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Ok(_) => break,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    reconnects += 1;
                }
            })?);
        }
        {
            let c = counters.clone();
            let apis = apis.to_vec();
            threads.push(spawn_in(&client_ns, &stop, move |stop| {
                let started = Instant::now();
                let mut held: Vec<TcpStream> = Vec::new();
                let mut attempts = 0u64;
                while !over(stop, started) && attempts < 1_000_000 {
                    // Drop the ones the controller closed, then top up to the bound.
                    held.retain(|s| {
                        let mut b = [0u8; 1];
                        s.set_nonblocking(true).ok();
                        match s.peek(&mut b) {
                            Ok(0) => {
                                c.flood_refused_or_closed.fetch_add(1, Ordering::Relaxed);
                                false
                            }
                            _ => true,
                        }
                    });
                    while held.len() < FLOOD_CONNECTIONS && attempts < 1_000_000 {
                        attempts += 1;
                        match connect(apis[held.len() % apis.len()]) {
                            Some(s) => {
                                c.flood_open.fetch_add(1, Ordering::Relaxed);
                                held.push(s);
                            }
                            None => {
                                c.flood_refused_or_closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })?);
        }
        for (i, &api) in apis.iter().cycle().take(TRICKLERS).enumerate() {
            let c = counters.clone();
            threads.push(spawn_in(&client_ns, &stop, move |stop| {
                // A SET of a 1 MB value, announced in full, then sent a byte every 10 ms.
                let mut command = b"*3\r\n$3\r\nSET\r\n$6\r\ntrickl\r\n$1048576\r\n".to_vec();
                command.extend(std::iter::repeat_n(b'x', 1 << 20));
                let started = Instant::now();
                let mut reconnects = 0u64;
                std::thread::sleep(Duration::from_millis(10 * i as u64));
                while !over(stop, started) && reconnects < 10_000 {
                    let Some(mut s) = connect(api) else {
                        reconnects += 1;
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    };
                    c.trickle_reconnects.fetch_add(1, Ordering::Relaxed);
                    for byte in &command {
                        if over(stop, started) || s.write_all(std::slice::from_ref(byte)).is_err() {
                            break;
                        }
                        c.trickled_bytes.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    reconnects += 1;
                }
            })?);
        }
        {
            let c = counters.clone();
            let apis = apis.to_vec();
            threads.push(spawn_in(&client_ns, &stop, move |stop| {
                let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else {
                    return;
                };
                let started = Instant::now();
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                let mut sent = 0u64;
                let mut datagram = [0u8; 200];
                while !over(stop, started) {
                    for _ in 0..DATAGRAMS_PER_SECOND / 10 {
                        for b in datagram.iter_mut() {
                            // xorshift: bytes no peer message starts with.
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            *b = x as u8;
                        }
                        let to = apis[(sent % apis.len() as u64) as usize];
                        if socket.send_to(&datagram, to).is_ok() {
                            sent += 1;
                            c.datagrams.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })?);
        }
        let rss_max_kib = Arc::new(Mutex::new(pids.iter().map(|&p| (p, 0)).collect::<Vec<_>>()));
        {
            let rss = rss_max_kib.clone();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let started = Instant::now();
                while !over(&stop, started) {
                    for (pid, max) in rss.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
                        if let Some(kib) = vm_rss_kib(*pid) {
                            *max = (*max).max(kib);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }));
        }
        Ok(Attack {
            stop,
            threads,
            counters,
            rss_max_kib,
        })
    }

    /// Ends every attacker and waits for them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop();
    }
}
