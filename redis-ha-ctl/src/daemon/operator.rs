//! An operator's forced failover (a planned switchover while the master answers), from the
//! request to its answer. The machine decides and reports [`ForcedOutcome`]s; this keeps what
//! the answer needs (when writes were paused and resumed) and answers once everything is known:
//! a `SENTINEL FAILOVER` when the failover starts, a `REDIS-HA FAILOVER` once it switched or
//! aborted and the old master's writes were resumed.

use tokio::{sync::oneshot, time::Instant};
use tracing::{info, warn};

use super::control::{ApiError, ControlRequest, SwitchoverReport};
use crate::{
    config::DEFAULT_SWITCHOVER_TIMEOUT_MS,
    failover::{Event, ForceRefused, ForcedOutcome},
};

/// An operator's forced failover, from the request to its answer.
struct Switchover {
    requested: Instant,
    /// `None` once answered (a `SENTINEL FAILOVER` is answered when it starts).
    reply: Option<oneshot::Sender<Result<String, ApiError>>>,
    /// Answer at the end rather than at the start.
    wait: bool,
    paused_at: Option<Instant>,
    resumed_at: Option<Instant>,
    /// A `ResumeWrites` is in flight: the answer waits for it (it carries the pause length).
    resuming: bool,
    /// `Switched` or `Aborted`, once the machine said so.
    outcome: Option<ForcedOutcome>,
}

/// One service's operator failover in flight, if any: one at a time.
#[derive(Default)]
pub(super) struct Operator {
    switchover: Option<Switchover>,
}

impl Operator {
    /// A request for `service`, whose machine is `idle` or not; returns the event that asks
    /// the machine, or `None` if the request was answered at once.
    pub(super) fn request(
        &mut self,
        service: &str,
        idle: bool,
        request: ControlRequest,
    ) -> Option<Event> {
        let ControlRequest::Failover {
            to,
            timeout_ms,
            wait,
            reply,
            ..
        } = request;
        if self
            .switchover
            .as_ref()
            .is_some_and(|s| idle && !s.resuming && s.outcome.is_none())
        {
            // The machine is idle and nothing is in flight, yet no outcome came: an
            // attempt that ended without one. Do not let it block the operator forever.
            warn!(service = %service, "dropping a forced failover that never reported its end");
            if let Some(reply) = self.switchover.take().and_then(|s| s.reply) {
                let _ = reply.send(Err(ApiError::new(
                    "ERR",
                    "the failover ended without an outcome",
                )));
            }
        }
        if self.switchover.is_some() {
            // The machine may be idle again while the old master's writes are still
            // being resumed: one operator failover at a time.
            let _ = reply.send(Err(ApiError::new("INPROG", "Failover already in progress")));
            return None;
        }
        self.switchover = Some(Switchover {
            requested: Instant::now(),
            reply: Some(reply),
            wait,
            paused_at: None,
            resumed_at: None,
            resuming: false,
            outcome: None,
        });
        let timeout_ms = timeout_ms.unwrap_or(DEFAULT_SWITCHOVER_TIMEOUT_MS);
        Some(Event::ForceFailover { to, timeout_ms })
    }

    /// The master's writes were paused (`CLIENT PAUSE` accepted) at `at`.
    pub(super) fn paused(&mut self, at: Instant) {
        if let Some(s) = &mut self.switchover {
            s.paused_at = Some(at);
        }
    }

    /// A `ResumeWrites` is on its way: the answer waits for it.
    pub(super) fn resuming(&mut self) {
        if let Some(s) = &mut self.switchover {
            s.resuming = true;
        }
    }

    /// The writes were resumed (`ok`: `CLIENT UNPAUSE` accepted) at `at`.
    pub(super) fn resumed(&mut self, name: &str, ok: bool, at: Instant) {
        if let Some(s) = &mut self.switchover {
            s.resuming = false;
            s.resumed_at = Some(at);
            if let Some(paused) = s.paused_at {
                let ms = at.duration_since(paused).as_secs_f64() * 1000.0;
                info!(service = %name, ok, "writes resumed after a pause of {ms:.1} ms");
            }
        }
        self.answer(name);
    }

