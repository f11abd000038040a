//! TILT against a real cluster: the controller owning the data plane is frozen (SIGSTOP) for
//! three times down-after while a client reads through the read port, then thawed. The nodes
//! were fine all along; only the controller was not looking. It must say `+tilt`, mark no
//! node down, leave the read pool alone, and the client's one connection must go on.
//!
//! Run: `cargo test --release -p redis-ha-tests --test tilt -- --test-threads=1 --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use redis_ha_tests::trial::{LoopOptions, Request};
use redis_ha_tests::{Cluster, ClusterOptions, TrafficLoop, require_root};

const DOWN_AFTER_MS: u64 = 1000;
/// How long the controller stays frozen: well past down-after.
const FROZEN: Duration = Duration::from_millis(3 * DOWN_AFTER_MS);

#[test]
fn a_controller_frozen_past_down_after_tilts_and_resets_no_read_connection() -> Result<()> {
    require_root();
    let mut cluster = Cluster::up(ClusterOptions {
        down_after_ms: DOWN_AFTER_MS,
        ..ClusterOptions::default()
    })?;
    let outcome = frozen_controller(&mut cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(60));
    }
    outcome
}

fn frozen_controller(cluster: &mut Cluster) -> Result<()> {
    let tb = cluster.testbed();
    tb.backend(1).redis_cli(&["SET", "tilt:read", "v"])?;
    tb.wait_replication()?;
    // One connection, kept: a reset (or 5 s without an answer) ends it and shows as a failure
    // and a second connect.
    let reader = TrafficLoop::start(
        tb.client().path(),
        LoopOptions {
            addr: tb.vip_read(),
            request: Request::Get {
                key: "tilt:read".into(),
            },
            pause: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            reconnect_every: None,
            max_duration: Duration::from_secs(60),
            max_requests: 6_000,
        },
    )?;
    let started = Instant::now();
    reader.wait_acks_after(started, 50, Duration::from_secs(10))?;
    let before = cluster.maps()?;

    let c1 = cluster.controller(1);
    let mark = c1.mark();
    c1.stop()?;
    let stopped_at = Instant::now();
    std::thread::sleep(FROZEN);
    c1.resume()?;
    let resumed_at = Instant::now();
    // TILT lasts max(down-after, peer report validity) = 1 s here; then a few rounds of
    // normal judgement, which must find every node as it was.
    std::thread::sleep(Duration::from_secs(4));
    let after = cluster.maps()?;
    let record = reader.finish()?;

    println!(
        "reads: {} ok, {} while c1 was frozen, {} after; {} failed; {} connection(s)",
        record.acks.len(),
        record
            .acks
            .iter()
            .filter(|(_, t)| *t > stopped_at && *t <= resumed_at)
            .count(),
        record.acks_after(resumed_at),
        record.failure_count,
        record.connects
    );
    let sdown = c1.events("+sdown", mark);
    ensure!(
        sdown.is_empty(),
        "c1 marked nodes down after its own stall: {:?}",
        sdown.iter().map(|e| &e.line).collect::<Vec<_>>()
    );
    ensure!(
        c1.count_events("+odown", mark) == 0 && c1.count_events("+try-failover", mark) == 0,
        "c1 acted on its stall"
    );
    ensure!(
        record.failure_count == 0 && record.connects == 1,
        "the read connection broke: {} failures ({:?}), {} connections",
        record.failure_count,
        &record.failures[..record.failures.len().min(5)],
        record.connects
    );
    ensure!(
        record.acks_after(resumed_at) > 100,
        "reads stalled after the thaw"
    );
    ensure!(
        (after.master(), after.epoch, after.readable())
            == (before.master(), before.epoch, before.readable()),
        "the data plane changed: before {:?} {:?}, after {:?} {:?}",
        before.master(),
        before.readable(),
        after.master(),
        after.readable()
    );
    let tilt = c1.events("+tilt", mark);
    let cleared = c1.events("-tilt", mark);
    for e in tilt.iter().chain(&cleared) {
        println!("{}", e.line);
    }
    ensure!(
        tilt.len() == 1 && cleared.len() == 1,
        "expected one +tilt and one -tilt, got {} and {}",
        tilt.len(),
        cleared.len()
    );
    Ok(())
}
