//! `cargo xtask demo`: the point of the project in a minute — a testbed with the data plane and
//! three controllers, a write through the write port landing on the master, reads spread over
//! the replicas, then `kill -9` of the master: the controllers' Sentinel events as they happen,
//! how long writes through the VIP were refused, the promoted replica answering the write port
//! with the data written before the crash, and the maps before and after.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::cluster::{LogMark, node_ip};
use redis_ha_tests::testbed::{REDIS_PORT, SERVICE_NAME, VIP, namespace_prefix};
use redis_ha_tests::{Backend, Cluster, ClusterOptions, Controller, TestbedOptions, XdpMode};

use crate::build_load::{build, run_shown};
use crate::testbed::{TAG, print_backends};

/// Fresh connections made to the read port: enough to see the spread over two replicas.
const READ_CONNECTIONS: usize = 8;
/// The key written before the failover, read back after it.
const KEY: &str = "demo:greeting";
const VALUE: &str = "hello from redis-ha";
/// The key the retried write sets after the kill.
const KEY_AFTER: &str = "demo:after-failover";
/// How often the write is retried after the kill (start to start).
const RETRY_EVERY: Duration = Duration::from_millis(20);
/// Bound for one write attempt: a dead backend refuses at once, but a SYN lost while the
/// write port moves would otherwise wait for TCP's retransmission.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after the kill a write may take to be acknowledged again before the demo fails.
const WRITE_BOUND: Duration = Duration::from_secs(30);
/// How long, once writes are back, every controller may take to log `+switch-master` (and
/// the leader `+failover-end`).
const SETTLE_BOUND: Duration = Duration::from_secs(15);
/// Bound for one `redis-ha-ctl status` or `maps`.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

pub fn demo(keep: bool, xdp_mode: XdpMode) -> Result<()> {
    // Build before anything exists, so a compile error leaves nothing behind.
    let ctl = ctl()?;
    println!(
        "==> building testbed {TAG} (namespaces {}*) with three controllers",
        namespace_prefix(TAG)
    );
    let cluster = Cluster::up(ClusterOptions {
        testbed: TestbedOptions {
            tag: TAG.to_owned(),
            backends: 3,
            xdp_mode,
            bridged_backends: false,
        },
        ..ClusterOptions::default()
    })
    .with_context(|| {
        format!(
            "starting the testbed and its controllers failed: if c1 could not attach the data \
             plane in {xdp_mode} mode, try `cargo xtask demo --xdp-mode {}`",
            other_mode(xdp_mode)
        )
    })?;
    print_layout(&cluster);
    let outcome = steps(&cluster, &ctl);
    if outcome.is_err() {
        // The logs go with the testbed (unless kept): copy them where they outlive it.
        eprintln!("{}", cluster.log_tails(30));
        match cluster.save_logs() {
            Ok(dir) => eprintln!("controller logs saved in {}", dir.display()),
            Err(e) => eprintln!("saving the controller logs: {e:#}"),
        }
    }
    if keep {
        let usage = usage(&cluster, &ctl);
        cluster.keep();
        println!("{usage}");
    } else {
        drop(cluster);
        println!("==> testbed removed (keep it next time with --keep)");
    }
    outcome
}

/// The redis-ha-ctl the controllers run: `$REDIS_HA_CTL` if set, else a fresh release build.
fn ctl() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("REDIS_HA_CTL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        println!("==> using REDIS_HA_CTL={}", path.display());
        return Ok(path);
    }
    let path = build()?;
    // The harness starts the controllers with the newest of target/{release,debug}: make it
    // the binary just built, even if a debug build is newer.
    // SAFETY: no other thread exists yet in this process, so nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("REDIS_HA_CTL", &path) };
    Ok(path)
}

fn other_mode(mode: XdpMode) -> &'static str {
    if mode == XdpMode::Skb {
        "native"
    } else {
        "skb"
    }
}

fn print_layout(cluster: &Cluster) {
    let tb = cluster.testbed();
    println!("    client  {} (198.18.0.2)", tb.client().name());
    println!(
        "    lb      {} (VIP {VIP}, xdp_mode = \"{}\" on {})",
        tb.lb().name(),
        tb.xdp_mode(),
        tb.lb_interfaces().join(" ")
    );
    print_backends(tb.backends());
    for c in cluster.controllers() {
        let role = if c.netns_name() == tb.lb().name() {
            ", owns the data plane"
        } else {
            ""
        };
        println!(
            "    {:<7} {} (peer and Sentinel port {}{role})",
            c.id(),
            c.netns_name(),
            c.listen()
        );
    }
    let o = cluster.options();
    println!(
        "    quorum {}, down_after_ms {}, probe_interval_ms {}; configs and logs in {}",
        o.quorum,
        o.down_after_ms,
        o.probe_interval_ms,
        cluster
            .controller(1)
            .config_path()
            .parent()
            .map_or_else(String::new, |d| d.display().to_string())
    );
}

