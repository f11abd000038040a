//! The replies built from the snapshot alone: `SENTINEL` queries, `INFO` and `ROLE`, with
//! Sentinel's field names, flags and texts (`addReplySentinelRedisInstance` and friends in
//! Redis's `sentinel.c`), so that Sentinel clients read them as they read Sentinel's.

use std::net::SocketAddrV4;

use super::{Api, REDIS_VERSION, command::SentinelQuery};
use crate::{
    config::ServiceConfig,
    resp::Reply,
    status::{FailoverPhase, NodeRole, NodeStatus, PeerStatus, ServiceStatus, Status},
};

/// The reply to a `SENTINEL` query.
pub(super) fn answer(api: &Api, status: &Status, query: SentinelQuery) -> Reply {
    let catalog = api.catalog();
    let named = |name: &str| {
        lookup(status, &catalog.services, name)
            .ok_or_else(|| Reply::err("No such master with that name"))
    };
    match query {
        SentinelQuery::Masters => Reply::Array(
            status
                .services
                .iter()
                .filter_map(|s| {
                    let cfg = catalog.services.iter().find(|c| c.name == s.name)?;
                    Some(master_fields(s, cfg))
                })
                .collect(),
        ),
        SentinelQuery::Master { name } => match named(&name) {
            Ok((s, cfg)) => master_fields(s, cfg),
            Err(e) => e,
        },
        SentinelQuery::Replicas { name } => match named(&name) {
            Ok((s, cfg)) => Reply::Array(
                s.nodes
                    .iter()
                    .filter(|n| n.addr != s.master)
                    .map(|n| replica_fields(s, cfg, n))
                    .collect(),
            ),
            Err(e) => e,
        },
        SentinelQuery::Sentinels { name } => match named(&name) {
            Ok((s, _)) => {
                let validity = catalog.validity(&s.name);
                Reply::Array(
                    s.peers
                        .iter()
                        .map(|p| sentinel_fields(s, p, validity))
                        .collect(),
                )
            }
            Err(e) => e,
        },
        SentinelQuery::GetMasterAddrByName { name } => {
            match lookup(status, &catalog.services, &name) {
                Some((s, cfg)) => Reply::Array(vec![
                    Reply::bulk(cfg.announced_host(s.master)),
                    Reply::bulk(s.master.port().to_string()),
                ]),
                None => Reply::NullArray,
            }
        }
        SentinelQuery::CkQuorum { name } => match named(&name) {
            Ok((s, _)) => ckquorum(s, catalog.validity(&s.name)),
            Err(e) => e,
        },
        SentinelQuery::MyId => Reply::bulk(&status.controller),
    }
}

/// `ROLE`: a Sentinel and the masters it watches.
pub(super) fn role(api: &Api) -> Reply {
    Reply::Array(vec![
        Reply::bulk("sentinel"),
        Reply::Array(
            api.catalog()
                .services
                .iter()
                .map(|s| Reply::bulk(&s.name))
                .collect(),
        ),
    ])
}

/// A service's snapshot and its configuration, by name.
pub(super) fn lookup<'s>(
    status: &'s Status,
    services: &'s [ServiceConfig],
    name: &str,
) -> Option<(&'s ServiceStatus, &'s ServiceConfig)> {
    let s = status.services.iter().find(|s| s.name == name)?;
    let cfg = services.iter().find(|c| c.name == name)?;
    Some((s, cfg))
}

/// Sentinel's `ip` and `port` fields: with `announce_hostnames`, the `ip` of a backend given
/// by name is its name, as Sentinel's is.
fn ip_port(cfg: &ServiceConfig, addr: SocketAddrV4) -> (String, String) {
    (cfg.announced_host(addr), addr.port().to_string())
}

fn node(s: &ServiceStatus, addr: SocketAddrV4) -> Option<&NodeStatus> {
    s.nodes.iter().find(|n| n.addr == addr)
}

