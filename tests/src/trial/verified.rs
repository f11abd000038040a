//! A writer that can later prove what happened to every write it was told succeeded: it
//! records, compactly, each acknowledged `SET`, whether a `WAIT 1` after it was confirmed by a
//! replica, and which backend acknowledged it (asked once per connection with `CLIENT INFO`,
//! whose `laddr` is the backend's own address since the data plane rewrites the VIP).
//!
//! Records stay small on purpose (16 bytes a write): a soak of hours writes millions of keys.

use std::net::Ipv4Addr;

use super::resp::invalid;
use super::*;

/// One acknowledged write. The key is `<prefix>:<id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteAck {
    pub id: u32,
    /// When the `SET`'s reply arrived, in ms since the writer's time origin.
    pub at_ms: u32,
    /// How long before `at_ms` the `SET` was sent: the server took it somewhere in between
    /// (a reply read late, on a busy machine, must not move the write in time).
    pub sent_before_ms: u16,
    /// 1-based index into [`WriterOptions::backends`] of the backend that acknowledged it;
    /// 0 when the connection's `CLIENT INFO` named no known backend.
    pub backend: u8,
    /// A `WAIT 1` followed the `SET`.
    pub waited: bool,
    /// That `WAIT` returned at least 1: a replica had the write when the client was told so.
    pub confirmed: bool,
}

#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub addr: SocketAddrV4,
    pub prefix: String,
    /// The backends' addresses, to name the one behind each connection.
    pub backends: Vec<Ipv4Addr>,
    /// Every second write is followed by `WAIT 1 <wait_ms>`.
    pub wait_ms: u64,
    pub pause: Duration,
    /// Connect, read and write timeout (more than `wait_ms`, or every WAIT would time out).
    pub timeout: Duration,
    /// Hard bounds: the loop ends after this long or this many writes even if never stopped.
    pub max_duration: Duration,
    pub max_writes: u32,
}

impl WriterOptions {
    pub fn new(addr: SocketAddrV4, prefix: &str, backends: Vec<Ipv4Addr>) -> Self {
        Self {
            addr,
            prefix: prefix.to_owned(),
            backends,
            wait_ms: 50,
            pause: Duration::from_millis(3),
            timeout: Duration::from_millis(150),
            max_duration: Duration::from_secs(3600),
            max_writes: 50_000_000,
        }
    }
}

/// What a [`VerifiedWriter`] saw so far.
#[derive(Clone, Debug, Default)]
pub struct WriterRecord {
    pub acks: Vec<WriteAck>,
    /// Requests that failed (no acknowledged `SET`).
    pub failures: u64,
    pub connects: u64,
    /// The last failure's message, for reports.
    pub last_failure: Option<String>,
}

impl WriterRecord {
    /// The key of write `id`.
    pub fn key(prefix: &str, id: u32) -> String {
        format!("{prefix}:{id}")
    }
}

/// The writer on its own thread in a namespace; stopped and joined on drop, and bounded by
/// its options.
pub struct VerifiedWriter(Worker<WriterRecord>);

impl VerifiedWriter {
    /// Starts writing from the namespace at `netns_path`; `origin` is time 0 of the records.
    pub fn start(netns_path: PathBuf, options: WriterOptions, origin: Instant) -> Result<Self> {
        ensure!(
            options.backends.len() < usize::from(u8::MAX),
            "too many backends to name in a u8"
        );
        Worker::start("verified-writer", netns_path, move |record, stop| {
            write_loop(&options, origin, record, stop);
            Ok(())
        })
        .map(Self)
    }

    pub fn record(&self) -> MutexGuard<'_, WriterRecord> {
        self.0.record()
    }

    pub fn is_running(&self) -> bool {
        self.0.is_running()
    }

    /// Stops the writer and returns everything it saw.
    pub fn finish(self) -> Result<WriterRecord> {
        self.0.finish()
    }
}

/// Elapsed ms since `origin`, saturating (u32 ms is 49 days).
pub fn ms_since(origin: Instant, t: Instant) -> u32 {
    u32::try_from(t.saturating_duration_since(origin).as_millis()).unwrap_or(u32::MAX)
}

