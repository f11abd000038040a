//! Traffic through the VIP and the failover trial built on it: write unique keys as fast as is
//! reasonable, fail the master, and measure what a client saw (the write-unavailability gap),
//! what it lost (acknowledged writes missing on the final master), and whether the old master
//! took a write through the VIP after the switch.
//!
//! Redis is spoken directly (a few lines of RESP over a `TcpStream`) so every socket has the
//! short, explicit timeouts a measuring client needs, and sockets are created on a thread that
//! entered the client namespace.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::cluster::{Cluster, LogMark, MapsView, Replication, replication};
use crate::netns::in_netns;
use crate::process::wait_until;
use crate::testbed::Backend;

// ---------------------------------------------------------------------------------------------
// RESP.

/// A Redis reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// One Redis connection with a bound on every operation.
pub struct Resp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Resp {
    /// Connects with `timeout` for the handshake and for every later read and write. The socket
    /// lives in the calling thread's network namespace.
    pub fn connect(addr: SocketAddrV4, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr.into(), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// Sends one command without waiting for the reply (pipelining).
    pub fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        self.stream.write_all(&encode(args))
    }

    /// Sends several commands in one write.
    pub fn send_all<'a>(
        &mut self,
        commands: impl IntoIterator<Item = Vec<&'a [u8]>>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for args in commands {
            buf.extend(encode(&args));
        }
        self.stream.write_all(&buf)
    }

    pub fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.send(args)?;
        self.read_reply()
    }

    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(1);
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| invalid(format!("bad length or integer {s:?}")))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(int(rest)?),
            "$" => match int(rest)? {
                n if n < 0 => Reply::Bulk(None),
                n => {
                    let mut data = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            },
            "*" => match int(rest)? {
                n if n < 0 => Reply::Array(None),
                n => Reply::Array(Some(
                    (0..n)
                        .map(|_| self.read_reply())
                        .collect::<Result<_, _>>()?,
                )),
            },
            _ => return Err(invalid(format!("not a RESP reply: {line:?}"))),
        })
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Err(invalid("empty reply line".into()));
        }
        Ok(line.to_owned())
    }
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut buf = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        buf.extend(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
    buf
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Which of `keys` do not exist on `backend`, asked from inside the backend's namespace with
/// pipelined `EXISTS` (one reply per key, so the answer is exact).
pub fn missing_keys(backend: &Backend, keys: Vec<String>) -> Result<Vec<String>> {
    let addr = backend.addr();
    in_netns(&backend.netns().path(), move || -> Result<Vec<String>> {
        let mut conn = Resp::connect(addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to {addr}"))?;
        let mut missing = Vec::new();
        for batch in keys.chunks(1000) {
            conn.send_all(
                batch
                    .iter()
                    .map(|k| vec![b"EXISTS".as_slice(), k.as_bytes()]),
            )?;
            for key in batch {
                match conn.read_reply()? {
                    Reply::Int(1) => {}
                    Reply::Int(0) => missing.push(key.clone()),
                    other => bail!("EXISTS {key} on {addr}: {other:?}"),
                }
            }
        }
        Ok(missing)
    })?
}

// ---------------------------------------------------------------------------------------------
// Traffic loops.

/// What a [`TrafficLoop`] sends.
#[derive(Clone, Debug)]
pub enum Request {
    /// `SET <prefix>:<n> <n>` with a fresh `n` each time.
    Set { prefix: String },
    /// `GET <key>`.
    Get { key: String },
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
    record: Arc<Mutex<LoopRecord>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl TrafficLoop {
    /// Starts the loop with its sockets in the namespace at `netns_path`.
    pub fn start(netns_path: PathBuf, options: LoopOptions) -> Result<Self> {
        let record = Arc::new(Mutex::new(LoopRecord::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (record, stop, options) = (record.clone(), stop.clone(), options.clone());
            std::thread::Builder::new()
                .name("traffic".into())
                .spawn(move || in_netns(&netns_path, move || run_loop(&options, &record, &stop))?)
                .context("starting the traffic thread")?
        };
        Ok(Self {
            options,
            record,
            stop,
            handle: Some(handle),
        })
    }

    pub fn options(&self) -> &LoopOptions {
        &self.options
    }

    /// What it saw so far (a lock; hold it briefly).
    pub fn record(&self) -> MutexGuard<'_, LoopRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (bounded) until at least `n` requests succeeded after `t`.
    pub fn wait_acks_after(&self, t: Instant, n: usize, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("{n} successful requests to {}", self.options.addr),
            timeout,
            Duration::from_millis(10),
            || {
                if self.handle.as_ref().is_none_or(JoinHandle::is_finished) {
                    bail!("the traffic loop ended");
                }
                Ok((self.record().acks_after(t) >= n).then_some(()))
            },
        )
    }

    /// Stops the loop and returns everything it saw.
    pub fn finish(mut self) -> Result<LoopRecord> {
        self.join()?;
        Ok(self.record().clone())
    }

    fn join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the traffic thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for TrafficLoop {
    fn drop(&mut self) {
        let _ = self.join();
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
            }
        })();
        let now = Instant::now();
        let failure = match outcome {
            Ok(Reply::Simple(s)) if s == "OK" => None,
            Ok(Reply::Bulk(_)) if matches!(options.request, Request::Get { .. }) => None,
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

// ---------------------------------------------------------------------------------------------
// The failover trial.

/// How the master fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`; restored by restarting it with its original arguments (so backend 1 comes
    /// back claiming to be the master, with an empty dataset).
    Kill9,
    /// `SIGSTOP` (a hung host); restored by `SIGCONT`.
    SigStop,
    /// Its veth taken down on the LB side; restored by bringing it up.
    LinkCut,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill9 => "kill -9",
            Fault::SigStop => "SIGSTOP",
            Fault::LinkCut => "link cut",
        })
    }
}