/// Sentinel's flags for a node: `kind` (`master` or `slave`), then `s_down` when we see it
/// down, `disconnected` when it never answered.
fn node_flags(kind: &'static str, n: Option<&NodeStatus>) -> Vec<&'static str> {
    let mut flags = vec![kind];
    if n.is_some_and(|n| n.sdown) {
        flags.push("s_down");
    }
    if n.is_none_or(|n| n.last_ok_ms_ago.is_none()) {
        flags.push("disconnected");
    }
    flags
}

/// `SENTINEL MASTER`: Sentinel's field/value list (`addReplySentinelRedisInstance`).
fn master_fields(s: &ServiceStatus, cfg: &ServiceConfig) -> Reply {
    let (ip, port) = ip_port(cfg, s.master);
    let n = node(s, s.master);
    let mut flags = node_flags("master", n);
    if s.odown {
        flags.push("o_down");
    }
    if s.failover_phase != FailoverPhase::Idle {
        flags.push("failover_in_progress");
    }
    let since_ok = n.and_then(|n| n.last_ok_ms_ago).unwrap_or(0).to_string();
    Reply::fields([
        ("name", s.name.clone()),
        ("ip", ip),
        ("port", port),
        (
            "runid",
            n.and_then(|n| n.run_id.clone()).unwrap_or_default(),
        ),
        ("flags", flags.join(",")),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", since_ok.clone()),
        ("last-ping-reply", since_ok.clone()),
        ("down-after-milliseconds", s.down_after_ms.to_string()),
        ("info-refresh", since_ok),
        ("role-reported", "master".into()),
        ("role-reported-time", "0".into()),
        ("config-epoch", s.config_epoch.to_string()),
        (
            "num-slaves",
            s.nodes
                .iter()
                .filter(|n| n.addr != s.master)
                .count()
                .to_string(),
        ),
        ("num-other-sentinels", s.peers.len().to_string()),
        ("quorum", s.quorum.to_string()),
        (
            "failover-timeout",
            cfg.failover.failover_timeout_ms.to_string(),
        ),
        ("parallel-syncs", cfg.failover.parallel_syncs.to_string()),
    ])
}

/// `SENTINEL REPLICAS`: one entry per node that is not the master (a node that claims to be a
/// master is listed with `role-reported master`, as Sentinel lists it until it is converted).
fn replica_fields(s: &ServiceStatus, cfg: &ServiceConfig, n: &NodeStatus) -> Reply {
    let (ip, port) = ip_port(cfg, n.addr);
    // Whom it follows not known yet: `?:0` and port 0, what these fields have always said.
    let (master_host, master_port) = n
        .master
        .map_or_else(|| ("?:0".to_owned(), "0".to_owned()), |m| ip_port(cfg, m));
    let since_ok = n.last_ok_ms_ago.unwrap_or(0).to_string();
    let role = if n.role == NodeRole::Master {
        "master"
    } else {
        "slave"
    };
    Reply::fields([
        ("name", format!("{ip}:{port}")),
        ("ip", ip),
        ("port", port),
        ("runid", n.run_id.clone().unwrap_or_default()),
        ("flags", node_flags("slave", Some(n)).join(",")),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", since_ok.clone()),
        ("last-ping-reply", since_ok.clone()),
        ("down-after-milliseconds", s.down_after_ms.to_string()),
        ("info-refresh", since_ok),
        ("role-reported", role.into()),
        ("role-reported-time", "0".into()),
        ("master-link-down-time", "0".into()),
        (
            "master-link-status",
            if n.link_up == Some(true) { "ok" } else { "err" }.into(),
        ),
        ("master-host", master_host),
        ("master-port", master_port),
        ("slave-priority", n.priority.unwrap_or(100).to_string()),
        ("slave-repl-offset", n.repl_offset.unwrap_or(0).to_string()),
        ("replica-announced", "1".into()),
    ])
}

/// Whether a peer was heard from recently enough to count (see [`Catalog::peer_validity_ms`]).
fn reachable(p: &PeerStatus, validity_ms: u64) -> bool {
    p.last_heard_ms_ago.is_some_and(|ms| ms <= validity_ms)
}

/// `SENTINEL SENTINELS`: the other controllers.
fn sentinel_fields(s: &ServiceStatus, p: &PeerStatus, validity_ms: u64) -> Reply {
    let mut flags = vec!["sentinel"];
    if !reachable(p, validity_ms) {
        flags.push("s_down");
    }
    if p.last_heard_ms_ago.is_none() {
        flags.push("disconnected");
    }
    let heard = p.last_heard_ms_ago.unwrap_or(0).to_string();
    Reply::fields([
        ("name", p.id.clone()),
        ("ip", p.addr.ip().to_string()),
        ("port", p.addr.port().to_string()),
        ("runid", p.id.clone()),
        ("flags", flags.join(",")),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", heard.clone()),
        ("last-ping-reply", heard.clone()),
        ("down-after-milliseconds", s.down_after_ms.to_string()),
        ("last-hello-message", heard),
        ("voted-leader", "?".into()),
        ("voted-leader-epoch", "0".into()),
    ])
}

/// `SENTINEL CKQUORUM`: can this controller, with the peers it hears now, reach the quorum
/// (ODOWN) and a majority of all controllers (a failover's election)? Sentinel's texts.
fn ckquorum(s: &ServiceStatus, validity_ms: u64) -> Reply {
    let voters = s.peers.len() + 1;
    let usable = 1 + s.peers.iter().filter(|p| reachable(p, validity_ms)).count();
    let quorum_ok = usable >= s.quorum;
    let majority_ok = usable > voters / 2;
    if quorum_ok && majority_ok {
        return Reply::Simple(format!(
            "OK {usable} usable Sentinels. Quorum and failover authorization can be reached"
        ));
    }
    let mut message = format!("NOQUORUM {usable} usable Sentinels.");
    if !quorum_ok {
        message.push_str(
            " Not enough available Sentinels to reach the specified quorum for this master.",
        );
    }
    if !majority_ok {
        message.push_str(
            " Not enough available Sentinels to reach the majority and authorize a failover",
        );
    }
    Reply::Error(message)
}

/// `INFO [section]`: `# Server` and Sentinel's `# Sentinel` section.
pub(super) fn info(api: &Api, section: Option<&str>) -> String {
    let section = section.map(str::to_ascii_lowercase);
    let want = |name: &str| {
        section
            .as_deref()
            .is_none_or(|s| matches!(s, "all" | "default" | "everything") || s == name)
    };
    let status = api.status.borrow().clone();
    let mut text = String::new();
    if want("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_ha_version:{}\r\n\
             redis_mode:sentinel\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\n\
             uptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            status.controller,
            api.listen.port(),
            api.started.elapsed().as_secs(),
        ));
    }
    if want("sentinel") {
        // Sentinel's TILT is global; here each service's machine tilts on its own trigger.
        let tilt_since = status
            .services
            .iter()
            .filter_map(|s| s.tilt_since_unix_ms)
            .min();
        let tilt_for = tilt_since.map_or(-1, |since| {
            (status.at_unix_ms.saturating_sub(since) / 1000) as i64
        });
        text.push_str(&format!(
            "# Sentinel\r\nsentinel_masters:{}\r\nsentinel_tilt:{}\r\n\
             sentinel_tilt_since_seconds:{tilt_for}\r\nsentinel_running_scripts:0\r\n\
             sentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n",
            status.services.len(),
            u8::from(tilt_since.is_some()),
        ));
        for (i, s) in status.services.iter().enumerate() {
            let master_down = node(s, s.master).is_some_and(|n| n.sdown);
            let state = if s.odown {
                "odown"
            } else if master_down {
                "sdown"
            } else {
                "ok"
            };
            let address = match api.catalog().services.iter().find(|c| c.name == s.name) {
                Some(cfg) => format!("{}:{}", cfg.announced_host(s.master), s.master.port()),
                None => s.master.to_string(),
            };
            text.push_str(&format!(
                "master{i}:name={},status={state},address={address},slaves={},sentinels={}\r\n",
                s.name,
                s.nodes.iter().filter(|n| n.addr != s.master).count(),
                s.peers.len() + 1
            ));
        }
    }
    text
}
