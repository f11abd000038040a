//! An operator's failover (`SENTINEL FAILOVER`, `redis-ha-ctl failover`): elected like an
//! automatic one, then a planned switchover that pauses writes while the target catches up,
//! with every way out resuming them.

use super::*;

impl ServiceMachine {
    /// Sentinel's `SENTINEL FAILOVER`, but elected: stand in a new epoch and ask the peers for
    /// their votes; nothing is done to any Redis server before a majority voted for us
    /// ([`Self::forced_elected`]). Refused at once when it could not start: another failover is
    /// known to be under way, or the target cannot be promoted.
    pub(super) fn force_failover(
        &mut self,
        to: Option<NodeAddr>,
        timeout: Millis,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) -> Result<(), ForceRefused> {
        if !matches!(self.failover, Failover::Idle) {
            return Err(ForceRefused::InProgress);
        }
        if let Some(remaining_ms) = self.tilt_remaining(now) {
            return Err(ForceRefused::Tilt { remaining_ms });
        }
        if self.in_safe_mode() {
            return Err(ForceRefused::SafeMode);
        }
        let request = ForceRequest {
            to,
            timeout,
            since: now,
        };
        if let Some((leader, epoch)) = self.busy_peer(now, None) {
            return Err(ForceRefused::PeerInProgress { leader, epoch });
        }
        // Checked now so that a wrong request gets its answer at once, and again once elected.
        self.forced_target(to, now, self.master_looks_sane(now))?;
        let epoch = self.stand(out);
        self.failover_start = Some(now);
        out.push(Action::SendToPeers(PeerMsg::VoteRequest {
            epoch,
            master: self.master,
        }));
        // Alone (no peers), our own vote is the majority.
        self.failover = self.election(epoch, now, Some(request), now, jitter, out);
        Ok(())
    }

    /// The replica a forced failover promotes: `to`, or the best one. With `pause`, it must be
    /// able to catch up with the master first.
    pub(super) fn forced_target(
        &self,
        to: Option<NodeAddr>,
        now: Millis,
        pause: bool,
    ) -> Result<NodeAddr, ForceRefused> {
        match to {
            Some(node) if node == self.master => Err(ForceRefused::AlreadyMaster(node)),
            Some(node) if !self.nodes.contains_key(&node) => Err(ForceRefused::UnknownNode(node)),
            Some(node) => self
                .promotion_candidate(node, now, pause)
                .map(|c| c.addr)
                .map_err(|why| ForceRefused::NotEligible { node, why }),
            None => select::best(
                self.nodes
                    .keys()
                    .filter_map(|&addr| self.promotion_candidate(addr, now, pause).ok()),
            )
            .ok_or(ForceRefused::NoGoodReplica),
        }
    }

    /// A majority voted for our operator's failover in `epoch`. If the master answers, pause
    /// its writes and let the target catch up first ([`Action::PauseAndSync`]); otherwise
    /// promote at once (Sentinel's forced failover of a dead master).
    pub(super) fn forced_elected(
        &mut self,
        epoch: Epoch,
        request: ForceRequest,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        // Pausing needs a master that takes commands; a dead one has nothing left to lose.
        let pause = self.master_looks_sane(now);
        let target = match self.forced_target(request.to, now, pause) {
            Ok(target) => target,
            Err(refused) => {
                out.push(Action::Forced(ForcedOutcome::Refused(refused)));
                self.failover_start = None;
                return Failover::Idle;
            }
        };
        let master = self.describe(self.master);
        self.emit(out, NoticeKind::ElectedLeader, master.clone());
        self.emit(out, NoticeKind::FailoverStateSelectSlave, master);
        self.emit(out, NoticeKind::SelectedSlave, self.describe(target));
        out.push(Action::Forced(ForcedOutcome::Started {
            epoch,
            target,
            paused: pause,
        }));
        if pause {
            self.emit(
                out,
                NoticeKind::FailoverStateWaitSync,
                self.describe(target),
            );
            out.push(Action::PauseAndSync {
                master: self.master,
                target,
                pause_ms: switchover_pause_ms(request.timeout),
                timeout_ms: request.timeout,
            });
            Failover::Sync {
                epoch,
                target,
                since: now,
                timeout: request.timeout,
            }
        } else {
            let forced = Forced {
                old_master: self.master,
                paused: false,
                timeout: self.params.failover_timeout_ms,
            };
            self.promote(epoch, target, Some(forced), now, out)
        }
    }

