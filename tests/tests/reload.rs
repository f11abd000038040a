//! End-to-end tests of `systemctl reload` (SIGHUP to `redis-ha-ctl run`): three real
//! controllers (c1 owning the XDP data plane), real redis-servers, traffic through the VIP
//! while the controllers reload.
//!
//! - A service added after the last one is served through its VIP ports and answered for by
//!   the Sentinel-compatible API, and a changed timer is taken, without a restart (same PIDs),
//!   without moving the existing service's master and without one failed request; removing it
//!   again takes its ports and backend slots out of the maps.
//! - A reload that changes a key needing a restart, or a file that does not parse, is refused
//!   with the file, line and key; nothing changes and traffic goes on.
//!
//! Run: `REDIS_HA_CTL=<binary> cargo test --release -p redis-ha-tests --test reload --
//! --test-threads=1 --nocapture`.

use std::{
    net::SocketAddrV4,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use redis_ha_tests::{
    Cluster, ClusterOptions, METRICS_PORT, TrafficLoop,
    cluster::LogMark,
    http_get,
    process::ChildGuard,
    require_root,
    testbed::VIP,
    trial::{LoopOptions, LoopRecord, Request},
    wait_until,
};

/// The added service: one redis-server of its own (a backend serves one service), in backend
/// 1's namespace on another port, behind the same VIP on ports of its own.
const EXTRA: &str = "extra";
const EXTRA_REDIS_PORT: u16 = 6390;
const EXTRA_WRITE_PORT: u16 = 6382;
const EXTRA_READ_PORT: u16 = 6383;

/// How long a controller may take to log a reload's outcome.
const RELOAD_BOUND: Duration = Duration::from_secs(10);

/// Runs `test` on a fresh cluster; when it fails, prints the end of every controller's log.
fn with_cluster(test: impl FnOnce(&Cluster) -> Result<()>) -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    let outcome = test(&cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(80));
    }
    outcome
}

/// A loop through the VIP that must not fail while the controllers reload: generous timeouts,
/// since the claim is that nothing fails, not that it is fast.
fn steady(cluster: &Cluster, request: Request, addr: SocketAddrV4) -> Result<TrafficLoop> {
    TrafficLoop::start(
        cluster.testbed().client().path(),
        LoopOptions {
            addr,
            request,
            pause: Duration::from_millis(5),
            timeout: Duration::from_secs(2),
            reconnect_every: Some(25),
            max_duration: Duration::from_secs(120),
            max_requests: 100_000,
        },
    )
}

/// Writes and reads through the existing service's VIP ports, once both are flowing.
fn start_traffic(cluster: &Cluster) -> Result<(TrafficLoop, TrafficLoop)> {
    let tb = cluster.testbed();
    tb.backend(1).redis_cli(&["SET", "reload:read", "v"])?;
    let writer = steady(
        cluster,
        Request::Set {
            prefix: "reload:w".into(),
        },
        tb.vip_write(),
    )?;
    let reader = steady(
        cluster,
        Request::Get {
            key: "reload:read".into(),
        },
        tb.vip_read(),
    )?;
    let started = Instant::now();
    writer.wait_acks_after(started, 50, Duration::from_secs(10))?;
    reader.wait_acks_after(started, 50, Duration::from_secs(10))?;
    Ok((writer, reader))
}

fn assert_no_failure(name: &str, rec: &LoopRecord) {
    println!(
        "{name}: {} ok, {} failed",
        rec.acks.len(),
        rec.failure_count
    );
    assert_eq!(
        rec.failure_count,
        0,
        "{name} failed across the reload: {:?}",
        &rec.failures[..rec.failures.len().min(5)]
    );
}

fn pids(cluster: &Cluster) -> Vec<Option<u32>> {
    cluster.controllers().iter().map(|c| c.pid()).collect()
}

/// Writes `text` as controller `n`'s config, sends SIGHUP, and waits for the line that logs
/// the outcome (`config reloaded` or `config reload refused`); returns that line.
fn reload(cluster: &Cluster, n: usize, text: &str, outcome: &str) -> Result<String> {
    let c = cluster.controller(n);
    std::fs::write(c.config_path(), text)
        .with_context(|| format!("writing {}", c.config_path().display()))?;
    let mark: LogMark = c.mark();
    c.reload()?;
    c.wait_for_line(&[outcome], mark, RELOAD_BOUND)
}

/// The controller's status as JSON (`REDIS-HA STATUS` through its API).
fn status(cluster: &Cluster, n: usize) -> Result<serde_json::Value> {
    let text = cluster.sentinel_cli(n, &["REDIS-HA", "STATUS"])?;
    serde_json::from_str(&text).with_context(|| format!("REDIS-HA STATUS: {text}"))
}

/// `redis_ha_config_reloads_total{result=...}` on c1's `/metrics` (read from the LB, c1's
/// namespace).
fn reloads_counted(cluster: &Cluster, result: &str) -> Result<u64> {
    let addr = SocketAddrV4::new(*cluster.controller(1).listen().ip(), METRICS_PORT);
    let body = http_get(&cluster.testbed().lb().path(), addr, "/metrics")?;
    let prefix = format!("redis_ha_config_reloads_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no {prefix:?} in /metrics"))?
        .trim()
        .parse()
        .context("the reload counter")
}

