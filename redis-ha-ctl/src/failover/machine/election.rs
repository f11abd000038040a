//! Epochs, votes and elections: Sentinel's `sentinelVoteLeader` and `sentinelGetLeader`, when
//! to stand, and what tells the peers (and us) that a failover is under way, so that only one
//! runs at a time across the controllers.

use super::*;

impl ServiceMachine {
    /// Sentinel's `sentinelVoteLeader`: vote for `candidate` in `req_epoch` unless we already
    /// voted in that epoch (or a later one). Returns our vote as it stands.
    pub(super) fn vote_leader(
        &mut self,
        req_epoch: Epoch,
        candidate: &ControllerId,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) -> Option<Vote> {
        let mut changed = false;
        if req_epoch > self.current_epoch {
            self.current_epoch = req_epoch;
            self.emit(out, NoticeKind::NewEpoch, req_epoch.to_string());
            changed = true;
        }
        let voted_in = self.vote.as_ref().map_or(0, |v| v.epoch);
        if self.in_safe_mode() {
            // Our earlier votes are lost: this epoch may be one we voted in.
        } else if voted_in < req_epoch && self.current_epoch <= req_epoch {
            self.vote = Some(Vote {
                epoch: self.current_epoch,
                leader: candidate.clone(),
            });
            self.emit(
                out,
                NoticeKind::VoteForLeader,
                format!("{candidate} {}", self.current_epoch),
            );
            changed = true;
            if *candidate != self.me {
                // Let the candidate work: no attempt of ours before 2 × failover-timeout.
                self.failover_start = Some(now + jitter);
            }
        }
        if changed {
            // Before the reply leaves: a restarted controller must remember this vote.
            self.persist(out);
        }
        self.vote.clone()
    }

    /// Sentinel's `sentinelGetLeader`: the controller that got an absolute majority of all
    /// controllers (reachable or not), and at least `quorum` votes unless `forced`, in the
    /// current epoch. An operator's failover needs only the majority, which is what makes one
    /// leader per epoch: the quorum is about agreeing that the master is down.
    pub(super) fn get_leader(
        &mut self,
        epoch: Epoch,
        forced: bool,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) -> Option<ControllerId> {
        let voters = self.peers.len() + 1;
        let mut counts: BTreeMap<ControllerId, usize> = BTreeMap::new();
        for (vote, _) in self.reports.values().filter_map(|r| r.vote.as_ref()) {
            if vote.epoch == self.current_epoch {
                *counts.entry(vote.leader.clone()).or_default() += 1;
            }
        }
        // Our own vote: for the peers' favourite, or ourselves (a no-op if we already voted).
        let favourite = most_voted(&counts).map_or_else(|| self.me.clone(), |(id, _)| id);
        if let Some(vote) = self.vote_leader(epoch, &favourite, now, jitter, out)
            && vote.epoch == epoch
        {
            *counts.entry(vote.leader).or_default() += 1;
        }
        let (winner, votes) = most_voted(&counts)?;
        (votes >= majority(voters) && (forced || votes >= self.params.quorum)).then_some(winner)
    }

    /// Sentinel's `sentinelStartFailoverIfNeeded` + `sentinelStartFailover`.
    pub(super) fn start_failover_if_needed(
        &mut self,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) {
        // A peer's failover under way (an operator's switchover, say) would not get our vote
        // request answered anyway; it ends one way or the other within its timeout.
        if !self.odown
            || self.in_safe_mode()
            || !matches!(self.failover, Failover::Idle)
            || self.busy_peer(now, None).is_some()
        {
            self.candidacy = None;
            return;
        }
        let retry_after = self.params.failover_timeout_ms.saturating_mul(2);
        if self
            .failover_start
            .is_some_and(|start| now.saturating_sub(start) < retry_after)
        {
            self.candidacy = None;
            return;
        }
        // Every controller that sees the master down reaches ODOWN within a probe interval or
        // two of the others; if all of them stood at once, each would vote for itself and the
        // epoch would be lost (seen in ~4% of kill -9 trials before this rule), costing twice
        // the failover timeout. So candidates take turns by id: those that report the master
        // SDOWN and have a lower id go first, and we stand only after `rank` turns without
        // having voted for one of them (a vote sets `failover_start` and stops us above).
        let rank = self
            .reports
            .iter()
            .filter(|(id, _)| **id < self.me)
            .filter_map(|(_, r)| r.hello.as_ref())
            .filter(|(h, _)| h.master == self.master && h.sdown.contains(&self.master))
            .count() as Millis;
        let since = *self.candidacy.get_or_insert(now);
        if now.saturating_sub(since) < rank * self.params.candidate_stagger_ms() {
            return;
        }
        self.candidacy = None;
        let epoch = self.stand(out);
        self.failover_start = Some(now + jitter);
        out.push(Action::SendToPeers(PeerMsg::VoteRequest {
            epoch,
            master: self.master,
        }));
        self.failover = Failover::Election {
            epoch,
            last_ask: now,
            forced: None,
        };
    }

