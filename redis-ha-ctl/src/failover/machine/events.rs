//! What each input does to the machine: ticks (Sentinel's timer), probes (SDOWN, ODOWN), peer
//! messages (hellos, votes), command and data-plane results, and the fix-ups of stray roles
//! outside a failover.

use super::*;

impl ServiceMachine {
    /// Sentinel's timer: `sentinelHandleRedisInstance` for our master and its replicas.
    pub(super) fn on_tick(&mut self, now: Millis, jitter: Millis, out: &mut Vec<Action>) {
        if self.tilt_tick(now, out) {
            return;
        }
        self.expire_reports(now);
        let addrs: Vec<NodeAddr> = self.nodes.keys().copied().collect();
        for addr in addrs {
            self.refresh_health(addr, now, out);
        }
        self.check_odown(out);
        self.start_failover_if_needed(now, jitter, out);
        self.run_failover(now, jitter, out);
        if matches!(self.failover, Failover::Idle) {
            self.fix_roles(now, out);
        }
        if self.dataplane.retry
            && let Some((epoch, node)) = self.dataplane.requested
        {
            self.dataplane.retry = false;
            out.push(Action::SetMaster { epoch, node });
        }
        if self
            .last_hello
            .is_none_or(|at| now.saturating_sub(at) >= self.params.hello_interval_ms)
        {
            self.send_hello(now, out);
        }
        // Once per tick rather than after each probe: the probes of one round arrive one by one,
        // and the data plane should see the round's outcome, not every intermediate pool.
        self.publish_read_pool(now, out);
    }

    /// Sentinel's ping and INFO reply callbacks (`sentinelRefreshInstanceInfo`).
    pub(super) fn on_probe(
        &mut self,
        addr: NodeAddr,
        result: ProbeResult,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let Some(node) = self.nodes.get_mut(&addr) else {
            return;
        };
        let mut rebooted = false;
        let mut reported_master = None;
        match result {
            ProbeResult::Failed => node.liveness.observe(false, now),
            ProbeResult::Ok(info) => {
                reported_master = Some(matches!(info.role, Role::Master { .. }));
                node.liveness.observe(true, now);
                let old_run_id = node.info.as_ref().and_then(|i| i.run_id.as_deref());
                rebooted =
                    matches!((old_run_id, info.run_id.as_deref()), (Some(a), Some(b)) if a != b);
                if node.role().map(Role::follows) != Some(info.role.follows()) {
                    node.role_since = now;
                }
                if let Role::Replica(r) = &info.role {
                    node.last_replica = Some(r.clone());
                }
                node.info = Some(info);
            }
        }
        if rebooted {
            self.emit(out, NoticeKind::Reboot, self.describe(addr));
        }
        // Sentinel logs the role reported even in TILT.
        if let Some(is_master) = reported_master {
            self.observe_role(addr, is_master, out);
        }
        // Recorded, but judged only after TILT (Sentinel's INFO handling also stops here).
        if self.clock.in_tilt() {
            return;
        }
        self.refresh_health(addr, now, out);
        self.track_failover(addr, now, out);
    }

    pub(super) fn on_peer(
        &mut self,
        from: ControllerId,
        msg: PeerMsg,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) {
        if !self.peers.contains(&from) {
            return;
        }
        match msg {
            PeerMsg::Hello(hello) => self.on_hello(from, hello, now, out),
            PeerMsg::VoteRequest { epoch, master } => {
                // Sentinel looks the master up by address: no vote about a master we do not
                // monitor (any more), e.g. from a peer that missed a switch.
                if master != self.master {
                    return;
                }
                self.peer_failover(epoch, out);
                // Unlike Sentinel, no vote while another failover is under way (ours, or one
                // a peer told us of): two failovers in different epochs at once would promote
                // two replicas, and the writes the first one takes would be lost. The reply
                // still carries our vote as it stands, which does not count for this epoch.
                let busy = self.leads_failover() || self.busy_peer(now, Some(&from)).is_some();
                self.reports.entry(from.clone()).or_default().busy = Some((epoch, now));
                if busy {
                    if let Some(vote) = self.vote.clone() {
                        out.push(Action::ReplyVote {
                            to: from,
                            epoch: vote.epoch,
                            leader: vote.leader,
                        });
                    }
                    return;
                }
                if let Some(vote) = self.vote_leader(epoch, &from, now, jitter, out) {
                    out.push(Action::ReplyVote {
                        to: from,
                        epoch: vote.epoch,
                        leader: vote.leader,
                    });
                }
            }
            PeerMsg::VoteReply { epoch, leader } => {
                self.reports.entry(from).or_default().vote = Some((Vote { epoch, leader }, now));
                if let Failover::Election {
                    epoch,
                    last_ask,
                    forced,
                } = self.failover
                {
                    self.failover = self.election(epoch, last_ask, forced, now, jitter, out);
                }
            }
        }
    }

