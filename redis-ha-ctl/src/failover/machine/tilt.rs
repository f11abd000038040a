//! Sentinel's TILT mode. When this controller itself stalls (a paused VM, SIGSTOP, an executor
//! blocked on a slow disk), every node looks silent for as long as the stall lasted, though
//! the nodes were fine and only the controller was not looking. Judging them on that time
//! marks them all SDOWN at once, empties the read pool and resets the read connections.
//!
//! As Sentinel does, a stall is recognised by the timer firing far too late (or the clock going
//! backwards), and it starts TILT: for [`Params::tilt_period_ms`] the machine keeps probing,
//! listening to peers and voting, but marks nothing down or up, starts and advances no
//! failover, fixes no roles and leaves the read pool alone (`+tilt`, then `-tilt`). Unlike
//! Sentinel, the lost time is also taken off the machine's own clock: a reply received just
//! before the stall is as fresh after it, so once TILT ends nodes are judged only on time the
//! controller really watched them.

use super::*;

/// The machine's own clock: the executor's, less the time lost in stalls.
#[derive(Clone, Debug)]
pub(super) struct Clock {
    /// The executor's `now` at the previous step.
    last_step: Millis,
    /// The executor's `now` at the previous tick. `None` until the first: a machine that is
    /// never ticked (a test feeding it single events) has no timer that could be late.
    last_tick: Option<Millis>,
    /// The machine's time.
    own: Millis,
    /// Own time at which the current TILT started.
    tilt_since: Option<Millis>,
}

impl Clock {
    pub(super) fn new(now: Millis) -> Self {
        Self {
            last_step: now,
            last_tick: None,
            own: now,
            tilt_since: None,
        }
    }

    /// Moves to the executor's `now` and returns the machine's time, and whether this step
    /// comes after a stall. Any event can come first after a stall (a probe whose timeout
    /// expired while the process was stopped is typical), so every step checks, not only ticks.
    fn advance(&mut self, now: Millis, tick: bool, trigger: Millis) -> (Millis, bool) {
        let backwards = now < self.last_step;
        let late = self
            .last_tick
            .is_some_and(|t| now.saturating_sub(t) > trigger);
        let stalled = backwards || late;
        if !stalled {
            self.own += now - self.last_step;
        }
        self.last_step = now;
        if tick || stalled {
            self.last_tick = Some(now);
        }
        (self.own, stalled)
    }

    pub(super) fn in_tilt(&self) -> bool {
        self.tilt_since.is_some()
    }
}

impl ServiceMachine {
    /// The machine's time for a step at the executor's `now`; starts (or restarts) TILT after a
    /// stall.
    pub(super) fn clock_step(&mut self, now: Millis, tick: bool, out: &mut Vec<Action>) -> Millis {
        let (own, stalled) = self.clock.advance(now, tick, self.params.tilt_trigger_ms());
        if stalled {
            self.clock.tilt_since = Some(own);
            self.emit(out, NoticeKind::Tilt, "#tilt mode entered".to_owned());
        }
        own
    }

    /// The part of a tick that TILT keeps: forgetting stale peer reports, the periodic hello,
    /// and retrying a write-port change already decided. Returns false when not in TILT (or
    /// no longer: `-tilt`), and the full tick should run.
    pub(super) fn tilt_tick(&mut self, now: Millis, out: &mut Vec<Action>) -> bool {
        let Some(since) = self.clock.tilt_since else {
            return false;
        };
        if now.saturating_sub(since) >= self.params.tilt_period_ms() {
            self.clock.tilt_since = None;
            self.emit(out, NoticeKind::TiltCleared, "#tilt mode exited".to_owned());
            return false;
        }
        self.expire_reports(now);
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
        true
    }

    /// How much longer TILT lasts, if in it.
    pub(super) fn tilt_remaining(&self, now: Millis) -> Option<Millis> {
        let since = self.clock.tilt_since?;
        Some(
            self.params
                .tilt_period_ms()
                .saturating_sub(now.saturating_sub(since)),
        )
    }

    /// Whether the machine is in TILT.
    pub fn in_tilt(&self) -> bool {
        self.clock.in_tilt()
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;

    #[test]
    fn the_clock_runs_with_the_executor_but_skips_a_stall() {
        let mut c = Clock::new(1_000);
        assert_eq!(c.advance(1_100, true, 500), (1_100, false));
        assert_eq!(c.advance(1_150, false, 500), (1_150, false));
        assert_eq!(c.advance(1_200, true, 500), (1_200, false));
        // Stopped for 5 s: the first event after it, whichever it is, finds the timer late.
        assert_eq!(c.advance(6_300, false, 500), (1_200, true));
        // Only once: the next steps count time again from there.
        assert_eq!(c.advance(6_350, true, 500), (1_250, false));
        assert_eq!(c.advance(6_450, true, 500), (1_350, false));
        // A clock going backwards is a stall too, and never takes the machine's time back.
        assert_eq!(c.advance(6_000, true, 500), (1_350, true));
        assert_eq!(c.advance(6_100, true, 500), (1_450, false));
    }

    #[test]
    fn a_machine_never_ticked_never_stalls() {
        let mut c = Clock::new(0);
        assert_eq!(c.advance(10_000, false, 500), (10_000, false));
        assert_eq!(c.advance(10_100, true, 500), (10_100, false));
        assert_eq!(c.advance(10_700, true, 500), (10_100, true));
    }
}
