//! What the soak watches besides the workload: who the data plane's write port points at
//! (every 250 ms, recorded only when it changes), and every 10 s each controller's resident
//! memory and open file descriptors and the connection tables' size.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis_ha_tests::trial::ms_since;
use redis_ha_tests::{Cluster, open_fds, vm_rss_kib};

const MAPS_EVERY: Duration = Duration::from_millis(250);
pub const RESOURCES_EVERY: Duration = Duration::from_secs(10);

/// The write port seen on a new (epoch, master) by a sample that ended at `seen_ms`; the last
/// sample that still showed the old one started at `prev_sample_ms`. A sample reads the maps
/// somewhere between its start and its end (`redis-ha-ctl maps` is a process, slow to start on
/// a busy machine), so the change itself happened in (prev_sample_ms, seen_ms].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterChange {
    pub prev_sample_ms: u32,
    pub seen_ms: u32,
    pub epoch: u64,
    /// 1-based backend index (as the writer's records name backends); 0: no master.
    pub master: u8,
}

/// One controller's resources at one moment.
#[derive(Clone, Copy, Debug)]
pub struct ResourceSample {
    pub at_ms: u32,
    /// 1-based controller index (c1 = 1).
    pub controller: u8,
    pub pid: u32,
    pub rss_kib: u64,
    pub fds: u32,
    /// FLOWS + FLOWS_SPILL entries at the latest `maps` sample.
    pub flows: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct MonitorRecord {
    pub changes: Vec<MasterChange>,
    pub resources: Vec<ResourceSample>,
    pub maps_samples: u64,
    pub maps_errors: u64,
}

/// Samples until `stop` is set or `max_duration` has passed.
pub fn run(
    cluster: &Cluster,
    origin: Instant,
    stop: &AtomicBool,
    max_duration: Duration,
) -> MonitorRecord {
    let started = Instant::now();
    let backends: Vec<_> = cluster
        .testbed()
        .backends()
        .iter()
        .map(|b| b.addr())
        .collect();
    let mut record = MonitorRecord::default();
    let mut last_sample_ms = None;
    let mut flows = None;
    let mut next_resources = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < max_duration {
        let sample_start = ms_since(origin, Instant::now());
        match cluster.maps() {
            Ok(maps) => {
                let now = ms_since(origin, Instant::now());
                record.maps_samples += 1;
                flows = maps.flows.or(flows);
                let master = maps
                    .master()
                    .and_then(|m| backends.iter().position(|b| *b == m))
                    .map_or(0, |i| i as u8 + 1);
                let changed = record
                    .changes
                    .last()
                    .is_none_or(|c| (c.epoch, c.master) != (maps.epoch, master));
                if changed {
                    record.changes.push(MasterChange {
                        prev_sample_ms: last_sample_ms.unwrap_or(now),
                        seen_ms: now,
                        epoch: maps.epoch,
                        master,
                    });
                }
                last_sample_ms = Some(sample_start);
            }
            Err(_) => record.maps_errors += 1,
        }
        if Instant::now() >= next_resources {
            next_resources += RESOURCES_EVERY;
            let at_ms = ms_since(origin, Instant::now());
            for (i, c) in cluster.controllers().iter().enumerate() {
                let Some(pid) = c.pid() else { continue };
                let (Some(rss_kib), Some(fds)) = (vm_rss_kib(pid), open_fds(pid)) else {
                    continue;
                };
                record.resources.push(ResourceSample {
                    at_ms,
                    controller: i as u8 + 1,
                    pid,
                    rss_kib,
                    fds: fds as u32,
                    flows,
                });
            }
        }
        std::thread::sleep(MAPS_EVERY);
    }
    record
}
