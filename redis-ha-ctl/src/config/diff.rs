//! What a reload (`SIGHUP`) may change in a running controller, and what it must refuse.
//!
//! A running controller can take, without a restart and without moving the VIP:
//! - services added after the last one, and the last ones removed;
//! - a service's failover keys (`quorum`, `down_after_ms`, `failover_timeout_ms`,
//!   `parallel_syncs`, `max_replica_lag_ms`, `read_from_master`, `auth`).
//!
//! Everything else is refused, naming the key, and the running config stays as it was:
//! - `[dataplane]`: the program, its maps and their sizes are laid out at attach time;
//! - `[ha]`: the floating addresses and the ownership machine's timers are agreed with the
//!   peers at start (a node changing them alone could make two holders);
//! - `[controller]`: the id and `listen` are what peers and clients know it by, the peer list
//!   and secret decide which datagrams are accepted (a change on one node at a time would split
//!   the cluster mid-reload), `state_file` holds the votes, `probe_interval_ms` sets every
//!   machine's derived periods, and the API's listeners and limits are set when it binds;
//! - a service's `name`, `vip`, `write_port`, `read_port` and `backends`, and its place: the
//!   data plane addresses a service by its index in the file, so removing or reordering one
//!   that is not among the last would move every service after it.

use std::{collections::BTreeSet, ops::Range, path::Path};

use serde::Serialize;

use super::Config;

/// What a reload changes, once [`diff`] accepted it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Indices (in the new config) of the services that are new, all after the kept ones.
    pub added: Range<usize>,
    /// Names of the services removed (they were the last ones).
    pub removed: Vec<String>,
    /// Indices of kept services whose failover keys changed.
    pub retuned: Vec<usize>,
}

impl ReloadPlan {
    /// Whether the reload changes nothing the controller runs on.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.retuned.is_empty()
    }
}

impl std::fmt::Display for ReloadPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} service(s) added, {} removed{}, {} retuned",
            self.added.len(),
            self.removed.len(),
            if self.removed.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.removed.join(", "))
            },
            self.retuned.len()
        )
    }
}

/// A key a reload may not change while the controller runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// As `check-config` and validation name it: `controller.id`, `service[1].vip`.
    pub key: String,
    pub reason: String,
}

/// Keys of a kept service that a reload may change: the failover machine's parameters and
/// the credentials its probes and commands use.
const LIVE_SERVICE_KEYS: &[&str] = &[
    "quorum",
    "down_after_ms",
    "failover_timeout_ms",
    "parallel_syncs",
    "max_replica_lag_ms",
    "read_from_master",
    "auth",
];

const RESTART: &str = "cannot change while the controller runs; restart it to apply";

/// What taking `new` in place of `running` means, or every key that forbids it.
pub fn diff(running: &Config, new: &Config) -> Result<ReloadPlan, Vec<Refusal>> {
    let mut refused = Vec::new();
    section(
        "dataplane",
        &running.dataplane,
        &new.dataplane,
        &mut refused,
    );
    section("ha", &running.ha, &new.ha, &mut refused);
    section(
        "controller",
        &running.controller,
        &new.controller,
        &mut refused,
    );

    let kept = running.services.len().min(new.services.len());
    let mut plan = ReloadPlan {
        added: kept..new.services.len(),
        removed: running.services[kept..]
            .iter()
            .map(|s| s.name.clone())
            .collect(),
        retuned: Vec::new(),
    };
    for (i, (old, now)) in running.services.iter().zip(&new.services).enumerate() {
        if old.name != now.name {
            refused.push(Refusal {
                key: format!("service[{i}].name"),
                reason: format!(
                    "was {:?}, now {:?}: a service keeps its place while the controller runs \
                     (the data plane addresses it by its index); add services after the last \
                     one, remove only the last ones, or restart the controller",
                    old.name, now.name
                ),
            });
            continue;
        }
        let changed = changed_keys(old, now);
        for key in changed
            .iter()
            .filter(|k| !LIVE_SERVICE_KEYS.contains(&k.as_str()))
        {
            refused.push(Refusal {
                key: format!("service[{i}].{key}"),
                reason: format!("(service {}) {RESTART}", old.name),
            });
        }
        if !changed.is_empty() {
            plan.retuned.push(i);
        }
    }
    if refused.is_empty() {
        Ok(plan)
    } else {
        Err(refused)
    }
}

/// Refuses every key of a section (`[dataplane]`, `[ha]`, `[controller]`) that differs.
fn section<T: Serialize>(name: &str, old: &Option<T>, new: &Option<T>, refused: &mut Vec<Refusal>) {
    match (old, new) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => refused.push(Refusal {
            key: name.to_owned(),
            reason: format!(
                "the [{name}] section was {}: {RESTART}",
                if old.is_some() { "removed" } else { "added" }
            ),
        }),
        (Some(old), Some(new)) => {
            for key in changed_keys(old, new) {
                refused.push(Refusal {
                    key: format!("{name}.{key}"),
                    reason: RESTART.to_owned(),
                });
            }
        }
    }
}

/// The top-level keys whose values differ, as the file names them. Compared as the effective
/// TOML `check-config` shows, so a key left out and the same value written out are equal.
fn changed_keys<T: Serialize>(old: &T, new: &T) -> BTreeSet<String> {
    let table = |v: &T| match toml::Value::try_from(v) {
        Ok(toml::Value::Table(t)) => t,
        // Every section serializes to a table; anything else compares as one opaque value.
        _ => toml::Table::new(),
    };
    let (old, new) = (table(old), table(new));
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// Where `key` (`controller.id`, `service[1].vip`) is written in `text`: (line, column), both
/// from 1, or `None` when the file does not write it (a default, or a key it no longer has).
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut span = None;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let (k, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        span = Some(k.span());
        let mut value = value.get_ref();
        if let Some(i) = index {
            let toml::de::DeValue::Array(items) = value else {
                return None;
            };
            let item = items.get(i)?;
            span = Some(item.span());
            value = item.get_ref();
        }
        match value {
            toml::de::DeValue::Table(t) => table = t,
            _ if parts.peek().is_some() => return None,
            _ => {}
        }
    }
    let offset = span?.start;
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Some((line, column))
}

/// A refusal as operators read it: `file:line:column: key: reason` (without line and column
/// when the file does not write the key).
pub fn describe(path: &Path, text: &str, refusal: &Refusal) -> String {
    match locate(text, &refusal.key) {
        Some((line, column)) => format!(
            "{}:{line}:{column}: {}: {}",
            path.display(),
            refusal.key,
            refusal.reason
        ),
        None => format!("{}: {}: {}", path.display(), refusal.key, refusal.reason),
    }
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
