//! From the leader's choice of a replica to the new configuration: promotion, the replicas'
//! reconfiguration, and `+switch-master`.

use super::*;

impl ServiceMachine {
    /// `SEND_SLAVEOF_NOONE`, then `WAIT_PROMOTION`.
    pub(super) fn promote(
        &mut self,
        epoch: Epoch,
        promoted: NodeAddr,
        forced: Option<Forced>,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        let replica = self.describe(promoted);
        self.emit(
            out,
            NoticeKind::FailoverStateSendSlaveofNoone,
            replica.clone(),
        );
        out.push(Action::PromoteReplica { node: promoted });
        self.emit(out, NoticeKind::FailoverStateWaitPromotion, replica);
        Failover::Promotion {
            epoch,
            promoted,
            since: now,
            sent: true,
            forced,
        }
    }

    /// `WAIT_PROMOTION` on a tick: resend if the command failed, abort after the failover timeout.
    /// The way out is a probe reporting `role:master` ([`Self::confirm_promotion`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "the state's fields, passed by value as the other phases' are"
    )]
    pub(super) fn promotion(
        &mut self,
        epoch: Epoch,
        promoted: NodeAddr,
        since: Millis,
        mut sent: bool,
        forced: Option<Forced>,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        let timeout = forced.map_or(self.params.failover_timeout_ms, |f| f.timeout);
        if now.saturating_sub(since) > timeout {
            match forced {
                Some(f) => self.abort_forced(
                    epoch,
                    NoticeKind::FailoverAbortSlaveTimeout,
                    Some((promoted, f)),
                    out,
                ),
                None => self.emit(
                    out,
                    NoticeKind::FailoverAbortSlaveTimeout,
                    self.describe(self.master),
                ),
            }
            return Failover::Idle;
        }
        if !sent && self.nodes[&promoted].liveness.is_up() {
            out.push(Action::PromoteReplica { node: promoted });
            sent = true;
        }
        Failover::Promotion {
            epoch,
            promoted,
            since,
            sent,
            forced,
        }
    }

    /// Sentinel's `sentinelSelectSlave`: the best replica among those not SDOWN, heard from
    /// recently, whose link to the old master has not been down for too long, and whose priority
    /// is not 0.
    pub(super) fn select_replica(&self, now: Millis) -> Option<NodeAddr> {
        select::best(
            self.nodes
                .keys()
                .filter_map(|&addr| self.promotion_candidate(addr, now, false).ok()),
        )
    }

    /// Whether `addr` may be promoted (see [`Self::select_replica`]), or why not. For a planned
    /// switchover (`sync`) it must also be a replica of the master right now, with its link up:
    /// it has to catch up before the promotion.
    pub(super) fn promotion_candidate(
        &self,
        addr: NodeAddr,
        now: Millis,
        sync: bool,
    ) -> Result<Candidate<'_>, &'static str> {
        let node = self
            .nodes
            .get(&addr)
            .ok_or("it is not a node of this service")?;
        if addr == self.master {
            return Err("it is the master");
        }
        if !node.liveness.is_up() {
            return Err("it is down (SDOWN)");
        }
        if now.saturating_sub(node.liveness.last_ok()) > self.params.reply_validity() {
            return Err("it has not answered a probe recently");
        }
        let info = node.info.as_ref().ok_or("it never answered a probe")?;
        // The master we believe in reports a replica (a replication loop, replicas only, or
        // it follows some other node): no replica can follow it, so any node of the service
        // may be promoted, whomever it follows, or none (a node that claims to be master is
        // judged by its own offset).
        let masterless = !sync
            && self.nodes[&self.master]
                .role()
                .is_some_and(|r| r.follows().is_some());
        let claimed;
        let replica = match &info.role {
            Role::Replica(r) => r,
            Role::Master { .. } if sync => return Err("it claims to be a master"),
            Role::Master { repl_offset } if masterless => {
                claimed = ReplicaInfo {
                    master: self.master,
                    link_up: false,
                    link_down_ms: 0,
                    lag_ms: 0,
                    repl_offset: *repl_offset,
                    priority: node
                        .last_replica
                        .as_ref()
                        .map_or(DEFAULT_PRIORITY, |r| r.priority),
                };
                &claimed
            }
            // Promoted by a leader that died: judge it by how far it had replicated.
            Role::Master { .. } => node
                .last_replica
                .as_ref()
                .ok_or("it claims to be a master")?,
        };
        if replica.master != self.master && !masterless {
            return Err("it does not replicate from the master");
        }
        if replica.priority == 0 {
            return Err("its replica-priority is 0");
        }
        if sync && !replica.link_up {
            return Err("its link to the master is down");
        }
        let master_down_for = self.nodes[&self.master]
            .liveness
            .down_since()
            .map_or(0, |since| now.saturating_sub(since));
        let max_link_down = master_down_for + self.params.down_after_ms.saturating_mul(10);
        if replica.link_down_ms > max_link_down {
            return Err("its link to the master has been down too long");
        }
        Ok(Candidate {
            addr,
            priority: replica.priority,
            repl_offset: replica.repl_offset,
            run_id: info.run_id.as_deref(),
        })
    }

    /// A probe reported something the failover in progress waits for.
    pub(super) fn track_failover(&mut self, addr: NodeAddr, now: Millis, out: &mut Vec<Action>) {
        let Some(role) = self.nodes.get(&addr).and_then(Node::role) else {
            return;
        };
        let (follows, link_up) = match role {
            Role::Master { .. } => (None, false),
            Role::Replica(r) => (Some(r.master), r.link_up),
        };
        match &mut self.failover {
            Failover::Promotion {
                epoch,
                promoted,
                forced,
                ..
            } if *promoted == addr && follows.is_none() => {
                let (epoch, promoted, forced) = (*epoch, *promoted, *forced);
                self.confirm_promotion(epoch, promoted, forced, now, out);
            }
            Failover::Reconfiguration(r) if follows == Some(r.promoted) => {
                let Some(state) = r.replicas.get_mut(&addr) else {
                    return;
                };
                let mut notices = Vec::new();
                if matches!(state, Reconf::Sent { .. }) {
                    *state = Reconf::InProgress;
                    notices.push(NoticeKind::SlaveReconfInprog);
                }
                if *state == Reconf::InProgress && link_up {
                    *state = Reconf::Done;
                    notices.push(NoticeKind::SlaveReconfDone);
                }
                for kind in notices {
                    self.emit(out, kind, self.describe(addr));
                }
            }
            _ => {}
        }
    }

    /// The promoted replica reports `role:master`: from now on its epoch is the configuration
    /// (Sentinel sets `config_epoch = failover_epoch` here), the write port moves to it, and the
    /// failover can no longer be aborted.
    pub(super) fn confirm_promotion(
        &mut self,
        epoch: Epoch,
        promoted: NodeAddr,
        forced: Option<Forced>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        self.config_epoch = epoch;
        self.emit(out, NoticeKind::PromotedSlave, self.describe(promoted));
        self.emit(
            out,
            NoticeKind::FailoverStateReconfSlaves,
            self.describe(self.master),
        );
        let replicas = self
            .nodes
            .keys()
            .filter(|&&addr| addr != promoted && addr != self.master)
            .map(|&addr| (addr, Reconf::Pending))
            .collect();
        self.failover = Failover::Reconfiguration(Reconfiguration {
            epoch,
            promoted,
            since: now,
            replicas,
        });
        // Durable before the write port moves, with the promoted node as the epoch's master.
        self.persist(out);
        self.set_master(epoch, promoted, out);
        let paused = forced.filter(|f| f.paused);
        if let Some(f) = paused {
            // Writes are held: tell the peers (a peer owning a data plane switches on this) and
            // resume them right after the write port moved, before the read pool's update (a
            // Maglev table rewrite). New connections already go to the new master when the old
            // one closes its clients and turns replica.
            self.send_hello(now, out);
            out.push(Action::ResumeWrites {
                node: f.old_master,
                demote_to: Some(promoted),
            });
        }
        self.publish_read_pool(now, out);
        if paused.is_none() {
            // Sentinel's sentinelForceHelloUpdateForMaster: the others switch on this.
            self.send_hello(now, out);
        }
        if let Some(f) = forced {
            out.push(Action::Forced(ForcedOutcome::Switched {
                epoch,
                from: f.old_master,
                to: promoted,
            }));
        }
        if let Failover::Reconfiguration(r) = std::mem::take(&mut self.failover) {
            self.failover = self.reconfigure(r, now, out);
        }
    }

    /// `RECONF_SLAVES`: point replicas at the new master, `parallel_syncs` at a time, then end.
    pub(super) fn reconfigure(
        &mut self,
        mut r: Reconfiguration,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        self.reconf_next(&mut r, now, out);
        if self.reconf_finished(&mut r, now, out) {
            self.switch_master(r.promoted, now, out);
            return Failover::Idle;
        }
        Failover::Reconfiguration(r)
    }

    /// Sentinel's `sentinelFailoverReconfNextSlave`.
    pub(super) fn reconf_next(
        &mut self,
        r: &mut Reconfiguration,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let timeout = self.params.replica_reconf_timeout_ms;
        let addrs: Vec<NodeAddr> = r.replicas.keys().copied().collect();
        for &addr in &addrs {
            if let Reconf::Sent { at } = r.replicas[&addr]
                && now.saturating_sub(at) > timeout
            {
                // The fix-up after the failover will catch it.
                r.replicas.insert(addr, Reconf::Done);
                self.emit(out, NoticeKind::SlaveReconfSentTimeout, self.describe(addr));
            }
        }
        let mut in_progress = r
            .replicas
            .values()
            .filter(|s| matches!(s, Reconf::Sent { .. } | Reconf::InProgress))
            .count();
        for &addr in &addrs {
            if in_progress >= self.params.parallel_syncs {
                break;
            }
            if r.replicas[&addr] != Reconf::Pending || !self.nodes[&addr].liveness.is_up() {
                continue;
            }
            out.push(Action::ReplicaOf {
                node: addr,
                master: r.promoted,
            });
            self.emit(out, NoticeKind::SlaveReconfSent, self.describe(addr));
            r.replicas.insert(addr, Reconf::Sent { at: now });
            in_progress += 1;
        }
    }

    /// Sentinel's `sentinelFailoverDetectEnd`: done when every reachable replica follows the new
    /// master, or on timeout (then best-effort REPLICAOF to the rest).
    pub(super) fn reconf_finished(
        &mut self,
        r: &mut Reconfiguration,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> bool {
        let timed_out = now.saturating_sub(r.since) > self.params.failover_timeout_ms;
        // Sentinel waits forever while the promoted node is SDOWN; its epoch is already the
        // configuration, so we still end on timeout and let a new failover handle it.
        if !self.nodes[&r.promoted].liveness.is_up() && !timed_out {
            return false;
        }
        let not_reconfigured = r
            .replicas
            .iter()
            .filter(|&(addr, state)| *state != Reconf::Done && self.nodes[addr].liveness.is_up())
            .count();
        if timed_out {
            self.emit(
                out,
                NoticeKind::FailoverEndForTimeout,
                self.describe(self.master),
            );
            let pending: Vec<NodeAddr> = r
                .replicas
                .iter()
                .filter(|&(addr, state)| {
                    *state == Reconf::Pending && self.nodes[addr].liveness.is_up()
                })
                .map(|(&addr, _)| addr)
                .collect();
            for addr in pending {
                out.push(Action::ReplicaOf {
                    node: addr,
                    master: r.promoted,
                });
                self.emit(out, NoticeKind::SlaveReconfSentBe, self.describe(addr));
                r.replicas.insert(addr, Reconf::Sent { at: now });
            }
        }
        if not_reconfigured == 0 || timed_out {
            self.emit(out, NoticeKind::FailoverEnd, self.describe(self.master));
            return true;
        }
        false
    }

    /// `+switch-master` (Sentinel's `sentinelResetMasterAndChangeAddress`): `new` is the master.
    /// Everything we believed about the old master's down state, and every peer report (which may
    /// predate the switch), is forgotten: none of it says anything about the new master.
    pub(super) fn switch_master(&mut self, new: NodeAddr, now: Millis, out: &mut Vec<Action>) {
        let old = self.master;
        let payload = format!(
            "{} {} {} {} {}",
            self.name,
            old.ip(),
            old.port(),
            new.ip(),
            new.port()
        );
        self.emit(out, NoticeKind::SwitchMaster, payload);
        self.replaced = Some((old, now));
        self.master = new;
        self.failover = Failover::Idle;
        self.failover_start = None;
        self.odown = false;
        for report in self.reports.values_mut() {
            report.hello = None;
            report.vote = None;
        }
        self.reports.retain(|_, r| r.busy.is_some());
        let node = self.nodes.entry(new).or_insert_with(|| Node::new(now));
        node.liveness = Liveness::new(now);
        node.role_since = now;
        self.announce_replicas(out);
        // The old master is now listed as a replica. A quorum found it down; if our own
        // probes are failing too, say so now rather than after the rest of down-after, or
        // Sentinel clients (redis-py's `discover_slaves`) would send reads to a dead node.
        if let Some(Flip::Down) = self
            .nodes
            .get_mut(&old)
            .and_then(|n| n.liveness.confirm_down(now, &self.params))
        {
            self.emit(out, NoticeKind::Sdown, self.describe(old));
        }
        self.persist(out);
        self.set_master(self.config_epoch, new, out);
        self.publish_read_pool(now, out);
        self.send_hello(now, out);
    }
}
