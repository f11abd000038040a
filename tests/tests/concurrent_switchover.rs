//! Two operators ask two controllers for opposing planned switchovers at the same moment,
//! end to end: three `redis-ha-ctl run` controllers on the testbed ([`Cluster`]), real
//! redis-servers, the real XDP data plane, writes through the VIP all along.
//!
//! Each round, with master M and replicas a and b, `redis-ha-ctl failover --to a` goes to c1
//! and `--to b` to c2 (then the other way round), both released by one barrier. Whatever the
//! race, at most one of them may succeed (the other answers an error reply), and the service
//! must end whole with exactly one master: the one redis-server reporting `role:master`, the
//! one every controller names, the one the data plane's write port points at, and the target
//! of the request that succeeded. No acknowledged write may be lost.
//!
//! Run with `--nocapture` to see one line per round.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddrV4;
use std::process::Output;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use redis_ha_ctl::daemon::control::SwitchoverReport;
use redis_ha_tests::cluster::{Replication, replication};
use redis_ha_tests::trial::{LoopOptions, missing_keys};
use redis_ha_tests::{
    Cluster, ClusterOptions, TrafficLoop, output_within, require_root, wait_until,
};

const SERVICE: &str = "mymaster";
const ROUNDS: usize = 20;
/// The writer's key prefix.
const PREFIX: &str = "opposing";
/// One `redis-ha-ctl failover`: the controller answers within about three times the
/// switchover's 2 s bound, so past this it gave no answer at all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the Sentinel API may lag behind the state files `wait_healthy` reads.
const AGREE_TIMEOUT: Duration = Duration::from_secs(5);
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a controller answered to `REDIS-HA FAILOVER`.
#[derive(Debug)]
enum Answer {
    Switched(SwitchoverReport),
    /// Its error reply, `CODE message` (`INPROG ...`, `ABORTED ...`).
    Refused(String),
}

/// One of a round's two requests.
#[derive(Debug)]
struct Request {
    controller: usize,
    to: SocketAddrV4,
    answer: Answer,
    /// From the barrier's release to the answer.
    took: Duration,
}

impl Request {
    fn report(&self) -> Option<&SwitchoverReport> {
        match &self.answer {
            Answer::Switched(report) => Some(report),
            Answer::Refused(_) => None,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.took.as_secs_f64() * 1000.0;
        write!(f, "c{} -> {}: ", self.controller, self.to)?;
        match &self.answer {
            Answer::Switched(r) => write!(
                f,
                "switched from {} in epoch {} (writes paused {:.1} ms), {ms:.0} ms",
                r.from,
                r.epoch,
                r.write_pause_ms.unwrap_or_default()
            ),
            Answer::Refused(reply) => write!(f, "`{reply}`, {ms:.0} ms"),
        }
    }
}

/// Reads what `redis-ha-ctl failover --json` printed: a report, or the controller's error
/// reply (`redis-ha-ctl: mymaster: CODE message`). Anything else (no connection, a report
/// that does not parse) is not an answer, and an error.
fn answer_of(n: usize, out: &Output) -> Result<Answer> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let report = serde_json::from_str(&stdout)
            .with_context(|| format!("c{n} succeeded without a report: {stdout}"))?;
        return Ok(Answer::Switched(report));
    }
    let prefix = format!("redis-ha-ctl: {SERVICE}: ");
    let is_code = |code: &str| !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase());
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .find(|reply| reply.split(' ').next().is_some_and(is_code))
        .map(|reply| Answer::Refused(reply.to_owned()))
        .with_context(|| {
            format!(
                "c{n} failed ({}) without an error reply: {}",
                out.status,
                stderr.trim()
            )
        })
}