    /// Becomes a candidate in a new epoch: `+new-epoch`, `+try-failover`, and our own vote,
    /// persisted before anything that follows leaves the host. Returns the epoch.
    pub(super) fn stand(&mut self, out: &mut Vec<Action>) -> Epoch {
        self.current_epoch += 1;
        let epoch = self.current_epoch;
        self.emit(out, NoticeKind::NewEpoch, epoch.to_string());
        self.emit(out, NoticeKind::TryFailover, self.describe(self.master));
        self.vote = Some(Vote {
            epoch,
            leader: self.me.clone(),
        });
        self.emit(
            out,
            NoticeKind::VoteForLeader,
            format!("{} {epoch}", self.me),
        );
        self.persist(out);
        epoch
    }

    /// Sentinel's `sentinelFailoverStateMachine`, on a tick.
    pub(super) fn run_failover(&mut self, now: Millis, jitter: Millis, out: &mut Vec<Action>) {
        // Each arm computes the next state; nothing below reads `self.failover` meanwhile.
        self.failover = match std::mem::take(&mut self.failover) {
            Failover::Idle => Failover::Idle,
            Failover::Election {
                epoch,
                mut last_ask,
                forced,
            } => {
                // Re-ask (replies are idempotent), unless a later epoch started: ours is lost.
                if self.current_epoch == epoch
                    && now.saturating_sub(last_ask) >= self.params.hello_interval_ms
                {
                    out.push(Action::SendToPeers(PeerMsg::VoteRequest {
                        epoch,
                        master: self.master,
                    }));
                    last_ask = now;
                }
                self.election(epoch, last_ask, forced, now, jitter, out)
            }
            Failover::Sync {
                epoch,
                target,
                since,
                timeout,
            } => {
                // The executor reports within `timeout`; this only catches a lost report.
                if now.saturating_sub(since) > timeout.saturating_mul(2) {
                    self.abort_forced(epoch, NoticeKind::FailoverAbortNotSynced, None, out);
                    Failover::Idle
                } else {
                    Failover::Sync {
                        epoch,
                        target,
                        since,
                        timeout,
                    }
                }
            }
            Failover::Promotion {
                epoch,
                promoted,
                since,
                sent,
                forced,
            } => self.promotion(epoch, promoted, since, sent, forced, now, out),
            Failover::Reconfiguration(r) => self.reconfigure(r, now, out),
        };
    }

    /// `WAIT_START`: are we elected? Give up after the election timeout, or for an operator's
    /// failover as soon as it cannot be won.
    pub(super) fn election(
        &mut self,
        epoch: Epoch,
        last_ask: Millis,
        forced: Option<ForceRequest>,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        let leader = self.get_leader(epoch, forced.is_some(), now, jitter, out);
        if leader.as_ref() == Some(&self.me) {
            return match forced {
                None => self.elected(epoch, now, out),
                Some(request) => self.forced_elected(epoch, request, now, out),
            };
        }
        if let Some(request) = forced {
            return match self.forced_lost(epoch, request, now) {
                Some(refused) => {
                    out.push(Action::Forced(ForcedOutcome::Refused(refused)));
                    // It never touched the master: a failover the master may need later must
                    // not wait out the retry delay of this attempt.
                    self.failover_start = None;
                    Failover::Idle
                }
                None => Failover::Election {
                    epoch,
                    last_ask,
                    forced,
                },
            };
        }
        let started = self.failover_start.unwrap_or(now);
        if now.saturating_sub(started) > self.params.effective_election_timeout() {
            self.emit(
                out,
                NoticeKind::FailoverAbortNotElected,
                self.describe(self.master),
            );
            return Failover::Idle;
        }
        Failover::Election {
            epoch,
            last_ask,
            forced,
        }
    }

