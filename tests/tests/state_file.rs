//! The controller's state file under faults, against three real `redis-ha-ctl run`
//! processes: a full file system and a read-only one under a controller's state file (a tiny
//! tmpfs this test mounts), a state file that cannot be read, and a leader killed at each step
//! between the promotion and the switch.
//!
//! Run: `cargo test --release -p redis-ha-tests --test state_file -- --test-threads=1`
//! (under `flock /tmp/rha-netns.lock` when other namespace tests may run).

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use redis_ha_tests::tmpfs::Tmpfs;
use redis_ha_tests::{Cluster, ClusterOptions, METRICS_PORT, require_root, wait_until};

const SERVICE: &str = "mymaster";
/// Generous bounds: correctness, not speed (two busy cores).
const FAILOVER_BOUND: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// Runs `test` on a fresh cluster; when it fails, prints the end of every controller's log.
fn with_cluster(test: impl FnOnce(&mut Cluster) -> Result<()>) -> Result<()> {
    require_root();
    let mut cluster = Cluster::up(ClusterOptions::default())?;
    let outcome = test(&mut cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(80));
        if let Ok(dir) = cluster.save_logs() {
            eprintln!("controller logs saved in {}", dir.display());
        }
    }
    outcome
}

/// A directory for a tmpfs, unique to this cluster (its tag), under /tmp.
fn tmpfs_dir(cluster: &Cluster) -> PathBuf {
    PathBuf::from(format!("/tmp/rha-{}-statefs", cluster.testbed().tag()))
}

/// GET `path` from controller `n`'s HTTP listener, from the namespace it runs in.
fn http_get(cluster: &Cluster, n: u8, path: &str) -> Result<String> {
    let ns = cluster.node_netns(n)?.path();
    let addr = SocketAddrV4::new(*cluster.controller(n.into()).listen().ip(), METRICS_PORT);
    redis_ha_tests::http_get(&ns, addr, path)
}

/// The value of `metric{service="mymaster"}` on controller `n`.
fn metric(cluster: &Cluster, n: u8, metric: &str) -> Result<f64> {
    let text = http_get(cluster, n, "/metrics")?;
    let prefix = format!("{metric}{{service=\"{SERVICE}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no {prefix}in /metrics of c{n}"))?
        .trim()
        .parse()
        .with_context(|| format!("{metric} of c{n}"))
}

/// What controller `n` tells Sentinel clients the master is.
fn master_by_name(cluster: &Cluster, n: usize) -> Result<String> {
    let reply = cluster.sentinel_cli(n, &["SENTINEL", "get-master-addr-by-name", SERVICE])?;
    Ok(reply.split_whitespace().collect::<Vec<_>>().join(":"))
}

/// Kills the redis-server at `addr`.
fn kill_backend(cluster: &Cluster, addr: SocketAddrV4) -> Result<()> {
    cluster
        .testbed()
        .backend_at(addr)
        .with_context(|| format!("{addr} is not a backend"))?
        .kill()
}

/// Waits (bounded) until the write port points at another backend than `old`; returns it.
fn wait_write_port_leaves(cluster: &Cluster, old: SocketAddrV4) -> Result<SocketAddrV4> {
    wait_until(
        &format!("the write port to leave {old}"),
        FAILOVER_BOUND,
        POLL,
        || Ok(cluster.maps()?.master().filter(|m| *m != old)),
    )
}

