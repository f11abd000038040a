//! `systemctl reload` where the VIP floats: two data-plane nodes and a voter (see
//! `redis_ha_tests::ha`), a client holding one connection to each VIP port, and every
//! controller reloaded with a changed service timer. The addresses must stay with their holder
//! (no ARP claim by anyone else), the controllers must keep their PIDs, and neither connection
//! may see a failed request or a reconnect.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use redis_ha_tests::ha::owner_changes;
use redis_ha_tests::testbed::VIP;
use redis_ha_tests::{HaCluster, HaOptions, require_root};

const PREFIX: &str = "hareload";
const READ_KEY: &str = "hareload:read";
/// How long a controller may take to log a reload's outcome.
const RELOAD_BOUND: Duration = Duration::from_secs(10);

#[test]
fn reloading_every_controller_keeps_the_vip_on_its_holder_and_every_connection() -> Result<()> {
    require_root();
    let ha = HaCluster::up(HaOptions::default())?;
    let outcome = reload_everywhere(&ha);
    if outcome.is_err() {
        eprintln!("{}", ha.log_tails(60));
    }
    outcome
}

fn reload_everywhere(ha: &HaCluster) -> Result<()> {
    let holder = ha.wait_single_holder(Duration::from_secs(20))?;
    let (writer, reader) =
        ha.start_vip_clients(PREFIX, READ_KEY, Duration::from_secs(120), 12_000)?;
    let started = Instant::now();
    writer.wait_acks_after(started, 20, Duration::from_secs(10))?;
    reader.wait_acks_after(started, 20, Duration::from_secs(10))?;

    let arp = ha.capture_client_arp()?;
    let pids: Vec<Option<u32>> = ha.controllers().iter().map(|c| c.pid()).collect();
    let from = format!("down_after_ms = {}", ha.options().down_after_ms);
    let to = format!("down_after_ms = {}", ha.options().down_after_ms + 500);
    for c in ha.controllers() {
        let path = c.config_path();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            text.matches(&from).count() == 1,
            "{c}: expected one `{from}` in {}",
            path.display()
        );
        std::fs::write(path, text.replace(&from, &to))
            .with_context(|| format!("writing {}", path.display()))?;
        let mark = c.mark();
        c.reload()?;
        c.wait_for_line(&["config reloaded"], mark, RELOAD_BOUND)?;
    }
    // Several lease renewals (heartbeat 50 ms) and probe rounds after the last reload.
    let after = Instant::now();
    writer.wait_acks_after(after, 100, Duration::from_secs(10))?;
    reader.wait_acks_after(after, 100, Duration::from_secs(10))?;
    let claims = arp.stop()?;

    ensure!(
        ha.wait_single_holder(Duration::from_secs(5))? == holder,
        "the VIP left lb{holder} across the reload"
    );
    let owners = owner_changes(&claims, VIP);
    ensure!(
        owners.len() <= 1,
        "the VIP changed hands on the client segment during the reload: {owners:?}"
    );
    let now: Vec<Option<u32>> = ha.controllers().iter().map(|c| c.pid()).collect();
    ensure!(now == pids, "controllers restarted: {pids:?} -> {now:?}");

    let writes = writer.finish()?;
    let reads = reader.finish()?;
    ensure!(
        writes.connects == 1 && reads.connects == 1,
        "connections were re-opened (write port {}, read port {}); failures: {:?} {:?}",
        writes.connects,
        reads.connects,
        writes.failures.first(),
        reads.failures.first()
    );
    ensure!(
        writes.failure_count == 0 && reads.failure_count == 0,
        "requests failed across the reload: {:?} {:?}",
        writes.failures.first(),
        reads.failures.first()
    );
    println!(
        "reloaded 3 controllers: VIP stayed on lb{holder}; {} writes and {} reads, 0 failed, \
         one connection each",
        writes.acks.len(),
        reads.acks.len()
    );
    Ok(())
}
