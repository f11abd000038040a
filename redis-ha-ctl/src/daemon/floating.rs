//! The floating addresses (the VIP, the backends' gateway) on the executor's side: it performs
//! the ownership machine's actions in order and hands the machine's lease to the data plane.

use std::{net::Ipv4Addr, time::Duration};

use tokio::time::Instant;

use crate::dataplane::Dataplane;
use tracing::{error, info};

use super::{
    control::EventHub,
    executor::{now_ms, unix_ms},
    peers::PeerSender,
};
use crate::{
    ha::{HaAction, HaMachine, net::AddressWorker, net::monotonic_ns},
    persist::StateStore,
    status::EventRecord,
};

/// The event name under which the floating addresses' events are published (in place of a
/// service name).
const HA_EVENTS: &str = "vip";

/// The ownership machine and what this node does about its decisions.
pub(super) struct Floating {
    /// Who holds the floating addresses: every controller takes part, as a voter at least.
    pub(super) machine: HaMachine,
    /// How often the machine ticks.
    pub(super) tick: Duration,
    /// This node's floating addresses, on a node configured with `[ha]`.
    pub(super) addresses: Option<AddressWorker>,
    /// How many times this node took them since it started.
    pub(super) acquired: u64,
    /// The ARP lease last written to the data plane (`CLOCK_MONOTONIC` ns, 0: none).
    lease_written: u64,
}

impl Floating {
    pub(super) fn new(
        machine: HaMachine,
        tick: Duration,
        addresses: Option<AddressWorker>,
    ) -> Self {
        Self {
            machine,
            tick,
            addresses,
            acquired: 0,
            lease_written: 0,
        }
    }

    /// Performs the machine's actions in order: the state file first (a vote must not leave
    /// before it is durable), then the messages, addresses and events; then hands the
    /// (possibly moved) lease to the data plane. `start`: the origin of the machine's clock.
    pub(super) async fn perform<D: Dataplane>(
        &mut self,
        actions: Vec<HaAction>,
        store: &mut StateStore,
        peers: &mut PeerSender,
        events: &EventHub,
        dataplane: Option<&mut D>,
        start: Instant,
    ) {
        self.perform_actions(actions, store, peers, events).await;
        self.refresh_lease(dataplane, start);
    }

    async fn perform_actions(
        &mut self,
        actions: Vec<HaAction>,
        store: &mut StateStore,
        peers: &mut PeerSender,
        events: &EventHub,
    ) {
        for action in actions {
            match action {
                HaAction::Persist(p) => {
                    if let Err(e) = store.put_ha(&p) {
                        error!("cannot persist the floating addresses' vote, not sending it: {e}");
                        return;
                    }
                }
                HaAction::Send { to, msg } => peers.send_ha(to.as_ref(), &msg).await,
                HaAction::Acquire { epoch } => {
                    if let Some(worker) = &self.addresses {
                        worker.acquire(epoch);
                        self.acquired += 1;
                    }
                }
                HaAction::Release { epoch, reason } => {
                    if let Some(worker) = &self.addresses {
                        worker.release(epoch, reason);
                    }
                }
                HaAction::Notice { name, payload } => {
                    info!(event = name, "{payload}");
                    events.publish(EventRecord {
                        at_unix_ms: unix_ms(),
                        service: HA_EVENTS.to_owned(),
                        name: name.to_owned(),
                        payload,
                    });
                }
            }
        }
    }

    /// Hands the lease to the data plane, which answers ARP for the floating addresses only
    /// until it runs out: if this process dies while holding them, they fall silent within
    /// the lease even though they stay configured.
    fn refresh_lease<D: Dataplane>(&mut self, dataplane: Option<&mut D>, start: Instant) {
        let Some(worker) = &self.addresses else {
            return;
        };
        let Some(dp) = dataplane else {
            return;
        };
        let now = now_ms(start);
        let until_ns = match self.machine.lease_until(now) {
            Some(until) if until > now => {
                monotonic_ns().saturating_add((until - now).saturating_mul(1_000_000))
            }
            _ => 0,
        };
        // Each acknowledgement moves the lease on by a heartbeat or so; smaller moves are
        // clock noise between the two readings.
        let moved = if until_ns == 0 {
            self.lease_written != 0
        } else {
            until_ns > self.lease_written + 2_000_000
        };
        if !moved {
            return;
        }
        let addresses: Vec<Ipv4Addr> = worker.addresses().iter().map(|a| a.address).collect();
        match dp.set_floating_leases(&addresses, until_ns) {
            Ok(()) => self.lease_written = until_ns,
            Err(e) => error!("writing the floating addresses' ARP lease: {e}"),
        }
    }

    /// Waits until the addresses' changes are done (a release must be done before the process
    /// is, or the addresses would outlive it).
    pub(super) async fn flush(&self) {
        if let Some(worker) = &self.addresses {
            worker.flush(Duration::from_secs(2)).await;
        }
    }
}
