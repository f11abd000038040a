//! Randomised runs: three controllers and three Redis nodes in a discrete-event world where
//! everything that can go wrong at once does, in an order drawn from a seed.
//!
//! A run draws, during a fault window of a few simulated seconds: operator failovers sent to
//! any controller (often two at the same instant, to two controllers, with different targets),
//! master and replica crashes and returns, controller crashes and restarts (from what they had
//! made durable), partitions between controllers, a controller cut from a node, message loss,
//! and messages delayed long enough to arrive out of order. Probes, ticks and every message
//! interleave at random times. A third of the runs also start from an arbitrary state: each
//! controller with its own epochs and master (two of them may disagree within one epoch), and
//! the Redis nodes in any topology (replicas only, replication loops, two masters).
//!
//! Checked after every event: one configuration per epoch among the controllers, one write
//! target per epoch among their data planes, one leader per epoch, and votes durable before
//! they leave. After the faults stop (everything healed, revived and restarted), within
//! [`CONVERGE_MS`]: exactly one master, every other node replicating from it, every controller
//! naming it in one config epoch, idle, with its data plane on it, and no write pause left.
//!
//! A failure prints its seed; `REDIS_HA_SIM_SEED=<seed>` replays that run alone with its trace.

use std::collections::{BTreeMap, BTreeSet};

mod invariants;

use super::{R1, R2, SERVICE, node, params};
use crate::failover::{
    Action, Command, ControllerId, Epoch, Event, MachineConfig, Millis, NodeAddr, Params, PeerMsg,
    Persisted, ProbeResult, ServiceMachine, Vote,
};

/// How long the cluster may take to agree on one master once the faults stop.
pub(super) const CONVERGE_MS: Millis = 90_000;

/// How long an agreement must last to count.
const STABLE_MS: Millis = 5_000;

const NODES: [NodeAddr; 3] = [node(1), R1, R2];
const CTLS: [&str; 3] = ["a", "b", "c"];

/// splitmix64: small, seedable, and the same on every machine.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Clone, Debug)]
struct Redis {
    alive: bool,
    follows: Option<NodeAddr>,
    offset: u64,
    paused_until: Millis,
}

struct Ctl {
    id: ControllerId,
    machine: Option<ServiceMachine>,
    /// Bumped by every restart: events for an earlier life are dropped.
    life: u64,
    durable: Option<Persisted>,
    /// The pinned data plane's write port: survives restarts.
    write: Option<(Epoch, NodeAddr)>,
}

#[derive(Clone, Debug)]
enum Ev {
    Tick(usize),
    Probe(usize, NodeAddr),
    /// An input for controller `.0` in its life `.1`.
    Input(usize, u64, Event),
    Replicate,
    Fault,
    Calm,
}

/// Rules broken on purpose, in the world around the machines, to show that the runs catch
/// what each rule prevents.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Flaws {
    /// Every controller asked for a vote grants it at once, whatever it voted before: an
    /// epoch's vote elects every candidate, as if a failover needed none (Sentinel's
    /// `SENTINEL FAILOVER`).
    pub(super) votes_for_anyone: bool,
    /// A hello naming another master in the receiver's own config epoch reaches it with the
    /// receiver's master instead: two masters in one epoch are left as they are (Sentinel's
    /// way).
    pub(super) ignore_equal_epoch_conflicts: bool,
}

/// What a run found wrong.
#[derive(Debug)]
pub(super) struct Violation {
    pub(super) at: Millis,
    pub(super) what: String,
}

pub(super) struct Outcome {
    /// Simulated time from the end of the faults to agreement.
    pub(super) converged_after: Millis,
    pub(super) events: u64,
    pub(super) forced: u64,
}

struct World {
    rng: Rng,
    now: Millis,
    seq: u64,
    queue: BTreeMap<(Millis, u64), Ev>,
    redis: BTreeMap<NodeAddr, Redis>,
    ctls: Vec<Ctl>,
    params: Params,
    flaws: Flaws,
    /// Controller pairs (by index) that cannot talk.
    cut_peers: BTreeSet<(usize, usize)>,
    /// Controller-node pairs that cannot talk.
    cut_nodes: BTreeSet<(usize, NodeAddr)>,
    loss_per_mille: u64,
    calm: bool,
    fault_end: Millis,
    /// Epochs up to this one may hold conflicts from the arbitrary start.
    base_epoch: Epoch,
    configs: BTreeMap<Epoch, (NodeAddr, usize)>,
    targets: BTreeMap<Epoch, (NodeAddr, usize)>,
    leaders: BTreeMap<Epoch, usize>,
    trace: Vec<String>,
    keep_trace: bool,
    events: u64,
    forced: u64,
}

