//! A deterministic world for scenario tests: controllers wired through an in-memory network that
//! can be partitioned, fake Redis nodes that obey REPLICAOF, and a clock advanced by the test.
//!
//! It plays the executor, and checks the executor-side invariants on every action: a vote or vote
//! request never leaves before the vote is durable, and the data plane never receives a master
//! with an epoch that does not move forward.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{M, R1, R2, R3, SERVICE, config};
use crate::failover::{
    Action, Command, ControllerId, Epoch, Event, Hello, Millis, NodeAddr, NoticeKind, Params,
    PeerMsg, Persisted, ProbeResult, ServiceMachine, Vote,
};

/// Time between two rounds (probe every node, then tick), as an executor would.
pub(super) const ROUND_MS: Millis = 100;

/// One controller and what its executor did.
pub(super) struct Ctl {
    pub(super) machine: ServiceMachine,
    pub(super) alive: bool,
    /// The "random" value passed to every step: distinct per controller, so that their retries
    /// spread as Sentinel's rand() spreads them.
    jitter: Millis,
    /// What the executor durably stored.
    pub(super) durable: Option<Persisted>,
    /// This controller's data plane: the write port's master...
    pub(super) write: Option<(Epoch, NodeAddr)>,
    /// ...and the read port's backends.
    pub(super) reads: Vec<NodeAddr>,
    pub(super) log: Vec<(Millis, Action)>,
}

/// A Redis node, just enough of one.
#[derive(Clone, Debug)]
pub(super) struct FakeRedis {
    pub(super) alive: bool,
    /// `None`: master; `Some(m)`: replica of m.
    pub(super) follows: Option<NodeAddr>,
    pub(super) offset: u64,
    pub(super) priority: u32,
    pub(super) lag_ms: Millis,
    /// Accepts REPLICAOF NO ONE but never becomes master (a wedged node).
    pub(super) ignores_promotion: bool,
    /// Writes paused (`CLIENT PAUSE WRITE`) by a planned switchover.
    pub(super) paused: bool,
}

pub(super) struct Sim {
    pub(super) now: Millis,
    pub(super) ctls: BTreeMap<ControllerId, Ctl>,
    pub(super) redis: BTreeMap<NodeAddr, FakeRedis>,
    /// Controller pairs that cannot talk (both orders stored).
    cut_peers: BTreeSet<(ControllerId, ControllerId)>,
    /// Controllers that cannot reach a node.
    cut_nodes: BTreeSet<(ControllerId, NodeAddr)>,
    queue: VecDeque<(ControllerId, Event)>,
    /// Deliver messages only after every controller ran its round, so that they act
    /// "simultaneously" (split votes); otherwise after each step.
    pub(super) batched: bool,
    /// The next controller that sends REPLICAOF NO ONE dies right after (Sentinel's
    /// `SENTINEL SIMULATE-FAILURE CRASH-AFTER-ELECTION`, a bit later).
    pub(super) crash_next_promoter: bool,
    /// Every hello sent, to replay stale ones.
    pub(super) hellos: Vec<(Millis, ControllerId, Hello)>,
}

impl Sim {
    /// Controllers `names` monitoring M with replicas R1 (offset 100), R2 (offset 200) and R3
    /// (offset 999, priority 0).
    pub(super) fn new(names: &[&str], params: Params) -> Self {
        let mut redis = BTreeMap::new();
        let fake = |follows, offset, priority| FakeRedis {
            alive: true,
            follows,
            offset,
            priority,
            lag_ms: 0,
            ignores_promotion: false,
            paused: false,
        };
        redis.insert(M, fake(None, 1_000, 100));
        redis.insert(R1, fake(Some(M), 100, 100));
        redis.insert(R2, fake(Some(M), 200, 100));
        redis.insert(R3, fake(Some(M), 999, 0));
        let mut sim = Sim {
            now: 0,
            ctls: BTreeMap::new(),
            redis,
            cut_peers: BTreeSet::new(),
            cut_nodes: BTreeSet::new(),
            queue: VecDeque::new(),
            batched: false,
            crash_next_promoter: false,
            hellos: Vec::new(),
        };
        for (i, &name) in names.iter().enumerate() {
            let peers: Vec<&str> = names.iter().copied().filter(|&p| p != name).collect();
            let (machine, initial) =
                ServiceMachine::new(config(name, &peers, params.clone()), None, 0).unwrap();
            let id = ControllerId::from(name);
            sim.ctls.insert(
                id.clone(),
                Ctl {
                    machine,
                    alive: true,
                    jitter: 300 * i as Millis,
                    durable: None,
                    write: None,
                    reads: Vec::new(),
                    log: Vec::new(),
                },
            );
            sim.execute(&id, initial);
        }
        sim.drain();
        sim
    }

    pub(super) fn ctl(&self, name: &str) -> &Ctl {
        &self.ctls[&ControllerId::from(name)]
    }

