//! Attacks on the Sentinel-compatible API of real controllers (three `redis-ha-ctl run`
//! processes over real redis-servers), and a hostile "redis" answering the probes: what one
//! client can take is bounded, and failovers and normal clients carry on meanwhile.
//!
//! Every attacker is a socket of this process opened inside the client namespace (or, for the
//! hostile backend, a listener in a backend's namespace); every loop is bounded in count and
//! time. CPU and memory bounds are loose: correctness, not speed.
//!
//! Run: `flock /tmp/rha-netns.lock cargo test --release -p redis-ha-tests --test api_limits --
//! --test-threads=1`.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::{Cluster, ClusterOptions, METRICS_PORT, in_netns, require_root, wait_until};

/// The limits the attacked controllers run with: small enough to reach within a test.
const MAXCLIENTS: usize = 24;
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const OUTPUT_LIMIT: usize = 1024 * 1024;
const MAX_SUBSCRIPTIONS: usize = 8;

fn limited_cluster() -> Result<Cluster> {
    require_root();
    Cluster::up(ClusterOptions {
        controller_toml: format!(
            "maxclients = {MAXCLIENTS}\n\
             client_idle_timeout_ms = {}\n\
             client_output_buffer_limit_normal_bytes = {OUTPUT_LIMIT}\n\
             client_max_subscriptions = {MAX_SUBSCRIPTIONS}\n",
            IDLE_TIMEOUT.as_millis()
        ),
        ..ClusterOptions::default()
    })
}

/// Runs `test`, printing the controllers' logs when it fails.
fn with(cluster: &Cluster, test: impl FnOnce() -> Result<()>) -> Result<()> {
    let outcome = test();
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(60));
    }
    outcome
}

