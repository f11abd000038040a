//! The one-shot CLI commands: load/unload the data plane, manual switches, inspection.

use std::{fmt::Write as _, net::SocketAddrV4, path::Path};

use anyhow::{Context as _, bail};
use redis_ha_common::{backend_flags, counter, flow_flags, nat_mode, port_kind};

use crate::{
    config::{Config, ConfigError, DataplaneConfig},
    dataplane::{
        Dataplane as _, ServiceTarget,
        bpf::{Attachment, BpfDataplane, local_addresses},
        sync,
    },
};

fn dataplane_of(cfg: &Config, path: &Path) -> anyhow::Result<DataplaneConfig> {
    cfg.dataplane.clone().with_context(|| {
        format!(
            "{}: no [dataplane] section: this node does not own an XDP data plane",
            path.display()
        )
    })
}

/// Current targets: what the maps serve now for services they know, the config's initial
/// state for the others.
fn targets(cfg: &Config, dp: &BpfDataplane) -> anyhow::Result<Vec<ServiceTarget>> {
    let snap = dp.snapshot()?;
    let local = local_addresses();
    Ok(cfg
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| ServiceTarget::resume(i as u32, s, &snap).on_host(&local))
        .collect())
}

pub fn load(config: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let dpc = dataplane_of(&cfg, config)?;
    let local = cfg.has_local_backend(&local_addresses());
    let (mut dp, attachments) = BpfDataplane::load_and_attach(&dpc, local)?;
    let t = targets(&cfg, &dp)?;
    let ops = sync(&mut dp, &t)?;
    let mut out = String::new();
    for Attachment {
        interface,
        mode,
        newly_attached,
        peer_redirect,
    } in attachments
    {
        let how = if newly_attached {
            "attached"
        } else {
            "already attached"
        };
        let peer = if peer_redirect {
            "; packets out of it go straight to its veth peer"
        } else {
            ""
        };
        writeln!(out, "{interface}: {how} ({mode}{peer})")?;
    }
    writeln!(
        out,
        "pinned under {}; {} map writes; accept_local=1 on {} (a reply the fast path hands to \
         the kernel comes from the VIP)",
        dpc.pin_dir.display(),
        ops.len(),
        dpc.interfaces.join(", ")
    )?;
    for s in &t {
        let name = &cfg.services[s.id as usize].name;
        writeln!(out, "{}", describe_target(name, s))?;
    }
    Ok(out)
}

fn describe_target(name: &str, t: &ServiceTarget) -> String {
    let master = t.master.map_or("none".to_string(), |m| m.to_string());
    let pool: Vec<String> = t.read_pool.iter().map(|a| a.to_string()).collect();
    format!(
        "service {name}: write {vip}:{w} -> {master}; read {vip}:{r} -> [{pool}]; epoch {e}",
        vip = t.vip,
        w = t.write_port,
        r = t.read_port,
        pool = pool.join(", "),
        e = t.epoch
    )
}

/// Swaps the running XDP program for the one this binary embeds, atomically on every
/// interface, keeping the maps (connections, state, counters).
pub fn upgrade(config: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let dpc = dataplane_of(&cfg, config)?;
    let (switched, old_id, new_id) = BpfDataplane::upgrade(&dpc)?;
    Ok(format!(
        "program {old_id} replaced by {new_id} on [{}] (maps kept: connections, state, counters)\n",
        switched.join(", ")
    ))
}

pub fn unload(config: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let dpc = dataplane_of(&cfg, config)?;
    let done = BpfDataplane::unload(&dpc.pin_dir)?;
    let mut out = format!(
        "detached from [{}]; removed {}\n",
        done.detached.join(", "),
        dpc.pin_dir.display()
    );
    if !done.restored.is_empty() {
        let each: Vec<String> = done
            .restored
            .iter()
            .map(|(iface, v)| format!("{iface}={v}"))
            .collect();
        writeln!(
            out,
            "accept_local given back its value from before the first load: {}",
            each.join(", ")
        )?;
    }
    Ok(out)
}

