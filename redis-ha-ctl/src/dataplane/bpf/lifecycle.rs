//! The program's life on a host: load it on the pinned maps, pin it and its links, attach it
//! to the configured interfaces, upgrade it in place, and unload it. Everything pinned is
//! reused (a restarted controller never interrupts forwarding), and what a load configures
//! besides the links (client networks, veth peers, `accept_local`) is written through
//! [`Dataplane`](crate::dataplane::Dataplane), like every other map write.

use std::{
    collections::btree_map::Entry,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{HashMap, MapData, MapInfo},
    programs::links::{FdLink, PinnedLink},
};
use redis_ha_common::map_name;

use super::{
    BpfDataplane, BpfError, egress,
    hook::{Hook, Loaded, Pinned, attach_err},
    host, map_err,
    maps::{MapPins, check_pinned_layout, iface_of_key, key_of_iface, map_pins, open_pinned},
    nat,
    placement::Placement,
};
use crate::{
    config::DataplaneConfig,
    dataplane::{Dataplane as _, MapOp},
};

/// Each interface's link is pinned as this prefix followed by the interface name.
const LINK_PREFIX: &str = "link_";

/// How the program sits on one interface.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub interface: String,
    /// "native", "skb" or "tc"; "pinned" when an earlier run attached it (the mode is then
    /// shown by `bpftool net show`).
    pub mode: &'static str,
    pub newly_attached: bool,
    /// A veth whose peer is in another namespace, which the program delivers to directly
    /// (`veth_peer_redirect`).
    pub peer_redirect: bool,
}

/// What `unload` did.
pub struct Unloaded {
    pub detached: Vec<String>,
    /// Interfaces whose `accept_local` was given back its value from before the first load.
    pub restored: Vec<(String, u32)>,
}

impl BpfDataplane {
    /// Makes sure the program is loaded, pinned and attached to every configured interface of
    /// the current network namespace, reusing whatever an earlier run pinned (so restarting
    /// never interrupts forwarding), and detaching interfaces no longer configured.
    ///
    /// `local_backend`: a backend is this host's own redis-server, whose replies the egress
    /// program maps back (see `egress`).
    pub fn load_and_attach(
        cfg: &DataplaneConfig,
        local_backend: bool,
    ) -> Result<(Self, Vec<Attachment>), BpfError> {
        host::check_bpffs(&cfg.pin_dir)?;
        // First, so that a configuration refused leaves nothing behind.
        let placement = Placement::for_config(cfg)?;
        let hook = placement.hook();
        // Before anything is attached: a host that cannot translate is refused as it is.
        let nat = nat::nat_config(cfg)?;
        let io_err = |what, path: &Path| {
            let path = path.to_owned();
            move |source| BpfError::Io { what, path, source }
        };
        std::fs::create_dir_all(&cfg.pin_dir)
            .map_err(io_err("creating pin directory", &cfg.pin_dir))?;
        if let Some(pinned) = Hook::pinned(&cfg.pin_dir)
            && pinned != hook
        {
            return Err(BpfError::HookChanged {
                pin_dir: cfg.pin_dir.clone(),
                pinned: pinned.name(),
                wanted: hook.name(),
            });
        }
        let prog_pin = cfg.pin_dir.join(hook.pin());
        // A pinned program is reused as it is, so its maps must be complete; otherwise the
        // program about to be loaded creates what is missing.
        check_pinned_layout(&cfg.pin_dir, !prog_pin.exists())?;
        warn_if_flows_resized(cfg);

        let mut loaded = None;
        if !prog_pin.exists() {
            let (mut ebpf, pins) = load_on_pinned_maps(cfg)?;
            Loaded::verified(hook, &mut ebpf)?
                .pin(&prog_pin)
                .map_err(|e| BpfError::Load(Box::new(e)))?;
            pin_new_maps(&ebpf, &pins)?;
            loaded = Some(ebpf);
        }
        let egress_on: &[String] = if local_backend { &cfg.interfaces } else { &[] };
        egress::set_attached(&cfg.pin_dir, egress_on, loaded.as_mut(), || {
            load_on_pinned_maps(cfg).map(|(ebpf, _)| ebpf)
        })?;
        let mut prog = Pinned::open(hook, &prog_pin)?;

        let mut attachments = Vec::new();
        for iface in &cfg.interfaces {
            let link_pin = cfg.pin_dir.join(format!("{LINK_PREFIX}{iface}"));
            if link_pin.exists() {
                attachments.push(Attachment {
                    interface: iface.clone(),
                    mode: "pinned",
                    newly_attached: false,
                    peer_redirect: false,
                });
                continue;
            }
            let (fd_link, mode) = prog.attach(iface, placement)?;
            fd_link
                .pin(&link_pin)
                .map_err(|e| attach_err(iface, mode, e))?;
            attachments.push(Attachment {
                interface: iface.clone(),
                mode,
                newly_attached: true,
                peer_redirect: false,
            });
        }
        for (iface, path) in pinned_links(&cfg.pin_dir, LINK_PREFIX)? {
            if !cfg.interfaces.contains(&iface) {
                detach(&path)?;
            }
        }
        let mut dp = Self::open(&cfg.pin_dir)?;
        dp.apply(&MapOp::SetNat { nat })?;
        dp.apply(&MapOp::SetFlowHashKey {
            key: cfg.flow_hash_key,
        })?;
        dp.set_interface_macs(&host::interface_macs(&cfg.interfaces))?;
        dp.set_interface_roles(&host::interface_roles(cfg))?;
        set_accept_local(&mut dp, &cfg.interfaces)?;
        dp.set_client_networks(&cfg.client_networks)?;
        let peers = redirect_to_veth_peers(&mut dp, cfg, hook)?;
        for a in &mut attachments {
            a.peer_redirect = peers.contains(&a.interface);
        }
        Ok((dp, attachments))
    }