    /// Answers the operator who asked for a forced failover, as it progresses.
    pub(super) fn forced(&mut self, name: &str, outcome: ForcedOutcome) {
        let Some(s) = &mut self.switchover else {
            // Not ours (cannot happen: only the API asks), or already answered and gone.
            return;
        };
        match outcome {
            ForcedOutcome::Refused(refused) => {
                info!(service = %name, "failover refused: {refused}");
                let code = match refused {
                    ForceRefused::InProgress
                    | ForceRefused::PeerInProgress { .. }
                    | ForceRefused::LostElection { .. } => "INPROG",
                    ForceRefused::NoMajority { .. } => "NOQUORUM",
                    ForceRefused::NoGoodReplica | ForceRefused::NotEligible { .. } => "NOGOODSLAVE",
                    ForceRefused::UnknownNode(_)
                    | ForceRefused::AlreadyMaster(_)
                    | ForceRefused::Tilt { .. }
                    | ForceRefused::SafeMode => "ERR",
                };
                if let Some(reply) = s.reply.take() {
                    let _ = reply.send(Err(ApiError::new(code, refused.to_string())));
                }
                self.switchover = None;
            }
            ForcedOutcome::Started {
                epoch,
                target,
                paused,
            } => {
                info!(service = %name, epoch, %target, paused, "forced failover started");
                if !s.wait
                    && let Some(reply) = s.reply.take()
                {
                    let _ = reply.send(Ok("OK".to_owned()));
                }
            }
            ForcedOutcome::Switched { .. } | ForcedOutcome::Aborted { .. } => {
                s.outcome = Some(outcome);
                self.answer(name);
            }
        }
    }