fn steps(cluster: &Cluster, ctl: &Path) -> Result<()> {
    let tb = cluster.testbed();
    let vip_hint = || {
        format!(
            "no good answer through the VIP: is the program attached (`bpftool net show` in {})? \
             Compare with `cargo xtask demo --xdp-mode {}`",
            tb.lb().name(),
            other_mode(tb.xdp_mode())
        )
    };

    println!(
        "==> step 1/5: a write through the write port {}",
        tb.vip_write()
    );
    let reply = client_cli(cluster, tb.vip_write(), &["SET", KEY, VALUE])
        .with_context(vip_hint)
        .context("step 1/5 (SET through the write port) failed")?;
    if reply.trim() != "OK" {
        bail!("step 1/5: SET through the write port answered {reply:?}, not OK");
    }
    let (master, role) = backend_behind(cluster, tb.vip_write())
        .with_context(vip_hint)
        .context("step 1/5 (which backend answered the write port) failed")?;
    println!(
        "    the write port reached r{} {} ({role})",
        master.index(),
        master.addr()
    );
    if role != "master" {
        bail!(
            "step 1/5: the write port reached {}, a {role}, not the master",
            master.addr()
        );
    }
    let stored = client_cli(cluster, master.addr(), &["GET", KEY])
        .context("step 1/5 (reading the key back from the master directly) failed")?;
    if stored.trim() != VALUE {
        bail!("step 1/5: the master holds {stored:?} instead of the value written");
    }

    println!(
        "==> step 2/5: {READ_CONNECTIONS} fresh connections to the read port {}",
        tb.vip_read()
    );
    let mut spread: BTreeMap<SocketAddrV4, usize> = BTreeMap::new();
    for n in 1..=READ_CONNECTIONS {
        // One redis-cli per connection: each is a new source port, so a new hash.
        let (backend, role) = backend_behind(cluster, tb.vip_read())
            .with_context(vip_hint)
            .with_context(|| format!("step 2/5 (read connection {n}) failed"))?;
        println!(
            "    connection {n} reached r{} {} ({role})",
            backend.index(),
            backend.addr()
        );
        *spread.entry(backend.addr()).or_default() += 1;
    }
    let summary: Vec<String> = spread
        .iter()
        .map(|(addr, n)| format!("{addr}: {n}"))
        .collect();
    println!("    spread: {}", summary.join(", "));

    println!("==> step 3/5: what the controllers see, and the data plane's maps");
    let mut status = tb.lb().command(ctl);
    status
        .args(["status", "--config"])
        .arg(cluster.controller(1).config_path());
    run_shown(&mut status, CTL_TIMEOUT).context("step 3/5 (redis-ha-ctl status) failed")?;
    show_maps(cluster, ctl).context("step 3/5 (redis-ha-ctl maps) failed")?;

    println!(
        "==> step 4/5: the failover: kill -9 the master's redis-server, keep writing through {}",
        tb.vip_write()
    );
    let old_master = master;
    failover(cluster, old_master).context("step 4/5 (the failover) failed")?;

    println!("==> step 5/5: the maps again: the write port points at the new master");
    show_maps(cluster, ctl).context("step 5/5 (redis-ha-ctl maps) failed")?;
    let after = cluster.maps().context("step 5/5 (reading the maps)")?;
    match after.master() {
        Some(addr) if addr != old_master.addr() => Ok(()),
        other => bail!(
            "step 5/5: the write port points at {other:?}, still not away from {}",
            old_master.addr()
        ),
    }
}

