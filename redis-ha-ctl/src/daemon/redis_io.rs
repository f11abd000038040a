//! Everything the daemon says to Redis, each on a task of its own that reports back to the
//! executor as an [`Input`]: the periodic probes (one connection per node), the failover's
//! commands, and a planned switchover's pause, catch-up and resume ([`SwitchoverIo`]).

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tracing::{info, warn};

use super::executor::Input;
use crate::{
    config::{ControllerConfig, ServiceConfig},
    failover::{self, Event, Millis, NodeAddr, ProbeResult, Role},
    metrics::Metrics,
    probe::{self, Prober},
    redis_conn::RedisAccess,
};

/// One task per node, each with its own connection, probing every probe interval.
pub(super) fn spawn_probes(
    tasks: &mut JoinSet<()>,
    services: &[ServiceConfig],
    ctl: &ControllerConfig,
    tx: &mpsc::Sender<Input>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    for (i, svc) in services.iter().enumerate() {
        let access = RedisAccess::of(svc)
            .map_err(|e| anyhow::anyhow!("service {}: [service.tls]: {e}", svc.name))?;
        let interval = Duration::from_millis(ctl.probe_interval_ms);
        let timeout = Duration::from_millis(svc.failover_params(ctl).probe_timeout_ms());
        let hosts = probe::Hosts::of(svc);
        for node in &svc.backends {
            let mut prober = Prober::new(*node, access.clone(), timeout, hosts.clone());
            let tx = tx.clone();
            let metrics = metrics.clone();
            let (service_name, node_name) = (svc.name.clone(), node.to_string());
            tasks.spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let started = Instant::now();
                    let result = prober.probe().await;
                    let latency = started.elapsed();
                    let ok = matches!(result, ProbeResult::Ok(_));
                    metrics.observe_probe(&service_name, &node_name, ok, latency);
                    let input = Input::Probe {
                        service: i,
                        node: prober.addr(),
                        result,
                        latency: ok.then_some(latency),
                    };
                    if tx.send(input).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    Ok(())
}

/// Sends a failover's command to `node` and reports [`Event::CommandDone`]; after a command
/// that went through, probes the node at once.
pub(super) fn spawn_command(
    svc: &ServiceConfig,
    service: usize,
    node: NodeAddr,
    command: failover::Command,
    tx: &mpsc::Sender<Input>,
) {
    let tx = tx.clone();
    let access = RedisAccess::of(svc);
    let timeout = Duration::from_millis((svc.failover.down_after_ms).clamp(100, 2000));
    let hosts = probe::Hosts::of(svc);
    tokio::spawn(async move {
        let Ok(mut p) = access
            .map(|a| Prober::new(node, a, timeout, hosts))
            .inspect_err(|e| warn!(%node, "command client: {e}"))
        else {
            let event = Event::CommandDone {
                node,
                command,
                ok: false,
            };
            let _ = tx.send(Input::Event { service, event }).await;
            return;
        };
        let ok = p.command(&command).await;
        info!(%node, ?command, ok, "command sent");
        let done = Event::CommandDone { node, command, ok };
        let _ = tx
            .send(Input::Event {
                service,
                event: done,
            })
            .await;
        if ok {
            // Probe at once: a promotion is confirmed by the node reporting role:master,
            // and waiting for the next periodic probe would add up to one interval.
            let result = p.probe().await;
            let _ = tx
                .send(Input::Probe {
                    service,
                    node,
                    result,
                    latency: None,
                })
                .await;
        }
    });
}

/// A planned switchover's first step ([`failover::Action::PauseAndSync`]): pauses the
/// master's writes until the target caught up, reporting [`Input::Paused`] then
/// [`Event::Synced`].
pub(super) fn spawn_pause_and_sync(
    svc: &ServiceConfig,
    service: usize,
    master: NodeAddr,
    target: NodeAddr,
    pause_ms: Millis,
    timeout_ms: Millis,
    tx: &mpsc::Sender<Input>,
) {
    let io = SwitchoverIo::new(svc);
    let tx = tx.clone();
    tokio::spawn(async move {
        let ok = io
            .pause_and_sync(service, master, target, pause_ms, timeout_ms, &tx)
            .await;
        let _ = tx
            .send(Input::Event {
                service,
                event: Event::Synced { target, ok },
            })
            .await;
    });
}

/// Ends the write pause on `node` (demoting it first with `demote_to`), reporting
/// [`Input::Resumed`].
pub(super) fn spawn_resume_writes(
    svc: &ServiceConfig,
    service: usize,
    node: NodeAddr,
    demote_to: Option<NodeAddr>,
    tx: &mpsc::Sender<Input>,
) {
    let io = SwitchoverIo::new(svc);
    let tx = tx.clone();
    tokio::spawn(async move {
        let (ok, at) = io.resume_writes(node, demote_to).await;
        let _ = tx.send(Input::Resumed { service, ok, at }).await;
    });
}

/// How long a planned switchover's commands (pause, offsets, promotion) may take.
fn switchover_timeout(svc: &ServiceConfig) -> Duration {
    Duration::from_millis((svc.failover.down_after_ms / 2).clamp(50, 1000))
}

/// The Redis I/O of a planned switchover, on connections of its own (the probes' connections
/// must keep probing meanwhile).
struct SwitchoverIo {
    /// `Err`: the service's TLS files could not be read (logged at each use).
    access: Result<RedisAccess, String>,
    timeout: Duration,
    hosts: Arc<probe::Hosts>,
}

impl SwitchoverIo {
    fn new(svc: &ServiceConfig) -> Self {
        Self {
            access: RedisAccess::of(svc),
            timeout: switchover_timeout(svc),
            hosts: probe::Hosts::of(svc),
        }
    }

    fn prober(&self, node: NodeAddr) -> Option<Prober> {
        self.access
            .clone()
            .map(|a| Prober::new(node, a, self.timeout, self.hosts.clone()))
            .inspect_err(|e| warn!(%node, "switchover client: {e}"))
            .ok()
    }

    /// `CLIENT PAUSE <pause_ms> WRITE` on `master`, then polls both nodes until `target`'s
    /// `slave_repl_offset` equals the master's `master_repl_offset` (at most `timeout_ms`).
    /// Writes already acknowledged are in the master's offset once the pause is accepted, so
    /// equal offsets mean the target has every one of them.
    async fn pause_and_sync(
        &self,
        service: usize,
        master: NodeAddr,
        target: NodeAddr,
        pause_ms: Millis,
        timeout_ms: Millis,
        tx: &mpsc::Sender<Input>,
    ) -> bool {
        let (Some(mut m), Some(mut t)) = (self.prober(master), self.prober(target)) else {
            return false;
        };
        let mut pause = redis::cmd("CLIENT");
        pause.arg("PAUSE").arg(pause_ms).arg("WRITE");
        if let Err(e) = m.query::<()>(&pause).await {
            warn!(%master, "switchover: CLIENT PAUSE failed: {e}");
            return false;
        }
        let _ = tx
            .send(Input::Paused {
                service,
                at: Instant::now(),
            })
            .await;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut info = redis::cmd("INFO");
        info.arg("replication");
        let mut polls = 0u32;
        loop {
            let poll = async {
                let m_text: String = m.query(&info).await.ok()?;
                let t_text: String = t.query(&info).await.ok()?;
                match (
                    probe::parse_role_with(&m_text, |n| self.hosts.lookup(n)).ok()?,
                    probe::parse_role_with(&t_text, |n| self.hosts.lookup(n)).ok()?,
                ) {
                    (Role::Master { repl_offset }, Role::Replica(r)) if r.master == master => {
                        Some((repl_offset, r.repl_offset))
                    }
                    _ => None,
                }
            };
            // The bound holds even for a node that stops answering mid-way.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(offsets) = tokio::time::timeout(remaining, poll).await else {
                warn!(%master, %target, timeout_ms, "switchover: no answer about the offsets in time");
                return false;
            };
            polls += 1;
            match offsets {
                Some((m_off, t_off)) if t_off >= m_off => {
                    info!(%master, %target, offset = m_off, polls, "switchover: the target caught up");
                    return true;
                }
                Some((m_off, t_off)) if Instant::now() >= deadline => {
                    warn!(%master, %target, timeout_ms, behind = m_off - t_off, "switchover: the target did not catch up in time");
                    return false;
                }
                Some(_) => {}
                None => {
                    // Roles changed under us or a node refused: no switchover.
                    warn!(%master, %target, "switchover: cannot compare replication offsets");
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Ends a switchover's write pause on `node`. With `demote_to`: `REPLICAOF` it first, then
    /// close its normal clients, then unpause, so that a write the pause held can only fail
    /// (`READONLY` or a closed connection), never be acknowledged by a node whose data the new
    /// master's is about to replace. Returns whether the unpause was accepted, and when.
    async fn resume_writes(&self, node: NodeAddr, demote_to: Option<NodeAddr>) -> (bool, Instant) {
        let Some(mut p) = self.prober(node) else {
            return (false, Instant::now());
        };
        if let Some(master) = demote_to {
            let mut replicaof = redis::cmd("REPLICAOF");
            replicaof
                .arg(self.hosts.replicaof_host(master))
                .arg(master.port());
            if let Err(e) = p.query::<()>(&replicaof).await {
                // Closing the clients below still keeps the held writes from being
                // acknowledged; the machine demotes it later (+convert-to-slave).
                warn!(%node, %master, "switchover: demoting the old master failed: {e}");
            }
            let mut kill = redis::cmd("CLIENT");
            kill.arg("KILL").arg("TYPE").arg("normal");
            if let Err(e) = p.query::<redis::Value>(&kill).await {
                warn!(%node, "switchover: CLIENT KILL TYPE normal failed: {e}");
            }
        }
        let ok = match p.query::<()>(redis::cmd("CLIENT").arg("UNPAUSE")).await {
            Ok(()) => true,
            Err(e) => {
                warn!(%node, "switchover: CLIENT UNPAUSE failed (the pause expires by itself): {e}");
                false
            }
        };
        let resumed = Instant::now();
        if demote_to.is_some() {
            // Only so that a restart keeps the new role (it may fail: no config file); after the
            // unpause, since it writes and syncs a file.
            let _ = p.query::<()>(redis::cmd("CONFIG").arg("REWRITE")).await;
        }
        (ok, resumed)
    }
}
