//! The pub/sub output-buffer limits of a real controller's Sentinel-compatible API (Redis's
//! `client-output-buffer-limit pubsub`), with events made for real: a replica frozen
//! (SIGSTOP, `+sdown`) and thawed (`-sdown`).
//!
//! A subscriber that never reads is closed at once past the hard limit, or after
//! `soft_seconds` over the soft one; one that falls behind for a burst and catches up in time
//! is kept; a well-behaved one receives every event throughout.
//!
//! Events are a hundred bytes; what makes a few of them exceed the limits is what a hostile
//! subscriber can do: many long patterns, each matching every event, each delivered its own
//! copy (as Redis does). The subscribers' receive buffers are small, so that the kernel holds
//! little of what the controller sends and the controller's own buffer is what grows.
//!
//! Run: `flock /tmp/rha-netns.lock cargo test --release -p redis-ha-tests --test
//! api_pubsub_limits -- --test-threads=1`.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::{Cluster, ClusterOptions, METRICS_PORT, in_netns, require_root, wait_until};

const HARD: usize = 16 * 1024 * 1024;
/// The smallest the controller allows.
const SOFT: usize = 64 * 1024;
const SOFT_SECONDS: u64 = 4;
/// Each pattern is this many `*` (plus its index, to keep them distinct): one event's copy
/// per pattern is a little over this many bytes.
const PATTERN_LEN: usize = 8192;
/// ~25 MB per event: past the hard limit at the first event, whatever the kernel holds.
const HARD_PATTERNS: usize = 3000;
/// ~5.3 MB per event: past the soft limit at the first event even after the kernel took its
/// part (a socket's send buffer grows to 4 MiB), below the hard one for the one or two events
/// one frozen replica makes.
const SOFT_PATTERNS: usize = 640;
/// The subscribers' receive buffer (the kernel doubles it).
const RCVBUF: usize = 4096;

fn limited_cluster() -> Result<Cluster> {
    require_root();
    Cluster::up(ClusterOptions {
        controller_toml: format!(
            "client_output_buffer_limit_pubsub_hard_bytes = {HARD}\n\
             client_output_buffer_limit_pubsub_soft_bytes = {SOFT}\n\
             client_output_buffer_limit_pubsub_soft_seconds = {SOFT_SECONDS}\n\
             client_max_subscriptions = {HARD_PATTERNS}\n"
        ),
        ..ClusterOptions::default()
    })
}

/// A connection to controller 1's API from the client namespace, with a small receive buffer
/// set before the handshake (so the window never grows past it).
fn connect(cluster: &Cluster) -> Result<TcpStream> {
    let addr = SocketAddr::V4(cluster.controller(1).listen());
    let stream = in_netns(&cluster.testbed().client().path(), move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_recv_buffer_size(RCVBUF)?;
        s.connect_timeout(&addr.into(), Duration::from_secs(2))?;
        std::io::Result::Ok(TcpStream::from(s))
    })??;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// Reads exactly `want`'s length and checks it is `want`.
fn expect(s: &mut TcpStream, want: &[u8]) -> Result<()> {
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got)?;
    ensure!(
        got == want,
        "expected {:?}, got {:?}",
        String::from_utf8_lossy(&want[..want.len().min(80)]),
        String::from_utf8_lossy(&got[..got.len().min(80)])
    );
    Ok(())
}

/// `PSUBSCRIBE`s `count` long patterns that all match every event, one at a time, reading each
/// confirmation (which echoes the pattern).
fn psubscribe(s: &mut TcpStream, count: usize) -> Result<()> {
    for i in 0..count {
        let pattern = "*".repeat(PATTERN_LEN + i);
        let n = pattern.len();
        s.write_all(format!("*2\r\n$10\r\nPSUBSCRIBE\r\n${n}\r\n{pattern}\r\n").as_bytes())?;
        let confirmation = format!(
            "*3\r\n$10\r\npsubscribe\r\n${n}\r\n{pattern}\r\n:{}\r\n",
            i + 1
        );
        expect(s, confirmation.as_bytes()).with_context(|| format!("pattern {i}"))?;
    }
    Ok(())
}

