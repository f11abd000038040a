//! A test hook: `REDIS_HA_FAILPOINT=<step>` in the environment of `redis-ha-ctl run` makes the
//! controller kill itself (SIGKILL, a crash: no cleanup, no flush) when its failover reaches
//! that step, so that the end-to-end tests can crash a leader between two actions of one
//! decision batch, which no outside kill can time. Read once at startup; unset, it costs one
//! comparison per step. Documented in docs/operating.md as a test hook, not for production.

use tracing::error;

/// The steps of a leader's promotion, in the order the executor performs them.
pub(super) const STEPS: [&str; 4] = [
    // The promoted replica accepted REPLICAOF NO ONE; nothing is persisted or announced yet.
    "after-promote-command",
    // Its promotion confirmed, the new configuration (epoch, master) is durable; the data
    // plane and the peers do not know yet.
    "after-promoted-persist",
    // ...and the data plane's write port moved to it; the peers do not know yet.
    "after-promoted-switch",
    // ...and the peers were told (hello).
    "after-promoted-announce",
];

#[derive(Debug, Default)]
pub(super) struct Failpoint(Option<&'static str>);

impl Failpoint {
    /// From `REDIS_HA_FAILPOINT`; an unknown step is an error naming the known ones.
    pub(super) fn from_env() -> anyhow::Result<Self> {
        match std::env::var("REDIS_HA_FAILPOINT") {
            Err(_) => Ok(Self(None)),
            Ok(v) if v.is_empty() => Ok(Self(None)),
            Ok(v) => match STEPS.iter().find(|s| **s == v) {
                Some(step) => Ok(Self(Some(step))),
                None => anyhow::bail!(
                    "REDIS_HA_FAILPOINT={v:?} is not a step; known: {}",
                    STEPS.join(", ")
                ),
            },
        }
    }

    /// Dies here if `step` is the one asked for.
    pub(super) fn hit(&self, step: &'static str) {
        if self.0 == Some(step) {
            error!(
                step,
                "failpoint reached: killing this process (REDIS_HA_FAILPOINT)"
            );
            // SIGKILL, as a crash would: nothing after this point happens.
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