#[test]
fn a_full_disk_withholds_votes_but_the_data_plane_follows_the_elected_master() -> Result<()> {
    with_cluster(|cluster| {
        let fs = Tmpfs::mount(&tmpfs_dir(cluster), "64k")?;
        cluster.controller(1).kill()?;
        cluster.relocate_state_file(1, &fs.dir().join("c1.state"))?;
        cluster.controller(1).start()?;
        let old = cluster.wait_healthy(Duration::from_secs(30))?;
        let c1 = cluster.controller(1);
        let before = c1.state()?;
        let filler = fs.fill()?;

        let mark = c1.mark();
        kill_backend(cluster, old)?;
        // c1, the data plane's controller, cannot persist the new configuration: before, the
        // failed write dropped the rest of the step, and the write port stayed on the dead
        // master for good.
        let new = wait_write_port_leaves(cluster, old)?;
        let log = c1.log_since(mark);
        ensure!(
            log.contains("persisting state failed"),
            "c1 never failed to persist: was its file system full?"
        );
        ensure!(
            c1.state()? == before,
            "c1's state file changed on a full file system: {:?} -> {:?}",
            before,
            c1.state()?
        );
        let told = wait_until("c1 to name the new master", FAILOVER_BOUND, POLL, || {
            Ok(master_by_name(cluster, 1)
                .ok()
                .filter(|m| *m == new.to_string()))
        })?;
        println!("full disk: write port and c1's Sentinel API moved {old} -> {told}");

        // No vote left c1 unpersisted: it did not lead, and each vote it made (as a candidate
        // first in line, by its id) was withheld.
        ensure!(
            c1.events("+elected-leader", mark).is_empty(),
            "c1 was elected without a durable vote"
        );
        let votes = c1.count_events("+vote-for-leader", mark);
        let withheld = metric(cluster, 1, "redis_ha_votes_withheld_total")?;
        let failures = metric(cluster, 1, "redis_ha_state_write_failures_total")?;
        println!("c1: {votes} votes made, {withheld} withheld, {failures} failed writes");
        ensure!(failures >= 1.0, "no failed write counted");
        ensure!(
            votes == 0 || withheld >= 1.0,
            "c1 made {votes} votes on a full disk and withheld none"
        );

        // Room again: the state catches up without any new decision.
        std::fs::remove_file(&filler)?;
        wait_until(
            "c1's state file to name the new master",
            Duration::from_secs(10),
            POLL,
            || Ok(c1.state()?.filter(|s| s.master == new)),
        )?;
        cluster
            .testbed()
            .backend_at(old)
            .context("old master")?
            .start()?;
        cluster.wait_healthy(FAILOVER_BOUND)?;
        drop(fs);
        Ok(())
    })
}

#[test]
fn a_read_only_state_directory_stops_the_start_and_at_run_time_only_the_votes() -> Result<()> {
    with_cluster(|cluster| {
        let fs = Tmpfs::mount(&tmpfs_dir(cluster), "64k")?;
        cluster.controller(2).kill()?;
        let path = fs.dir().join("c2.state");
        cluster.relocate_state_file(2, &path)?;
        fs.set_read_only(true)?;
        let c2 = cluster.controller(2);
        let mark = c2.mark();
        let refused = c2.start();
        ensure!(
            refused.is_err(),
            "c2 started on a read-only state directory"
        );
        let log = c2.wait_exit(mark, Duration::from_secs(10))?;
        let dir = fs.dir().display().to_string();
        ensure!(
            log.contains("not writable") && log.contains(&dir),
            "c2's error does not say that {dir} is not writable:\n{log}"
        );

        fs.set_read_only(false)?;
        c2.start()?;
        let old = cluster.wait_healthy(Duration::from_secs(30))?;
        // Read-only while it runs: it follows the failover, and says its writes fail.
        fs.set_read_only(true)?;
        let mark = c2.mark();
        kill_backend(cluster, old)?;
        let new = wait_write_port_leaves(cluster, old)?;
        wait_until("c2 to name the new master", FAILOVER_BOUND, POLL, || {
            Ok(master_by_name(cluster, 2)
                .ok()
                .filter(|m| *m == new.to_string()))
        })?;
        ensure!(
            c2.log_since(mark).contains("persisting state failed"),
            "c2 never failed to persist on a read-only directory"
        );
        ensure!(metric(cluster, 2, "redis_ha_state_write_failures_total")? >= 1.0);
        fs.set_read_only(false)?;
        wait_until(
            "c2's state file to name the new master",
            Duration::from_secs(10),
            POLL,
            || Ok(c2.state()?.filter(|s| s.master == new)),
        )?;
        c2.kill()?;
        drop(fs);
        Ok(())
    })
}

