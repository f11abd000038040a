//! Backend names looked up again while the controller runs, and a moved backend followed.
//! The system's resolver gives no TTL, so every name is resolved once a second
//! ([`RESOLVE_INTERVAL`]): cheap for /etc/hosts, and answered from the local cache
//! (systemd-resolved, nscd) for DNS.
//!
//! A resolver task looks the names up and tells the executor what changed
//! ([`Input::Resolved`]); the executor keeps a [`Watched`] of every backend given by name and
//! follows each move (`executor/follow.rs`): the backend keeps its place in the config, its
//! slot in the data plane and its role in the failover machine, and only its address changes.
//! A name that stops resolving keeps the address it had (logged, and shown in the status).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::{info, warn};

use super::executor::Input;
use crate::config::{BackendSpec, ServiceConfig, first_ipv4};

/// How often every backend name is resolved again.
pub(super) const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// One backend given by name.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Named {
    /// Index of the service, and of the backend in it.
    service: usize,
    backend: usize,
    /// `service[i].backends[j]`, as the config errors name it.
    key: String,
    service_name: String,
    name: String,
    /// The address the controller uses: the one the name had at start, or its last move.
    used: SocketAddrV4,
    /// What the last lookup said, so only changes are reported.
    last: Lookup,
    /// Why the last move could not be followed, so it is logged once.
    refused: Option<String>,
}

/// The outcome of one lookup of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::daemon) enum Lookup {
    Resolved(Ipv4Addr),
    Failed(String),
}

/// A change worth telling the operator about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// The name now resolves to another address than the one in use.
    Moved { to: Ipv4Addr },
    /// The name resolves to the address in use again.
    Back,
    /// The name no longer resolves.
    Unresolved { why: String },
}

/// A backend whose name resolves elsewhere than the address in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Move {
    /// Which [`Watched`] entry: for [`Watched::followed`] and [`Watched::refused`].
    pub(super) k: usize,
    pub(super) service: usize,
    pub(super) backend: usize,
    pub(super) from: SocketAddrV4,
    pub(super) to: SocketAddrV4,
}

/// Every backend name of the config and what it last resolved to.
#[derive(Debug, Default)]
pub(super) struct Watched {
    names: Vec<Named>,
}

impl Watched {
    /// The backends of `services` given by name, at the addresses `services` holds.
    pub(super) fn of(services: &[ServiceConfig]) -> Self {
        let mut names = Vec::new();
        for (i, s) in services.iter().enumerate() {
            for (j, (spec, addr)) in s.backend_specs.iter().zip(&s.backends).enumerate() {
                if let BackendSpec::Host { name, .. } = spec {
                    names.push(Named {
                        service: i,
                        backend: j,
                        key: format!("service[{i}].backends[{j}]"),
                        service_name: s.name.clone(),
                        name: name.clone(),
                        used: *addr,
                        last: Lookup::Resolved(*addr.ip()),
                        refused: None,
                    });
                }
            }
        }
        Self { names }
    }