    /// The executor paused writes and the target caught up (or not).
    pub(super) fn on_synced(
        &mut self,
        target: NodeAddr,
        ok: bool,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let Failover::Sync {
            epoch,
            target: waiting_for,
            timeout,
            ..
        } = self.failover
        else {
            return; // Late report of an attempt already given up.
        };
        if waiting_for != target {
            return;
        }
        if !ok {
            self.abort_forced(epoch, NoticeKind::FailoverAbortNotSynced, None, out);
            self.failover = Failover::Idle;
            return;
        }
        let forced = Forced {
            old_master: self.master,
            paused: true,
            timeout,
        };
        self.failover = self.promote(epoch, target, Some(forced), now, out);
    }

    /// Give up a forced failover before its promotion was confirmed. If writes are paused,
    /// resume them on the (unchanged) master, after telling a replica we may have promoted
    /// (`promoting`) to follow the master again, so that only one node takes writes.
    pub(super) fn abort_forced(
        &mut self,
        epoch: Epoch,
        reason: NoticeKind,
        promoting: Option<(NodeAddr, Forced)>,
        out: &mut Vec<Action>,
    ) {
        self.emit(out, reason, self.describe(self.master));
        let paused = promoting.is_none_or(|(_, f)| f.paused);
        if paused {
            if let Some((promoted, f)) = promoting {
                out.push(Action::ReplicaOf {
                    node: promoted,
                    master: f.old_master,
                });
            }
            out.push(Action::ResumeWrites {
                node: self.master,
                demote_to: None,
            });
            // Nothing changed and the master serves again: a failover it may need later must
            // not wait out the retry delay of an attempt that never touched it.
            self.failover_start = None;
        }
        out.push(Action::Forced(ForcedOutcome::Aborted { epoch, reason }));
    }

    /// A peer's newer configuration makes `new_master` the master while our forced failover
    /// has not confirmed its promotion: drop it, and resume the paused writes on the old master,
    /// which follows `new_master` from now on.
    pub(super) fn supersede_forced(&mut self, new_master: NodeAddr, out: &mut Vec<Action>) {
        let (epoch, paused) = match &self.failover {
            Failover::Election {
                epoch,
                forced: Some(_),
                ..
            } => {
                let refused = ForceRefused::LostElection {
                    epoch: *epoch,
                    leader: None,
                };
                out.push(Action::Forced(ForcedOutcome::Refused(refused)));
                return;
            }
            Failover::Sync { epoch, .. } => (*epoch, true),
            Failover::Promotion {
                epoch,
                forced: Some(f),
                ..
            } => (*epoch, f.paused),
            _ => return,
        };
        if paused {
            out.push(Action::ResumeWrites {
                node: self.master,
                demote_to: (self.master != new_master).then_some(new_master),
            });
        }
        out.push(Action::Forced(ForcedOutcome::Aborted {
            epoch,
            reason: NoticeKind::ConfigUpdateFrom,
        }));
    }
}

/// How long `CLIENT PAUSE` holds a planned switchover's writes: longer than every bound the
/// switchover can take (the catch-up, its safety net, the promotion, plus a margin for the
/// commands), so that only a controller that died mid-switchover leaves it to expire.
fn switchover_pause_ms(timeout: Millis) -> Millis {
    timeout.saturating_mul(3).saturating_add(2_000)
}