fn change(
    config: &Path,
    service: &str,
    edit: impl FnOnce(&mut ServiceTarget) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let dpc = dataplane_of(&cfg, config)?;
    let (id, _) = cfg
        .service(service)
        .with_context(|| format!("{}: no service named {service:?}", config.display()))?;
    let mut dp = BpfDataplane::open(&dpc.pin_dir)?;
    let mut t = targets(&cfg, &dp)?;
    edit(&mut t[id as usize])?;
    let ops = sync(&mut dp, &t)?;
    Ok(format!(
        "{} ({} map writes)\n",
        describe_target(service, &t[id as usize]),
        ops.len()
    ))
}

/// Points the write port at `addr`, with the next epoch (or `epoch` when given).
pub fn set_master(
    config: &Path,
    service: &str,
    addr: SocketAddrV4,
    epoch: Option<u64>,
) -> anyhow::Result<String> {
    change(config, service, |t| {
        if !t.backends.contains(&addr) {
            bail!("{addr} is not a backend of {service}");
        }
        t.master = Some(addr);
        t.epoch = epoch.unwrap_or(t.epoch + 1);
        Ok(())
    })
}

pub fn set_read_pool(
    config: &Path,
    service: &str,
    addrs: &[SocketAddrV4],
) -> anyhow::Result<String> {
    change(config, service, |t| {
        for a in addrs {
            if !t.backends.contains(a) {
                bail!("{a} is not a backend of {service}");
            }
        }
        t.read_pool = addrs.to_vec();
        Ok(())
    })
}

/// A human-readable dump of every map.
pub fn maps(config: &Path, flow_limit: usize) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let dpc = dataplane_of(&cfg, config)?;
    let dp = BpfDataplane::open(&dpc.pin_dir)?;
    let snap = dp.snapshot()?;
    let stats: std::collections::BTreeMap<u32, _> = dp.backend_stats()?.into_iter().collect();
    let mut out = String::new();
    writeln!(out, "data plane pinned at {}", dpc.pin_dir.display())?;
    let (nat, ports_taken) = dp.nat()?;
    if nat.mode == nat_mode::FULL {
        writeln!(
            out,
            "full NAT from {}, ports {}-{}: {ports_taken} in use",
            std::net::Ipv4Addr::from(nat.ip),
            nat.port_min,
            nat.port_max
        )?;
    } else {
        writeln!(out, "destination NAT (backends see client addresses)")?;
    }
    for (id, st) in &snap.states {
        let name = cfg
            .services
            .get(*id as usize)
            .map_or("?", |s| s.name.as_str());
        let ports: Vec<String> = snap
            .ports
            .iter()
            .filter(|(_, p)| p.service_id == *id)
            .map(|((vip, port), p)| {
                let kind = if p.kind == port_kind::WRITE {
                    "write"
                } else {
                    "read"
                };
                format!("{kind} {}:{port}", std::net::Ipv4Addr::from(*vip))
            })
            .collect();
        writeln!(
            out,
            "\nservice {id} {name}: {}; epoch {}; master slot {}; live table {}",
            ports.join(", "),
            st.epoch,
            st.master,
            st.ring_active
        )?;
        writeln!(
            out,
            "  {:>4}  {:<21} {:<8} {:<8} {:>10} {:>12} {:>10} {:>12} {:>9} {:>9} {:>7}",
            "slot",
            "backend",
            "role",
            "readable",
            "pkts_in",
            "bytes_in",
            "pkts_out",
            "bytes_out",
            "new_flows",
            "closed",
            "resets"
        )?;
        for (slot, b) in snap.backends.iter().filter(|(_, b)| b.service_id == *id) {
            let s = stats.get(slot).copied().unwrap_or_default();
            let role = if *slot == st.master { "master" } else { "-" };
            let readable = if b.flags & backend_flags::READABLE != 0 {
                "yes"
            } else {
                "no"
            };
            writeln!(
                out,
                "  {:>4}  {:<21} {:<8} {:<8} {:>10} {:>12} {:>10} {:>12} {:>9} {:>9} {:>7}",
                slot,
                SocketAddrV4::new(b.ip.into(), b.port).to_string(),
                role,
                readable,
                s.packets_in,
                s.bytes_in,
                s.packets_out,
                s.bytes_out,
                s.new_flows,
                s.flows_closed,
                s.flows_reset
            )?;
        }
    }
    writeln!(out, "\ncounters (packets):")?;
    for (i, v) in dp.counters()?.iter().enumerate() {
        if *v != 0 {
            writeln!(out, "  {:<18} {v}", counter::NAMES[i])?;
        }
    }
    let (flows, total) = dp.flows(flow_limit)?;
    writeln!(out, "\nflows: {total} connections")?;
    if let Some(since) = dp.spilling_since()? {
        let ago = crate::ha::net::monotonic_ns().saturating_sub(since) / 1_000_000_000;
        writeln!(
            out,
            "  FLOWS was full {ago} s ago: new connections went to FLOWS_SPILL (slower) since; \
             raise [dataplane] flow_table_size"
        )?;
    }
    for (k, f) in flows {
        let via = if f.nat_port != 0 {
            format!(
                " from {}:{}",
                std::net::Ipv4Addr::from(f.nat_ip),
                f.nat_port
            )
        } else if f.flags & flow_flags::LOCAL != 0 {
            " (local)".to_owned()
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {}:{} > {}:{}  backend {}:{}{via} slot {}{}",
            std::net::Ipv4Addr::from(k.src_ip),
            k.src_port,
            std::net::Ipv4Addr::from(k.dst_ip),
            k.dst_port,
            std::net::Ipv4Addr::from(f.backend_ip),
            f.backend_port,
            f.backend,
            flow_end_text(f.end)
        )?;
    }
    Ok(out)
}