    pub(super) fn alive_ctls(&self) -> impl Iterator<Item = (&ControllerId, &Ctl)> {
        self.ctls.iter().filter(|(_, c)| c.alive)
    }

    /// Run rounds for `ms` simulated milliseconds.
    pub(super) fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.round();
        }
    }

    /// Run rounds until `done` holds (checked after each round), at most `ms`. Returns whether
    /// it held.
    pub(super) fn run_until(&mut self, ms: Millis, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + ms;
        while self.now < end {
            self.round();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// One round: every live controller probes every node, then ticks.
    pub(super) fn round(&mut self) {
        self.now += ROUND_MS;
        let ids: Vec<ControllerId> = self.alive_ctls().map(|(id, _)| id.clone()).collect();
        for id in &ids {
            let nodes: Vec<NodeAddr> = self.redis.keys().copied().collect();
            for node in nodes {
                let result = self.probe(id, node);
                self.deliver(id, Event::Probe { node, result });
            }
            self.deliver(id, Event::Tick);
            if !self.batched {
                self.drain();
            }
        }
        self.drain();
    }

    pub(super) fn kill(&mut self, node: NodeAddr) {
        self.redis.get_mut(&node).unwrap().alive = false;
    }

    pub(super) fn revive(&mut self, node: NodeAddr) {
        self.redis.get_mut(&node).unwrap().alive = true;
    }

    /// Cut every link between controllers of `a` and controllers of `b`.
    pub(super) fn partition(&mut self, a: &[&str], b: &[&str]) {
        for &x in a {
            for &y in b {
                self.cut_peers.insert((x.into(), y.into()));
                self.cut_peers.insert((y.into(), x.into()));
            }
        }
    }

    /// `ctl` can no longer reach `node` (the node is fine for everybody else).
    pub(super) fn cut_node(&mut self, ctl: &str, node: NodeAddr) {
        self.cut_nodes.insert((ctl.into(), node));
    }

    pub(super) fn heal(&mut self) {
        self.cut_peers.clear();
        self.cut_nodes.clear();
    }

    /// Deliver `msg` to `to` as if `from` had sent it now (to replay stale messages).
    pub(super) fn inject(&mut self, from: &ControllerId, to: &str, msg: PeerMsg) {
        self.deliver(
            &to.into(),
            Event::Peer {
                from: from.clone(),
                msg,
            },
        );
        self.drain();
    }

    /// Feed `event` to controller `to` now, as its executor would (an operator's request).
    pub(super) fn feed(&mut self, to: &str, event: Event) {
        self.deliver(&to.into(), event);
        self.drain();
    }

    /// Feed each `(controller, event)` before any message they cause is delivered: requests
    /// that arrive at the same instant.
    pub(super) fn feed_at_once(&mut self, events: Vec<(&str, Event)>) {
        for (to, event) in events {
            self.deliver(&to.into(), event);
        }
        self.drain();
    }

    /// Every REPLICAOF NO ONE sent, by whom, to which node, when.
    pub(super) fn promotions(&self) -> Vec<(Millis, ControllerId, NodeAddr)> {
        let mut all: Vec<_> = self
            .ctls
            .iter()
            .flat_map(|(id, c)| {
                c.log.iter().filter_map(move |(t, a)| match a {
                    Action::PromoteReplica { node } => Some((*t, id.clone(), *node)),
                    _ => None,
                })
            })
            .collect();
        all.sort();
        all
    }

    /// How many times `kind` was emitted, all controllers together.
    pub(super) fn count(&self, kind: NoticeKind) -> usize {
        self.ctls
            .values()
            .map(|c| super::count_notices(&c.log, kind))
            .sum()
    }

    fn probe(&self, ctl: &ControllerId, node: NodeAddr) -> ProbeResult {
        let r = &self.redis[&node];
        if !r.alive || self.cut_nodes.contains(&(ctl.clone(), node)) {
            return ProbeResult::Failed;
        }
        let master_serves = r.follows.is_some_and(|m| {
            self.redis
                .get(&m)
                .is_some_and(|m| m.alive && m.follows.is_none())
        });
        let run_id = format!("run-{}", node.ip());
        super::simulated_probe(
            r.follows,
            master_serves,
            r.offset,
            r.lag_ms,
            r.priority,
            run_id,
        )
    }

    fn deliver(&mut self, to: &ControllerId, event: Event) {
        let Some(ctl) = self.ctls.get_mut(to) else {
            return;
        };
        if !ctl.alive {
            return;
        }
        let actions = ctl.machine.step(event, self.now, ctl.jitter);
        self.execute(to, actions);
    }

    fn drain(&mut self) {
        let mut budget = 100_000;
        while let Some((to, event)) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "messages keep bouncing at {} ms", self.now);
            self.deliver(&to, event);
        }
    }

    fn peers_reachable(&self, a: &ControllerId, b: &ControllerId) -> bool {
        !self.cut_peers.contains(&(a.clone(), b.clone()))
    }

    /// The executor: perform `actions` of controller `id`, in order.
    fn execute(&mut self, id: &ControllerId, actions: Vec<Action>) {
        let now = self.now;
        let mut promoted = false;
        for action in actions {
            self.ctls
                .get_mut(id)
                .unwrap()
                .log
                .push((now, action.clone()));
            match action {
                Action::Emit(_) => {}
                Action::Persist(p) => self.ctls.get_mut(id).unwrap().durable = Some(p),
                Action::SendToPeers(msg) => {
                    match &msg {
                        PeerMsg::VoteRequest { epoch, .. } => {
                            let want = Vote {
                                epoch: *epoch,
                                leader: id.clone(),
                            };
                            assert_eq!(
                                self.durable_vote(id),
                                Some(want),
                                "{id} asked for votes before persisting its own"
                            );
                        }
                        PeerMsg::Hello(h) => self.hellos.push((now, id.clone(), h.clone())),
                        PeerMsg::VoteReply { .. } => unreachable!("replies go through ReplyVote"),
                    }
                    let peers: Vec<ControllerId> = self
                        .ctls
                        .keys()
                        .filter(|p| *p != id && self.peers_reachable(id, p))
                        .cloned()
                        .collect();
                    for peer in peers {
                        self.queue.push_back((
                            peer,
                            Event::Peer {
                                from: id.clone(),
                                msg: msg.clone(),
                            },
                        ));
                    }
                }
                Action::ReplyVote { to, epoch, leader } => {
                    let vote = Vote {
                        epoch,
                        leader: leader.clone(),
                    };
                    assert_eq!(
                        self.durable_vote(id),
                        Some(vote),
                        "{id} replied with a vote it had not persisted"
                    );
                    if self.peers_reachable(id, &to) {
                        self.queue.push_back((
                            to,
                            Event::Peer {
                                from: id.clone(),
                                msg: PeerMsg::VoteReply { epoch, leader },
                            },
                        ));
                    }
                }
                Action::PromoteReplica { node } => {
                    promoted = true;
                    let ok = self.command_reaches(id, node);
                    if ok && !self.redis[&node].ignores_promotion {
                        self.redis.get_mut(&node).unwrap().follows = None;
                    }
                    self.queue.push_back((
                        id.clone(),
                        Event::CommandDone {
                            node,
                            command: Command::PromoteReplica,
                            ok,
                        },
                    ));
                }
                Action::ReplicaOf { node, master } => {
                    let ok = self.command_reaches(id, node);
                    if ok {
                        self.redis.get_mut(&node).unwrap().follows = Some(master);
                    }
                    self.queue.push_back((
                        id.clone(),
                        Event::CommandDone {
                            node,
                            command: Command::ReplicaOf { master },
                            ok,
                        },
                    ));
                }
                Action::SetMaster { epoch, node } => {
                    let ctl = self.ctls.get_mut(id).unwrap();
                    if let Some((last, _)) = ctl.write {
                        assert!(epoch > last, "{id}: SetMaster epoch {epoch} after {last}");
                    }
                    ctl.write = Some((epoch, node));
                    self.queue.push_back((
                        id.clone(),
                        Event::MasterApplied {
                            epoch,
                            node,
                            ok: true,
                        },
                    ));
                }
                Action::SetReadPool(pool) => self.ctls.get_mut(id).unwrap().reads = pool,
                Action::PauseAndSync { master, target, .. } => {
                    // Writes stop, so the target catches up with what the master has.
                    let ok = self.command_reaches(id, master)
                        && self.command_reaches(id, target)
                        && self.redis[&target].follows == Some(master);
                    if ok {
                        self.redis.get_mut(&master).unwrap().paused = true;
                        let offset = self.redis[&master].offset;
                        self.redis.get_mut(&target).unwrap().offset = offset;
                    }
                    self.queue
                        .push_back((id.clone(), Event::Synced { target, ok }));
                }
                Action::ResumeWrites { node, demote_to } => {
                    if self.command_reaches(id, node) {
                        let r = self.redis.get_mut(&node).unwrap();
                        if demote_to.is_some() {
                            r.follows = demote_to;
                        }
                        r.paused = false;
                    }
                }
                Action::Forced(_) => {}
            }
        }
        if promoted && self.crash_next_promoter {
            self.crash_next_promoter = false;
            self.ctls.get_mut(id).unwrap().alive = false;
        }
    }

    fn durable_vote(&self, id: &ControllerId) -> Option<Vote> {
        self.ctls[id].durable.as_ref().and_then(|p| p.vote.clone())
    }

    fn command_reaches(&self, id: &ControllerId, node: NodeAddr) -> bool {
        self.redis[&node].alive && !self.cut_nodes.contains(&(id.clone(), node))
    }
}

/// `+switch-master` payload for a switch from M to `to`.
pub(super) fn switch_payload(to: NodeAddr) -> String {
    format!(
        "+switch-master {SERVICE} {} {} {} {}",
        M.ip(),
        M.port(),
        to.ip(),
        to.port()
    )
}