/// Step 4: kill the master, retry a write through the VIP until it is acknowledged while
/// printing the controllers' events as they log them, then check who answers the write port.
fn failover(cluster: &Cluster, old_master: &Backend) -> Result<()> {
    let tb = cluster.testbed();
    let controllers = cluster.controllers();
    let marks: Vec<LogMark> = controllers.iter().map(|c| c.mark()).collect();
    let pid = old_master
        .pid()
        .context("the master's redis-server does not run")?;
    println!(
        "$ kill -9 {pid}    # redis-server of r{} {} in {}, the master",
        old_master.index(),
        old_master.addr(),
        old_master.netns().name()
    );
    let mut timeline = Timeline {
        killed_wall: SystemTime::now(),
        killed: Instant::now(),
        printed: vec![0; controllers.len()],
        pending: Vec::new(),
    };
    old_master.kill()?;

    let vip = tb.vip_write();
    let value = "written after the crash";
    println!(
        "$ until ip netns exec {} redis-cli -e -h {} -p {} SET {KEY_AFTER} '{value}'; do sleep 0.02; done",
        tb.client().name(),
        vip.ip(),
        vip.port()
    );
    println!(
        "    meanwhile the controllers' Sentinel events, from their logs (live: `redis-ha-ctl \
         events --follow`), in seconds since the kill:"
    );

    let mut failed = 0usize;
    let mut first_error: Option<String> = None;
    let mut last_refused: Option<Duration> = None;
    let mut acked: Option<(Duration, Duration)> = None;
    let settled = loop {
        let round = Instant::now();
        let events: Vec<Vec<Event>> = controllers
            .iter()
            .zip(&marks)
            .map(|(c, mark)| events_in(&c.log_since(*mark)))
            .collect();
        timeline.add(controllers, &events);
        timeline.print(false);
        if let Some((_, answered)) = acked {
            let switched = events
                .iter()
                .all(|es| es.iter().any(|e| e.name == "+switch-master"));
            let ended = events
                .iter()
                .flatten()
                .any(|e| e.name.starts_with("+failover-end"));
            if switched && ended {
                break true;
            }
            if timeline.killed.elapsed() > answered + SETTLE_BOUND {
                if !switched {
                    timeline.print(true);
                    bail!(
                        "writes were back, but within {SETTLE_BOUND:?} not every controller \
                         logged +switch-master"
                    );
                }
                break false;
            }
        } else {
            if timeline.killed.elapsed() > WRITE_BOUND {
                timeline.print(true);
                bail!(
                    "no write through the write port was acknowledged within {WRITE_BOUND:?} of \
                     the kill ({failed} attempts failed; the first: {})",
                    first_error.as_deref().unwrap_or("none")
                );
            }
            let sent = timeline.killed.elapsed();
            let reply =
                tb.client()
                    .redis_cli_within(vip, &["SET", KEY_AFTER, value], ATTEMPT_TIMEOUT);
            match reply {
                Ok(reply) if reply.trim() == "OK" => {
                    let answered = timeline.killed.elapsed();
                    timeline.pending.push((
                        answered.as_secs_f64(),
                        format!(
                            "client SET through {vip}: OK, writes are back ({failed} attempts \
                             failed before)"
                        ),
                    ));
                    acked = Some((sent, answered));
                }
                other => {
                    failed += 1;
                    last_refused = Some(sent);
                    first_error.get_or_insert_with(|| match other {
                        Ok(reply) => format!("the reply {:?}", reply.trim()),
                        Err(e) => command_error(&format!("{e:#}")),
                    });
                }
            }
        }
        // One attempt every RETRY_EVERY from start to start (a redis-cli run itself takes
        // some of it).
        std::thread::sleep(RETRY_EVERY.saturating_sub(round.elapsed()));
    };
    timeline.print(true);
    let (sent, answered) = acked.expect("the loop ends only once a write was acknowledged");
    if !settled {
        println!("    (no +failover-end within {SETTLE_BOUND:?} of the write coming back)");
    }
    println!(
        "    write gap: {:.0} ms from the kill to the first acknowledged SET through the VIP \
         (sent at {:+.3}s)\n    \
         {failed} attempts failed before it (the last sent at {}), the first with: {}\n    \
         most of the gap is down_after_ms = {}, the silence after which a controller calls a \
         master down",
        answered.as_secs_f64() * 1000.0,
        sent.as_secs_f64(),
        last_refused.map_or_else(|| "-".to_owned(), |t| format!("{:+.3}s", t.as_secs_f64())),
        first_error.as_deref().unwrap_or("-"),
        cluster.options().down_after_ms,
    );

    let (new_master, role) = backend_behind(cluster, vip)?;
    println!(
        "    the write port now reaches r{} {} ({role}), a replica until the failover",
        new_master.index(),
        new_master.addr()
    );
    if new_master.addr() == old_master.addr() || role != "master" {
        bail!(
            "after the failover the write port reaches {} ({role}), not a promoted replica",
            new_master.addr()
        );
    }
    let stored = client_cli(cluster, vip, &["GET", KEY])?;
    if stored.trim() != VALUE {
        bail!("the key written before the crash reads {stored:?} through the VIP, not {VALUE:?}");
    }
    println!("    the write acknowledged before the crash is still there");
    Ok(())
}