/// Sends `redis-ha-ctl failover --to <to>` to each controller named in `plan`, all released
/// at one moment by a barrier (the commands are built before), and returns their answers.
fn race(cluster: &Cluster, plan: [(usize, SocketAddrV4); 2]) -> Result<Vec<Request>> {
    let mut prepared = Vec::new();
    for (n, to) in plan {
        let mut cmd = cluster.ctl_command(n, "failover")?;
        cmd.args([SERVICE, "--to", &to.to_string(), "--json"]);
        prepared.push((n, to, cmd));
    }
    let barrier = Barrier::new(prepared.len());
    let results: Vec<Result<Request>> = std::thread::scope(|s| {
        let handles: Vec<_> = prepared
            .into_iter()
            .map(|(n, to, mut cmd)| {
                let barrier = &barrier;
                s.spawn(move || -> Result<Request> {
                    barrier.wait();
                    let sent = Instant::now();
                    let out = output_within(&mut cmd, REQUEST_TIMEOUT)
                        .with_context(|| format!("c{n} gave no answer to the failover to {to}"))?;
                    let took = sent.elapsed();
                    let answer = answer_of(n, &out)?;
                    Ok(Request {
                        controller: n,
                        to,
                        answer,
                        took,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a request thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// What each redis-server says of itself (`INFO replication`), one line.
fn roles(cluster: &Cluster) -> String {
    let tb = cluster.testbed();
    tb.backends()
        .iter()
        .map(|b| match replication(b) {
            Ok(Replication::Master) => format!("{} master", b.addr()),
            Ok(Replication::Replica { master, link_up }) => format!(
                "{} replica of {master} (link {})",
                b.addr(),
                if link_up { "up" } else { "down" }
            ),
            Err(e) => format!("{} {e:#}", b.addr()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `SENTINEL get-master-addr-by-name mymaster`, asked of controller `n`.
fn master_named_by(cluster: &Cluster, n: usize) -> Result<SocketAddrV4> {
    let reply = cluster.sentinel_cli(n, &["SENTINEL", "get-master-addr-by-name", SERVICE])?;
    let (ip, port) = reply
        .split_once('\n')
        .with_context(|| format!("c{n} answered {reply:?}"))?;
    Ok(SocketAddrV4::new(
        ip.trim()
            .parse()
            .with_context(|| format!("c{n}: {reply:?}"))?,
        port.trim()
            .parse()
            .with_context(|| format!("c{n}: {reply:?}"))?,
    ))
}

/// What every controller names as the master, one line.
fn named_masters(cluster: &Cluster) -> String {
    (1..=cluster.controllers().len())
        .map(|n| match master_named_by(cluster, n) {
            Ok(addr) => format!("c{n} {addr}"),
            Err(e) => format!("c{n} {e:#}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// After a round: the service is whole again and has exactly one master, which every
/// redis-server, every controller and the data plane agree on, and writes through the VIP are
/// acknowledged. Returns the master and the data plane's epoch.
fn check_one_master(cluster: &Cluster, writer: &TrafficLoop) -> Result<(SocketAddrV4, u64)> {
    let master = cluster.wait_healthy(HEALTHY_TIMEOUT).with_context(|| {
        format!(
            "the redis-servers say: {}; the controllers name: {}",
            roles(cluster),
            named_masters(cluster)
        )
    })?;
    let masters: Vec<SocketAddrV4> = cluster
        .testbed()
        .backends()
        .iter()
        .filter(|b| matches!(replication(b), Ok(Replication::Master)))
        .map(|b| b.addr())
        .collect();
    ensure!(
        masters == [master],
        "the write port points at {master}, but the redis-servers say: {}",
        roles(cluster)
    );
    let controllers = cluster.controllers().len();
    wait_until(
        &format!("every controller to name {master}"),
        AGREE_TIMEOUT,
        Duration::from_millis(100),
        || {
            for n in 1..=controllers {
                let named = master_named_by(cluster, n)?;
                ensure!(named == master, "c{n} names {named}");
            }
            Ok(Some(()))
        },
    )?;
    let maps = cluster.maps()?;
    ensure!(
        maps.master() == Some(master),
        "the data plane's write port points at {:?}, not {master}:\n{}",
        maps.master(),
        maps.raw
    );
    writer
        .wait_acks_after(Instant::now(), 10, ACK_TIMEOUT)
        .with_context(|| format!("writes through the VIP with master {master}"))?;
    Ok((master, maps.epoch))
}

/// One round's outcome, for the summary.
struct Round {
    winner: Option<usize>,
    refusals: Vec<String>,
    /// From the release to the later answer.
    answered: Duration,
}

#[test]
fn opposing_switchovers_sent_at_once_to_two_controllers_leave_one_master() -> Result<()> {
    require_root();
    let started = Instant::now();
    let cluster = Cluster::up(ClusterOptions::default())?;
    let tb = cluster.testbed();
    let writer = TrafficLoop::start(
        tb.client().path(),
        LoopOptions {
            max_duration: Duration::from_secs(900),
            ..LoopOptions::writer(tb.vip_write(), PREFIX)
        },
    )?;
    let result = opposing_switchovers(&cluster, writer);
    match cluster.save_logs() {
        Ok(dir) => println!("controller logs: {}", dir.display()),
        Err(e) => println!("saving the controller logs: {e:#}"),
    }
    if result.is_err() {
        eprintln!("{}", cluster.log_tails(40));
    }
    println!("ran {:.1} s", started.elapsed().as_secs_f64());
    result
}

fn opposing_switchovers(cluster: &Cluster, writer: TrafficLoop) -> Result<()> {
    let tb = cluster.testbed();
    writer.wait_acks_after(Instant::now(), 20, ACK_TIMEOUT)?;
    let mut rounds = Vec::new();
    for i in 0..ROUNDS {
        let round = i + 1;
        let master = cluster
            .maps()?
            .master()
            .context("the write port has no master")?;
        let replicas: Vec<SocketAddrV4> = tb
            .backends()
            .iter()
            .map(|b| b.addr())
            .filter(|a| *a != master)
            .collect();
        let [a, b] = replicas[..] else {
            bail!("round {round}: replicas of {master}: {replicas:?}");
        };
        // Which controller asks for which replica alternates.
        let plan = if i % 2 == 0 {
            [(1, a), (2, b)]
        } else {
            [(1, b), (2, a)]
        };
        let released = Instant::now();
        let requests = race(cluster, plan).with_context(|| format!("round {round}"))?;
        let answered = released.elapsed();
        let won: Vec<&Request> = requests.iter().filter(|r| r.report().is_some()).collect();
        let lost: Vec<&Request> = requests.iter().filter(|r| r.report().is_none()).collect();
        let answers = match (won.first(), lost.as_slice()) {
            (Some(w), [other]) => format!("won {w}; other {other}"),
            _ => format!("won none; {}", list(&requests)),
        };

        // At most one of two opposing switchovers may succeed.
        if won.len() > 1 {
            let right_after = roles(cluster);
            let later = match cluster.wait_healthy(HEALTHY_TIMEOUT) {
                Ok(m) => format!("the service became whole again with master {m}"),
                Err(e) => format!("the service did not become whole again: {e:#}"),
            };
            bail!(
                "round {round} (master {master}): BOTH opposing switchovers succeeded: {}\n  \
                 right after, the redis-servers said: {right_after}\n  {later}\n  \
                 the redis-servers now say: {}\n  the controllers name: {}",
                list(&requests),
                roles(cluster),
                named_masters(cluster)
            );
        }
        let (now_master, epoch) = check_one_master(cluster, &writer)
            .with_context(|| format!("after round {round} (master {master}): {answers}"))?;
        match won.first() {
            Some(w) => {
                let report = w.report().context("a winner has a report")?;
                ensure!(
                    report.from == master.to_string() && now_master == w.to,
                    "round {round}: {w} succeeded, from {master}, yet the master is now {now_master}"
                );
            }
            None => ensure!(
                now_master == master,
                "round {round}: neither request succeeded ({answers}), yet the master moved \
                 from {master} to {now_master}"
            ),
        }
        println!(
            "round {round:>2}: {answers}; master {master} -> {now_master}, data plane epoch \
             {epoch}, answers within {:.0} ms",
            answered.as_secs_f64() * 1000.0
        );
        rounds.push(Round {
            winner: won.first().map(|w| w.controller),
            refusals: lost
                .iter()
                .filter_map(|r| match &r.answer {
                    Answer::Refused(reply) => Some(reply.clone()),
                    Answer::Switched(_) => None,
                })
                .collect(),
            answered,
        });
    }

    // Every acknowledged write is on the final master.
    let record = writer.finish()?;
    let final_master = cluster.master()?;
    let keys = record.set_keys(PREFIX);
    let acked = keys.len();
    let missing = missing_keys(final_master, keys)?;

    let mut winners: BTreeMap<String, usize> = BTreeMap::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rounds {
        let who = r.winner.map_or("none".to_owned(), |n| format!("c{n}"));
        *winners.entry(who).or_default() += 1;
        for reply in &r.refusals {
            let code = reply.split(' ').next().unwrap_or_default().to_owned();
            *codes.entry(code).or_default() += 1;
        }
    }
    let slowest = rounds.iter().map(|r| r.answered).max().unwrap_or_default();
    println!(
        "{ROUNDS} rounds of opposing switchovers sent at once to c1 and c2:\n  \
         won by: {winners:?}; refusals by code: {codes:?}; slowest pair of answers {:.0} ms\n  \
         acknowledged writes: {acked}, failed (retried with a new key): {}, \
         acknowledged but missing on the final master {}: {}",
        slowest.as_secs_f64() * 1000.0,
        record.failure_count,
        final_master.addr(),
        missing.len()
    );
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes are missing on the final master, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(())
}

fn list(requests: &[Request]) -> String {
    requests
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