impl Fault {
    fn apply(self, cluster: &Cluster, b: &Backend) -> Result<()> {
        match self {
            Fault::Kill9 => b.kill(),
            Fault::SigStop => b.stop(),
            Fault::LinkCut => cluster.cut_link(b.index()),
        }
    }

    fn undo(self, cluster: &Cluster, b: &Backend) -> Result<()> {
        match self {
            Fault::Kill9 => b.start(),
            Fault::SigStop => b.resume(),
            Fault::LinkCut => cluster.restore_link(b.index()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrialOptions {
    pub fault: Fault,
    /// Makes the keys unique (`<label>:<n>`); unique per trial.
    pub label: String,
    /// How long to write before the fault.
    pub warmup: Duration,
    /// Bound for the switch to happen and writes to resume.
    pub resume_timeout: Duration,
    /// After the switch, how long the write port must stay on the new master with writes
    /// flowing (the window in which a spurious second failover would show).
    pub settle: Duration,
    /// Bring the old master back (restart / SIGCONT / link up) and wait until it replicates
    /// from the new master, with the writer still running.
    pub restore: bool,
    /// Bound for the old master to become a synced replica of the new one.
    pub restore_timeout: Duration,
    /// Bound for the cluster to be healthy before the fault.
    pub healthy_timeout: Duration,
}

impl TrialOptions {
    pub fn new(fault: Fault, label: &str, cluster: &Cluster) -> Self {
        let down_after = cluster.down_after();
        Self {
            fault,
            label: label.to_owned(),
            warmup: Duration::from_millis(500),
            resume_timeout: Duration::from_secs(15) + 4 * down_after,
            settle: (3 * down_after).max(Duration::from_millis(1500)),
            restore: true,
            restore_timeout: Duration::from_secs(30)
                + 3 * Duration::from_millis(cluster.options().failover_timeout_ms),
            healthy_timeout: Duration::from_secs(60),
        }
    }
}

/// What one trial measured.
#[derive(Clone, Debug)]
pub struct TrialOutcome {
    pub fault: Fault,
    pub label: String,
    pub old_master: SocketAddrV4,
    pub new_master: SocketAddrV4,
    pub epoch_before: u64,
    pub epoch_after: u64,
    /// Last acknowledged write before the fault → first acknowledged write after it.
    pub gap: Duration,
    /// Fault → the data plane's write port observed on the new master (polled, so coarse).
    pub switch_seen_after: Duration,
    pub acked: usize,
    /// Acknowledged writes missing on the final master.
    pub lost: Vec<String>,
    pub write_failures: u64,
    /// How much the old master's VIP counters grew after the switch was observed (packets and
    /// new connections): anything but 0 means a write sent through the VIP reached it.
    pub old_master_pkts_after_switch: u64,
    pub old_master_flows_after_switch: u64,
    /// Distinct write-port masters seen after the switch (more than one: a second failover).
    pub masters_after_switch: Vec<SocketAddrV4>,
    /// Per controller id: `+switch-master` events it logged during the trial.
    pub switches: BTreeMap<String, usize>,
    /// `+promoted-slave` events over all controllers during the trial.
    pub promotions: usize,
    /// `+convert-to-slave` events over all controllers during the trial: the returning old
    /// master claimed to be a master and was demoted.
    pub conversions: usize,
    /// `+switch-master` payloads, for messages.
    pub switch_lines: Vec<String>,
    /// Whether the old master came back and became a synced replica of the new one.
    pub restored: bool,
}

impl TrialOutcome {
    /// The failover happened exactly once: every controller that ran throughout logged one
    /// `+switch-master`, one promotion in total, the write port moved once.
    pub fn switched_once(&self) -> bool {
        self.switches.values().all(|n| *n == 1)
            && self.promotions == 1
            && self.masters_after_switch == [self.new_master]
    }

    pub fn header() -> String {
        format!(
            "{:<5} {:<9} {:<17} {:<17} {:>8} {:>9} {:>6} {:>5} {:>6} {:>7} {:>8}",
            "trial",
            "fault",
            "old master",
            "new master",
            "gap ms",
            "switch ms",
            "acked",
            "lost",
            "errors",
            "epoch",
            "old pkts"
        )
    }

    pub fn row(&self, n: usize) -> String {
        format!(
            "{:<5} {:<9} {:<17} {:<17} {:>8.1} {:>9.1} {:>6} {:>5} {:>6} {:>7} {:>8}",
            n,
            self.fault.to_string(),
            self.old_master.to_string(),
            self.new_master.to_string(),
            ms(self.gap),
            ms(self.switch_seen_after),
            self.acked,
            self.lost.len(),
            self.write_failures,
            format!("{}→{}", self.epoch_before, self.epoch_after),
            self.old_master_pkts_after_switch,
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// min / median / max of `values`.
pub fn summary(values: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut v = values.to_vec();
    v.sort();
    let median = match v.len() {
        0 => return None,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    };
    Some((v[0], median, v[v.len() - 1]))
}

/// The table of every outcome and the gap's min / median / max, as a printable string.
pub fn report(title: &str, outcomes: &[TrialOutcome]) -> String {
    let mut out = format!("\n== {title} ==\n{}\n", TrialOutcome::header());
    for (i, o) in outcomes.iter().enumerate() {
        out.push_str(&o.row(i + 1));
        out.push('\n');
    }
    let gaps: Vec<Duration> = outcomes.iter().map(|o| o.gap).collect();
    if let Some((min, median, max)) = summary(&gaps) {
        out.push_str(&format!(
            "gap over {} trials: min {:.1} ms, median {:.1} ms, max {:.1} ms\n",
            gaps.len(),
            ms(min),
            ms(median),
            ms(max)
        ));
    }
    let lost: Vec<usize> = outcomes.iter().map(|o| o.lost.len()).collect();
    out.push_str(&format!("lost acknowledged writes per trial: {lost:?}\n"));
    out
}

/// Runs one failover trial on `cluster`: waits until it is healthy, writes through the write
/// port, applies `options.fault` to the current master, and measures (see [`TrialOutcome`]).
/// Returns an error only when the trial could not be carried out or bounded waits ran out
/// (no switch, writes never resumed); correctness verdicts are in the outcome.
pub fn run_trial(cluster: &Cluster, options: &TrialOptions) -> Result<TrialOutcome> {
    let tb = cluster.testbed();
    let old_addr = cluster.wait_healthy(options.healthy_timeout)?;
    let old = tb
        .backend_at(old_addr)
        .context("the master is not a backend")?;
    let before = cluster.maps()?;
    // Controllers running now and throughout are the ones expected to log the switch.
    let watched: Vec<(usize, LogMark)> = cluster
        .controllers()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_running())
        .map(|(i, c)| (i, c.mark()))
        .collect();

    let writer = TrafficLoop::start(
        tb.client().path(),
        LoopOptions::writer(tb.vip_write(), &options.label),
    )?;
    let warm_from = Instant::now();
    writer
        .wait_acks_after(warm_from, 1, Duration::from_secs(10))
        .context("writes through the VIP fail before the fault")?;
    std::thread::sleep(options.warmup);

    options.fault.apply(cluster, old)?;
    // After the call: a killed process is reaped, a stopped one cannot run, a cut link carries
    // nothing, so no acknowledgement can come from the old master after this instant.
    let fault_at = Instant::now();

    let (switch_maps, switch_seen_at) = wait_until(
        "the write port to leave the failed master",
        options.resume_timeout,
        Duration::from_millis(50),
        || {
            let maps = cluster.maps()?;
            Ok((maps.master() != Some(old_addr)).then(|| (maps, Instant::now())))
        },
    )?;
    let new_addr = switch_maps.master().context("no master after the switch")?;
    let old_row = *switch_maps
        .row(old_addr)
        .context("the old master has no slot")?;
    writer
        .wait_acks_after(switch_seen_at, 20, options.resume_timeout)
        .context("writes did not resume after the switch")?;

    // Every controller that ran throughout must come to the same conclusion; meanwhile (and
    // until the end) the write port must not move again.
    let mut masters_after_switch = vec![new_addr];
    let mut watch_master = |maps: &MapsView| {
        if let Some(m) = maps.master()
            && !masters_after_switch.contains(&m)
        {
            masters_after_switch.push(m);
        }
    };
    wait_until(
        "every controller to log +switch-master",
        options.resume_timeout,
        Duration::from_millis(100),
        || {
            Ok(watched
                .iter()
                .all(|(i, mark)| {
                    cluster.controllers()[*i].count_events("+switch-master", *mark) > 0
                })
                .then_some(()))
        },
    )?;
    let settle_until = Instant::now() + options.settle;
    while Instant::now() < settle_until {
        watch_master(&cluster.maps()?);
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut restored = false;
    if options.restore {
        options.fault.undo(cluster, old)?;
        wait_until(
            &format!("{old_addr} to replicate from {new_addr}"),
            options.restore_timeout,
            Duration::from_millis(100),
            || {
                watch_master(&cluster.maps()?);
                Ok(matches!(
                    replication(old),
                    Ok(Replication::Replica { master, link_up: true }) if master == *new_addr.ip()
                )
                .then_some(()))
            },
        )?;
        restored = true;
        // A little more traffic with the old master back as a replica.
        writer.wait_acks_after(Instant::now(), 50, Duration::from_secs(10))?;
    }

    let after = cluster.maps()?;
    watch_master(&after);
    let record = writer.finish()?;
    let acked_keys = record.set_keys(&options.label);
    let final_master = tb
        .backend_at(after.master().context("no master at the end")?)
        .context("the final master is not a backend")?;
    let lost = missing_keys(final_master, acked_keys.clone())?;

    let (last_before, first_after) = record
        .longest_gap_between(fault_at, switch_seen_at)
        .context("no write was acknowledged around the fault")?;
    let old_after = after
        .row(old_addr)
        .context("the old master lost its slot")?;

    let mut switches = BTreeMap::new();
    let mut promotions = 0;
    let mut conversions = 0;
    let mut switch_lines = Vec::new();
    for (i, mark) in &watched {
        let c = &cluster.controllers()[*i];
        let events = c.events("+switch-master", *mark);
        switch_lines.extend(events.iter().map(|e| format!("{}: {}", c.id(), e.payload)));
        switches.insert(c.id().to_owned(), events.len());
        promotions += c.count_events("+promoted-slave", *mark);
        conversions += c.count_events("+convert-to-slave", *mark);
    }
    ensure!(
        after.epoch >= switch_maps.epoch,
        "the data plane's epoch went back"
    );
    Ok(TrialOutcome {
        fault: options.fault,
        label: options.label.clone(),
        old_master: old_addr,
        new_master: new_addr,
        epoch_before: before.epoch,
        epoch_after: after.epoch,
        gap: first_after - last_before,
        switch_seen_after: switch_seen_at - fault_at,
        acked: acked_keys.len(),
        lost,
        write_failures: record.failure_count,
        old_master_pkts_after_switch: old_after.pkts_in.saturating_sub(old_row.pkts_in),
        old_master_flows_after_switch: old_after.new_flows.saturating_sub(old_row.new_flows),
        masters_after_switch,
        switches,
        promotions,
        conversions,
        switch_lines,
        restored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_gap_is_not_ended_by_a_reply_in_flight_at_the_fault() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Every 3 ms until 30; the fault at 30; one reply still lands at 31; then nothing
        // until the new master answers at 2000, and every 3 ms after; a later hiccup at 5000.
        let mut times: Vec<u64> = (0..=30).step_by(3).collect();
        times.push(31);
        times.extend((2000..2030).step_by(3));
        times.extend([4000, 5000]);
        let record = LoopRecord {
            acks: times
                .iter()
                .enumerate()
                .map(|(i, &ms)| (i as u64, at(ms)))
                .collect(),
            failures: Vec::new(),
            failure_count: 0,
            requests: times.len() as u64,
            connects: 1,
        };
        assert_eq!(
            record.longest_gap_between(at(30), at(2010)),
            Some((at(31), at(2000)))
        );
        assert_eq!(record.longest_gap_between(at(5000), at(6000)), None);
    }
}