/// Reads `s` on a thread until `stop` (or two minutes): everything it received, and whether
/// the server closed it.
fn reader(mut s: TcpStream, stop: Arc<AtomicBool>) -> thread::JoinHandle<Result<(Vec<u8>, bool)>> {
    thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
            match s.read(&mut buf) {
                Ok(0) => return Ok((got, true)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok((got, true)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok((got, false))
    })
}

/// Whether the server closed `s` (EOF or reset) within `within`, reading what it had sent.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> Result<bool> {
    let deadline = Instant::now() + within;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0u8; 256 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn pubsub_closed(cluster: &Cluster) -> Result<u64> {
    let addr = SocketAddrV4::new(*cluster.controller(1).listen().ip(), METRICS_PORT);
    let text = redis_ha_tests::http_get(&cluster.testbed().lb().path(), addr, "/metrics")?;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix("redis_ha_api_clients_closed_total{reason=\"output-buffer-pubsub\"} ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Before: the limits had unit tests only. Now, against a real controller and real events:
/// past the hard limit → closed at the first event; over the soft limit for `soft_seconds` →
/// closed; over it for a burst that is read in time → kept, and it gets the next events; a
/// subscriber that reads gets every event throughout.
#[test]
fn subscribers_that_do_not_read_are_closed_by_the_pubsub_limits() -> Result<()> {
    let cluster = limited_cluster()?;
    let outcome = limits(&cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(40));
    }
    outcome
}

fn limits(cluster: &Cluster) -> Result<()> {
    let master = cluster.wait_healthy(Duration::from_secs(30))?;
    let replica = cluster
        .testbed()
        .backends()
        .iter()
        .find(|b| b.addr() != master)
        .context("no replica")?;

    let mut well_behaved = connect(cluster)?;
    well_behaved.write_all(b"SUBSCRIBE +sdown -sdown\r\n")?;
    expect(
        &mut well_behaved,
        b"*3\r\n$9\r\nsubscribe\r\n$6\r\n+sdown\r\n:1\r\n",
    )?;
    expect(
        &mut well_behaved,
        b"*3\r\n$9\r\nsubscribe\r\n$6\r\n-sdown\r\n:2\r\n",
    )?;
    let mut hard = connect(cluster)?;
    psubscribe(&mut hard, HARD_PATTERNS)?;
    let mut soft_never = connect(cluster)?;
    psubscribe(&mut soft_never, SOFT_PATTERNS)?;
    let mut soft_burst = connect(cluster)?;
    psubscribe(&mut soft_burst, SOFT_PATTERNS)?;
    let closed_before = pubsub_closed(cluster)?;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = reader(well_behaved, stop.clone());
    let mark = cluster.controller(1).mark();
    replica.stop()?;
    let result = (|| {
        cluster
            .controller(1)
            .wait_for_event("+sdown", mark, Duration::from_secs(10))?;
        // The hard limit: closed at the event, long before the soft period could end. Seen
        // first in the metrics: reading the subscriber would make it one that reads.
        let closed = wait_until(
            "the hard-limit close",
            Duration::from_secs(2),
            Duration::from_millis(50),
            || Ok(Some(pubsub_closed(cluster)?).filter(|&n| n > closed_before)),
        )?;
        ensure!(
            closed == closed_before + 1,
            "right after the event, more than the hard-limit subscriber was closed"
        );
        ensure!(
            closed_by_server(&mut hard, Duration::from_secs(2))?,
            "the subscriber {} bytes behind (hard limit {HARD}) is still connected",
            HARD_PATTERNS * PATTERN_LEN
        );
        // The burst: read a second later, well within the soft period.
        thread::sleep(Duration::from_secs(1));
        let burst = reader(soft_burst.try_clone()?, stop.clone());
        // The soft limit: over it for longer than its period, never reading.
        wait_until(
            "the soft-limit close",
            Duration::from_secs(SOFT_SECONDS + 4),
            Duration::from_millis(100),
            || Ok((pubsub_closed(cluster)? > closed_before + 1).then_some(())),
        )?;
        ensure!(
            closed_by_server(&mut soft_never, Duration::from_secs(5))?,
            "a subscriber over the soft limit ({SOFT} bytes) for more than {SOFT_SECONDS} s \
             is still connected"
        );
        Ok(burst)
    })();
    replica.resume()?;
    let burst = result?;
    cluster
        .controller(1)
        .wait_for_event("-sdown", mark, Duration::from_secs(10))?;
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (seen, watcher_closed) = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))??;
    let (burst_seen, burst_closed) = burst
        .join()
        .map_err(|_| anyhow::anyhow!("the burst reader panicked"))??;
    drop(soft_burst);

    ensure!(!watcher_closed, "the well-behaved subscriber was closed");
    ensure!(
        !burst_closed,
        "the subscriber that caught up in time was closed"
    );
    let c1 = cluster.controller(1);
    for event in ["+sdown", "-sdown"] {
        let published = c1.count_events(event, mark);
        let needle = format!("message\r\n$6\r\n{event}\r\n");
        let received = count(&seen, needle.as_bytes());
        ensure!(
            published > 0 && received == published,
            "c1 published {published} {event}, the well-behaved subscriber got {received}"
        );
        // Kept, it receives the thaw's events too, one copy per pattern.
        let copies = count(&burst_seen, format!("\r\n$6\r\n{event}\r\n").as_bytes());
        ensure!(
            copies == published * SOFT_PATTERNS,
            "the burst subscriber got {copies} copies of {event}, expected {}",
            published * SOFT_PATTERNS
        );
    }
    let closed = pubsub_closed(cluster)?;
    if closed != closed_before + 2 {
        bail!(
            "{} subscribers were closed at the output limits, not 2",
            closed - closed_before
        );
    }
    Ok(())
}