/// A TCP connection to controller 1's API from the client namespace.
fn connect(cluster: &Cluster) -> Result<TcpStream> {
    let addr = cluster.controller(1).listen();
    let stream = in_netns(&cluster.testbed().client().path(), move || {
        TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
    })??;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Sends `request` and reads one reply's first chunk.
fn ask(stream: &mut TcpStream, request: &[u8]) -> Result<String> {
    stream.write_all(request)?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A normal client: a fresh connection that must get `+PONG`.
fn ping(cluster: &Cluster) -> Result<()> {
    let mut s = connect(cluster)?;
    let reply = ask(&mut s, b"PING\r\n")?;
    ensure!(reply == "+PONG\r\n", "PING answered {reply:?}");
    Ok(())
}

/// Whether the server closed `stream`: EOF or a reset within `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Result<bool> {
    stream.set_read_timeout(Some(within))?;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(false);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Controller 1's resident memory, in KiB.
fn rss_kib(cluster: &Cluster) -> Result<u64> {
    let pid = cluster.controller(1).pid().context("c1 does not run")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Controller 1's CPU time in user space so far: parsing is user time, while the kernel's
/// per-segment cost (receiving, acknowledging, the data plane's hooks on the veths) is
/// system time that any server pays per segment, whatever its parser.
fn cpu_time(cluster: &Cluster) -> Result<Duration> {
    let pid = cluster.controller(1).pid().context("c1 does not run")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("unexpected /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// `GET /metrics` of controller 1, from the LB namespace.
fn metrics(cluster: &Cluster) -> Result<String> {
    let addr = SocketAddrV4::new(*cluster.controller(1).listen().ip(), METRICS_PORT);
    redis_ha_tests::http_get(&cluster.testbed().lb().path(), addr, "/metrics")
}

fn closed_total(text: &str, reason: &str) -> f64 {
    let prefix = format!("redis_ha_api_clients_closed_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Pipelines `REDIS-HA STATUS` (each reply ~100 times its request) without ever reading,
/// until the server closes the connection or `budget` bytes or `deadline` pass; returns
/// whether it was closed.
fn flood_without_reading(mut s: TcpStream, budget: usize, deadline: Duration) -> Result<bool> {
    let chunk = b"REDIS-HA STATUS\r\n".repeat(256);
    let started = Instant::now();
    let mut sent = 0;
    s.set_write_timeout(Some(Duration::from_millis(500)))?;
    while sent < budget && started.elapsed() < deadline {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            // The server stopped reading us. Never read (reading would make this a slow
            // client, which the server rightly keeps serving): its close shows as a reset of
            // the next write, since our requests are left unread in its socket.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        }
    }
    closed_by_server(&mut s, Duration::from_secs(2))
}

/// (a) Clients that pipeline large replies and never read are stopped (the controller reads
/// no more of them once their unread replies pass a bound) and closed, as idle or at the
/// output limit; the controller's memory stays bounded, and a normal client is answered
/// throughout.
#[test]
fn clients_that_never_read_their_replies_are_stopped_and_closed() -> Result<()> {
    let cluster = limited_cluster()?;
    with(&cluster, || {
        let status_len = {
            let mut s = connect(&cluster)?;
            s.write_all(b"REDIS-HA STATUS\r\n")?;
            let mut buf = vec![0u8; 1 << 20];
            s.read(&mut buf)?
        };
        let rss_before = rss_kib(&cluster)?;
        let attackers = 8;
        let handles: Vec<_> = (0..attackers)
            .map(|_| {
                let s = connect(&cluster)?;
                Ok(thread::spawn(move || {
                    flood_without_reading(s, 64 << 20, Duration::from_secs(20))
                }))
            })
            .collect::<Result<_>>()?;
        let mut peak = rss_before;
        while !handles.iter().all(|h| h.is_finished()) {
            peak = peak.max(rss_kib(&cluster)?);
            ping(&cluster)?;
            thread::sleep(Duration::from_millis(100));
        }
        for h in handles {
            let closed = h
                .join()
                .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
            ensure!(
                closed,
                "a client that never read its replies (STATUS is {status_len} bytes) was \
                 still connected after 64 MiB of requests or 20 s"
            );
        }
        let m = metrics(&cluster)?;
        let closed = closed_total(&m, "output-buffer-normal") + closed_total(&m, "idle-timeout");
        ensure!(
            closed >= attackers as f64,
            "redis_ha_api_clients_closed_total for output-buffer-normal and idle-timeout is \
             {closed}, not the {attackers} attackers"
        );
        // Each attacker may hold its limit plus the reply that crossed it, plus the socket
        // buffers: far below what 64 MiB of requests would have produced.
        let grown_mib = peak.saturating_sub(rss_before) / 1024;
        println!("RSS before {rss_before} KiB, peak {peak} KiB, STATUS {status_len} bytes");
        ensure!(
            grown_mib < 8 * 4 + 64,
            "the controller grew by {grown_mib} MiB under {attackers} non-reading clients"
        );
        ping(&cluster)
    })
}

/// (b) `maxclients` connections are served, one more is told so and closed, and a client is
/// served again once they leave; an idle client is closed after the idle timeout, a
/// subscriber is not.
#[test]
fn maxclients_refuses_the_extra_client_and_idle_clients_are_closed() -> Result<()> {
    let cluster = limited_cluster()?;
    with(&cluster, || {
        // Earlier clients of the harness may still be closing.
        thread::sleep(Duration::from_millis(500));
        let mut held = Vec::new();
        for i in 0..MAXCLIENTS {
            let mut s = connect(&cluster)?;
            let reply = ask(&mut s, b"PING\r\n")?;
            ensure!(
                reply == "+PONG\r\n",
                "client {i} of {MAXCLIENTS}: {reply:?}"
            );
            held.push(s);
        }
        let mut extra = connect(&cluster)?;
        let mut refusal = String::new();
        extra.read_to_string(&mut refusal)?;
        ensure!(
            refusal == "-ERR max number of clients reached\r\n",
            "client {} was answered {refusal:?}",
            MAXCLIENTS + 1
        );
        drop(held);
        wait_until(
            "a client is served again once the others left",
            Duration::from_secs(5),
            Duration::from_millis(100),
            || Ok(ping(&cluster).is_ok().then_some(())),
        )?;

        let mut idle = connect(&cluster)?;
        ensure!(ask(&mut idle, b"PING\r\n")? == "+PONG\r\n");
        let mut subscriber = connect(&cluster)?;
        let confirmed = ask(&mut subscriber, b"SUBSCRIBE +switch-master\r\n")?;
        ensure!(confirmed.contains("subscribe"), "SUBSCRIBE: {confirmed:?}");
        let started = Instant::now();
        ensure!(
            closed_by_server(&mut idle, IDLE_TIMEOUT * 3)?,
            "an idle client was still connected after {:?} (client_idle_timeout_ms = {})",
            started.elapsed(),
            IDLE_TIMEOUT.as_millis()
        );
        ensure!(
            started.elapsed() >= IDLE_TIMEOUT - Duration::from_millis(500),
            "an idle client was closed after only {:?}",
            started.elapsed()
        );
        ensure!(
            !closed_by_server(&mut subscriber, Duration::from_millis(500))?,
            "a subscriber was closed for being idle"
        );
        let pong = ask(&mut subscriber, b"PING\r\n")?;
        ensure!(pong.contains("pong"), "the subscriber's PING: {pong:?}");
        let text = metrics(&cluster)?;
        ensure!(
            closed_total(&text, "maxclients") >= 1.0,
            "maxclients not counted"
        );
        ensure!(
            closed_total(&text, "idle-timeout") >= 1.0,
            "idle timeout not counted"
        );
        Ok(())
    })
}

/// A request of about 1 MB in 1000 arguments: `*1000`, then `$1000` arguments.
fn large_request() -> Vec<u8> {
    let mut wire = b"*1000\r\n$4\r\nECHO\r\n".to_vec();
    for _ in 0..999 {
        wire.extend_from_slice(b"$1000\r\n");
        wire.extend_from_slice(&[b'x'; 1000]);
        wire.extend_from_slice(b"\r\n");
    }
    wire
}

/// Sends the first `at_once` bytes of `wire`, then `trickled` more one byte per segment, for
/// at most `deadline`; returns how many were trickled.
fn trickle(
    mut s: TcpStream,
    wire: &[u8],
    at_once: usize,
    trickled: usize,
    deadline: Duration,
) -> Result<usize> {
    s.set_nodelay(true)?;
    s.write_all(&wire[..at_once])?;
    let started = Instant::now();
    let mut n = 0;
    while n < trickled && at_once + n < wire.len() && started.elapsed() < deadline {
        s.write_all(&wire[at_once + n..at_once + n + 1])?;
        n += 1;
        thread::sleep(Duration::from_micros(200));
    }
    Ok(n)
}

/// (c) A large request trickled one byte per segment costs the controller about what a
/// quiet controller spends anyway: each byte is parsed once, not the whole request again.
#[test]
fn a_request_trickled_one_byte_at_a_time_costs_bounded_cpu() -> Result<()> {
    require_root();
    // Default limits: the request fits in client_max_request_bytes (1 MiB).
    let cluster = Cluster::up(ClusterOptions::default())?;
    with(&cluster, || {
        let wire = large_request();
        let at_once = wire.len() - 20_000;
        let trickled = 8_000;

        let quiet_from = (Instant::now(), cpu_time(&cluster)?);
        thread::sleep(Duration::from_secs(3));
        let quiet = cpu_time(&cluster)? - quiet_from.1;
        let quiet_wall = quiet_from.0.elapsed();

        let s = connect(&cluster)?;
        let started = (Instant::now(), cpu_time(&cluster)?);
        let sent = trickle(s, &wire, at_once, trickled, Duration::from_secs(15))?;
        let wall = started.0.elapsed();
        let spent = cpu_time(&cluster)? - started.1;
        // What a quiet controller spends over the same time (probes, peers, the data plane).
        let baseline = quiet.mul_f64(wall.as_secs_f64() / quiet_wall.as_secs_f64());
        println!(
            "trickled {sent} bytes after {at_once} in {wall:?}: controller user CPU {spent:?} \
             (quiet: {baseline:?})"
        );
        ensure!(sent == trickled, "only {sent} bytes trickled");
        ensure!(
            // Measured on 2 busy cores: ~0.1 s with a parser that looks at each byte once,
            // ~0.8 s with one that parsed everything pending again on each read.
            spent < baseline + Duration::from_millis(350),
            "trickling {sent} bytes of a {} byte request cost the controller {spent:?} of user CPU \
             (quiet: {baseline:?})",
            wire.len()
        );
        ping(&cluster)
    })
}

/// (d) While non-reading clients, idle clients near `maxclients` and a trickler attack the
/// API of every controller, a `kill -9` of the master still leads to a promotion, and a
/// normal client gets the new master from the API.
#[test]
fn a_failover_completes_while_the_api_is_attacked() -> Result<()> {
    let cluster = limited_cluster()?;
    with(&cluster, || {
        let mut attacks = Vec::new();
        // Idle connections up to a few below maxclients: closed by the idle timeout.
        let mut idle = Vec::new();
        for _ in 0..MAXCLIENTS - 6 {
            idle.push(connect(&cluster)?);
        }
        for _ in 0..2 {
            let s = connect(&cluster)?;
            attacks.push(thread::spawn(move || {
                flood_without_reading(s, 64 << 20, Duration::from_secs(10)).map(|_| ())
            }));
        }
        let wire = large_request();
        let s = connect(&cluster)?;
        attacks.push(thread::spawn(move || {
            trickle(
                s,
                &wire,
                wire.len() - 20_000,
                19_000,
                Duration::from_secs(10),
            )
            .map(|_| ())
        }));
        thread::sleep(Duration::from_millis(500));

        let old = cluster.master()?;
        let old_addr = old.addr();
        let killed = Instant::now();
        old.kill()?;
        let new = wait_until(
            "a replica is promoted and the write port follows it",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || {
                let m = cluster.maps()?.master();
                Ok(m.filter(|&m| m != old_addr))
            },
        )?;
        println!(
            "promoted {new} {:?} after the kill, under attack",
            killed.elapsed()
        );
        let answer = wait_until(
            "a normal client gets the new master from the API",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let mut s = match connect(&cluster) {
                    Ok(s) => s,
                    Err(_) => return Ok(None),
                };
                let reply = ask(&mut s, b"SENTINEL get-master-addr-by-name mymaster\r\n")
                    .unwrap_or_default();
                Ok(reply.contains(&new.ip().to_string()).then_some(reply))
            },
        )?;
        println!("the API answers {answer:?}");
        for a in attacks {
            a.join()
                .map_err(|_| anyhow::anyhow!("an attacker panicked"))??;
        }
        drop(idle);
        Ok(())
    })
}

/// A stand-in for a compromised backend: answers `PING`, claims in `INFO` to be an up-to-date
/// replica of `master` with numbers that overflow (a lag whose milliseconds wrap to 384, an
/// offset beyond any Redis's), and `+OK` to anything else, which it records.
fn hostile_redis(
    listener: TcpListener,
    master: SocketAddrV4,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let info = format!(
        "# Server\r\nredis_version:7.0.0\r\nrun_id:{}\r\n\r\n# Replication\r\nrole:slave\r\n\
         master_host:{}\r\nmaster_port:{}\r\nmaster_link_status:up\r\n\
         master_last_io_seconds_ago:18446744073709552\r\nslave_repl_offset:18446744073709551615\r\n\
         slave_priority:100\r\n",
        "f".repeat(40),
        master.ip(),
        master.port()
    );
    listener.set_nonblocking(true).ok();
    let record = seen.clone();
    thread::spawn(move || {
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
            let Ok((conn, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            let (info, record, stop) = (info.clone(), record.clone(), stop.clone());
            thread::spawn(move || serve_hostile(conn, &info, &record, &stop));
        }
    });
    seen
}

fn serve_hostile(mut conn: TcpStream, info: &str, record: &Mutex<Vec<String>>, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        // The redis crate sends arrays of bulk strings; parse whole ones off the front.
        while let Some((words, used)) = parse_array(&pending) {
            pending.drain(..used);
            let command = words.join(" ").to_uppercase();
            let reply = if command.starts_with("PING") {
                "+PONG\r\n".to_owned()
            } else if command.starts_with("INFO") {
                format!("${}\r\n{info}\r\n", info.len())
            } else {
                "+OK\r\n".to_owned()
            };
            record.lock().unwrap().push(command);
            if conn.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }
}

fn parse_array(buf: &[u8]) -> Option<(Vec<String>, usize)> {
    let text = std::str::from_utf8(buf).ok()?;
    let mut lines = text.split("\r\n");
    let count: usize = lines.next()?.strip_prefix('*')?.parse().ok()?;
    let mut used = text.find("\r\n")? + 2;
    let mut words = Vec::new();
    for _ in 0..count {
        let len_line = lines.next()?;
        let word = lines.next()?;
        let len: usize = len_line.strip_prefix('$')?.parse().ok()?;
        if word.len() != len || used + len_line.len() + len + 4 > buf.len() {
            return None;
        }
        used += len_line.len() + 2 + len + 2;
        words.push(word.to_owned());
    }
    Some((words, used))
}

/// Item 9: a backend whose `INFO replication` overflows the lag and offset arithmetic fails
/// its probes, is kept out of the read pool, is never promoted, and is reported in the log.
#[test]
fn a_replica_sending_overflowing_info_is_not_selected() -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    with(&cluster, || {
        let tb = cluster.testbed();
        let master = tb.backend(1);
        let (honest, hostile) = (tb.backend(2), tb.backend(3));
        ensure!(
            cluster.master()?.addr() == master.addr(),
            "backend 1 is not the master"
        );
        let mark = cluster.controller(1).mark();
        hostile.kill()?;
        let addr = hostile.addr();
        let listener = in_netns(&hostile.netns().path(), move || TcpListener::bind(addr))??;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = hostile_redis(listener, master.addr(), stop.clone());
        let outcome = (|| -> Result<()> {
            wait_until(
                "the read pool has the honest replica and not the hostile one",
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    let pool = cluster.maps()?.readable();
                    Ok((pool.contains(&honest.addr()) && !pool.contains(&addr)).then_some(()))
                },
            )?;
            ensure!(
                seen.lock().unwrap().iter().any(|c| c.starts_with("INFO")),
                "the controllers never probed the hostile server"
            );
            master.kill()?;
            let promoted = wait_until(
                "a replica is promoted",
                Duration::from_secs(15),
                Duration::from_millis(50),
                || Ok(cluster.maps()?.master().filter(|&m| m != master.addr())),
            )?;
            ensure!(
                promoted == honest.addr(),
                "{promoted} was promoted, not the honest replica {}",
                honest.addr()
            );
            let commands = seen.lock().unwrap().clone();
            if let Some(c) = commands.iter().find(|c| c.starts_with("REPLICAOF NO")) {
                bail!("the hostile server was told {c:?}");
            }
            // Reported once, naming the field and the value.
            cluster.controller(1).wait_for_line(
                &["master_last_io_seconds_ago:18446744073709552 is too large"],
                mark,
                Duration::from_secs(5),
            )?;
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        outcome
    })
}

/// A client subscribing to ever more channels (each one a sender's list to walk on every
/// event) gets its first `client_max_subscriptions` and an error for each one past them,
/// counted in the metrics; its subscriptions still deliver, and other clients are answered.
#[test]
fn subscriptions_past_the_cap_are_refused_and_counted() -> Result<()> {
    let cluster = limited_cluster()?;
    with(&cluster, || {
        let asked = 3 * MAX_SUBSCRIPTIONS;
        let mut request = format!("*{}\r\n$9\r\nSUBSCRIBE\r\n", asked + 1);
        for i in 0..asked {
            let name = format!("channel-{i:03}");
            request.push_str(&format!("${}\r\n{name}\r\n", name.len()));
        }
        let mut s = connect(&cluster)?;
        s.write_all(request.as_bytes())?;
        // Read until every name got its answer (a confirmation or an error).
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        while got.matches("channel-").count() + got.matches("-ERR").count() < asked
            && started.elapsed() < Duration::from_secs(10)
        {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("closed after {got:?}");
            }
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let confirmed = got.matches("channel-").count();
        let refused = got.matches("max number of subscriptions reached").count();
        ensure!(
            confirmed == MAX_SUBSCRIPTIONS && refused == asked - MAX_SUBSCRIPTIONS,
            "{confirmed} subscriptions confirmed and {refused} refused of {asked} asked, \
             the cap being {MAX_SUBSCRIPTIONS}: {got:?}"
        );
        let counted = metrics(&cluster)?
            .lines()
            .find_map(|l| l.strip_prefix("redis_ha_api_subscriptions_refused_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        ensure!(
            counted == (asked - MAX_SUBSCRIPTIONS) as f64,
            "redis_ha_api_subscriptions_refused_total is {counted}"
        );
        ping(&cluster)?;
        let pong = ask(&mut s, b"PING\r\n")?;
        ensure!(pong.contains("pong"), "the subscriber's PING: {pong:?}");
        Ok(())
    })
}