/// One run from `seed`. `Err` says which invariant broke, and when.
pub(super) fn run(seed: u64, flaws: Flaws, keep_trace: bool) -> Result<Outcome, Violation> {
    let mut w = World::new(seed, flaws, keep_trace);
    let result = w.play();
    if keep_trace {
        for line in &w.trace {
            eprintln!("{line}");
        }
    }
    result
}

impl World {
    fn new(seed: u64, flaws: Flaws, keep_trace: bool) -> Self {
        let mut rng = Rng::new(seed);
        let arbitrary = rng.chance(333);
        let fault_end = rng.range(3_000, 20_000);
        let mut redis = BTreeMap::new();
        for (i, &addr) in NODES.iter().enumerate() {
            let follows = if arbitrary {
                match rng.below(4) {
                    0 => None,
                    _ => Some(rng.pick(&NODES)).filter(|&m| m != addr),
                }
            } else {
                (i > 0).then_some(NODES[0])
            };
            redis.insert(
                addr,
                Redis {
                    alive: true,
                    follows,
                    offset: 1_000 + rng.below(100),
                    paused_until: 0,
                },
            );
        }
        let mut w = World {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            redis,
            ctls: Vec::new(),
            params: params(),
            flaws,
            cut_peers: BTreeSet::new(),
            cut_nodes: BTreeSet::new(),
            loss_per_mille: 0,
            calm: false,
            fault_end,
            base_epoch: 0,
            configs: BTreeMap::new(),
            targets: BTreeMap::new(),
            leaders: BTreeMap::new(),
            trace: Vec::new(),
            keep_trace,
            events: 0,
            forced: 0,
        };
        for (i, name) in CTLS.iter().enumerate() {
            let durable = arbitrary.then(|| {
                let config_epoch = w.rng.below(3);
                let current_epoch = config_epoch + w.rng.below(2);
                let vote = w.rng.chance(500).then(|| Vote {
                    epoch: current_epoch,
                    leader: ControllerId::from(w.rng.pick(&CTLS)),
                });
                Persisted {
                    current_epoch,
                    vote,
                    master: w.rng.pick(&NODES),
                    config_epoch,
                }
            });
            if let Some(p) = &durable {
                w.base_epoch = w.base_epoch.max(p.current_epoch);
                w.ctls.push(Ctl {
                    id: ControllerId::from(*name),
                    machine: None,
                    life: 0,
                    durable: durable.clone(),
                    write: Some((p.config_epoch, p.master)),
                });
            } else {
                w.ctls.push(Ctl {
                    id: ControllerId::from(*name),
                    machine: None,
                    life: 0,
                    durable: None,
                    write: None,
                });
            }
            // Nothing has been checked yet: no violation can come of the first actions.
            let _ = w.start_ctl(i);
        }
        w.schedule(0, Ev::Replicate);
        let first_fault = w.rng.range(200, 1_000);
        w.schedule(first_fault, Ev::Fault);
        w.schedule(fault_end, Ev::Calm);
        w
    }

    fn schedule(&mut self, after: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.keep_trace {
            self.trace.push(format!("{:>7} {}", self.now, line()));
        }
    }