/// How a connection has ended so far, for `maps`: empty while open.
fn flow_end_text(end: u16) -> &'static str {
    use redis_ha_common::flow_end::{BACKEND_FIN, BOTH_FIN, CLIENT_FIN, RST};
    if end & RST != 0 {
        "  reset"
    } else if end & BOTH_FIN == BOTH_FIN {
        "  closing"
    } else if end & CLIENT_FIN != 0 {
        "  client-fin"
    } else if end & BACKEND_FIN != 0 {
        "  backend-fin"
    } else {
        ""
    }
}

/// Validates a config and prints it as it will be used: every key with its effective value
/// (defaults filled in), as TOML an operator can diff or reuse, the secret and Redis passwords
/// not shown; then, as comments, what the file leaves out and what follows from it.
/// A `secret_file` this host cannot read does not hide the rest: the config is shown, then
/// the problem, and the check fails, since a daemon on this host would not start.
pub fn check_config(config: &Path) -> anyhow::Result<String> {
    let (shown, deferred) = check_config_report(config)?;
    if deferred.is_empty() {
        return Ok(format!("# {}: OK\n{shown}", config.display()));
    }
    // Shown on stdout like a passing check, so that it can be diffed the same way.
    print!(
        "# {}: every key below is valid, but:\n{shown}",
        config.display()
    );
    let problems: Vec<String> = deferred.iter().map(ToString::to_string).collect();
    bail!(
        "{}\n(a daemon on this host would not start)",
        problems.join("\n")
    )
}

/// The effective config of `config`, and the problems only the deployed host can mend.
fn check_config_report(config: &Path) -> anyhow::Result<(String, Vec<ConfigError>)> {
    let (cfg, deferred) = Config::load_for_check(config)?;
    Ok((effective_config(&cfg)?, deferred))
}

