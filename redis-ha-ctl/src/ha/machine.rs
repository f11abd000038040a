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
#[path = "machine_tests.rs"]
mod tests;
