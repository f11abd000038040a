//! Who holds the floating addresses: a lease granted by a majority of the controllers.
//!
//! The rules, and why they keep two holders from ever overlapping:
//! - The holder (owner) of epoch `E` sends a `Claim` every heartbeat, stamped with its own clock;
//!   every controller that follows it answers with an `Ack` echoing that stamp.
//! - The owner keeps the addresses only while a majority (itself included) has acknowledged a
//!   stamp younger than 3/4 of `down_after_ms`; otherwise it lets go at once (fencing: a node
//!   cut off from its peers drops the VIP by itself).
//! - A controller votes for a new owner only when it has heard no claim for `down_after_ms`
//!   (or the owner released), once per epoch, and never acknowledges an older epoch's owner
//!   after voting. So by the time a majority would vote, the old owner's majority of
//!   acknowledgements has expired: the two majorities share a voter, whose last echoed stamp
//!   is at least `down_after_ms` old when it votes, and the old owner stopped at 3/4 of that.
//! - Candidates take turns by priority (then id), a couple of heartbeats apart, so the
//!   preferred node normally wins the first election alone.
//! - A healthy owner is never displaced by an election: a returning node with a higher priority
//!   waits, unless it has `preempt`, in which case the owner releases first and says so.
//!
//! Pure: no clock, no network; the executor feeds events with `now` and performs the actions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::failover::{ControllerId, Epoch, Millis};

/// No step for longer than this (or half of `down_after_ms`, if longer) means this controller
/// itself stalled. Five of a voter's 100 ms ticks: a tick that is merely late must not count,
/// or a voter whose ticks keep slipping by a few ms would push the owner's deadline back at
/// every one and never vote.
const STALL_MS: Millis = 500;

/// What a data-plane node offers when it may hold the addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidacy {
    pub priority: u8,
    pub preempt: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaParams {
    /// `None`: this controller only votes (it has no data plane).
    pub candidacy: Option<Candidacy>,
    pub heartbeat_ms: Millis,
    /// How long this node, as owner, may be silent before others take over.
    pub down_after_ms: Millis,
    /// After a start, how long to listen before voting or standing: a controller that
    /// acknowledged an owner just before it restarted must not help replace that owner while
    /// the owner may still count on the acknowledgement.
    pub quiet_after_start_ms: Millis,
}

/// Messages between controllers about the floating addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum HaMsg {
    /// "I hold the addresses in `epoch`", every heartbeat.
    Claim {
        epoch: Epoch,
        /// The owner's clock: echoed back so it can age acknowledgements on its own clock.
        stamp: Millis,
        priority: u8,
        down_after_ms: Millis,
    },
    Ack {
        epoch: Epoch,
        stamp: Millis,
    },
    /// A node that could hold the addresses and is alive, every heartbeat while it does not.
    Candidate {
        epoch: Epoch,
        candidacy: Candidacy,
    },
    VoteRequest {
        epoch: Epoch,
        stamp: Millis,
        candidacy: Candidacy,
        down_after_ms: Millis,
    },
    Vote {
        epoch: Epoch,
        stamp: Millis,
    },
    /// The owner let go (preempted or stopping): no need to wait for `down_after_ms`.
    Release {
        epoch: Epoch,
    },
}

