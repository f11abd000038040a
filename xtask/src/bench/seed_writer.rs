//! The failover trials' writer on the seed topology: `SET <prefix>:<n> <n>` through the VIP's
//! write port, each followed (pipelined, one round trip) by `WAIT 1 <ms>`, so every
//! acknowledged write is known to be replicated to at least one replica or not; the first
//! request on each connection also asks `CONFIG GET bind`, so every acknowledgement names the
//! node that gave it (a connection never changes node, so once per connection is enough).
//!
//! Two modes, both needed by the bar: a persistent connection (kept until a request fails),
//! and a new connection for every request (what clients with short-lived connections do, and
//! what a balancer's health checks decide for).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::in_netns;
use redis_ha_tests::trial::{LoopRecord, Reply, Resp};
use redis_ha_tests::wait_until;

/// `WAIT 1` timeout: long enough for a replica connected to the master to acknowledge (well
/// under a millisecond here), short enough that a master without replicas (just promoted)
/// slows the writer only to ~15 writes/s instead of stopping it.
const WAIT_MS: u64 = 50;
/// Connect, read and write timeout (above `WAIT_MS`, so a WAIT never times out the socket).
const TIMEOUT: Duration = Duration::from_millis(200);
/// Pause after every request, as the trial writer of tests/src/trial.rs.
const PAUSE: Duration = Duration::from_millis(3);
/// Hard bounds of one writer, whatever happens to the trial.
const MAX_DURATION: Duration = Duration::from_secs(300);
const MAX_REQUESTS: u64 = 1_000_000;

/// One acknowledged write.
#[derive(Clone, Debug)]
pub struct Ack {
    pub n: u64,
    pub at: Instant,
    /// The node that acknowledged it (`CONFIG GET bind` on its connection).
    pub node: Option<Ipv4Addr>,
    /// `WAIT 1` reported at least one replica having it.
    pub confirmed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct WriterRecord {
    pub acks: Vec<Ack>,
    pub failures: u64,
    pub connects: u64,
}

impl WriterRecord {
    /// The acks as tests/src/trial.rs records them, for its gap computation.
    pub fn loop_record(&self) -> LoopRecord {
        LoopRecord {
            acks: self.acks.iter().map(|a| (a.n, a.at)).collect(),
            ..LoopRecord::default()
        }
    }
}

pub struct Writer {
    pub per_request: bool,
    pub prefix: String,
    record: Arc<Mutex<WriterRecord>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Writer {
    /// Starts writing to `addr` from the namespace at `netns`.
    pub fn start(
        netns: PathBuf,
        addr: SocketAddrV4,
        prefix: &str,
        per_request: bool,
    ) -> Result<Self> {
        let record = Arc::new(Mutex::new(WriterRecord::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (record, stop, prefix) = (record.clone(), stop.clone(), prefix.to_owned());
            std::thread::Builder::new()
                .name("seed-writer".into())
                .spawn(move || {
                    in_netns(&netns, move || {
                        run(addr, &prefix, per_request, &record, &stop)
                    })?
                })
                .context("starting a writer thread")?
        };
        Ok(Self {
            per_request,
            prefix: prefix.to_owned(),
            record,
            stop,
            handle: Some(handle),
        })
    }

    pub fn mode(&self) -> &'static str {
        if self.per_request {
            "new connection per write"
        } else {
            "persistent connection"
        }
    }

    fn acks_after(&self, t: Instant) -> usize {
        let r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        r.acks.iter().filter(|a| a.at > t).count()
    }

    /// Waits (bounded) until `n` writes were acknowledged after `t`.
    pub fn wait_acks_after(&self, t: Instant, n: usize, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("{n} acknowledged writes ({})", self.mode()),
            timeout,
            Duration::from_millis(10),
            || {
                if self.handle.as_ref().is_none_or(JoinHandle::is_finished) {
                    bail!("the writer ended");
                }
                Ok((self.acks_after(t) >= n).then_some(()))
            },
        )
    }

    pub fn finish(mut self) -> Result<WriterRecord> {
        self.join()?;
        Ok(self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    fn join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the writer panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn run(
    addr: SocketAddrV4,
    prefix: &str,
    per_request: bool,
    record: &Mutex<WriterRecord>,
    stop: &AtomicBool,
) -> Result<()> {
    let started = Instant::now();
    let lock = || record.lock().unwrap_or_else(|e| e.into_inner());
    let mut conn: Option<(Resp, Option<Ipv4Addr>)> = None;
    for n in 1..=MAX_REQUESTS {
        if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_DURATION {
            break;
        }
        let key = format!("{prefix}:{n}");
        let value = n.to_string();
        let outcome = (|| -> std::io::Result<Option<Ack>> {
            let fresh = conn.is_none();
            if fresh {
                lock().connects += 1;
                conn = Some((Resp::connect(addr, TIMEOUT)?, None));
            }
            let (c, node) = conn.as_mut().expect("just connected");
            let wait_ms = WAIT_MS.to_string();
            let mut commands = vec![
                vec![b"SET".as_slice(), key.as_bytes(), value.as_bytes()],
                vec![b"WAIT".as_slice(), b"1", wait_ms.as_bytes()],
            ];
            if fresh {
                commands.push(vec![b"CONFIG".as_slice(), b"GET", b"bind"]);
            }
            c.send_all(commands)?;
            let set = c.read_reply()?;
            // The SET's reply is the acknowledgement the client acts on: its time is the ack's.
            let at = Instant::now();
            let wait = c.read_reply()?;
            if fresh {
                *node = match c.read_reply()? {
                    Reply::Array(Some(v)) => match v.get(1) {
                        Some(Reply::Bulk(Some(b))) => String::from_utf8_lossy(b)
                            .split_whitespace()
                            .next()
                            .and_then(|ip| ip.parse().ok()),
                        _ => None,
                    },
                    _ => None,
                };
            }
            Ok(match set {
                Reply::Simple(s) if s == "OK" => Some(Ack {
                    n,
                    at,
                    node: *node,
                    confirmed: matches!(wait, Reply::Int(k) if k >= 1),
                }),
                _ => None,
            })
        })();
        match outcome {
            Ok(Some(ack)) => lock().acks.push(ack),
            Ok(None) | Err(_) => {
                lock().failures += 1;
                conn = None;
            }
        }
        if per_request {
            conn = None;
        }
        std::thread::sleep(PAUSE);
    }
    Ok(())
}