fn sent_before(sent: Instant, acked: Instant) -> u16 {
    u16::try_from(acked.saturating_duration_since(sent).as_millis()).unwrap_or(u16::MAX)
}

/// Which backend `CLIENT INFO`'s reply names as the server's end of the connection.
pub fn backend_of(client_info: &str, backends: &[Ipv4Addr]) -> u8 {
    let laddr = client_info
        .split_whitespace()
        .find_map(|f| f.strip_prefix("laddr="))
        .and_then(|a| a.parse::<SocketAddrV4>().ok());
    laddr
        .and_then(|a| backends.iter().position(|b| b == a.ip()))
        .map_or(0, |i| i as u8 + 1)
}

fn write_loop(
    options: &WriterOptions,
    origin: Instant,
    record: &Mutex<WriterRecord>,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let lock = || record.lock().unwrap_or_else(|e| e.into_inner());
    let mut conn: Option<(Resp, u8)> = None;
    let wait_ms = options.wait_ms.to_string();
    for id in 1..=options.max_writes {
        if stop.load(Ordering::Relaxed) || started.elapsed() > options.max_duration {
            break;
        }
        let waited = id % 2 == 0;
        let mut acked_at = None;
        let mut sent_at = Instant::now();
        let outcome = (|| -> std::io::Result<WriteAck> {
            if conn.is_none() {
                lock().connects += 1;
                let mut c = Resp::connect(options.addr, options.timeout)?;
                let backend = match c.call(&[b"CLIENT", b"INFO"])? {
                    Reply::Bulk(Some(info)) => {
                        backend_of(&String::from_utf8_lossy(&info), &options.backends)
                    }
                    _ => 0,
                };
                conn = Some((c, backend));
            }
            let (c, backend) = conn.as_mut().expect("just connected");
            let key = WriterRecord::key(&options.prefix, id);
            let value = id.to_string();
            let set: Vec<&[u8]> = vec![b"SET", key.as_bytes(), value.as_bytes()];
            sent_at = Instant::now();
            if waited {
                c.send_all([set, vec![b"WAIT", b"1", wait_ms.as_bytes()]])?;
            } else {
                c.send_all([set])?;
            }
            match c.read_reply()? {
                Reply::Simple(s) if s == "OK" => {}
                other => return Err(invalid(format!("SET: {other:?}"))),
            }
            let now = Instant::now();
            acked_at = Some(now);
            let mut ack = WriteAck {
                id,
                at_ms: ms_since(origin, now),
                sent_before_ms: sent_before(sent_at, now),
                backend: *backend,
                waited,
                confirmed: false,
            };
            if waited {
                ack.confirmed = matches!(c.read_reply()?, Reply::Int(n) if n >= 1);
            }
            Ok(ack)
        })();
        let mut r = lock();
        match outcome {
            Ok(ack) => r.acks.push(ack),
            Err(e) => {
                // The SET was acknowledged even if its WAIT then failed: it counts, unconfirmed.
                if let (Some(at), Some((_, backend))) = (acked_at, conn.as_ref()) {
                    r.acks.push(WriteAck {
                        id,
                        at_ms: ms_since(origin, at),
                        sent_before_ms: sent_before(sent_at, at),
                        backend: *backend,
                        waited,
                        confirmed: false,
                    });
                } else {
                    r.failures += 1;
                }
                r.last_failure = Some(e.to_string());
                conn = None;
            }
        }
        drop(r);
        std::thread::sleep(options.pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_is_the_server_end_of_the_connection() {
        let backends = [Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 1, 3)];
        let info = "id=7 addr=198.18.0.2:40112 laddr=198.18.1.3:6379 fd=9 name= age=0";
        assert_eq!(backend_of(info, &backends), 2);
        assert_eq!(
            backend_of("id=7 laddr=198.18.9.9:6379", &backends),
            0,
            "an unknown server is 0, not a guess"
        );
        assert_eq!(backend_of("garbage", &backends), 0);
    }

    #[test]
    fn an_ack_record_stays_small() {
        assert!(std::mem::size_of::<WriteAck>() <= 16);
    }
}