/// The effective config as TOML (see [`check_config`]), then the data-plane state each
/// service starts from and the failover facts derived from the config.
pub fn effective_config(cfg: &Config) -> anyhow::Result<String> {
    let mut out = cfg
        .effective_toml()
        .context("cannot write the config as TOML")?;
    out += "\n# What follows from it:\n";
    for (i, s) in cfg.services.iter().enumerate() {
        // A backend name that does not resolve here has no address to show.
        if s.backends.iter().any(|b| b.ip().is_unspecified()) {
            out += &format!(
                "# before any failover: service {}: not known here, a backend name does not resolve\n",
                s.name
            );
        } else {
            out += &format!(
                "# before any failover: {}\n",
                describe_target(&s.name, &ServiceTarget::initial(i as u32, s))
            );
        }
        if let Some(c) = &cfg.controller {
            let p = s.failover_params(c);
            let controllers = c.peers.len() + 1;
            out += &format!(
                "# derived: service {}: {} controllers, failover needs {} votes and quorum {}; \
                 peers' reports expire after {} ms; a returning old master is demoted after {} ms\n",
                s.name,
                controllers,
                // A majority of all controllers, reachable or not.
                controllers / 2 + 1,
                p.quorum,
                p.peer_report_validity_ms,
                p.convert_delay_ms,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const CONFIG: &str = r#"
[dataplane]
interfaces = ["eth0"]

[controller]
id = "c1"
listen = "198.18.2.1:26379"
secret = "a-secret-of-some-length"
peers = [{ id = "c2", addr = "198.18.2.2:26379" }, { id = "c3", addr = "198.18.2.3:26379" }]

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["198.18.1.11:6379", "198.18.1.12:6379"]
auth = { username = "ha", password = "hunter2" }
"#;

    #[test]
    fn the_effective_config_has_every_default_and_no_secret() {
        let path = Path::new("redis-ha.toml");
        let cfg = Config::parse(path, CONFIG).unwrap();
        let text = effective_config(&cfg).unwrap();
        for needle in [
            "xdp_mode = \"auto\"",
            "pin_dir = \"/sys/fs/bpf/redis-ha\"",
            "client_networks = []",
            "flow_table_size = 65536",
            "veth_peer_redirect = true",
            "probe_interval_ms = 100",
            "quorum = 2",
            "down_after_ms = 1000",
            "failover_timeout_ms = 180000",
            "read_from_master = \"fallback\"",
            "secret = \"<23 characters, not shown>\"",
            "[service.auth]\nusername = \"ha\"\npassword = \"<not shown>\"\n",
            "failover needs 2 votes and quorum 2",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert!(!text.contains("a-secret-of-some-length") && !text.contains("hunter2"));
        // What it prints is itself a valid config (comments aside), equal to the original
        // once the redacted values are put back.
        let again = text
            .replace(
                "\"<23 characters, not shown>\"",
                "\"a-secret-of-some-length\"",
            )
            .replace("\"<not shown>\"", "\"hunter2\"");
        assert_eq!(Config::parse(path, &again).unwrap(), cfg);
    }

    /// (section, key) of every `key = value` line and `[section]` header in `text`, whether
    /// commented out or not, and of every `# section.key: not set` note.
    fn keys(text: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches("# ").trim();
            if let Some(header) = line.strip_prefix('[') {
                let name = header.trim_start_matches('[');
                let name = &name[..name.find(']').unwrap()];
                // `[[controller.peers]]` is the key `peers` of `[controller]`.
                if let Some((outer, key)) = name.split_once('.') {
                    out.insert((outer.into(), key.into()));
                }
                section = name.into();
            } else if let Some((path, _)) = line.split_once(": not set") {
                let path: String = path
                    .chars()
                    .filter(|c| !"[]0123456789".contains(*c))
                    .collect();
                let (outer, key) = path.rsplit_once('.').unwrap();
                out.insert((outer.into(), key.into()));
            } else if let Some((key, _)) = line.split_once(" = ")
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                out.insert((section.clone(), key.into()));
            }
        }
        out
    }

    /// Every key the configuration reference (docs/configuration.md, "Every key") documents
    /// appears in what check-config prints for the example config: set, left out with its
    /// meaning, or, for a section the example leaves out, with its default.
    #[test]
    fn check_config_of_the_example_shows_every_key_the_reference_documents() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = std::fs::read_to_string(repo.join("docs/configuration.md")).unwrap();
        let reference = &docs[docs.find("## Every key").unwrap()..];
        let reference = &reference[reference.find("```toml").unwrap()..];
        let reference = &reference[..reference[3..].find("```").unwrap()];
        let documented = keys(reference);
        assert!(documented.len() > 25, "{documented:?}");

        // Run literally: the example's secret file exists on a deployed host only, which
        // is then the one problem reported, after every key.
        let example = repo.join("deploy/redis-ha.toml.example");
        let (shown, deferred) = check_config_report(&example).unwrap();
        let deferred: Vec<String> = deferred.iter().map(ToString::to_string).collect();
        assert!(
            matches!(&deferred[..], [one] if one.contains("controller.secret_file: cannot read \"/etc/redis-ha/secret\"")),
            "{deferred:?}"
        );
        assert!(shown.contains("secret = \"<read from /etc/redis-ha/secret at start>\""));

        let shown_keys = keys(&shown);
        let missing: Vec<_> = documented.difference(&shown_keys).collect();
        assert!(missing.is_empty(), "{missing:?} missing from:\n{shown}");
    }
}