    /// The names to resolve, each once (several backends may share one).
    pub(super) fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.names.iter().map(|n| n.name.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Records a lookup of `name`; logs what changed for every backend given by it.
    pub(super) fn resolved(&mut self, name: &str, lookup: &Lookup) {
        for k in 0..self.names.len() {
            if self.names[k].name == name
                && let Some(change) = self.observe(k, lookup.clone())
            {
                self.log(k, &change);
            }
        }
    }

    /// Records the lookup of the `k`th name; returns what changed since the last one.
    fn observe(&mut self, k: usize, lookup: Lookup) -> Option<Change> {
        let n = &mut self.names[k];
        if n.last == lookup {
            return None;
        }
        let change = match &lookup {
            Lookup::Resolved(ip) if ip == n.used.ip() => Change::Back,
            Lookup::Resolved(ip) => Change::Moved { to: *ip },
            // A name that stops resolving, then fails another way, is one change.
            Lookup::Failed(_) if matches!(n.last, Lookup::Failed(_)) => {
                n.last = lookup;
                return None;
            }
            Lookup::Failed(why) => Change::Unresolved { why: why.clone() },
        };
        n.last = lookup;
        n.refused = None;
        Some(change)
    }

    /// The backends whose name now resolves elsewhere than the address in use.
    pub(super) fn moves(&self) -> Vec<Move> {
        self.names
            .iter()
            .enumerate()
            .filter_map(|(k, n)| match n.last {
                Lookup::Resolved(ip) if ip != *n.used.ip() => Some(Move {
                    k,
                    service: n.service,
                    backend: n.backend,
                    from: n.used,
                    to: SocketAddrV4::new(ip, n.used.port()),
                }),
                _ => None,
            })
            .collect()
    }

    /// `m` was followed: the backend is at `m.to` now.
    pub(super) fn followed(&mut self, m: &Move) {
        let n = &mut self.names[m.k];
        n.used = m.to;
        n.refused = None;
        info!(
            service = %n.service_name, backend = %n.key, name = %n.name, from = %m.from, to = %m.to,
            "backend {} moved from {} to {}: probing it there; it keeps its place and its role",
            n.name, m.from, m.to
        );
    }

    /// `m` cannot be followed now, because of `why`; it is tried again on every tick, and
    /// logged once per reason.
    pub(super) fn refused(&mut self, m: &Move, why: &str) {
        let n = &mut self.names[m.k];
        if n.refused.as_deref() == Some(why) {
            return;
        }
        n.refused = Some(why.to_owned());
        warn!(
            service = %n.service_name, backend = %n.key, name = %n.name, used = %m.from, now = %m.to,
            "backend name {} resolves to {} but this controller keeps using {} for now: {why}",
            n.name, m.to.ip(), m.from
        );
    }

    /// Service `service`'s backend names that do not resolve now (each keeps its last address).
    pub(super) fn unresolved(&self, service: usize) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| n.service == service && matches!(n.last, Lookup::Failed(_)))
            .map(|n| n.name.clone())
            .collect()
    }

    /// Logs the names being watched, at the start.
    pub(super) fn announce(&self) {
        for n in &self.names {
            info!(service = %n.service_name, backend = %n.key, name = %n.name, address = %n.used, "backend name {} resolves to {}", n.name, n.used.ip());
        }
    }

    fn log(&self, k: usize, change: &Change) {
        let n = &self.names[k];
        let (key, service, name, used) = (&n.key, &n.service_name, &n.name, n.used);
        match change {
            Change::Moved { to } => warn!(
                %service, backend = %key, %name, %used, now = %to,
                "backend name {name} now resolves to {to} (was {}): following it", used.ip()
            ),
            Change::Back => info!(
                %service, backend = %key, %name, %used,
                "backend name {name} resolves to {} again", used.ip()
            ),
            Change::Unresolved { why } => warn!(
                %service, backend = %key, %name, %used,
                "backend name {name} does not resolve any more ({why}); this controller keeps using {used}"
            ),
        }
    }
}