    /// Sentinel's `sentinelProcessHelloMessage`: adopt a higher epoch, and a newer master.
    pub(super) fn on_hello(
        &mut self,
        from: ControllerId,
        hello: Hello,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        self.peer_heard(&from, out);
        let hello = self.aliases_applied(hello);
        if hello.current_epoch > self.current_epoch {
            self.current_epoch = hello.current_epoch;
            self.emit(out, NoticeKind::NewEpoch, self.current_epoch.to_string());
            self.persist(out);
        }
        if hello.config_epoch > self.config_epoch {
            self.config_epoch = hello.config_epoch;
            if hello.master != self.advertised_master() {
                // Our own failover's reconfiguration, if any, ends here: its promoted node was
                // the master until this newer configuration.
                if let Failover::Reconfiguration(r) = &self.failover {
                    self.master = r.promoted;
                }
                let payload = format!(
                    "sentinel {from} @ {} {} {}",
                    self.name,
                    self.master.ip(),
                    self.master.port()
                );
                self.emit(out, NoticeKind::ConfigUpdateFrom, payload);
                self.supersede_forced(hello.master, out);
                self.switch_master(hello.master, now, out);
            } else {
                self.persist(out);
            }
        } else if hello.config_epoch == self.config_epoch
            && hello.master < self.advertised_master()
            // An address we do not know in our own epoch is a move the peer followed first,
            // not a second master: our own lookup follows it (see `moved`).
            && self.nodes.contains_key(&hello.master)
            && !matches!(self.failover, Failover::Reconfiguration(_))
        {
            // Two masters in one epoch: Sentinel adopts neither, and the controllers stay
            // split for good. Every controller keeps the lower address instead, so they all
            // end on the same one; if it does not take writes, the usual ways repair it (a
            // stray master is demoted, a master that reports a replica is failed over).
            let payload = format!(
                "sentinel {from} @ {} {} {} epoch {} {} {}",
                self.name,
                self.master.ip(),
                self.master.port(),
                hello.config_epoch,
                hello.master.ip(),
                hello.master.port()
            );
            self.emit(out, NoticeKind::ConfigConflict, payload);
            self.supersede_forced(hello.master, out);
            self.switch_master(hello.master, now, out);
        }
        self.safe_mode_heard(&from, hello.current_epoch, out);
        // A hello sent before the sender's latest vote request (datagrams may be reordered)
        // says nothing about that request's failover.
        let report = self.reports.entry(from).or_default();
        let mut running = None;
        if report
            .busy
            .is_none_or(|(epoch, _)| hello.current_epoch >= epoch)
        {
            report.busy = hello.failover_epoch.map(|epoch| (epoch, now));
            running = hello.failover_epoch;
        }
        // Stored after a switch (which forgets every report): this one is current.
        report.hello = Some((hello, now));
        if let Some(epoch) = running {
            self.peer_failover(epoch, out);
        }
    }

    pub(super) fn on_command_done(&mut self, node: NodeAddr, command: Command, ok: bool) {
        if ok {
            // Sent; the effect shows in later probes.
            return;
        }
        match (command, &mut self.failover) {
            (Command::PromoteReplica, Failover::Promotion { promoted, sent, .. })
                if *promoted == node =>
            {
                *sent = false;
            }
            (Command::ReplicaOf { master }, Failover::Reconfiguration(r))
                if master == r.promoted =>
            {
                if let Some(state @ Reconf::Sent { .. }) = r.replicas.get_mut(&node) {
                    *state = Reconf::Pending;
                }
            }
            // A demotion or fix-up is simply tried again after convert_delay_ms: a node that keeps
            // refusing must not get a command every tick.
            _ => {}
        }
    }

    pub(super) fn on_master_applied(&mut self, epoch: Epoch, node: NodeAddr, ok: bool) {
        if self.dataplane.requested != Some((epoch, node)) {
            return; // Superseded.
        }
        if ok {
            self.dataplane.applied = self.dataplane.applied.max(Some(epoch));
            self.dataplane.retry = false;
        } else {
            self.dataplane.retry = true;
        }
    }