/// Durable part: an epoch is never reused and a vote never cast twice, across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaPersisted {
    pub epoch: Epoch,
    /// The last vote: (epoch, for whom).
    pub voted: Option<(Epoch, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaAction {
    /// Write before anything else of the same batch leaves the process.
    Persist(HaPersisted),
    /// `None`: to every peer.
    Send {
        to: Option<ControllerId>,
        msg: HaMsg,
    },
    /// Add the addresses and announce them (gratuitous ARP).
    Acquire { epoch: Epoch },
    /// Remove the addresses now.
    Release { epoch: Epoch, reason: String },
    /// For operators: `+vip-owner`, `-vip-owner`, `+vip-election`.
    Notice { name: &'static str, payload: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaEvent {
    Tick,
    Peer {
        from: ControllerId,
        msg: HaMsg,
    },
    /// The daemon stops: an owner lets go and says so, so a peer takes over without waiting.
    Shutdown,
}

/// Where this controller stands; the status shows it as [`crate::status::HaRole`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaRole {
    Owner,
    Candidate,
    Backup,
    Voter,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Leader {
    id: ControllerId,
    epoch: Epoch,
    priority: u8,
    down_after_ms: Millis,
    last_heard: Millis,
    released: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Backup,
    Electing {
        epoch: Epoch,
        started: Millis,
        votes: BTreeMap<ControllerId, Millis>,
    },
    Owner {
        epoch: Epoch,
        since: Millis,
        /// Per peer, the newest stamp it acknowledged.
        acks: BTreeMap<ControllerId, Millis>,
    },
}

pub struct HaMachine {
    me: ControllerId,
    peers: Vec<ControllerId>,
    params: HaParams,
    persisted: HaPersisted,
    started: Millis,
    role: Role,
    /// The owner this controller follows (itself while it owns).
    leader: Option<Leader>,
    /// Live candidates other than this one: candidacy and when last heard.
    candidates: BTreeMap<ControllerId, (Candidacy, Millis)>,
    last_beat: Option<Millis>,
    /// After a failed election, not before this.
    retry_at: Millis,
    /// `now` of the previous step, to notice this controller's own stalls.
    last_step: Millis,
}

impl HaMachine {
    pub fn new(
        me: ControllerId,
        peers: Vec<ControllerId>,
        params: HaParams,
        persisted: HaPersisted,
        now: Millis,
    ) -> Self {
        Self {
            me,
            peers,
            params,
            persisted,
            started: now,
            role: Role::Backup,
            leader: None,
            candidates: BTreeMap::new(),
            last_beat: None,
            retry_at: 0,
            last_step: now,
        }
    }

    pub fn role(&self) -> HaRole {
        match (&self.role, self.params.candidacy) {
            (Role::Owner { .. }, _) => HaRole::Owner,
            (Role::Electing { .. }, _) => HaRole::Candidate,
            (Role::Backup, Some(_)) => HaRole::Backup,
            (Role::Backup, None) => HaRole::Voter,
        }
    }

    /// The owner this controller believes in, with its epoch, if it is alive.
    pub fn owner(&self, now: Millis) -> Option<(&ControllerId, Epoch)> {
        self.leader
            .as_ref()
            .filter(|l| !self.vacant(l, now))
            .map(|l| (&l.id, l.epoch))
    }

    pub fn candidacy(&self) -> Option<Candidacy> {
        self.params.candidacy
    }

    pub fn epoch(&self) -> Epoch {
        self.persisted.epoch
    }

    /// Until when this node's lease runs (its clock) if it holds the addresses: the stamp a
    /// majority (itself included) acknowledged, plus the lease. The executor hands it to the
    /// data plane, which stops answering ARP for the addresses by itself once it has passed.
    pub fn lease_until(&self, now: Millis) -> Option<Millis> {
        let Role::Owner { acks, .. } = &self.role else {
            return None;
        };
        let mut stamps: Vec<Millis> = acks.values().copied().collect();
        stamps.sort_unstable_by(|a, b| b.cmp(a));
        let needed = self.majority() - 1;
        let stamp = if needed == 0 {
            now
        } else {
            *stamps.get(needed - 1)?
        };
        Some(stamp + self.lease_ms())
    }

    /// When this node took the addresses, if it holds them.
    pub fn owning_since(&self) -> Option<Millis> {
        match self.role {
            Role::Owner { since, .. } => Some(since),
            _ => None,
        }
    }

    fn majority(&self) -> usize {
        let controllers = self.peers.len() + 1;
        controllers / 2 + 1
    }

    fn lease_ms(&self) -> Millis {
        self.params.down_after_ms * 3 / 4
    }

    fn vacant(&self, leader: &Leader, now: Millis) -> bool {
        leader.released || now >= leader.last_heard + leader.down_after_ms
    }

    /// When the current vacancy began (`None`: there is a live owner).
    fn vacant_since(&self, now: Millis) -> Option<Millis> {
        match &self.leader {
            Some(l) if l.released => Some(l.last_heard),
            Some(l) if self.vacant(l, now) => Some(l.last_heard + l.down_after_ms),
            Some(_) => None,
            None => Some(self.started + self.params.quiet_after_start_ms),
        }
    }

    /// The highest vote this controller gave another node: it acknowledges no owner of an
    /// older epoch than that.
    fn promised(&self) -> Option<(Epoch, &str)> {
        self.persisted
            .voted
            .as_ref()
            .filter(|(_, id)| *id != self.me.0)
            .map(|(e, id)| (*e, id.as_str()))
    }

    pub fn step(&mut self, event: HaEvent, now: Millis) -> Vec<HaAction> {
        self.discount_stall(now);
        let mut out = Vec::new();
        match event {
            HaEvent::Tick => self.tick(now, &mut out),
            HaEvent::Peer { from, msg } => self.on_msg(from, msg, now, &mut out),
            HaEvent::Shutdown => {
                if let Role::Owner { epoch, .. } = self.role {
                    self.step_down(epoch, "stopping".into(), now, &mut out);
                    out.push(send_all(HaMsg::Release { epoch }));
                }
            }
        }
        out
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<HaAction>) {
        let beat_due = self
            .last_beat
            .is_none_or(|t| now >= t + self.params.heartbeat_ms);
        match self.role.clone() {
            Role::Owner { epoch, acks, .. } => {
                let fresh = acks
                    .values()
                    .filter(|&&stamp| stamp + self.lease_ms() > now)
                    .count();
                if fresh + 1 < self.majority() {
                    self.step_down(
                        epoch,
                        format!(
                            "lost the majority: {} of {} controllers acknowledged within {} ms",
                            fresh + 1,
                            self.peers.len() + 1,
                            self.lease_ms()
                        ),
                        now,
                        out,
                    );
                    return;
                }
                let mine = self.params.candidacy.map_or(0, |c| c.priority);
                let usurper = self.candidates.iter().find(|(_, (c, heard))| {
                    c.preempt && c.priority > mine && now < heard + self.params.down_after_ms
                });
                if let Some((id, _)) = usurper {
                    let reason = format!("preempted by {id}");
                    self.step_down(epoch, reason, now, out);
                    out.push(send_all(HaMsg::Release { epoch }));
                    return;
                }
                if let Some(l) = self.leader.as_mut() {
                    l.last_heard = now;
                }
                if beat_due {
                    self.last_beat = Some(now);
                    out.push(send_all(HaMsg::Claim {
                        epoch,
                        stamp: now,
                        priority: mine,
                        down_after_ms: self.params.down_after_ms,
                    }));
                }
            }
            Role::Electing { epoch, started, .. } => {
                if now >= started + self.params.down_after_ms {
                    self.role = Role::Backup;
                    self.retry_at = now + self.stagger(now);
                    out.push(notice(
                        "-vip-election",
                        format!("{} epoch {epoch} no majority", self.me),
                    ));
                } else if beat_due {
                    self.last_beat = Some(now);
                    out.push(self.vote_request(epoch, now));
                }
            }
            Role::Backup => {
                let Some(candidacy) = self.params.candidacy else {
                    return;
                };
                if beat_due {
                    self.last_beat = Some(now);
                    out.push(send_all(HaMsg::Candidate {
                        epoch: self.persisted.epoch,
                        candidacy,
                    }));
                }
                let Some(since) = self.vacant_since(now) else {
                    return;
                };
                let start = since.max(self.started + self.params.quiet_after_start_ms);
                if now >= (start + self.stagger(now)).max(self.retry_at) {
                    self.stand(now, out);
                }
            }
        }
    }

    /// After a stall of this controller itself (a paused VM, SIGSTOP: no step for more than
    /// [`STALL_MS`]), the owner's and candidates' silence during it is not theirs:
    /// the claims they sent meanwhile wait in the socket and come next. Judged on it, a backup
    /// would call the owner gone and start an election. Only the times this node uses to wait
    /// are moved, so it only ever waits longer; an owner changes nothing, since the peers
    /// really heard nothing from it, and its lease (acknowledged stamps of its own clock) must
    /// expire in real time.
    fn discount_stall(&mut self, now: Millis) {
        let gap = now.saturating_sub(self.last_step);
        self.last_step = self.last_step.max(now);
        if gap <= STALL_MS.max(self.params.down_after_ms / 2)
            || matches!(self.role, Role::Owner { .. })
        {
            return;
        }
        if let Some(l) = self.leader.as_mut() {
            l.last_heard = (l.last_heard + gap).min(now);
        }
        for (_, heard) in self.candidates.values_mut() {
            *heard = (*heard + gap).min(now);
        }
    }

    /// Wait before standing: two heartbeats per live candidate preferred to this one.
    fn stagger(&self, now: Millis) -> Millis {
        let Some(mine) = self.params.candidacy else {
            return 0;
        };
        let ahead = self
            .candidates
            .iter()
            .filter(|(id, (c, heard))| {
                now < heard + self.params.down_after_ms
                    && (c.priority, std::cmp::Reverse(*id))
                        > (mine.priority, std::cmp::Reverse(&self.me))
            })
            .count() as Millis;
        ahead * 2 * self.params.heartbeat_ms
    }

    fn stand(&mut self, now: Millis, out: &mut Vec<HaAction>) {
        let epoch = self
            .persisted
            .epoch
            .max(self.persisted.voted.as_ref().map_or(0, |(e, _)| *e))
            + 1;
        self.persisted = HaPersisted {
            epoch,
            voted: Some((epoch, self.me.0.clone())),
        };
        out.push(HaAction::Persist(self.persisted.clone()));
        out.push(notice(
            "+vip-election",
            format!("{} epoch {epoch}", self.me),
        ));
        self.role = Role::Electing {
            epoch,
            started: now,
            votes: BTreeMap::new(),
        };
        self.last_beat = Some(now);
        if self.majority() == 1 {
            self.become_owner(epoch, BTreeMap::new(), now, out);
        } else {
            out.push(self.vote_request(epoch, now));
        }
    }

    fn vote_request(&self, epoch: Epoch, now: Millis) -> HaAction {
        send_all(HaMsg::VoteRequest {
            epoch,
            stamp: now,
            candidacy: self.params.candidacy.expect("only candidates stand"),
            down_after_ms: self.params.down_after_ms,
        })
    }

    fn become_owner(
        &mut self,
        epoch: Epoch,
        acks: BTreeMap<ControllerId, Millis>,
        now: Millis,
        out: &mut Vec<HaAction>,
    ) {
        self.role = Role::Owner {
            epoch,
            since: now,
            acks,
        };
        self.leader = Some(Leader {
            id: self.me.clone(),
            epoch,
            priority: self.params.candidacy.map_or(0, |c| c.priority),
            down_after_ms: self.params.down_after_ms,
            last_heard: now,
            released: false,
        });
        out.push(HaAction::Acquire { epoch });
        out.push(notice("+vip-owner", format!("{} epoch {epoch}", self.me)));
        self.last_beat = Some(now);
        out.push(send_all(HaMsg::Claim {
            epoch,
            stamp: now,
            priority: self.params.candidacy.map_or(0, |c| c.priority),
            down_after_ms: self.params.down_after_ms,
        }));
    }

    fn step_down(&mut self, epoch: Epoch, reason: String, now: Millis, out: &mut Vec<HaAction>) {
        self.role = Role::Backup;
        if let Some(l) = self.leader.as_mut().filter(|l| l.id == self.me) {
            l.released = true;
            l.last_heard = now;
        }
        // Standing again at once would only repeat what just failed.
        self.retry_at = now + self.params.down_after_ms;
        out.push(HaAction::Release {
            epoch,
            reason: reason.clone(),
        });
        out.push(notice(
            "-vip-owner",
            format!("{} epoch {epoch} {reason}", self.me),
        ));
    }

    fn adopt_epoch(&mut self, epoch: Epoch, out: &mut Vec<HaAction>) {
        if epoch > self.persisted.epoch {
            self.persisted.epoch = epoch;
            out.push(HaAction::Persist(self.persisted.clone()));
        }
    }

    fn on_msg(&mut self, from: ControllerId, msg: HaMsg, now: Millis, out: &mut Vec<HaAction>) {
        if from == self.me || !self.peers.contains(&from) {
            return;
        }
        match msg {
            HaMsg::Claim {
                epoch,
                stamp,
                priority,
                down_after_ms,
            } => {
                match self.role {
                    Role::Owner { epoch: mine, .. } if epoch >= mine => {
                        // Cannot happen with one vote per epoch; if it ever does, the older
                        // (or, at a tie, the greater id) lets go rather than both answering ARP.
                        if epoch > mine || from < self.me {
                            self.step_down(mine, format!("{from} owns epoch {epoch}"), now, out);
                        } else {
                            return;
                        }
                    }
                    Role::Owner { .. } => return,
                    _ => {}
                }
                let follows = match &self.leader {
                    Some(l) if l.id == from => epoch >= l.epoch,
                    Some(l) if !self.vacant(l, now) => epoch > l.epoch,
                    _ => true,
                };
                let promised_elsewhere = self
                    .promised()
                    .is_some_and(|(e, id)| e > epoch || (e == epoch && id != from.0));
                if !follows || promised_elsewhere {
                    return;
                }
                // The owner is alive: an election of ours must not end with two owners, as
                // this node's acknowledgement keeps the current one's lease.
                self.role = Role::Backup;
                self.adopt_epoch(epoch, out);
                let changed = self
                    .leader
                    .as_ref()
                    .is_none_or(|l| l.id != from || l.epoch != epoch || self.vacant(l, now));
                self.leader = Some(Leader {
                    id: from.clone(),
                    epoch,
                    priority,
                    down_after_ms,
                    last_heard: now,
                    released: false,
                });
                if changed {
                    out.push(notice("+vip-owner", format!("{from} epoch {epoch}")));
                }
                out.push(HaAction::Send {
                    to: Some(from),
                    msg: HaMsg::Ack { epoch, stamp },
                });
            }
            HaMsg::Ack { epoch, stamp } => {
                if let Role::Owner {
                    epoch: mine,
                    ref mut acks,
                    ..
                } = self.role
                    && epoch == mine
                {
                    let slot = acks.entry(from).or_insert(stamp);
                    *slot = (*slot).max(stamp);
                }
            }
            HaMsg::Candidate { epoch, candidacy } => {
                self.candidates.insert(from, (candidacy, now));
                // A candidate of a newer epoch (a failed election) says nothing about owners:
                // adopting its epoch only keeps ours from being reused.
                self.adopt_epoch(epoch, out);
            }
            HaMsg::VoteRequest {
                epoch,
                stamp,
                candidacy,
                down_after_ms,
            } => {
                self.candidates.insert(from.clone(), (candidacy, now));
                let already = self
                    .persisted
                    .voted
                    .as_ref()
                    .is_some_and(|(e, id)| *e == epoch && *id == from.0);
                if !already {
                    let voted_epoch = self.persisted.voted.as_ref().map_or(0, |(e, _)| *e);
                    let vacant = self
                        .leader
                        .as_ref()
                        .is_none_or(|l| self.vacant(l, now) && epoch > l.epoch);
                    let settled = now >= self.started + self.params.quiet_after_start_ms;
                    if epoch <= voted_epoch
                        || !vacant
                        || !settled
                        || matches!(self.role, Role::Owner { .. })
                    {
                        return;
                    }
                    self.persisted = HaPersisted {
                        epoch: self.persisted.epoch.max(epoch),
                        voted: Some((epoch, from.0.clone())),
                    };
                    out.push(HaAction::Persist(self.persisted.clone()));
                    if matches!(self.role, Role::Electing { .. }) {
                        self.role = Role::Backup;
                    }
                    // Until it claims, the node voted for counts as the owner being waited for,
                    // so no second vote is given before it had its chance.
                    self.leader = Some(Leader {
                        id: from.clone(),
                        epoch,
                        priority: candidacy.priority,
                        down_after_ms,
                        last_heard: now,
                        released: false,
                    });
                }
                out.push(HaAction::Send {
                    to: Some(from),
                    msg: HaMsg::Vote { epoch, stamp },
                });
            }
            HaMsg::Vote { epoch, stamp } => {
                let majority = self.majority();
                if let Role::Electing {
                    epoch: mine,
                    ref mut votes,
                    ..
                } = self.role
                    && epoch == mine
                {
                    votes.insert(from, stamp);
                    if votes.len() + 1 >= majority {
                        let votes = std::mem::take(votes);
                        self.become_owner(epoch, votes, now, out);
                    }
                }
            }
            HaMsg::Release { epoch } => {
                if let Some(l) = self.leader.as_mut()
                    && l.id == from
                    && l.epoch == epoch
                    && !l.released
                {
                    l.released = true;
                    l.last_heard = now;
                    out.push(notice(
                        "-vip-owner",
                        format!("{from} epoch {epoch} released"),
                    ));
                }
            }
        }
    }
}

fn send_all(msg: HaMsg) -> HaAction {
    HaAction::Send { to: None, msg }
}

fn notice(name: &'static str, payload: String) -> HaAction {
    HaAction::Notice { name, payload }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashSet, VecDeque};

    use super::*;

    const HEARTBEAT: Millis = 50;
    const DOWN_AFTER: Millis = 200;
    const STEP: Millis = 5;

    struct Node {
        machine: HaMachine,
        params: HaParams,
        /// A crashed node neither ticks nor talks; its addresses are unreachable.
        crashed: bool,
        holding: bool,
        disk: HaPersisted,
        acquired: Vec<Millis>,
    }

    /// Controllers exchanging messages instantly unless a link is cut; checks at every step
    /// that at most one reachable node holds the addresses.
    struct Sim {
        ids: Vec<ControllerId>,
        nodes: Vec<Node>,
        now: Millis,
        cut: HashSet<usize>,
        notices: Vec<(Millis, String)>,
    }

    fn params(priority: Option<u8>, preempt: bool) -> HaParams {
        HaParams {
            candidacy: priority.map(|priority| Candidacy { priority, preempt }),
            heartbeat_ms: HEARTBEAT,
            down_after_ms: DOWN_AFTER,
            quiet_after_start_ms: DOWN_AFTER,
        }
    }

    impl Sim {
        /// lb1 (priority 150), lb2 (100), c3 (votes only).
        fn new(lb1_preempt: bool) -> Sim {
            let ids: Vec<ControllerId> = ["lb1", "lb2", "c3"].map(ControllerId::from).to_vec();
            let all = [
                params(Some(150), lb1_preempt),
                params(Some(100), false),
                params(None, false),
            ];
            let nodes = all
                .into_iter()
                .enumerate()
                .map(|(i, p)| Node {
                    machine: HaMachine::new(
                        ids[i].clone(),
                        ids.iter().filter(|id| **id != ids[i]).cloned().collect(),
                        p.clone(),
                        HaPersisted::default(),
                        0,
                    ),
                    params: p,
                    crashed: false,
                    holding: false,
                    disk: HaPersisted::default(),
                    acquired: Vec::new(),
                })
                .collect();
            Sim {
                ids,
                nodes,
                now: 0,
                cut: HashSet::new(),
                notices: Vec::new(),
            }
        }

        fn linked(&self, a: usize, b: usize) -> bool {
            !self.cut.contains(&a)
                && !self.cut.contains(&b)
                && !self.nodes[a].crashed
                && !self.nodes[b].crashed
        }

        fn apply(
            &mut self,
            i: usize,
            actions: Vec<HaAction>,
            queue: &mut VecDeque<(usize, usize, HaMsg)>,
        ) {
            for a in actions {
                match a {
                    HaAction::Persist(p) => {
                        assert!(p.epoch >= self.nodes[i].disk.epoch, "epoch went back");
                        self.nodes[i].disk = p;
                    }
                    HaAction::Send { to, msg } => {
                        for j in 0..self.nodes.len() {
                            if j != i
                                && to.as_ref().is_none_or(|t| *t == self.ids[j])
                                && self.linked(i, j)
                            {
                                queue.push_back((i, j, msg.clone()));
                            }
                        }
                    }
                    HaAction::Acquire { .. } => {
                        self.nodes[i].holding = true;
                        self.nodes[i].acquired.push(self.now);
                    }
                    HaAction::Release { .. } => self.nodes[i].holding = false,
                    HaAction::Notice { name, payload } => {
                        self.notices.push((self.now, format!("{name} {payload}")));
                    }
                }
            }
            let holders: Vec<_> = (0..self.nodes.len())
                .filter(|&j| self.nodes[j].holding && !self.nodes[j].crashed)
                .collect();
            assert!(
                holders.len() <= 1,
                "two holders at {} ms: {holders:?}",
                self.now
            );
        }

        fn run(&mut self, ms: Millis) {
            let end = self.now + ms;
            while self.now < end {
                self.now += STEP;
                let mut queue = VecDeque::new();
                for i in 0..self.nodes.len() {
                    if !self.nodes[i].crashed {
                        let actions = self.nodes[i].machine.step(HaEvent::Tick, self.now);
                        self.apply(i, actions, &mut queue);
                    }
                }
                let mut delivered = 0;
                while let Some((from, to, msg)) = queue.pop_front() {
                    delivered += 1;
                    assert!(delivered < 10_000, "message storm");
                    if !self.linked(from, to) {
                        continue;
                    }
                    let event = HaEvent::Peer {
                        from: self.ids[from].clone(),
                        msg,
                    };
                    let actions = self.nodes[to].machine.step(event, self.now);
                    self.apply(to, actions, &mut queue);
                }
            }
        }

        fn holder(&self) -> Option<&str> {
            let h: Vec<_> = (0..3)
                .filter(|&i| self.nodes[i].holding && !self.nodes[i].crashed)
                .collect();
            h.first().map(|&i| self.ids[i].0.as_str())
        }

        fn crash(&mut self, i: usize) {
            self.nodes[i].crashed = true;
        }

        /// Starts again from its disk, its addresses gone (as after a reboot).
        fn restart(&mut self, i: usize) {
            let n = &mut self.nodes[i];
            n.machine = HaMachine::new(
                self.ids[i].clone(),
                self.ids
                    .iter()
                    .filter(|id| **id != self.ids[i])
                    .cloned()
                    .collect(),
                n.params.clone(),
                n.disk.clone(),
                self.now,
            );
            n.crashed = false;
            n.holding = false;
        }
    }

    #[test]
    fn the_preferred_node_takes_the_addresses_and_everyone_agrees() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        assert_eq!(sim.holder(), Some("lb1"));
        assert_eq!(sim.nodes[0].acquired.len(), 1, "{:?}", sim.notices);
        for n in &sim.nodes {
            assert_eq!(
                n.machine.owner(sim.now).map(|(id, _)| id.0.as_str()),
                Some("lb1")
            );
        }
        assert_eq!(sim.nodes[1].machine.role(), HaRole::Backup);
        assert_eq!(sim.nodes[2].machine.role(), HaRole::Voter);
    }

    #[test]
    fn a_crashed_owner_is_replaced_within_down_after_and_a_few_heartbeats() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        let crashed_at = sim.now;
        sim.crash(0);
        sim.run(1000);
        assert_eq!(sim.holder(), Some("lb2"));
        let took = sim.nodes[1].acquired[0] - crashed_at;
        assert!(took <= DOWN_AFTER + 2 * HEARTBEAT, "took {took} ms");
        assert!(took >= DOWN_AFTER - HEARTBEAT, "took {took} ms: too eager");
    }

    #[test]
    fn a_returning_node_does_not_take_the_addresses_back_unless_it_preempts() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        sim.crash(0);
        sim.run(1000);
        sim.restart(0);
        sim.run(3000);
        assert_eq!(sim.holder(), Some("lb2"), "{:?}", sim.notices);
        assert_eq!(
            sim.nodes[1].acquired.len(),
            1,
            "lb2 kept it without a second election"
        );
        assert_eq!(sim.nodes[0].machine.role(), HaRole::Backup);

        let mut sim = Sim::new(true);
        sim.run(1000);
        sim.crash(0);
        sim.run(1000);
        sim.restart(0);
        sim.run(3000);
        // The overlap check inside the simulation held at every step of the hand-back.
        assert_eq!(sim.holder(), Some("lb1"), "{:?}", sim.notices);
    }

    #[test]
    fn an_owner_cut_off_from_its_peers_lets_go_before_anyone_takes_over() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        let cut_at = sim.now;
        sim.cut.insert(0);
        sim.run(1000);
        // lb1 still runs: the simulation's check would have failed had it kept the addresses
        // while lb2 took them.
        assert!(!sim.nodes[0].holding);
        assert_eq!(sim.holder(), Some("lb2"));
        assert!(sim.nodes[1].acquired[0] > cut_at);
        // Healed: lb2 keeps it, lb1 follows.
        sim.cut.clear();
        sim.run(2000);
        assert_eq!(sim.holder(), Some("lb2"), "{:?}", sim.notices);
        assert_eq!(
            sim.nodes[0]
                .machine
                .owner(sim.now)
                .map(|(id, _)| id.0.clone()),
            Some("lb2".into())
        );
    }

    #[test]
    fn without_a_majority_nobody_holds_the_addresses() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        sim.crash(2);
        sim.crash(1);
        sim.run(1000);
        assert_eq!(sim.holder(), None, "lb1 alone is no majority");
        sim.restart(2);
        sim.run(1000);
        assert_eq!(sim.holder(), Some("lb1"));
    }

    #[test]
    fn a_stopping_owner_hands_over_without_waiting_for_down_after() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        let mut queue = VecDeque::new();
        let actions = sim.nodes[0].machine.step(HaEvent::Shutdown, sim.now);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, HaAction::Release { .. }))
        );
        let stopped_at = sim.now;
        sim.apply(0, actions, &mut queue);
        for (from, to, msg) in queue {
            let event = HaEvent::Peer {
                from: sim.ids[from].clone(),
                msg,
            };
            let actions = sim.nodes[to].machine.step(event, sim.now);
            sim.apply(to, actions, &mut VecDeque::new());
        }
        sim.crash(0);
        sim.run(500);
        assert_eq!(sim.holder(), Some("lb2"));
        assert!(sim.nodes[1].acquired[0] - stopped_at < DOWN_AFTER / 2);
    }

    #[test]
    fn a_vote_is_never_given_twice_in_an_epoch_even_across_a_restart() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        let voter = &mut sim.nodes[2];
        let epoch = voter.disk.voted.as_ref().map(|(e, _)| *e).unwrap();
        let mut m = HaMachine::new(
            ControllerId::from("c3"),
            vec!["lb1".into(), "lb2".into()],
            voter.params.clone(),
            voter.disk.clone(),
            0,
        );
        let request = |epoch| HaEvent::Peer {
            from: "lb2".into(),
            msg: HaMsg::VoteRequest {
                epoch,
                stamp: 1,
                candidacy: Candidacy {
                    priority: 100,
                    preempt: false,
                },
                down_after_ms: DOWN_AFTER,
            },
        };
        let votes = |actions: Vec<HaAction>| {
            actions
                .iter()
                .filter(|a| {
                    matches!(
                        a,
                        HaAction::Send {
                            msg: HaMsg::Vote { .. },
                            ..
                        }
                    )
                })
                .count()
        };
        assert_eq!(
            votes(m.step(request(epoch), 10 * DOWN_AFTER)),
            0,
            "already voted in {epoch}"
        );
        assert_eq!(
            votes(m.step(request(epoch + 1), 0)),
            0,
            "not before the quiet period"
        );
        assert_eq!(votes(m.step(request(epoch + 1), 10 * DOWN_AFTER)), 1);
    }

    #[test]
    fn the_lease_runs_from_the_majority_acknowledgement() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        let now = sim.now;
        let until = sim.nodes[0].machine.lease_until(now).expect("lb1 holds");
        // Acknowledged within the last heartbeat, good for 3/4 of down_after from then.
        assert!(
            until > now && until <= now + DOWN_AFTER * 3 / 4,
            "{until} at {now}"
        );
        assert_eq!(sim.nodes[1].machine.lease_until(now), None);
    }

    #[test]
    fn a_lost_heartbeat_does_not_move_the_addresses() {
        let mut sim = Sim::new(false);
        sim.run(1000);
        // One claim (and its acknowledgements) lost.
        sim.cut.insert(0);
        sim.run(HEARTBEAT);
        sim.cut.clear();
        sim.run(2000);
        assert_eq!(sim.holder(), Some("lb1"));
        assert_eq!(sim.nodes[0].acquired.len(), 1, "{:?}", sim.notices);
        assert!(sim.nodes[1].acquired.is_empty());
    }
}