    /// Detaches from every interface, gives each back the `accept_local` it had before the
    /// first load, and removes every pin.
    pub fn unload(pin_dir: &Path) -> Result<Unloaded, BpfError> {
        if !pin_dir.exists() {
            return Err(BpfError::NotLoaded(pin_dir.to_owned()));
        }
        let mut detached = Vec::new();
        for (iface, path) in pinned_links(pin_dir, LINK_PREFIX)? {
            detach(&path)?;
            detached.push(iface);
        }
        egress::detach_all(pin_dir)?;
        // Read straight from the pin: the other maps may be another version's, which does not
        // matter for giving the sysctls back. A data plane older than the map saved nothing.
        let mut restored = Vec::new();
        let saved_pin = pin_dir.join(map_name::ACCEPT_LOCAL);
        if saved_pin.exists() {
            let name = map_name::ACCEPT_LOCAL;
            let saved: HashMap<MapData, [u8; 16], u32> =
                HashMap::try_from(open_pinned(pin_dir, name)?).map_err(map_err(name))?;
            for entry in saved.iter() {
                let (key, value) = entry.map_err(map_err(name))?;
                let iface = iface_of_key(&key);
                if host::write_accept_local(&iface, value)? {
                    restored.push((iface, value));
                }
            }
        }
        std::fs::remove_dir_all(pin_dir).map_err(|source| BpfError::Io {
            what: "removing",
            path: pin_dir.to_owned(),
            source,
        })?;
        Ok(Unloaded { detached, restored })
    }

    /// Replaces the running program with the one this binary embeds, without a moment
    /// unattached: the new program is loaded on the pinned maps (the connection table, state
    /// and counters carry over) and swapped into every pinned link at once (BPF_LINK_UPDATE).
    /// Returns the interfaces switched over and the old and new program ids.
    pub fn upgrade(cfg: &DataplaneConfig) -> Result<(Vec<String>, u32, u32), BpfError> {
        host::check_bpffs(&cfg.pin_dir)?;
        // The hook the data plane runs at now, whatever the configuration says: an upgrade
        // keeps every link as it is.
        let hook =
            Hook::pinned(&cfg.pin_dir).ok_or_else(|| BpfError::NotLoaded(cfg.pin_dir.clone()))?;
        let prog_pin = cfg.pin_dir.join(hook.pin());
        check_pinned_layout(&cfg.pin_dir, true)?;
        warn_if_flows_resized(cfg);
        let load_err = |e: &dyn std::fmt::Display| BpfError::Load(e.to_string().into());
        let old_id = Pinned::open(hook, &prog_pin)?
            .id()
            .map_err(|e| load_err(&e))?;
        let (mut ebpf, pins) = load_on_pinned_maps(cfg)?;
        let mut prog = Loaded::verified(hook, &mut ebpf)?;
        let new_id = prog.id().map_err(|e| load_err(&e))?;
        let mut switched = Vec::new();
        for (iface, path) in pinned_links(&cfg.pin_dir, LINK_PREFIX)? {
            let pinned =
                PinnedLink::from_pin(&path).map_err(|e| attach_err(&iface, "pinned", e))?;
            // The kernel link, and so its pin and attach mode, stay; only its program changes.
            prog.replace_in(&iface, FdLink::from(pinned))?;
            switched.push(iface);
        }
        std::fs::remove_file(&prog_pin).map_err(|source| BpfError::Io {
            what: "replacing the program pin",
            path: prog_pin.clone(),
            source,
        })?;
        prog.pin(&prog_pin)
            .map_err(|e| BpfError::Load(Box::new(e)))?;
        pin_new_maps(&ebpf, &pins)?;
        egress::upgrade(&cfg.pin_dir, &mut ebpf)?;
        // A version before PEER_DEVS or NAT existed leaves them empty; the configuration may
        // also have changed.
        let mut dp = Self::open(&cfg.pin_dir)?;
        redirect_to_veth_peers(&mut dp, cfg, hook)?;
        dp.set_interface_macs(&host::interface_macs(&cfg.interfaces))?;
        dp.set_interface_roles(&host::interface_roles(cfg))?;
        dp.apply(&MapOp::SetNat {
            nat: nat::nat_config(cfg)?,
        })?;
        // A version before FLOW_HASH_KEY hashed without a key: read connections made before
        // the upgrade keep their entries; only new ones are placed by the keyed hash.
        dp.apply(&MapOp::SetFlowHashKey {
            key: cfg.flow_hash_key,
        })?;
        Ok((switched, old_id, new_id))
    }
}