    fn play(&mut self) -> Result<Outcome, Violation> {
        let deadline = self.fault_end + CONVERGE_MS;
        let mut next_check = self.fault_end;
        // Agreement counts once it held at every check for STABLE_MS: right after the faults a
        // picture can look whole while the controllers still act on what they saw before.
        let mut agreed: Option<(NodeAddr, Millis)> = None;
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            self.now = at;
            self.events += 1;
            self.handle(ev)?;
            if !self.calm || self.now < next_check {
                continue;
            }
            next_check = self.now + 100;
            agreed = match (self.converged(), agreed) {
                (Some(m), Some((held, since))) if m == held => {
                    if self.now - since >= STABLE_MS {
                        return Ok(Outcome {
                            converged_after: since - self.fault_end,
                            events: self.events,
                            forced: self.forced,
                        });
                    }
                    Some((held, since))
                }
                (Some(m), _) => Some((m, self.now)),
                (None, _) => None,
            };
            if self.now > deadline {
                return Err(self.violation(format!(
                    "no agreement {CONVERGE_MS} ms after the faults stopped: {}",
                    self.picture()
                )));
            }
        }
        Err(self.violation("the event queue ran dry".into()))
    }

    fn violation(&self, what: String) -> Violation {
        Violation { at: self.now, what }
    }

    fn handle(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Tick(i) => {
                if self.ctls[i].machine.is_some() {
                    self.step(i, Event::Tick)?;
                    let next = self.rng.range(80, 120);
                    self.schedule(next, Ev::Tick(i));
                }
            }
            Ev::Probe(i, node) => {
                if self.ctls[i].machine.is_some() {
                    let result = self.probe(i, node);
                    let life = self.ctls[i].life;
                    let delay = self.rng.below(30);
                    self.schedule(delay, Ev::Input(i, life, Event::Probe { node, result }));
                    let next = self.rng.range(80, 120);
                    self.schedule(next, Ev::Probe(i, node));
                }
            }
            Ev::Input(i, life, mut event) => {
                let Some(m) = &self.ctls[i].machine else {
                    return Ok(());
                };
                if self.ctls[i].life != life {
                    return Ok(());
                }
                if let Event::Peer {
                    msg: PeerMsg::Hello(h),
                    ..
                } = &mut event
                    && self.flaws.ignore_equal_epoch_conflicts
                    && h.config_epoch == m.config_epoch()
                {
                    h.master = m.advertised_master();
                }
                self.step(i, event)?;
            }
            Ev::Replicate => {
                self.replicate();
                self.schedule(50, Ev::Replicate);
            }
            Ev::Fault => {
                if !self.calm {
                    self.fault()?;
                    let next = self.rng.range(100, 1_500);
                    self.schedule(next, Ev::Fault);
                }
            }
            Ev::Calm => {
                self.calm = true;
                self.cut_peers.clear();
                self.cut_nodes.clear();
                self.loss_per_mille = 0;
                for r in self.redis.values_mut() {
                    r.alive = true;
                }
                for i in 0..self.ctls.len() {
                    if self.ctls[i].machine.is_none() {
                        self.start_ctl(i)?;
                    }
                }
                self.note(|| "calm: healed, revived, restarted".into());
            }
        }
        Ok(())
    }

    /// Masters take writes unless paused; replicas whose master is a live master copy it.
    fn replicate(&mut self) {
        for r in self.redis.values_mut() {
            if r.alive && r.follows.is_none() && r.paused_until <= self.now {
                r.offset += 1;
            }
        }
        let snapshot = self.redis.clone();
        for r in self.redis.values_mut() {
            if let Some(m) = r.follows.and_then(|m| snapshot.get(&m))
                && r.alive
                && m.alive
                && m.follows.is_none()
            {
                r.offset = m.offset;
            }
        }
    }

    fn fault(&mut self) -> Result<(), Violation> {
        let n = self.ctls.len();
        let i = self.rng.below(n as u64) as usize;
        let node = self.rng.pick(&NODES);
        match self.rng.below(100) {
            0..=24 => {
                let to = self.rng.chance(600).then(|| self.rng.pick(&NODES));
                self.force(i, to)?;
            }
            25..=39 => {
                // Two operators at the same instant, to two controllers, with different targets.
                let j = (i + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                let (x, y) = (self.rng.pick(&NODES), self.rng.pick(&NODES));
                self.force(i, Some(x))?;
                self.force(j, Some(y))?;
            }
            40..=49 => {
                let master = NODES
                    .iter()
                    .copied()
                    .find(|a| self.redis[a].follows.is_none());
                let victim = master.unwrap_or(node);
                self.redis.get_mut(&victim).unwrap().alive = false;
                self.note(|| format!("kill {victim}"));
            }
            50..=57 => {
                self.redis.get_mut(&node).unwrap().alive = true;
                self.note(|| format!("revive {node}"));
            }
            58..=65 => {
                if self.ctls[i].machine.take().is_some() {
                    self.note(|| format!("crash controller {i}"));
                }
            }
            66..=73 => {
                if self.ctls[i].machine.is_none() {
                    self.start_ctl(i)?;
                }
            }
            74..=81 => {
                let alone = i;
                for j in 0..n {
                    if j != alone {
                        self.cut_peers.insert((alone, j));
                        self.cut_peers.insert((j, alone));
                    }
                }
                self.note(|| format!("partition controller {alone} from the others"));
            }
            82..=86 => {
                self.cut_nodes.insert((i, node));
                self.note(|| format!("cut controller {i} from {node}"));
            }
            87..=93 => {
                self.cut_peers.clear();
                self.cut_nodes.clear();
                self.note(|| "heal".into());
            }
            _ => {
                self.loss_per_mille = self.rng.pick(&[0, 0, 50, 200, 500]);
                let loss = self.loss_per_mille;
                self.note(|| format!("message loss {loss}/1000"));
            }
        }
        Ok(())
    }

    fn force(&mut self, i: usize, to: Option<NodeAddr>) -> Result<(), Violation> {
        if self.ctls[i].machine.is_none() {
            return Ok(());
        }
        self.forced += 1;
        self.note(|| format!("operator: failover at controller {i} to {to:?}"));
        let event = Event::ForceFailover {
            to,
            timeout_ms: 2_000,
        };
        self.step(i, event)
    }

    fn start_ctl(&mut self, i: usize) -> Result<(), Violation> {
        let peers: Vec<ControllerId> = CTLS
            .iter()
            .filter(|&&p| p != CTLS[i])
            .map(|&p| ControllerId::from(p))
            .collect();
        let config = MachineConfig {
            service: SERVICE.to_owned(),
            me: self.ctls[i].id.clone(),
            peer_addrs: Default::default(),
            peers,
            master: NODES[0],
            replicas: NODES[1..].to_vec(),
            params: self.params.clone(),
        };
        let (machine, actions) =
            ServiceMachine::new(config, self.ctls[i].durable.clone(), self.now).unwrap();
        self.ctls[i].machine = Some(machine);
        self.ctls[i].life += 1;
        self.note(|| format!("start controller {i}"));
        let first = self.rng.below(100);
        self.schedule(first, Ev::Tick(i));
        for node in NODES {
            let first = self.rng.below(100);
            self.schedule(first, Ev::Probe(i, node));
        }
        // Its first actions come before any event, as the executor performs them at start.
        self.perform(i, actions)
    }

    fn reaches(&self, i: usize, node: NodeAddr) -> bool {
        self.redis[&node].alive && !self.cut_nodes.contains(&(i, node))
    }

    fn probe(&self, i: usize, node: NodeAddr) -> ProbeResult {
        if !self.reaches(i, node) {
            return ProbeResult::Failed;
        }
        let r = &self.redis[&node];
        let master_serves = r.follows.is_some_and(|m| {
            self.redis
                .get(&m)
                .is_some_and(|m| m.alive && m.follows.is_none())
        });
        let run_id = format!("run-{}", node.ip());
        super::simulated_probe(r.follows, master_serves, r.offset, 0, 100, run_id)
    }

    fn step(&mut self, i: usize, event: Event) -> Result<(), Violation> {
        let jitter = self.rng.next();
        let now = self.now;
        let Some(machine) = self.ctls[i].machine.as_mut() else {
            return Ok(());
        };
        let actions = machine.step(event, now, jitter);
        self.perform(i, actions)
    }

    /// The executor: perform controller `i`'s actions in order, then check the invariants.
    fn perform(&mut self, i: usize, actions: Vec<Action>) -> Result<(), Violation> {
        let life = self.ctls[i].life;
        for action in actions {
            if !matches!(action, Action::SendToPeers(PeerMsg::Hello(_))) {
                self.note(|| format!("ctl {i}: {action:?}"));
            }
            match action {
                Action::Emit(_) | Action::SetReadPool(_) | Action::Forced(_) => {}
                Action::Persist(p) => self.ctls[i].durable = Some(p),
                Action::SendToPeers(msg) => {
                    if let PeerMsg::VoteRequest { epoch, .. } = &msg {
                        let own = Vote {
                            epoch: *epoch,
                            leader: self.ctls[i].id.clone(),
                        };
                        if self.durable_vote(i).as_ref() != Some(&own) {
                            return Err(self.violation(format!(
                                "controller {i} asked for votes in epoch {epoch} before its own was durable"
                            )));
                        }
                        if self.flaws.votes_for_anyone {
                            for j in (0..self.ctls.len()).filter(|&j| j != i) {
                                let from = self.ctls[j].id.clone();
                                let msg = PeerMsg::VoteReply {
                                    epoch: own.epoch,
                                    leader: own.leader.clone(),
                                };
                                self.schedule(0, Ev::Input(i, life, Event::Peer { from, msg }));
                            }
                        }
                    }
                    for j in 0..self.ctls.len() {
                        if j != i {
                            self.send(i, j, msg.clone());
                        }
                    }
                }
                Action::ReplyVote { to, epoch, leader } => {
                    let vote = Vote { epoch, leader };
                    if self.durable_vote(i).as_ref() != Some(&vote) {
                        return Err(self.violation(format!(
                            "controller {i} replied with a vote it had not made durable: {vote:?}"
                        )));
                    }
                    let j = CTLS.iter().position(|&c| *c == to.0).unwrap();
                    let msg = PeerMsg::VoteReply {
                        epoch: vote.epoch,
                        leader: vote.leader,
                    };
                    self.send(i, j, msg);
                }
                Action::PromoteReplica { node } => {
                    let ok = self.reaches(i, node);
                    if ok {
                        self.redis.get_mut(&node).unwrap().follows = None;
                    }
                    let command = Command::PromoteReplica;
                    self.local(i, life, Event::CommandDone { node, command, ok });
                }
                Action::ReplicaOf { node, master } => {
                    let ok = self.reaches(i, node) && node != master;
                    if ok {
                        self.redis.get_mut(&node).unwrap().follows = Some(master);
                    }
                    let command = Command::ReplicaOf { master };
                    self.local(i, life, Event::CommandDone { node, command, ok });
                }
                Action::SetMaster { epoch, node } => {
                    let ok = self.ctls[i].write.is_none_or(|(held, _)| epoch >= held);
                    if ok {
                        self.ctls[i].write = Some((epoch, node));
                        if epoch > self.base_epoch {
                            let first = *self.targets.entry(epoch).or_insert((node, i));
                            if first.0 != node {
                                return Err(self.violation(format!(
                                    "two write targets in epoch {epoch}: {} (controller {}) and {node} (controller {i})",
                                    first.0, first.1
                                )));
                            }
                        }
                    }
                    self.local(i, life, Event::MasterApplied { epoch, node, ok });
                }
                Action::PauseAndSync {
                    master,
                    target,
                    pause_ms,
                    ..
                } => {
                    let ok = self.reaches(i, master)
                        && self.reaches(i, target)
                        && self.redis[&master].follows.is_none()
                        && self.redis[&target].follows == Some(master);
                    if ok {
                        let offset = self.redis[&master].offset;
                        self.redis.get_mut(&master).unwrap().paused_until = self.now + pause_ms;
                        self.redis.get_mut(&target).unwrap().offset = offset;
                    }
                    self.local(i, life, Event::Synced { target, ok });
                }
                Action::ResumeWrites { node, demote_to } => {
                    if self.reaches(i, node) {
                        let r = self.redis.get_mut(&node).unwrap();
                        if demote_to.is_some() {
                            r.follows = demote_to;
                        }
                        r.paused_until = 0;
                    }
                }
            }
        }
        self.check(i)
    }

    fn send(&mut self, from: usize, to: usize, msg: PeerMsg) {
        if self.cut_peers.contains(&(from, to)) || self.rng.chance(self.loss_per_mille) {
            return;
        }
        let delay = if !self.calm && self.rng.chance(50) {
            self.rng.range(100, 1_500)
        } else {
            self.rng.below(20)
        };
        let life = self.ctls[to].life;
        let from = self.ctls[from].id.clone();
        self.schedule(delay, Ev::Input(to, life, Event::Peer { from, msg }));
    }

    fn local(&mut self, i: usize, life: u64, event: Event) {
        let delay = self.rng.below(10);
        self.schedule(delay, Ev::Input(i, life, event));
    }

    fn durable_vote(&self, i: usize) -> Option<Vote> {
        self.ctls[i].durable.as_ref().and_then(|p| p.vote.clone())
    }
}