/// Resolves the names `names` holds every [`RESOLVE_INTERVAL`], and sends the executor each
/// lookup that differs from the last one it sent for that name, until the executor stops. A
/// new list (a reload) is sent whole: the executor's record of the names was rebuilt.
pub(super) fn spawn_resolver(
    tasks: &mut JoinSet<()>,
    mut names: watch::Receiver<Vec<String>>,
    tx: mpsc::Sender<Input>,
) {
    tasks.spawn(async move {
        let mut ticker = tokio::time::interval(RESOLVE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent: BTreeMap<String, Lookup> = BTreeMap::new();
        loop {
            ticker.tick().await;
            if names.has_changed().unwrap_or(false) {
                sent.clear();
            }
            let list = names.borrow_and_update().clone();
            for name in list {
                let lookup = match tokio::net::lookup_host((name.as_str(), 0)).await {
                    Ok(addrs) => first_ipv4(addrs).map_or_else(
                        || Lookup::Failed("no IPv4 address".into()),
                        Lookup::Resolved,
                    ),
                    Err(e) => Lookup::Failed(e.to_string()),
                };
                if sent.get(&name) == Some(&lookup) {
                    continue;
                }
                sent.insert(name.clone(), lookup.clone());
                if tx.send(Input::Resolved { name, lookup }).await.is_err() {
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, FixedHosts};

    /// Only changes are reported, each once: a move, its return, a name that stops
    /// resolving (however many ways it then fails), and an address backends given by
    /// address never have.
    #[test]
    fn each_change_of_a_name_is_reported_once() {
        let cfg = Config::parse_resolving(
            Path::new("t.toml"),
            "[[service]]\nname = \"m\"\nvip = \"198.18.0.100\"\nwrite_port = 6380\n\
             read_port = 6381\nresolve_hostnames = true\n\
             backends = [\"198.18.1.11:6379\", \"redis2.internal:6379\"]\n",
            &FixedHosts(&[("redis2.internal", "198.18.1.12")]),
        )
        .unwrap();
        let mut w = Watched::of(&cfg.services);
        assert_eq!(w.names.len(), 1);
        assert_eq!(w.names[0].key, "service[0].backends[1]");
        let at = |last: u8| Lookup::Resolved(Ipv4Addr::new(198, 18, 1, last));
        assert_eq!(w.observe(0, at(12)), None);
        assert_eq!(
            w.observe(0, at(14)),
            Some(Change::Moved {
                to: Ipv4Addr::new(198, 18, 1, 14)
            })
        );
        assert_eq!(w.observe(0, at(14)), None);
        assert_eq!(w.observe(0, at(12)), Some(Change::Back));
        let failed = |why: &str| Lookup::Failed(why.into());
        assert_eq!(
            w.observe(0, failed("no address")),
            Some(Change::Unresolved {
                why: "no address".into()
            })
        );
        assert_eq!(w.observe(0, failed("timed out")), None);
        assert_eq!(w.observe(0, at(12)), Some(Change::Back));
    }

    /// A move is pending until followed; a name that stops resolving is no move (the last
    /// address stays) but is shown; two backends under one name are resolved once.
    #[test]
    fn a_move_is_pending_until_followed_and_an_unresolved_name_keeps_its_address() {
        let cfg = Config::parse_resolving(
            Path::new("t.toml"),
            "[[service]]\nname = \"m\"\nvip = \"198.18.0.100\"\nwrite_port = 6380\n\
             read_port = 6381\nresolve_hostnames = true\n\
             backends = [\"redis1.internal:6379\", \"redis2.internal:6379\", \"redis2.internal:6380\"]\n",
            &FixedHosts(&[("redis1.internal", "198.18.1.11"), ("redis2.internal", "198.18.1.12")]),
        )
        .unwrap();
        let mut w = Watched::of(&cfg.services);
        assert_eq!(w.names(), vec!["redis1.internal", "redis2.internal"]);
        assert!(w.moves().is_empty());
        let at = |last: u8| Lookup::Resolved(Ipv4Addr::new(198, 18, 1, last));
        w.resolved("redis2.internal", &at(22));
        let moves = w.moves();
        let addr = |last: u8, port: u16| SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, last), port);
        assert_eq!(
            moves
                .iter()
                .map(|m| (m.service, m.backend, m.from, m.to))
                .collect::<Vec<_>>(),
            vec![
                (0, 1, addr(12, 6379), addr(22, 6379)),
                (0, 2, addr(12, 6380), addr(22, 6380)),
            ]
        );
        w.refused(&moves[0], "a failover is under way");
        assert_eq!(w.moves().len(), 2, "a refused move stays pending");
        w.followed(&moves[0]);
        w.followed(&moves[1]);
        assert!(w.moves().is_empty());
        // Back to the old address: a move again, the other way.
        w.resolved("redis2.internal", &at(12));
        assert_eq!(w.moves()[0].to, addr(12, 6379));

        w.resolved("redis1.internal", &Lookup::Failed("no address".into()));
        assert_eq!(w.unresolved(0), vec!["redis1.internal"]);
        assert!(
            w.moves().iter().all(|m| m.backend != 0),
            "the last address stays"
        );
    }
}