/// Sets `accept_local = 1` on `interfaces`, first saving in `ACCEPT_LOCAL` the value each
/// had if this data plane never set it, and gives interfaces saved earlier but no longer
/// listed their value back.
fn set_accept_local(dp: &mut BpfDataplane, interfaces: &[String]) -> Result<(), BpfError> {
    let mut saved = dp.saved_accept_local()?;
    for iface in interfaces {
        let key = key_of_iface(iface);
        if let Entry::Vacant(unsaved) = saved.entry(key) {
            let before = host::read_accept_local(iface)?;
            dp.apply(&MapOp::SaveAcceptLocal {
                iface: key,
                value: before,
            })?;
            unsaved.insert(before);
        }
        host::write_accept_local(iface, 1)?;
    }
    for (key, value) in saved {
        let iface = iface_of_key(&key);
        if !interfaces.contains(&iface) {
            host::write_accept_local(&iface, value)?;
            dp.apply(&MapOp::ForgetAcceptLocal { iface: key })?;
        }
    }
    Ok(())
}

/// Makes `PEER_DEVS` hold exactly the configured interfaces that are veths with their
/// peer in another network namespace (none unless the hook is TC and
/// `veth_peer_redirect` is on). Returns their names.
fn redirect_to_veth_peers(
    dp: &mut BpfDataplane,
    cfg: &DataplaneConfig,
    hook: Hook,
) -> Result<Vec<String>, BpfError> {
    let peers = if hook == Hook::Tc && cfg.veth_peer_redirect {
        host::veth_peers(&cfg.interfaces)
    } else {
        Vec::new()
    };
    let ifindexes: Vec<u32> = peers.iter().map(|(_, ifindex)| *ifindex).collect();
    dp.set_peer_devices(&ifindexes)?;
    Ok(peers.into_iter().map(|(name, _)| name).collect())
}

/// The links pinned under `pin_dir` whose pin names start with `prefix`, by interface.
pub(super) fn pinned_links(
    pin_dir: &Path,
    prefix: &str,
) -> Result<Vec<(String, PathBuf)>, BpfError> {
    let entries = std::fs::read_dir(pin_dir).map_err(|source| BpfError::Io {
        what: "listing",
        path: pin_dir.to_owned(),
        source,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let iface = name.strip_prefix(prefix)?.to_owned();
            Some((iface, e.path()))
        })
        .collect())
}

/// Unpinning drops the last reference to the link, which detaches the program.
pub(super) fn detach(path: &Path) -> Result<(), BpfError> {
    let link = PinnedLink::from_pin(path).map_err(|e| BpfError::Io {
        what: "opening pinned link",
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    link.unpin().map_err(|source| BpfError::Io {
        what: "unpinning",
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

/// Loads the embedded object, reusing every map already pinned (aya's map_pin_path): that is
/// how a new program version keeps the connection table, state and counters.
fn load_on_pinned_maps(cfg: &DataplaneConfig) -> Result<(aya::Ebpf, MapPins), BpfError> {
    host::raise_memlock();
    let pins = map_pins(&cfg.pin_dir);
    let mut loader = EbpfLoader::new();
    // Only a map created now takes this size: a pinned one is reused as it is.
    loader.map_max_entries(map_name::FLOWS, cfg.flow_table_size);
    loader.map_max_entries(map_name::FLOWS_SPILL, cfg.flow_table_size);
    // One source port per connection at most.
    loader.map_max_entries(map_name::NAT_PORTS, cfg.flow_table_size);
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader
        .load(crate::ebpf_object())
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    Ok((ebpf, pins))
}

/// Pins the maps that had no pin yet (a first load, or maps a new version added).
fn pin_new_maps(ebpf: &aya::Ebpf, pins: &[(&'static str, PathBuf)]) -> Result<(), BpfError> {
    for (name, path) in pins {
        if !path.exists() {
            let map = ebpf
                .map(name)
                .ok_or_else(|| BpfError::Load(format!("map {name} missing").into()))?;
            map.pin(path).map_err(|e| BpfError::Load(Box::new(e)))?;
        }
    }
    Ok(())
}

/// A pinned connection table keeps its size: resizing it would drop every connection's
/// entry, which only an explicit unload + load may do.
fn warn_if_flows_resized(cfg: &DataplaneConfig) {
    let path = cfg.pin_dir.join(map_name::FLOWS);
    let Ok(info) = MapInfo::from_pin(&path) else {
        return;
    };
    if info.max_entries() != cfg.flow_table_size {
        tracing::warn!(
            "{} keeps its {} entries: flow_table_size = {} takes effect after \
             `redis-ha-ctl unload` and a new load (forwarding stops in between)",
            path.display(),
            info.max_entries(),
            cfg.flow_table_size
        );
    }
}
