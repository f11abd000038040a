//! systemd's service protocol (`Type=notify`, `WatchdogSec=`): READY=1 once the controller
//! serves, and WATCHDOG=1 from the loop that makes the decisions, so that a controller whose
//! decisions stall (not merely one whose process lives) is restarted. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

pub(super) struct Watchdog {
    /// Half of `WatchdogSec=`, as systemd advises; `None` when no watchdog is asked for.
    every: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    pub(super) fn from_env() -> Watchdog {
        let mut usec = 0;
        let every =
            sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec) / 2);
        Watchdog {
            every,
            last: Instant::now(),
        }
    }

    /// The controller is up: its listeners are bound and its machines started.
    pub(super) fn ready() {
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            warn!("telling systemd the controller is ready: {e}");
        }
    }

    /// Called from every tick of the decision loop; tells systemd at most every half period.
    pub(super) fn ping(&mut self, now: Instant) {
        let Some(every) = self.every else { return };
        if now.duration_since(self.last) < every {
            return;
        }
        self.last = now;
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
            warn!("pinging systemd's watchdog: {e}");
        }
    }
}
