//! Backends given by name (`resolve_hostnames`, `announce_hostnames`), end to end: three real
//! controllers and real redis-servers whose `[[service]]` lists `redisN.internal:6379`.
//!
//! The names resolve inside this test only: the controllers and the redis-servers are
//! started from a thread that moved to a mount namespace of its own, where a hosts file the
//! test wrote is bind-mounted over /etc/hosts (what `ip netns exec` does with
//! /etc/netns/<ns>/hosts). The machine's /etc/hosts is never touched, and the namespace goes
//! with the last process started in it.
//!
//! Run: `REDIS_HA_CTL=<binary> cargo test --release -p redis-ha-tests --test hostnames --
//! --test-threads=1 --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::{
    Cluster, ClusterOptions,
    hosts::{name, name_backends, with_private_hosts},
    process::run_within,
    require_root,
    testbed::backend_ip,
    wait_until,
};

const PYTHON: &str = "/usr/bin/python3";
/// Bound of every wait below (correctness, not speed).
const BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// `SENTINEL get-master-addr-by-name mymaster` of controller `n`, as `host:port`.
fn master_by_name(cluster: &Cluster, n: usize) -> Result<String> {
    let out = cluster.sentinel_cli(n, &["SENTINEL", "get-master-addr-by-name", "mymaster"])?;
    let mut lines = out.lines();
    match (lines.next(), lines.next()) {
        (Some(host), Some(port)) => Ok(format!("{host}:{port}")),
        _ => bail!("get-master-addr-by-name answered {out:?}"),
    }
}

/// What redis-py's `Sentinel` (Debian's python3-redis) discovers as the master.
const DISCOVER: &str = r#"
import sys
try:
    from redis.sentinel import Sentinel
except ImportError:
    sys.exit("python3-redis is missing: apt-get install python3-redis (cargo xtask build installs it)")
sentinel = Sentinel([(sys.argv[1], int(sys.argv[2]))], sentinel_kwargs={"socket_timeout": 2.0})
print("%s:%d" % sentinel.discover_master("mymaster"))
"#;

fn discover_master(cluster: &Cluster) -> Result<String> {
    let api = cluster.controller(1).listen();
    let mut cmd = cluster.testbed().client().command(PYTHON);
    cmd.args(["-c", DISCOVER])
        .arg(api.ip().to_string())
        .arg(api.port().to_string());
    Ok(run_within(&mut cmd, BOUND)
        .context("redis-py's Sentinel")?
        .trim()
        .to_owned())
}

/// Controllers configured with backend names probe them, fail over when the master is
/// killed (-9), and, with announce_hostnames, tell Sentinel clients the master by name and
/// point the replicas at it by name. Before, the config refused a name, and a replica
/// reporting `master_host:<name>` failed every probe (so it never joined the read pool).
#[test]
fn controllers_fail_over_backends_given_by_name() -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    let outcome = by_name(&cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(80));
    }
    outcome
}

fn by_name(cluster: &Cluster) -> Result<()> {
    // The same cluster, its backends now given by name: each controller's config rewritten,
    // every process started again where the names resolve.
    let hosts = name_backends(
        cluster,
        "resolve_hostnames = true\nannounce_hostnames = true",
    )?;
    // The rest runs where the names resolve: the harness's own `redis-ha-ctl maps` reads
    // the same config.
    with_private_hosts(&hosts, || named(cluster))
}

fn named(cluster: &Cluster) -> Result<()> {
    let backends = cluster.testbed().backends().len();
    for b in cluster.testbed().backends() {
        b.kill()?;
        b.start()?;
    }
    for c in cluster.controllers() {
        c.start()?;
    }
    let first = cluster.testbed().backend(1).addr();
    cluster.wait_healthy(BOUND)?;
    let log = cluster.controller(1).log();
    ensure!(
        log.contains(&format!(
            "backend name {} resolves to {}",
            name(1),
            first.ip()
        )),
        "c1 did not log what the name resolved to"
    );

    // Sentinel clients discover the master by name.
    let expected = format!("{}:6379", name(1));
    for n in 1..=3 {
        let got = master_by_name(cluster, n)?;
        ensure!(got == expected, "c{n}: master {got}, expected {expected}");
    }
    let discovered = discover_master(cluster)?;
    ensure!(discovered == expected, "redis-py discovered {discovered}");

    // kill -9 the master: the controllers fail over, the write port and the API follow.
    let marks: Vec<_> = cluster.controllers().iter().map(|c| c.mark()).collect();
    let killed = Instant::now();
    cluster.testbed().backend(1).kill()?;
    let new_master = wait_until(
        "the write port to leave the killed master",
        BOUND,
        POLL,
        || Ok(cluster.maps()?.master().filter(|m| *m != first)),
    )?;
    println!(
        "write port moved to {new_master} {:?} after the kill",
        killed.elapsed()
    );
    let new_n = (1..=backends)
        .find(|&n| backend_ip(n) == *new_master.ip())
        .context("the new master is no backend")?;
    let promoted = format!("{}:6379", name(new_n));
    for n in 1..=3 {
        wait_until(&format!("c{n} to name the new master"), BOUND, POLL, || {
            Ok((master_by_name(cluster, n)? == promoted).then_some(()))
        })?;
    }
    let switch = cluster
        .controller(1)
        .wait_for_event("+switch-master", marks[0], BOUND)?;
    let payload = format!("mymaster {} 6379 {} 6379", name(1), name(new_n));
    ensure!(
        switch.payload == payload,
        "+switch-master {:?}, expected {payload:?}",
        switch.payload
    );
    ensure!(
        discover_master(cluster)? == promoted,
        "redis-py did not follow the failover"
    );

    // The remaining replica was told the master by name, reports it so, and is still
    // understood by the probes: it is back in the read pool.
    let other = (2..=backends)
        .find(|&n| n != new_n)
        .context("no replica left")?;
    let replica = cluster.testbed().backend(other);
    wait_until(
        "the other replica to follow the new master by name",
        BOUND,
        POLL,
        || {
            let info = replica.redis_cli(&["INFO", "replication"])?;
            let by_name = info.contains(&format!("master_host:{}", name(new_n)));
            Ok((by_name && info.contains("master_link_status:up")).then_some(()))
        },
    )?;
    wait_until("the replica to be readable again", BOUND, POLL, || {
        Ok(cluster
            .maps()?
            .readable()
            .contains(&replica.addr())
            .then_some(()))
    })?;
    for (c, mark) in cluster.controllers().iter().zip(&marks) {
        let failed = c.log_since(*mark).contains("master_host");
        ensure!(!failed, "{} failed to read a replica's master_host", c.id());
    }
    Ok(())
}
