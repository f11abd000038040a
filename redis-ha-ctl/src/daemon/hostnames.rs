//! Backend names looked up again while the controller runs. The system's resolver gives no
//! TTL, so every name is resolved once a second ([`RESOLVE_INTERVAL`]): cheap for /etc/hosts,
//! and answered from the local cache (systemd-resolved, nscd) for DNS.
//!
//! What is done with a change: it is logged, once per change, naming the backend, the name,
//! the address the controller uses and the one the name has now. The controller keeps using
//! the address it started with (its failover state, probes and data-plane maps are keyed by
//! address); following a moved name needs a restart of the controllers.

use std::{net::Ipv4Addr, time::Duration};

use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::{BackendSpec, ServiceConfig, first_ipv4};

/// How often every backend name is resolved again.
pub(super) const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// One backend given by name.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Named {
    /// `service[i].backends[j]`, as the config errors name it.
    key: String,
    service: String,
    name: String,
    /// The address the controller resolved at start and uses.
    used: Ipv4Addr,
    /// What the last lookup said, so only changes are reported.
    last: Lookup,
}

/// The outcome of one lookup of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Lookup {
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

/// Every backend name of the config and what it last resolved to.
#[derive(Debug, Default)]
pub(super) struct Watched {
    names: Vec<Named>,
}

impl Watched {
    pub(super) fn of(services: &[ServiceConfig]) -> Self {
        let mut names = Vec::new();
        for (i, s) in services.iter().enumerate() {
            for (j, (spec, addr)) in s.backend_specs.iter().zip(&s.backends).enumerate() {
                if let BackendSpec::Host { name, .. } = spec {
                    names.push(Named {
                        key: format!("service[{i}].backends[{j}]"),
                        service: s.name.clone(),
                        name: name.clone(),
                        used: *addr.ip(),
                        last: Lookup::Resolved(*addr.ip()),
                    });
                }
            }
        }
        Self { names }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Records the lookup of the `k`th name; returns what changed since the last one.
    pub(super) fn observe(&mut self, k: usize, lookup: Lookup) -> Option<Change> {
        let n = &mut self.names[k];
        if n.last == lookup {
            return None;
        }
        let change = match &lookup {
            Lookup::Resolved(ip) if *ip == n.used => Change::Back,
            Lookup::Resolved(ip) => Change::Moved { to: *ip },
            // A name that stops resolving, then fails another way, is one change.
            Lookup::Failed(_) if matches!(n.last, Lookup::Failed(_)) => {
                n.last = lookup;
                return None;
            }
            Lookup::Failed(why) => Change::Unresolved { why: why.clone() },
        };
        n.last = lookup;
        Some(change)
    }

    /// Resolves every name every [`RESOLVE_INTERVAL`] and logs the changes, until the daemon
    /// stops.
    pub(super) fn spawn(mut self, tasks: &mut JoinSet<()>) {
        if self.is_empty() {
            return;
        }
        for n in &self.names {
            info!(service = %n.service, backend = %n.key, name = %n.name, address = %n.used, "backend name {} resolves to {}", n.name, n.used);
        }
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval(RESOLVE_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                for k in 0..self.names.len() {
                    let name = self.names[k].name.clone();
                    let lookup = match tokio::net::lookup_host((name.as_str(), 0)).await {
                        Ok(addrs) => first_ipv4(addrs).map_or_else(
                            || Lookup::Failed("no IPv4 address".into()),
                            Lookup::Resolved,
                        ),
                        Err(e) => Lookup::Failed(e.to_string()),
                    };
                    if let Some(change) = self.observe(k, lookup) {
                        self.log(k, &change);
                    }
                }
            }
        });
    }

    fn log(&self, k: usize, change: &Change) {
        let n = &self.names[k];
        let (key, service, name, used) = (&n.key, &n.service, &n.name, n.used);
        match change {
            Change::Moved { to } => warn!(
                %service, backend = %key, %name, %used, now = %to,
                "backend name {name} now resolves to {to}; this controller keeps using {used}, \
                 the address it started with: restart the controllers to follow the name"
            ),
            Change::Back => info!(
                %service, backend = %key, %name, %used,
                "backend name {name} resolves to {used} again"
            ),
            Change::Unresolved { why } => warn!(
                %service, backend = %key, %name, %used,
                "backend name {name} does not resolve any more ({why}); this controller keeps using {used}"
            ),
        }
    }
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
}