    /// Why an operator's failover in `epoch`, not elected yet, can no longer be won, if so.
    pub(super) fn forced_lost(
        &self,
        epoch: Epoch,
        request: ForceRequest,
        now: Millis,
    ) -> Option<ForceRefused> {
        if self.current_epoch > epoch {
            return Some(ForceRefused::LostElection {
                epoch,
                leader: None,
            });
        }
        let voters = self.peers.len() + 1;
        let needed = majority(voters);
        let mut others: BTreeMap<ControllerId, usize> = BTreeMap::new();
        let mut ours = 1;
        for (vote, _) in self.reports.values().filter_map(|r| r.vote.as_ref()) {
            if vote.epoch != epoch {
                continue;
            }
            if vote.leader == self.me {
                ours += 1;
            } else {
                *others.entry(vote.leader.clone()).or_default() += 1;
            }
        }
        let against: usize = others.values().sum();
        if against > voters - needed {
            return Some(ForceRefused::LostElection {
                epoch,
                leader: most_voted(&others).map(|(id, _)| id),
            });
        }
        if now.saturating_sub(request.since) > request.timeout {
            return Some(ForceRefused::NoMajority {
                epoch,
                votes: ours,
                needed,
            });
        }
        None
    }

    /// `SELECT_SLAVE` and `SEND_SLAVEOF_NOONE`.
    pub(super) fn elected(&mut self, epoch: Epoch, now: Millis, out: &mut Vec<Action>) -> Failover {
        let master = self.describe(self.master);
        self.emit(out, NoticeKind::ElectedLeader, master.clone());
        self.emit(out, NoticeKind::FailoverStateSelectSlave, master.clone());
        let Some(promoted) = self.select_replica(now) else {
            self.emit(out, NoticeKind::FailoverAbortNoGoodSlave, master);
            return Failover::Idle;
        };
        self.emit(out, NoticeKind::SelectedSlave, self.describe(promoted));
        self.promote(epoch, promoted, None, now, out)
    }

    /// The epoch of the failover we stand for or run, until it switched or ended: what our
    /// hellos announce. An automatic candidacy counts only while its epoch is current (a later
    /// one means it is lost, and we may have voted in it).
    pub(super) fn failover_in_flight(&self) -> Option<Epoch> {
        match &self.failover {
            Failover::Election {
                epoch,
                forced: Some(_),
                ..
            } => Some(*epoch),
            Failover::Election { epoch, .. } => (*epoch == self.current_epoch).then_some(*epoch),
            Failover::Sync { epoch, .. } | Failover::Promotion { epoch, .. } => Some(*epoch),
            Failover::Idle | Failover::Reconfiguration(_) => None,
        }
    }

    /// Whether we lead a failover whose promotion is not confirmed: no vote for anyone else
    /// meanwhile. An operator's candidacy counts too; an automatic one does not, so that, as
    /// in Sentinel, a candidate in an older epoch still votes in a newer one.
    pub(super) fn leads_failover(&self) -> bool {
        matches!(
            self.failover,
            Failover::Election {
                forced: Some(_),
                ..
            } | Failover::Sync { .. }
                | Failover::Promotion { .. }
        )
    }

    /// A peer other than `except` that stands for or runs a failover, as far as fresh reports
    /// tell: `(peer, epoch)`.
    pub(super) fn busy_peer(
        &self,
        now: Millis,
        except: Option<&ControllerId>,
    ) -> Option<(ControllerId, Epoch)> {
        let validity = self.params.peer_report_validity_ms;
        self.reports
            .iter()
            .filter(|(id, _)| Some(*id) != except)
            .find_map(|(id, r)| match r.busy {
                Some((epoch, at)) if now.saturating_sub(at) <= validity => {
                    Some((id.clone(), epoch))
                }
                _ => None,
            })
    }
}