    /// Sentinel's `sentinelCheckSubjectivelyDown` for one node.
    pub(super) fn refresh_health(&mut self, addr: NodeAddr, now: Millis, out: &mut Vec<Action>) {
        let is_master = addr == self.master;
        let grace = self.params.wrong_role_grace();
        let Some(node) = self.nodes.get_mut(&addr) else {
            return;
        };
        // A master that says it is a replica is as good as down once it has said so for long
        // enough (it will not take writes).
        let wrong_role = is_master
            && matches!(node.role(), Some(Role::Replica(_)))
            && now.saturating_sub(node.role_since) > grace;
        let Some(flip) = node.liveness.evaluate(now, wrong_role, &self.params) else {
            return;
        };
        let kind = match flip {
            Flip::Down => NoticeKind::Sdown,
            Flip::Up => NoticeKind::SdownCleared,
        };
        self.emit(out, kind, self.describe(addr));
        if is_master {
            // Peers need our view to reach ODOWN; do not make them wait for the next hello.
            self.send_hello(now, out);
        }
    }

    /// Sentinel's `sentinelCheckObjectivelyDown`: our SDOWN plus fresh peer reports of SDOWN of
    /// the same master reach the quorum.
    pub(super) fn check_odown(&mut self, out: &mut Vec<Action>) {
        let own = !self.nodes[&self.master].liveness.is_up();
        let agreeing = if own {
            1 + self
                .reports
                .values()
                .filter_map(|r| r.hello.as_ref())
                .filter(|(h, _)| h.master == self.master && h.sdown.contains(&self.master))
                .count()
        } else {
            0
        };
        let odown = own && agreeing >= self.params.quorum;
        if odown == self.odown {
            return;
        }
        self.odown = odown;
        if odown {
            let payload = format!(
                "{} #quorum {agreeing}/{}",
                self.describe(self.master),
                self.params.quorum
            );
            self.emit(out, NoticeKind::Odown, payload);
        } else {
            self.emit(out, NoticeKind::OdownCleared, self.describe(self.master));
        }
    }

    /// Forget peer reports too old to mean anything (Sentinel clears `SRI_MASTER_DOWN` and the
    /// peer's leader after 5 ask periods without a reply).
    pub(super) fn expire_reports(&mut self, now: Millis) {
        let validity = self.params.peer_report_validity_ms;
        let fresh = |at: &Millis| now.saturating_sub(*at) <= validity;
        for report in self.reports.values_mut() {
            if report.hello.as_ref().is_some_and(|(_, at)| !fresh(at)) {
                report.hello = None;
            }
            if report.vote.as_ref().is_some_and(|(_, at)| !fresh(at)) {
                report.vote = None;
            }
            if report.busy.as_ref().is_some_and(|(_, at)| !fresh(at)) {
                report.busy = None;
            }
        }
        self.reports
            .retain(|_, r| r.hello.is_some() || r.vote.is_some() || r.busy.is_some());
    }

    /// Outside a failover, with a sane master: demote nodes that claim to be master
    /// (`+convert-to-slave`) and repoint replicas that follow another master
    /// (`+fix-slave-config`), once they have been up and in that state long enough for a newer
    /// configuration to have reached us.
    ///
    /// Unlike Sentinel, only while we hear from a majority of the controllers: a controller cut
    /// off from its peers but not from Redis would otherwise demote the master that the majority
    /// just promoted, and the two sides would undo each other's work until the partition heals.
    pub(super) fn fix_roles(&mut self, now: Millis, out: &mut Vec<Action>) {
        // In safe mode our master may be the configuration's, long replaced.
        if !self.master_looks_sane(now) || !self.hears_majority() || self.in_safe_mode() {
            return;
        }
        let delay = self.params.convert_delay_ms;
        let patience = self.params.failover_timeout_ms;
        let mut todo = Vec::new();
        for (&addr, node) in &self.nodes {
            if addr == self.master
                || node
                    .last_command
                    .is_some_and(|at| now.saturating_sub(at) < delay)
            {
                continue;
            }
            let in_role_for = now.saturating_sub(node.role_since);
            match node.role() {
                Some(Role::Master { .. })
                    if in_role_for > delay && node.liveness.up_for(now, delay) =>
                {
                    todo.push((addr, NoticeKind::ConvertToSlave));
                }
                Some(Role::Replica(r))
                    if r.master != self.master
                        && in_role_for > patience
                        && node.liveness.up_for(now, patience) =>
                {
                    todo.push((addr, NoticeKind::FixSlaveConfig));
                }
                _ => {}
            }
        }
        for (addr, kind) in todo {
            out.push(Action::ReplicaOf {
                node: addr,
                master: self.master,
            });
            self.emit(out, kind, self.describe(addr));
            if let Some(node) = self.nodes.get_mut(&addr) {
                node.last_command = Some(now);
            }
        }
    }
}
