//! The one-shot CLI commands: load/unload the data plane, manual switches, inspection.

use std::{fmt::Write as _, net::SocketAddrV4, path::Path};

use anyhow::{Context as _, bail};
use redis_ha_common::{backend_flags, counter, flow_dir, port_kind};

use crate::{
    config::{Config, DataplaneConfig},
    dataplane::{
        Dataplane as _, ServiceTarget,
        bpf::{Attachment, BpfDataplane},
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
    Ok(cfg
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| ServiceTarget::resume(i as u32, s, &snap))
        .collect())
}

pub fn load(config: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let dpc = dataplane_of(&cfg, config)?;
    let (mut dp, attachments) = BpfDataplane::load_and_attach(&dpc)?;
    let t = targets(&cfg, &dp)?;
    let ops = sync(&mut dp, &t)?;
    let mut out = String::new();
    for Attachment {
        interface,
        mode,
        newly_attached,
    } in attachments
    {
        let how = if newly_attached {
            "attached"
        } else {
            "already attached"
        };
        writeln!(out, "{interface}: {how} ({mode})")?;
    }
    writeln!(
        out,
        "pinned under {}; {} map writes",
        dpc.pin_dir.display(),
        ops.len()
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

pub fn unload(config: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let dpc = dataplane_of(&cfg, config)?;
    let detached = BpfDataplane::unload(&dpc.pin_dir)?;
    Ok(format!(
        "detached from [{}]; removed {}\n",
        detached.join(", "),
        dpc.pin_dir.display()
    ))
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
            "  {:>4}  {:<21} {:<8} {:<8} {:>10} {:>12} {:>10} {:>12} {:>9} {:>7}",
            "slot",
            "backend",
            "role",
            "readable",
            "pkts_in",
            "bytes_in",
            "pkts_out",
            "bytes_out",
            "new_flows",
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
                "  {:>4}  {:<21} {:<8} {:<8} {:>10} {:>12} {:>10} {:>12} {:>9} {:>7}",
                slot,
                SocketAddrV4::new(b.ip.into(), b.port).to_string(),
                role,
                readable,
                s.packets_in,
                s.bytes_in,
                s.packets_out,
                s.bytes_out,
                s.new_flows,
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
    writeln!(out, "\nflows: {total} entries (two per connection)")?;
    for (k, f) in flows {
        let dir = if f.dir == flow_dir::TO_BACKEND {
            "->"
        } else {
            "<-"
        };
        writeln!(
            out,
            "  {}:{} > {}:{}  {dir} nat {}:{} slot {}",
            std::net::Ipv4Addr::from(k.src_ip),
            k.src_port,
            std::net::Ipv4Addr::from(k.dst_ip),
            k.dst_port,
            std::net::Ipv4Addr::from(f.nat_ip),
            f.nat_port,
            f.backend
        )?;
    }
    Ok(out)
}

/// Validates a config and prints it as it will be used.
pub fn check_config(config: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let mut out = format!("{}: OK\n", config.display());
    if let Some(dp) = &cfg.dataplane {
        writeln!(
            out,
            "dataplane: interfaces [{}], xdp_mode {}, pin_dir {}",
            dp.interfaces.join(", "),
            dp.xdp_mode,
            dp.pin_dir.display()
        )?;
    }
    for (i, s) in cfg.services.iter().enumerate() {
        writeln!(
            out,
            "{}",
            describe_target(&s.name, &ServiceTarget::initial(i as u32, s))
        )?;
    }
    Ok(out)
}