/// What happened after the kill, printed in time order: each controller's events (at their
/// log timestamps) and the client's acknowledged write.
struct Timeline {
    killed_wall: SystemTime,
    killed: Instant,
    /// Per controller, how many of its events are already in `pending` or printed.
    printed: Vec<usize>,
    /// Not printed yet: (seconds since the kill, who and what).
    pending: Vec<(f64, String)>,
}

impl Timeline {
    /// How long an entry waits before it is printed, so that a controller's line logged a
    /// little later still comes out in time order.
    const HOLD: f64 = 0.2;

    fn add(&mut self, controllers: &[Controller], events: &[Vec<Event>]) {
        for ((c, events), printed) in controllers.iter().zip(events).zip(&mut self.printed) {
            for e in &events[(*printed).min(events.len())..] {
                let at = e.at.map_or_else(
                    || self.killed.elapsed().as_secs_f64(),
                    |t| seconds_between(self.killed_wall, t),
                );
                self.pending.push((at, format!("{:<6} {}", c.id(), e.text)));
            }
            *printed = events.len();
        }
    }

    /// Prints the pending entries older than [`Self::HOLD`], or all with `flush`.
    fn print(&mut self, flush: bool) {
        self.pending.sort_by(|a, b| a.0.total_cmp(&b.0));
        let now = self.killed.elapsed().as_secs_f64();
        let ready = self
            .pending
            .iter()
            .take_while(|(at, _)| flush || *at <= now - Self::HOLD)
            .count();
        for (at, what) in self.pending.drain(..ready) {
            println!("    {at:>+7.3}s  {what}");
        }
    }
}

/// The gist of a failed `redis-cli` run: what it printed, without the command line.
fn command_error(message: &str) -> String {
    let last = last_line(message);
    match last.rsplit_once("): ") {
        Some((_, said)) if !said.is_empty() => said.to_owned(),
        _ => last,
    }
}

/// `redis-ha-ctl maps --config <c1's config>` in the LB namespace, shown.
fn show_maps(cluster: &Cluster, ctl: &Path) -> Result<()> {
    let mut maps = cluster.testbed().lb().command(ctl);
    maps.args(["maps", "--config"])
        .arg(cluster.controller(1).config_path())
        // The connection table's entries would be the retried writes' short-lived connections.
        .args(["--flows", "0"]);
    run_shown(&mut maps, CTL_TIMEOUT)?;
    Ok(())
}

/// `redis-cli` from the client namespace, echoed as a reader would type it.
fn client_cli(cluster: &Cluster, addr: SocketAddrV4, args: &[&str]) -> Result<String> {
    let client = cluster.testbed().client();
    println!(
        "$ ip netns exec {} redis-cli -h {} -p {} {}",
        client.name(),
        addr.ip(),
        addr.port(),
        args.join(" ")
    );
    let reply = client.redis_cli(addr, args)?;
    println!("{}", reply.trim_end());
    Ok(reply)
}

/// Which backend answers a new connection to `addr` (by its `bind` setting), and its role.
fn backend_behind(cluster: &Cluster, addr: SocketAddrV4) -> Result<(&Backend, String)> {
    let tb = cluster.testbed();
    let reply = tb.client().redis_cli(addr, &["CONFIG", "GET", "bind"])?;
    // `bind` then its value, e.g. `198.18.1.12 127.0.0.1`: the first address names the backend.
    let ip: Ipv4Addr = reply
        .lines()
        .nth(1)
        .and_then(|value| value.split_whitespace().next())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("unexpected CONFIG GET bind reply {reply:?}"))?;
    let backend = tb
        .backend_at(SocketAddrV4::new(ip, REDIS_PORT))
        .with_context(|| format!("{ip} is no backend of the testbed"))?;
    let role = match backend.redis_cli(&["ROLE"])?.lines().next() {
        Some("slave") => "replica".to_owned(),
        Some(role) => role.to_owned(),
        None => "unknown role".to_owned(),
    };
    Ok((backend, role))
}

