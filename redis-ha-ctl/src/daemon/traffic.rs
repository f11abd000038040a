//! The data plane's counters and the connection-table sweep, as a background task with map
//! handles of its own. Reading the counters is a syscall per slot and CPU, and a sweep reads
//! the whole connection table (131,072 syscalls for a full default table, some 100 ms of
//! CPU): on the executor's task that would hold up failover decisions, so they run here, on a
//! blocking thread, and the executor only picks up the latest reading when it publishes the
//! status.

use std::{collections::BTreeMap, path::Path, time::Duration};

use redis_ha_common::counter;
use tokio::{
    sync::watch,
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, warn};

use crate::{
    dataplane::bpf::{BpfDataplane, BpfError},
    ha::net::monotonic_ns,
};

/// The data plane's counters are read (a syscall per slot and CPU) this often.
const DATAPLANE_REFRESH: Duration = Duration::from_millis(500);
/// The connection table is swept and counted at most this often (a full default table is
/// 131,072 syscalls, some 100 ms of CPU).
const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What the data plane counted, as last read.
#[derive(Clone, Default)]
pub(super) struct DataplaneCounters {
    /// Per backend slot.
    pub(super) backends: BTreeMap<u32, redis_ha_common::BackendStats>,
    pub(super) packets: BTreeMap<String, u64>,
    pub(super) flow_entries: usize,
    pub(super) flows_spilled: bool,
    /// When the connection table was last swept (and its entries counted).
    swept_at: Option<Instant>,
}

impl DataplaneCounters {
    /// Also sweeps the connection table (see [`crate::dataplane::sweep`]) and counts its
    /// entries, at most every [`FLOW_SWEEP_INTERVAL`]: that reads the whole table, two
    /// syscalls an entry. In between, `previous`'s count stands.
    fn read(
        dp: &mut BpfDataplane,
        previous: Option<&DataplaneCounters>,
        now: Instant,
    ) -> Result<Self, BpfError> {
        let fresh = previous.and_then(|p| {
            let at = p.swept_at?;
            (now.duration_since(at) < FLOW_SWEEP_INTERVAL).then_some((
                at,
                p.flow_entries,
                p.flows_spilled,
            ))
        });
        let (swept_at, flow_entries, flows_spilled) = match fresh {
            Some(f) => f,
            None => {
                let (entries, spilled) = Self::sweep(dp)?;
                (now, entries, spilled)
            }
        };
        Ok(Self {
            backends: dp.backend_stats()?.into_iter().collect(),
            packets: dp
                .counters()?
                .iter()
                .enumerate()
                .map(|(i, v)| (counter::NAMES[i].to_owned(), *v))
                .collect(),
            flow_entries,
            flows_spilled,
            swept_at: Some(swept_at),
        })
    }

    /// One sweep; the entries left, and whether `FLOWS` was ever full since load.
    fn sweep(dp: &mut BpfDataplane) -> Result<(usize, bool), BpfError> {
        let sweep = dp.sweep_flows(monotonic_ns())?;
        if sweep.removed > 0 {
            debug!(
                removed = sweep.removed,
                "swept ended connections from FLOWS"
            );
        }
        let spilled = dp.spilling_since()?;
        if let Some(since) = spilled {
            // Once a load: the time stays set until the data plane is loaded again.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                warn!(
                    since_s_ago = monotonic_ns().saturating_sub(since) / 1_000_000_000,
                    "the connection table FLOWS was full: new connections went to FLOWS_SPILL, \
                     which works but costs more per packet; raise [dataplane] flow_table_size"
                )
            });
        }
        Ok((sweep.entries, spilled.is_some()))
    }
}

/// Reads the counters and sweeps the connection table on handles of its own (the executor's
/// stay with the executor), and publishes each reading.
pub(super) struct TrafficReader {
    dp: BpfDataplane,
    last: Option<DataplaneCounters>,
    tx: watch::Sender<Option<DataplaneCounters>>,
}

impl TrafficReader {
    /// Opens the maps pinned at `pin_dir` and takes a first reading at once, so that the first
    /// status already shows the traffic.
    pub(super) fn open(
        pin_dir: &Path,
        tx: watch::Sender<Option<DataplaneCounters>>,
    ) -> Result<Self, BpfError> {
        let mut reader = Self {
            dp: BpfDataplane::open(pin_dir)?,
            last: None,
            tx,
        };
        reader.refresh();
        Ok(reader)
    }

    /// One reading (blocking: syscalls), published; a failed one leaves the last standing.
    fn refresh(&mut self) {
        let now = Instant::now();
        match DataplaneCounters::read(&mut self.dp, self.last.as_ref(), now) {
            Ok(c) => {
                self.last = Some(c.clone());
                self.tx.send_replace(Some(c));
            }
            Err(e) => warn!("reading the data plane's counters: {e}"),
        }
    }

    /// Reads every [`DATAPLANE_REFRESH`] until the executor is gone.
    pub(super) async fn run(mut self) {
        let mut ticker = tokio::time::interval(DATAPLANE_REFRESH);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate, and `open` just read.
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if self.tx.is_closed() {
                return;
            }
            self = match tokio::task::spawn_blocking(move || {
                self.refresh();
                self
            })
            .await
            {
                Ok(reader) => reader,
                // Only if the reading panicked; the status keeps its last counters.
                Err(e) => {
                    warn!("reading the data plane's counters: {e}");
                    return;
                }
            };
        }
    }
}
