//! The events that tell operators what the machine found rather than decided, with Sentinel's
//! names and payloads: the services it monitors (`+monitor`), each replica (`+slave`) and peer
//! (`+sentinel`) first seen, the roles nodes report (`+role-change`, `-role-change`), and a
//! failover that another controller runs (`+failover-detected`).

use super::*;

impl ServiceMachine {
    /// Sentinel's `sentinelGenerateInitialMonitorEvents`: once, at start.
    pub(super) fn announce_monitor(&self, out: &mut Vec<Action>) {
        let payload = format!(
            "{} quorum {}",
            self.describe(self.master),
            self.params.quorum
        );
        self.emit(out, NoticeKind::Monitor, payload);
    }

    /// A probe of `addr` answered with a role (`is_master`): `+slave` the first time a node
    /// other than the master answers, and a role that differs from the last one reported (or,
    /// for the first report, from the one we expect) as Sentinel's `sentinelRefreshInstanceInfo`
    /// logs it: `+role-change` when the new role is the one we expect, `-role-change` when not.
    pub(super) fn observe_role(&mut self, addr: NodeAddr, is_master: bool, out: &mut Vec<Action>) {
        let expected_master = addr == self.master;
        let Some(node) = self.nodes.get_mut(&addr) else {
            return;
        };
        let first = !expected_master && !node.announced;
        node.announced |= first;
        let previous = node.reported_master.unwrap_or(expected_master);
        node.reported_master = Some(is_master);
        if first {
            self.emit(out, NoticeKind::Slave, self.describe(addr));
        }
        if previous != is_master {
            let kind = if is_master == expected_master {
                NoticeKind::RoleChange
            } else {
                NoticeKind::RoleChangeMismatch
            };
            let role = if is_master { "master" } else { "slave" };
            let payload = format!("{} new reported role is {role}", self.describe(addr));
            self.emit(out, kind, payload);
        }
    }

    /// After `+switch-master`, as Sentinel's `sentinelResetMasterAndChangeAddress`: every other
    /// node is listed again as a replica of the new master (`+slave`), and the roles they
    /// report are compared with their new expected ones.
    pub(super) fn announce_replicas(&mut self, out: &mut Vec<Action>) {
        let master = self.master;
        let replicas: Vec<NodeAddr> = self
            .nodes
            .keys()
            .copied()
            .filter(|&a| a != master)
            .collect();
        for node in self.nodes.values_mut() {
            node.reported_master = None;
            node.announced = true;
        }
        for addr in replicas {
            self.emit(out, NoticeKind::Slave, self.describe(addr));
        }
    }

    /// A hello from `from`: `+sentinel` the first time since we started.
    pub(super) fn peer_heard(&mut self, from: &ControllerId, out: &mut Vec<Action>) {
        if !self.heard.insert(from.clone()) {
            return;
        }
        let (ip, port) = self
            .peer_addrs
            .get(from)
            .map_or_else(|| ("?".to_owned(), 0), |a| (a.ip().to_string(), a.port()));
        let payload = format!(
            "sentinel {from} {ip} {port} @ {} {} {}",
            self.name,
            self.master.ip(),
            self.master.port()
        );
        self.emit(out, NoticeKind::Sentinel, payload);
    }

    /// A peer stands for or runs a failover in `epoch` (its vote request, its hello):
    /// `+failover-detected` once per epoch. A request from an epoch we already left is stale,
    /// not a failover.
    pub(super) fn peer_failover(&mut self, epoch: Epoch, out: &mut Vec<Action>) {
        if epoch < self.current_epoch || self.detected.is_some_and(|seen| seen >= epoch) {
            return;
        }
        self.detected = Some(epoch);
        let payload = format!("{} epoch {epoch}", self.describe(self.master));
        self.emit(out, NoticeKind::FailoverDetected, payload);
    }
}