/// The `[[service]]` table of the added service.
fn extra_service(cluster: &Cluster) -> String {
    let backend = SocketAddrV4::new(cluster.testbed().backend(1).ip(), EXTRA_REDIS_PORT);
    format!(
        "\n[[service]]\nname = \"{EXTRA}\"\nvip = \"{VIP}\"\nwrite_port = {EXTRA_WRITE_PORT}\n\
         read_port = {EXTRA_READ_PORT}\nbackends = [\"{backend}\"]\nquorum = 2\n\
         down_after_ms = 1000\nfailover_timeout_ms = 5000\n"
    )
}

/// The extra service's redis-server (killed on drop; the testbed's drop also kills every
/// process in its namespaces).
fn start_extra_redis(cluster: &Cluster, dir: &Path) -> Result<ChildGuard> {
    let b = cluster.testbed().backend(1);
    let port = EXTRA_REDIS_PORT.to_string();
    let mut cmd = b.netns().command("redis-server");
    cmd.args(["--port", &port, "--bind", &b.ip().to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let guard = ChildGuard::spawn(&mut cmd).context("starting the extra redis-server")?;
    let addr = SocketAddrV4::new(b.ip(), EXTRA_REDIS_PORT);
    wait_until(
        "the extra redis-server to answer PING",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || Ok((b.netns().redis_cli(addr, &["PING"])?.trim() == "PONG").then_some(())),
    )?;
    Ok(guard)
}

#[test]
fn a_service_added_and_removed_by_sighup_is_served_without_a_restart_or_a_failed_request()
-> Result<()> {
    with_cluster(|cluster| {
        let dir = cluster
            .controller(1)
            .config_path()
            .parent()
            .context("config without a directory")?
            .to_owned();
        let _extra_redis = start_extra_redis(cluster, &dir)?;
        let originals: Vec<String> = cluster
            .controllers()
            .iter()
            .map(|c| std::fs::read_to_string(c.config_path()))
            .collect::<std::io::Result<_>>()?;
        let pids_before = pids(cluster);
        let before = cluster.maps()?;
        let (writer, reader) = start_traffic(cluster)?;

        // Add the service, and lengthen the existing one's down_after_ms (a timer).
        for (i, original) in originals.iter().enumerate() {
            ensure!(original.contains("down_after_ms = 1000\n"), "{original}");
            let text = format!(
                "{}{}",
                original.replacen("down_after_ms = 1000\n", "down_after_ms = 1500\n", 1),
                extra_service(cluster)
            );
            let line = reload(cluster, i + 1, &text, "config reloaded")?;
            ensure!(
                line.contains("1 service(s) added") && line.contains("1 retuned"),
                "{line}"
            );
        }
        for n in 1..=3 {
            let fields = cluster.sentinel_cli(n, &["SENTINEL", "master", "mymaster"])?;
            ensure!(
                fields.contains("down-after-milliseconds\n1500\n"),
                "c{n} does not run the new down_after_ms:\n{fields}"
            );
        }
        let extra_vip = SocketAddrV4::new(VIP, EXTRA_WRITE_PORT);
        let master = wait_until(
            "every controller to answer for the added service",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let answers: Vec<String> = (1..=3)
                    .map(|n| {
                        cluster.sentinel_cli(n, &["SENTINEL", "get-master-addr-by-name", EXTRA])
                    })
                    .collect::<Result<_>>()?;
                Ok(answers
                    .iter()
                    .all(|a| *a == answers[0] && !a.is_empty())
                    .then(|| answers[0].clone()))
            },
        )?;
        let expected = format!("{}\n{EXTRA_REDIS_PORT}", cluster.testbed().backend(1).ip());
        assert_eq!(master, expected, "the added service's master");
        let extra_writer = steady(
            cluster,
            Request::Set {
                prefix: "reload:extra".into(),
            },
            extra_vip,
        )?;
        let since = Instant::now();
        extra_writer.wait_acks_after(since, 50, Duration::from_secs(10))?;
        let extra = extra_writer.finish()?;
        assert_no_failure("writes through the added service's VIP port", &extra);
        let keys = cluster.testbed().backend(1).netns().redis_cli(
            SocketAddrV4::new(cluster.testbed().backend(1).ip(), EXTRA_REDIS_PORT),
            &["DBSIZE"],
        )?;
        ensure!(
            keys.trim().parse::<u64>().unwrap_or(0) >= 50,
            "the added service's redis-server holds {keys} keys: the writes went elsewhere"
        );
        let maps = cluster.maps()?;
        let extra_backend = format!("{}:{EXTRA_REDIS_PORT}", cluster.testbed().backend(1).ip());
        ensure!(
            maps.raw.contains(&extra_backend),
            "added service missing from the maps:\n{}",
            maps.raw
        );
        let s = status(cluster, 1)?;
        assert_eq!(s["reload"]["applied"], true, "{s}");
        assert_eq!(reloads_counted(cluster, "applied")?, 1);

        // Remove it again (it is the last service): its entries leave the maps.
        for (i, original) in originals.iter().enumerate() {
            let text = original.replacen("down_after_ms = 1000\n", "down_after_ms = 1500\n", 1);
            let line = reload(cluster, i + 1, &text, "config reloaded")?;
            ensure!(line.contains("1 removed (extra)"), "{line}");
        }
        let maps = cluster.maps()?;
        ensure!(
            !maps.raw.contains(&extra_backend)
                && !maps.raw.contains(&format!(":{EXTRA_WRITE_PORT}")),
            "the removed service is still in the maps:\n{}",
            maps.raw
        );
        let answer = cluster.sentinel_cli(1, &["SENTINEL", "get-master-addr-by-name", EXTRA])?;
        ensure!(
            answer.is_empty(),
            "the removed service is still answered for: {answer:?}"
        );
        let probe = TrafficLoop::start(
            cluster.testbed().client().path(),
            LoopOptions {
                max_requests: 3,
                max_duration: Duration::from_secs(10),
                timeout: Duration::from_millis(500),
                ..LoopOptions::writer(extra_vip, "reload:gone")
            },
        )?;
        std::thread::sleep(Duration::from_secs(3));
        let gone = probe.finish()?;
        ensure!(
            gone.acks.is_empty(),
            "the removed service's VIP port still served {} writes",
            gone.acks.len()
        );

        let (w, r) = (writer.finish()?, reader.finish()?);
        assert_no_failure("writes through the existing service", &w);
        assert_no_failure("reads through the existing service", &r);
        let after = cluster.maps()?;
        assert_eq!(
            (after.master(), after.epoch, after.readable()),
            (before.master(), before.epoch, before.readable()),
            "the reloads moved the existing service"
        );
        assert_eq!(pids(cluster), pids_before, "a controller restarted");
        Ok(())
    })
}

#[test]
fn a_forbidden_change_or_a_broken_file_is_refused_by_name_and_changes_nothing() -> Result<()> {
    with_cluster(|cluster| {
        let c1 = cluster.controller(1);
        let path = c1.config_path().to_owned();
        let original = std::fs::read_to_string(&path)?;
        let pids_before = pids(cluster);
        let before = cluster.maps()?;
        let (writer, reader) = start_traffic(cluster)?;

        // The controller id, and with it a timer that alone would reload: refused whole.
        ensure!(original.contains("id = \"c1\"\n"), "{original}");
        let renamed = original
            .replacen("id = \"c1\"\n", "id = \"c9\"\n", 1)
            .replacen("down_after_ms = 1000\n", "down_after_ms = 1500\n", 1);
        let line_of_id = renamed
            .lines()
            .position(|l| l == "id = \"c9\"")
            .context("no id line")?
            + 1;
        let line = reload(cluster, 1, &renamed, "config reload refused")?;
        let place = format!("{}:{line_of_id}:1: controller.id", path.display());
        ensure!(line.contains(&place), "expected {place:?} in {line}");
        let s = status(cluster, 1)?;
        assert_eq!(s["controller"], "c1", "{s}");
        assert_eq!(s["reload"]["applied"], false, "{s}");
        let message = s["reload"]["message"].as_str().unwrap_or_default();
        ensure!(message.contains(&place), "status: {message}");
        assert_eq!(reloads_counted(cluster, "refused")?, 1);
        let text = cluster.ctl_command(1, "status")?.output()?;
        let text = String::from_utf8_lossy(&text.stdout);
        ensure!(
            text.contains("REFUSED") && text.contains("controller.id"),
            "{text}"
        );

        // A file that does not parse.
        let broken = format!("{original}\n[[service]\nname = \"x\"\n");
        let broken_line = original.lines().count() + 2;
        let line = reload(cluster, 1, &broken, "config reload refused")?;
        let place = format!("{}:{broken_line}:", path.display());
        ensure!(line.contains(&place), "expected {place:?} in {line}");
        assert_eq!(reloads_counted(cluster, "refused")?, 2);

        // The running config is the one from before, whole: the timer that came with the
        // refused id was not taken either, and c1 still answers as c1.
        std::fs::write(&path, &original)?;
        let fields = cluster.sentinel_cli(1, &["SENTINEL", "master", "mymaster"])?;
        ensure!(
            fields.contains("down-after-milliseconds\n1000\n"),
            "a refused reload changed a timer:\n{fields}"
        );
        assert_eq!(
            cluster.sentinel_cli(1, &["SENTINEL", "myid"])?,
            "c1",
            "the refused reload changed the id"
        );
        let (w, r) = (writer.finish()?, reader.finish()?);
        assert_no_failure("writes", &w);
        assert_no_failure("reads", &r);
        let after = cluster.maps()?;
        assert_eq!(
            (after.master(), after.epoch, after.readable()),
            (before.master(), before.epoch, before.readable()),
            "a refused reload changed the data plane"
        );
        assert_eq!(pids(cluster), pids_before, "a controller restarted");
        Ok(())
    })
}