#[test]
fn an_unreadable_state_file_starts_in_safe_mode_until_the_peers_are_heard() -> Result<()> {
    with_cluster(|cluster| {
        let c2 = cluster.controller(2);
        c2.kill()?;
        // Truncated mid-write by something other than the controller (which never tears it).
        std::fs::write(
            c2.state_path(),
            b"{\n  \"services\": {\n    \"mymaster\": {\n      \"current_ep",
        )?;
        let mark = c2.mark();
        // Before: `corrupt state file` and an exit, on every restart.
        c2.start()?;
        c2.wait_for_event("+safe-mode", mark, Duration::from_secs(10))?;
        let left = c2.wait_for_event("-safe-mode", mark, Duration::from_secs(30))?;
        println!("c2: {}", left.line);
        wait_until(
            "c2's status to leave safe mode",
            Duration::from_secs(10),
            POLL,
            || {
                let status = http_get(cluster, 2, "/status.json")?;
                let compact: String = status.split_whitespace().collect();
                Ok(compact.contains("\"safe_mode\":false").then_some(()))
            },
        )?;
        ensure!(metric(cluster, 2, "redis_ha_safe_mode")? == 0.0);
        let state = c2.state()?.context("c2 rewrote no state file")?;
        ensure!(
            state.current_epoch >= 1,
            "c2 left safe mode without moving past the epochs it heard: {state:?}"
        );

        // It takes part again: a failover gets its vote, in a later epoch.
        let old = cluster.wait_healthy(Duration::from_secs(30))?;
        kill_backend(cluster, old)?;
        wait_write_port_leaves(cluster, old)?;
        cluster
            .testbed()
            .backend_at(old)
            .context("old master")?
            .start()?;
        cluster.wait_healthy(FAILOVER_BOUND)?;
        let after = c2.state()?.context("no state file")?;
        ensure!(
            after.vote_epoch.is_some_and(|e| e >= state.current_epoch),
            "c2 did not vote after safe mode: {after:?}"
        );
        Ok(())
    })
}

/// The promotion's steps, as `REDIS_HA_FAILPOINT` names them; with `true`, the new
/// configuration is durable at that step, so the elected master must be the one promoted.
const STEPS: [(&str, bool); 4] = [
    ("after-promote-command", false),
    ("after-promoted-persist", true),
    ("after-promoted-switch", true),
    ("after-promoted-announce", true),
];

/// `slave 198.18.1.12:6379 198.18.1.12 6379 @ mymaster ...` -> 198.18.1.12:6379.
fn promoted_addr(payload: &str) -> Result<SocketAddrV4> {
    payload
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {payload:?}"))
}

fn crash_at(step: &str, durable: bool) -> Result<()> {
    with_cluster(|cluster| {
        let c1 = cluster.controller(1);
        c1.kill()?;
        c1.set_env("REDIS_HA_FAILPOINT", Some(step));
        c1.start()?;
        let old = cluster.wait_healthy(Duration::from_secs(30))?;
        let before = cluster.maps()?.epoch;
        let mark = c1.mark();
        kill_backend(cluster, old)?;
        // c1 stands first (the lowest id) and dies at the step.
        let log = c1.wait_exit(mark, FAILOVER_BOUND)?;
        ensure!(
            log.contains("failpoint reached") && log.contains(step),
            "c1 exited without reaching {step}:\n{log}"
        );
        let promoted = promoted_addr(
            &c1.events("+selected-slave", mark)
                .first()
                .context("c1 selected no replica")?
                .payload,
        )?;
        // The others carry on without it for a moment, as after a real crash.
        std::thread::sleep(Duration::from_secs(2));
        c1.set_env("REDIS_HA_FAILPOINT", None);
        c1.start()?;
        // The old master stays down until the write port left it: a failover must complete
        // (the one killed, or a new one when nothing of it was durable).
        let moved = wait_write_port_leaves(cluster, old)?;
        cluster
            .testbed()
            .backend_at(old)
            .context("old master")?
            .start()?;
        // Every running controller's state file, the write port and the roles agree.
        let master = cluster.wait_healthy(FAILOVER_BOUND)?;
        let maps = cluster.maps()?;
        for n in 1..=3 {
            let told = master_by_name(cluster, n)?;
            ensure!(
                told == master.to_string(),
                "{step}: c{n} tells clients {told}, the write port is at {master}"
            );
        }
        ensure!(
            maps.epoch > before,
            "{step}: the write port's epoch did not move"
        );
        if durable {
            ensure!(
                master == promoted,
                "{step}: the promotion of {promoted} was durable, yet {master} is master"
            );
        }
        ensure!(
            master == moved,
            "{step}: the write port went to {moved}, then to {master}"
        );
        println!(
            "{step}: promoted {promoted}; converged on {master} (epoch {})",
            maps.epoch
        );
        Ok(())
    })
}

#[test]
fn a_leader_killed_at_each_step_of_its_promotion_converges_on_the_elected_master() -> Result<()> {
    for (step, durable) in STEPS {
        crash_at(step, durable).with_context(|| format!("killed at {step}"))?;
    }
    Ok(())
}