    /// Once the outcome is known and the old master's writes resumed: answer and forget.
    fn answer(&mut self, name: &str) {
        let Some(s) = &mut self.switchover else {
            return;
        };
        if s.resuming {
            return;
        }
        let Some(outcome) = s.outcome.take() else {
            return;
        };
        let pause_ms = match (s.paused_at, s.resumed_at) {
            (Some(p), Some(r)) => Some(r.duration_since(p).as_secs_f64() * 1000.0),
            _ => None,
        };
        let total_ms = s.requested.elapsed().as_secs_f64() * 1000.0;
        let answer = match outcome {
            ForcedOutcome::Switched { epoch, from, to } => {
                let report = SwitchoverReport {
                    service: name.to_owned(),
                    epoch,
                    from: from.to_string(),
                    to: to.to_string(),
                    write_pause_ms: pause_ms,
                    total_ms,
                };
                info!(service = %name, epoch, %from, %to, write_pause_ms = ?pause_ms, total_ms, "forced failover switched");
                serde_json::to_string(&report)
                    .map_err(|e| ApiError::new("ERR", format!("encoding the report: {e}")))
            }
            ForcedOutcome::Aborted { epoch, reason } => {
                let resumed = pause_ms.map_or(String::new(), |ms| {
                    format!("; writes resumed after a pause of {ms:.1} ms")
                });
                let message = format!(
                    "failover of {name} in epoch {epoch} aborted ({reason}): the write port was not \
                     moved{resumed}"
                );
                warn!(service = %name, "{message}");
                Err(ApiError::new("ABORTED", message))
            }
            // Not stored as an outcome.
            ForcedOutcome::Refused(_) | ForcedOutcome::Started { .. } => return,
        };
        if let Some(reply) = s.reply.take() {
            let _ = reply.send(answer);
        }
        self.switchover = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::failover::NodeAddr;

    const SERVICE: &str = "mymaster";

    fn node(last: u8) -> NodeAddr {
        NodeAddr::new(std::net::Ipv4Addr::new(198, 18, 1, last), 6379)
    }

    /// A `REDIS-HA FAILOVER` (`wait`) or `SENTINEL FAILOVER` request, and where its answer goes.
    fn request(wait: bool) -> (ControlRequest, oneshot::Receiver<Result<String, ApiError>>) {
        let (reply, answer) = oneshot::channel();
        let request = ControlRequest::Failover {
            service: SERVICE.to_owned(),
            to: Some(node(12)),
            timeout_ms: None,
            wait,
            reply,
        };
        (request, answer)
    }

    #[test]
    fn a_request_asks_the_machine_with_the_default_timeout() {
        let mut op = Operator::default();
        let (req, _answer) = request(true);
        assert_eq!(
            op.request(SERVICE, true, req),
            Some(Event::ForceFailover {
                to: Some(node(12)),
                timeout_ms: DEFAULT_SWITCHOVER_TIMEOUT_MS,
            })
        );
    }

    #[test]
    fn a_refusal_is_answered_with_sentinels_code_and_frees_the_slot() {
        let mut op = Operator::default();
        let (req, mut answer) = request(true);
        op.request(SERVICE, true, req).unwrap();
        op.forced(SERVICE, ForcedOutcome::Refused(ForceRefused::NoGoodReplica));
        assert_eq!(answer.try_recv().unwrap().unwrap_err().code, "NOGOODSLAVE");
        let (again, _answer) = request(true);
        assert!(op.request(SERVICE, true, again).is_some());
    }

    #[test]
    fn one_operator_failover_at_a_time() {
        let mut op = Operator::default();
        let (first, _first_answer) = request(true);
        op.request(SERVICE, true, first).unwrap();
        // The machine took it up (not idle): a second request is refused at once.
        let (second, mut answer) = request(true);
        assert_eq!(op.request(SERVICE, false, second), None);
        assert_eq!(answer.try_recv().unwrap().unwrap_err().code, "INPROG");
    }

    #[test]
    fn an_attempt_that_ended_without_an_outcome_does_not_block_the_next() {
        let mut op = Operator::default();
        let (first, mut first_answer) = request(true);
        op.request(SERVICE, true, first).unwrap();
        // The machine is idle again and nothing is in flight: the old attempt is dropped.
        let (second, _answer) = request(true);
        assert!(op.request(SERVICE, true, second).is_some());
        assert_eq!(first_answer.try_recv().unwrap().unwrap_err().code, "ERR");
    }

    #[test]
    fn sentinel_failover_is_answered_when_it_starts() {
        let mut op = Operator::default();
        let (req, mut answer) = request(false);
        op.request(SERVICE, true, req).unwrap();
        op.forced(
            SERVICE,
            ForcedOutcome::Started {
                epoch: 1,
                target: node(12),
                paused: true,
            },
        );
        assert_eq!(answer.try_recv().unwrap().unwrap(), "OK");
    }

    #[test]
    fn the_report_waits_for_the_old_master_to_resume_writes() {
        let mut op = Operator::default();
        let (req, mut answer) = request(true);
        op.request(SERVICE, true, req).unwrap();
        let paused = Instant::now();
        op.paused(paused);
        op.resuming();
        op.forced(
            SERVICE,
            ForcedOutcome::Switched {
                epoch: 3,
                from: node(11),
                to: node(12),
            },
        );
        assert!(
            answer.try_recv().is_err(),
            "answered before the writes resumed"
        );
        op.resumed(SERVICE, true, paused + Duration::from_millis(25));
        let report: SwitchoverReport =
            serde_json::from_str(&answer.try_recv().unwrap().unwrap()).unwrap();
        assert_eq!(
            (report.epoch, report.from.as_str(), report.to.as_str()),
            (3, "198.18.1.11:6379", "198.18.1.12:6379")
        );
        assert_eq!(report.write_pause_ms, Some(25.0));
    }
}
