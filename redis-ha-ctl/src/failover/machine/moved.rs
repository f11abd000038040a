//! A backend that moved: its host name resolves to another address (the machine was replaced,
//! DNS or /etc/hosts changed). It stays the same node, in the same role: the master stays the
//! master, a replica a replica; only where it is reached changes. What the machine knew about
//! it from the old address (its INFO, its liveness) is not carried over: nothing about the
//! new machine is known until a probe there answers, so it serves no reads and cannot be
//! chosen for a promotion before that.
//!
//! Peers resolve on their own and may follow the move a moment later. Until they do, their
//! hellos name the old address: the machine remembers each move (`aliases`) and reads such a
//! hello as naming the new one, so a peer that has not followed yet is not a second master in
//! the same epoch. A hello naming, in our own config epoch, a master we do not know at all
//! (a peer that followed a move before us) is not adopted either: our own lookup follows it.

use super::{Action, Failover, Hello, Millis, Node, NodeAddr, ServiceMachine};

/// Why a move cannot be followed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveRefused {
    /// A failover names nodes by address in every phase, and must not end up promoting or
    /// reconfiguring a machine it never probed: the move waits until it is over.
    #[error("a failover is under way; the move is followed once it ends")]
    FailoverRunning,
    #[error("{0} is not one of the service's nodes")]
    UnknownNode(NodeAddr),
    #[error("{0} is already another node of the service")]
    Taken(NodeAddr),
}

impl ServiceMachine {
    /// Node `from` is now reached at `to`. Returns the actions that follow: the read pool
    /// without the node until a probe at `to` answers, and, when the master moved, the state
    /// file's new master.
    pub fn move_node(
        &mut self,
        from: NodeAddr,
        to: NodeAddr,
        now: Millis,
    ) -> Result<Vec<Action>, MoveRefused> {
        if !matches!(self.failover, Failover::Idle) {
            return Err(MoveRefused::FailoverRunning);
        }
        if !self.nodes.contains_key(&from) {
            return Err(MoveRefused::UnknownNode(from));
        }
        // A peer's hello may have made us switch to `to` before our own lookup saw the move:
        // that node is this one, and the entry left at `from` is the stale one.
        if self.nodes.contains_key(&to) && self.master != to {
            return Err(MoveRefused::Taken(to));
        }
        let mut out = Vec::new();
        self.nodes.remove(&from);
        self.nodes.insert(to, Node::new(now));
        let rename = |a: &mut NodeAddr| {
            if *a == from {
                *a = to;
            }
        };
        for target in self.aliases.values_mut() {
            rename(target);
        }
        self.aliases.remove(&to);
        self.aliases.insert(from, to);
        if let Some((addr, _)) = &mut self.replaced {
            rename(addr);
        }
        if let Some((_, addr)) = &mut self.dataplane.requested {
            rename(addr);
        }
        for report in self.reports.values_mut() {
            if let Some((hello, _)) = &mut report.hello {
                rename(&mut hello.master);
                hello.sdown.iter_mut().for_each(&rename);
            }
        }
        if self.master == from {
            self.master = to;
            self.persist(&mut out);
        }
        self.publish_read_pool(now, &mut out);
        Ok(out)
    }

    /// `hello` with every address a move replaced read as the new one.
    pub(super) fn aliases_applied(&self, mut hello: Hello) -> Hello {
        let alias = |a: NodeAddr| self.aliases.get(&a).copied().unwrap_or(a);
        hello.master = alias(hello.master);
        for a in &mut hello.sdown {
            *a = alias(*a);
        }
        hello
    }
}
