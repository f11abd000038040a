//! Subjective liveness of one node (Sentinel's SDOWN), with pingora-style hysteresis.
//!
//! Sentinel flips a node to SDOWN as soon as it went `down-after-milliseconds` without a valid reply,
//! and back as soon as one reply arrives: with a short down-after, one slow reply flaps the node in
//! and out of the read pool (the seed stack's HAProxy `fall 1 rise 1` did the same). Here a flip
//! also needs `fall` consecutive failed probes (down) or `rise` consecutive good ones (up), and
//! [`Liveness::evaluate`] reports only flips.

use super::{Millis, Params};

/// Up or SDOWN, from this controller's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Up,
    /// SDOWN since `since` (Sentinel's `s_down_since_time`).
    Down {
        since: Millis,
    },
}

/// A flip reported by [`Liveness::evaluate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flip {
    /// `+sdown`.
    Down,
    /// `-sdown`.
    Up,
}

/// Probe history of one node, enough to decide SDOWN.
#[derive(Clone, Debug)]
pub(crate) struct Liveness {
    state: State,
    /// Last valid reply (Sentinel's `last_avail_time`); creation counts as one, as in Sentinel, so
    /// that a node never heard from becomes SDOWN after down-after.
    last_ok: Millis,
    /// Last probe result of any kind: if even failures stop arriving, the probe is hanging (a
    /// `DEBUG SLEEP`, a blackholed host) and time alone decides.
    last_observed: Millis,
    ok_streak: u32,
    fail_streak: u32,
    /// When `state` last changed (or creation): "up for at least X" guards demotions.
    last_flip: Millis,
}

impl Liveness {
    /// A node just added (or reset after a switch): up, as if it had just replied.
    pub(crate) fn new(now: Millis) -> Self {
        Self {
            state: State::Up,
            last_ok: now,
            last_observed: now,
            ok_streak: 0,
            fail_streak: 0,
            last_flip: now,
        }
    }

    /// Record one probe result. Call [`Liveness::evaluate`] afterwards.
    pub(crate) fn observe(&mut self, ok: bool, now: Millis) {
        self.last_observed = now;
        if ok {
            self.last_ok = now;
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
        }
    }

    /// Decide the state at `now`; `wrong_role` is true when the node is our master but has
    /// reported itself a replica for too long (Sentinel counts that as down too).
    pub(crate) fn evaluate(
        &mut self,
        now: Millis,
        wrong_role: bool,
        params: &Params,
    ) -> Option<Flip> {
        let silent_for = now.saturating_sub(self.last_ok);
        let unobserved_for = now.saturating_sub(self.last_observed);
        let silent = silent_for > params.down_after_ms
            && (self.fail_streak >= params.fall || unobserved_for > params.down_after_ms);
        match self.state {
            State::Up if silent || wrong_role => Some(self.go_down(now)),
            State::Down { .. } if !silent && !wrong_role && self.ok_streak >= params.rise => {
                self.state = State::Up;
                self.last_flip = now;
                Some(Flip::Up)
            }
            _ => None,
        }
    }

    /// SDOWN at once if the last `fall` probes failed, without waiting out `down_after_ms`: for
    /// a node a quorum already declared down, our own failing probes are corroboration enough.
    pub(crate) fn confirm_down(&mut self, now: Millis, params: &Params) -> Option<Flip> {
        (self.state == State::Up && self.fail_streak >= params.fall).then(|| self.go_down(now))
    }

    fn go_down(&mut self, now: Millis) -> Flip {
        self.state = State::Down { since: now };
        self.last_flip = now;
        Flip::Down
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// When the current SDOWN started, if SDOWN.
    pub(crate) fn down_since(&self) -> Option<Millis> {
        match self.state {
            State::Up => None,
            State::Down { since } => Some(since),
        }
    }

    pub(crate) fn last_ok(&self) -> Millis {
        self.last_ok
    }

    /// True if up, and continuously so for at least `ms`.
    pub(crate) fn up_for(&self, now: Millis, ms: Millis) -> bool {
        self.is_up() && now.saturating_sub(self.last_flip) >= ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(fall: u32, rise: u32) -> Params {
        Params {
            down_after_ms: 1_000,
            fall,
            rise,
            ..Params::default()
        }
    }

    #[test]
    fn down_after_silence_and_enough_failures() {
        let p = params(2, 2);
        let mut l = Liveness::new(0);
        l.observe(true, 0);
        l.observe(false, 500);
        assert_eq!(
            l.evaluate(1_001, false, &p),
            None,
            "one failure is not enough"
        );
        l.observe(false, 1_002);
        assert_eq!(l.evaluate(1_002, false, &p), Some(Flip::Down));
        assert_eq!(l.down_since(), Some(1_002));
        assert_eq!(l.evaluate(1_100, false, &p), None, "reports flips only");
    }

    #[test]
    fn failures_within_down_after_are_not_enough() {
        let p = params(2, 2);
        let mut l = Liveness::new(0);
        for t in [100, 200, 300, 400] {
            l.observe(false, t);
        }
        assert_eq!(l.evaluate(900, false, &p), None);
        assert!(l.is_up());
    }

    #[test]
    fn a_hanging_probe_counts_as_down_after_down_after() {
        // No result at all (not even a failure) for longer than down-after: the probe is stuck.
        let p = params(3, 2);
        let mut l = Liveness::new(0);
        l.observe(true, 100);
        assert_eq!(l.evaluate(1_100, false, &p), None);
        assert_eq!(l.evaluate(1_101, false, &p), Some(Flip::Down));
    }

    #[test]
    fn rise_needs_consecutive_successes() {
        let p = params(1, 3);
        let mut l = Liveness::new(0);
        l.observe(false, 1_500);
        assert_eq!(l.evaluate(1_500, false, &p), Some(Flip::Down));
        l.observe(true, 1_600);
        l.observe(true, 1_700);
        l.observe(false, 1_800);
        l.observe(true, 1_900);
        l.observe(true, 2_000);
        assert_eq!(
            l.evaluate(2_000, false, &p),
            None,
            "the failure reset the streak"
        );
        l.observe(true, 2_100);
        assert_eq!(l.evaluate(2_100, false, &p), Some(Flip::Up));
        assert!(l.up_for(2_100, 0));
        assert!(!l.up_for(2_100, 1));
    }

    #[test]
    fn wrong_role_forces_down_until_it_clears() {
        let p = params(2, 1);
        let mut l = Liveness::new(0);
        l.observe(true, 100);
        assert_eq!(l.evaluate(100, true, &p), Some(Flip::Down));
        l.observe(true, 200);
        assert_eq!(l.evaluate(200, true, &p), None);
        assert_eq!(l.evaluate(200, false, &p), Some(Flip::Up));
    }
}
