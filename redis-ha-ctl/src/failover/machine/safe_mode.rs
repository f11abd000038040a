//! Safe mode: how a controller that lost its state file (unreadable, corrupt) takes part again
//! without ever voting twice in one epoch.
//!
//! Its votes are gone, so any epoch up to the highest one it may have voted in is unsafe. A
//! leader elected with its vote got the votes of a majority; without us, at least a majority
//! minus one of the other controllers voted for it and so know that epoch. Hearing the current
//! epoch from a majority of the *other* controllers therefore reaches at least one of them:
//! the highest epoch heard is at least any epoch in which an election was won with our lost
//! vote. We then move one past it, and vote only in later epochs. Meanwhile we follow the
//! configurations the peers announce (the data plane keeps following the elected master), but
//! do not vote, stand, or reconfigure Redis servers.

use super::*;

impl ServiceMachine {
    /// Starts in safe mode (see the module docs): called instead of trusting a state file that
    /// could not be read. Alone (no peers), there is no one to vote twice against: nothing to do.
    pub fn enter_safe_mode(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.peers.is_empty() {
            return out;
        }
        self.safe_mode = Some(BTreeMap::new());
        self.emit(
            &mut out,
            NoticeKind::SafeMode,
            format!(
                "{} until {} of the other controllers tell the current epoch",
                self.describe(self.master),
                self.safe_mode_needs()
            ),
        );
        out
    }

    /// Whether the machine is in safe mode: no vote, no failover, no fix-up of Redis roles.
    pub fn in_safe_mode(&self) -> bool {
        self.safe_mode.is_some()
    }

    /// How many other controllers must be heard: a majority of all controllers, not counting
    /// us (our own knowledge is what was lost).
    fn safe_mode_needs(&self) -> usize {
        majority(self.peers.len() + 1).min(self.peers.len())
    }

    /// A hello from `from` while in safe mode: it tells its current epoch. Leaves safe mode
    /// once enough controllers did.
    pub(super) fn safe_mode_heard(
        &mut self,
        from: &ControllerId,
        epoch: Epoch,
        out: &mut Vec<Action>,
    ) {
        let needs = self.safe_mode_needs();
        let Some(heard) = self.safe_mode.as_mut() else {
            return;
        };
        heard.insert(from.clone(), epoch);
        if heard.len() < needs {
            return;
        }
        let highest = heard.values().copied().max().unwrap_or(0);
        self.safe_mode = None;
        // One past every epoch heard: a vote request in an epoch we may have voted in before
        // is refused by the usual rule (no vote below the current epoch).
        self.current_epoch = self.current_epoch.max(highest) + 1;
        self.emit(out, NoticeKind::NewEpoch, self.current_epoch.to_string());
        self.emit(
            out,
            NoticeKind::SafeModeCleared,
            format!(
                "{} epoch {}",
                self.describe(self.master),
                self.current_epoch
            ),
        );
        self.persist(out);
    }
}