/// One `redis_ha::event` line of a controller's log.
struct Event {
    /// When the controller logged it (its timestamp), if readable.
    at: Option<SystemTime>,
    /// Sentinel's event name, e.g. `+switch-master`.
    name: String,
    /// Name and payload, e.g. `+switch-master mymaster 198.18.1.11 6379 198.18.1.12 6379`.
    text: String,
}

/// The events among the complete lines of `log`: the last line may still be being written.
fn events_in(log: &str) -> Vec<Event> {
    let complete = log.rfind('\n').map_or("", |end| &log[..end]);
    complete
        .lines()
        .filter_map(|line| {
            // `<RFC 3339 time>  INFO redis_ha::event: +sdown ... service=mymaster event="+sdown"`
            let (head, rest) = line.split_once("redis_ha::event: ")?;
            let text = rest.split(" service=").next().unwrap_or(rest).trim_end();
            Some(Event {
                at: head.split_whitespace().next().and_then(parse_utc),
                name: text.split(' ').next().unwrap_or(text).to_owned(),
                text: text.to_owned(),
            })
        })
        .collect()
}

/// `t - from` in seconds, negative if `t` is earlier.
fn seconds_between(from: SystemTime, t: SystemTime) -> f64 {
    match t.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// `2026-11-25T21:01:00.250885Z` (the controllers' log timestamps, always UTC).
fn parse_utc(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let hours: u64 = t.next()?.parse().ok()?;
    let minutes: u64 = t.next()?.parse().ok()?;
    let seconds: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let whole = days * 86_400 + hours * 3600 + minutes * 60;
    Some(UNIX_EPOCH + Duration::from_secs(whole) + Duration::try_from_secs_f64(seconds).ok()?)
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(text)
        .trim()
        .to_owned()
}

/// How to use the cluster `--keep` leaves running.
fn usage(cluster: &Cluster, ctl: &Path) -> String {
    let tb = cluster.testbed();
    let client = format!("ip netns exec {}", tb.client().name());
    let enter = |ns: &str| format!("nsenter --net=/var/run/netns/{ns}");
    let c1 = cluster.controller(1);
    let mut lines = vec![
        format!("==> testbed {TAG} is up, with its three controllers (the old master stays dead)"),
        format!("    write port (master):   {client} redis-cli -h {VIP} -p 6380"),
        format!("    read port (replicas):  {client} redis-cli -h {VIP} -p 6381"),
        format!(
            "    Sentinel API of c2:    {client} redis-cli -h {} -p 26379 SENTINEL get-master-addr-by-name {SERVICE_NAME}",
            node_ip(2)
        ),
    ];
    for c in cluster.controllers() {
        lines.push(format!(
            "    {} status / events:    {} {} status --config {}   (events --follow)",
            c.id(),
            enter(c.netns_name()),
            ctl.display(),
            c.config_path().display()
        ));
    }
    lines.push(format!(
        "    the data plane's maps: {} {} maps --config {}",
        enter(c1.netns_name()),
        ctl.display(),
        c1.config_path().display()
    ));
    if let Some(dir) = c1.log_path().parent() {
        lines.push(format!(
            "    controller logs:       {}/*.log",
            dir.display()
        ));
    }
    lines.push("    tear it down:          cargo xtask testbed down".to_owned());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_timestamps_and_events() {
        let t = parse_utc("2026-11-25T21:01:00.250885Z").unwrap();
        let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        // date -u -d 2026-11-25T21:01:00Z +%s
        assert!((secs - 1_795_640_460.250_885).abs() < 1e-6, "{secs}");
        assert!(parse_utc("21:01:00").is_none());

        let log = "2026-11-25T21:01:00.250885Z  INFO redis_ha::event: +switch-master mymaster \
                   198.18.1.11 6379 198.18.1.12 6379 service=mymaster event=\"+switch-master\"\n\
                   2026-11-25T21:01:00.3Z  INFO redis_ha_ctl::daemon: something else\n\
                   2026-11-25T21:01:00.4Z  INFO redis_ha::event: +sdo";
        let events = events_in(log);
        assert_eq!(
            events.len(),
            1,
            "the unfinished last line is left for later"
        );
        assert_eq!(events[0].name, "+switch-master");
        assert_eq!(
            events[0].text,
            "+switch-master mymaster 198.18.1.11 6379 198.18.1.12 6379"
        );
        assert_eq!(events[0].at, Some(t));
    }
}
