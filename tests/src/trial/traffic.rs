//! Bounded loops of requests through the VIP, each recording what it saw: acknowledged writes,
//! failures, and the gaps between successes.

use super::*;

/// What a [`TrafficLoop`] sends.
#[derive(Clone, Debug)]
pub enum Request {
    /// `SET <prefix>:<n> <n>` with a fresh `n` each time.
    Set { prefix: String },
    /// `GET <key>`.
    Get { key: String },
    /// `PUBLISH <channel> <n>`: `n` is what a [`super::Subscriber`] records as received.
    Publish { channel: String },
}

#[derive(Clone, Debug)]
pub struct LoopOptions {
    pub addr: SocketAddrV4,
    pub request: Request,
    /// Pause after every request, failed or not (a dead backend refuses connections at once,
    /// and a client retrying in a tight loop would only measure the CPU).
    pub pause: Duration,
    /// Connect, read and write timeout.
    pub timeout: Duration,
    /// Opens a new connection after this many requests, so new flows are exercised too.
    pub reconnect_every: Option<u64>,
    /// Hard bounds: the loop ends after this long or this many requests even if never stopped.
    pub max_duration: Duration,
    pub max_requests: u64,
}

impl LoopOptions {
    /// The failover trial's writer: a write every ~3 ms, 100 ms timeouts, one connection kept
    /// until it fails.
    pub fn writer(addr: SocketAddrV4, prefix: &str) -> Self {
        Self {
            addr,
            request: Request::Set {
                prefix: prefix.to_owned(),
            },
            pause: Duration::from_millis(3),
            timeout: Duration::from_millis(100),
            reconnect_every: None,
            max_duration: Duration::from_secs(300),
            max_requests: 1_000_000,
        }
    }
}

/// What a loop saw so far.
#[derive(Clone, Debug, Default)]
pub struct LoopRecord {
    /// (request number, when the reply arrived) of every successful request, in order.
    pub acks: Vec<(u64, Instant)>,
    /// When and how requests failed (the first 10,000).
    pub failures: Vec<(Instant, String)>,
    pub failure_count: u64,
    pub requests: u64,
    /// TCP connections opened: 1 for a loop whose connection never broke.
    pub connects: u64,
}

impl LoopRecord {
    /// The longest time without a successful reply between two that straddle `t`, or that
    /// span any part of [t, last ack]: the interruption a client saw around an event at `t`.
    pub fn longest_gap_after(&self, t: Instant) -> Option<Duration> {
        let (_, last) = *self.acks.last()?;
        self.longest_gap_between(t, last)
            .map(|(a, b)| b.duration_since(a))
    }

    /// The longest time without a successful reply between two consecutive ones, among those
    /// that end after `from` and start no later than `until`: what a client saw between a
    /// fault at `from` and a recovery observed at `until`, as (last reply before, first
    /// after). Not simply the first reply after `from`: one already in flight when the fault
    /// struck (a SIGSTOP takes effect asynchronously; a proxy still relays) can land just
    /// after it and would hide the outage that follows.
    pub fn longest_gap_between(&self, from: Instant, until: Instant) -> Option<(Instant, Instant)> {
        self.acks
            .windows(2)
            .filter(|w| w[1].1 > from && w[0].1 <= until)
            .map(|w| (w[0].1, w[1].1))
            .max_by_key(|(a, b)| b.duration_since(*a))
    }

    pub fn acks_after(&self, t: Instant) -> usize {
        self.acks.iter().filter(|(_, at)| *at > t).count()
    }

    /// The keys of every acknowledged `SET` of a [`Request::Set`] loop with this prefix.
    pub fn set_keys(&self, prefix: &str) -> Vec<String> {
        self.acks
            .iter()
            .map(|(n, _)| format!("{prefix}:{n}"))
            .collect()
    }

    pub fn failures_between(&self, from: Instant, to: Instant) -> usize {
        self.failures
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .count()
    }
}

/// A request loop on its own thread, inside the client namespace. Stopped (and joined) on
/// drop; it also ends by itself at its hard bounds.
pub struct TrafficLoop {
    options: LoopOptions,
    worker: Worker<LoopRecord>,
}

impl TrafficLoop {
    /// Starts the loop with its sockets in the namespace at `netns_path`.
    pub fn start(netns_path: PathBuf, options: LoopOptions) -> Result<Self> {
        let run = options.clone();
        let worker = Worker::start("traffic", netns_path, move |record, stop| {
            run_loop(&run, record, stop)
        })?;
        Ok(Self { options, worker })
    }

    pub fn options(&self) -> &LoopOptions {
        &self.options
    }

    /// What it saw so far (a lock; hold it briefly).
    pub fn record(&self) -> MutexGuard<'_, LoopRecord> {
        self.worker.record()
    }

    /// Waits (bounded) until at least `n` requests succeeded after `t`.
    pub fn wait_acks_after(&self, t: Instant, n: usize, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("{n} successful requests to {}", self.options.addr),
            timeout,
            Duration::from_millis(10),
            || {
                if !self.worker.is_running() {
                    bail!("the traffic loop ended");
                }
                Ok((self.record().acks_after(t) >= n).then_some(()))
            },
        )
    }

    /// Stops the loop and returns everything it saw.
    pub fn finish(self) -> Result<LoopRecord> {
        self.worker.finish()
    }
}

fn run_loop(options: &LoopOptions, record: &Mutex<LoopRecord>, stop: &AtomicBool) -> Result<()> {
    let started = Instant::now();
    let mut conn: Option<Resp> = None;
    let mut on_conn = 0u64;
    let lock = || record.lock().unwrap_or_else(|e| e.into_inner());
    for n in 1..=options.max_requests {
        if stop.load(Ordering::Relaxed) || started.elapsed() > options.max_duration {
            break;
        }
        let outcome = (|| -> std::io::Result<Reply> {
            if conn.is_none() {
                lock().connects += 1;
                conn = Some(Resp::connect(options.addr, options.timeout)?);
                on_conn = 0;
            }
            let c = conn.as_mut().expect("just connected");
            on_conn += 1;
            match &options.request {
                Request::Set { prefix } => {
                    let key = format!("{prefix}:{n}");
                    c.call(&[b"SET", key.as_bytes(), n.to_string().as_bytes()])
                }
                Request::Get { key } => c.call(&[b"GET", key.as_bytes()]),
                Request::Publish { channel } => {
                    c.call(&[b"PUBLISH", channel.as_bytes(), n.to_string().as_bytes()])
                }
            }
        })();
        let now = Instant::now();
        let failure = match outcome {
            Ok(Reply::Simple(s)) if s == "OK" => None,
            Ok(Reply::Bulk(_)) if matches!(options.request, Request::Get { .. }) => None,
            Ok(Reply::Int(_)) if matches!(options.request, Request::Publish { .. }) => None,
            Ok(other) => Some(format!("unexpected reply {other:?}")),
            Err(e) => Some(e.to_string()),
        };
        {
            let mut r = lock();
            r.requests += 1;
            match failure {
                None => r.acks.push((n, now)),
                Some(why) => {
                    r.failure_count += 1;
                    if r.failures.len() < 10_000 {
                        r.failures.push((now, why));
                    }
                    conn = None;
                }
            }
        }
        if options
            .reconnect_every
            .is_some_and(|every| on_conn >= every)
        {
            conn = None;
        }
        std::thread::sleep(options.pause);
    }
    Ok(())
}
