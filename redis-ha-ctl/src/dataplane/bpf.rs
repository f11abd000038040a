//! The real data plane: the XDP program attached to interfaces, its links, program and maps
//! pinned under the pin directory so forwarding goes on while no controller runs.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use redis_ha_common::{
    AddrKey, Backend, BackendStats, FloatingLease, Flow, FlowKey, MAX_BACKENDS, MAX_SERVICES,
    RING_SIZE, ServiceKey, ServicePort, ServiceState, counter, map_name, ring_index,
};

use super::{Dataplane, MapOp, Snapshot};
use crate::config::{DataplaneConfig, XdpMode};

const PROG_PIN: &str = "prog";
/// The same program built for the TC ingress hook (`xdp_mode = "tc"`); one of the two is
/// pinned, never both.
const PROG_TC_PIN: &str = "prog_tc";
const LINK_PREFIX: &str = "link_";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("bpffs is not mounted at /sys/fs/bpf: run `mount -t bpf bpf /sys/fs/bpf` (as root)")]
    NoBpffs,
    #[error("no data plane is pinned at {0}: run `redis-ha-ctl load --config FILE` first")]
    NotLoaded(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("loading the XDP program (are you root? is the kernel built with BPF and BTF?): {0}")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "attaching to {iface} in {mode} mode: {source}{hint}",
        hint = if *.mode == "native" { " (try xdp_mode = \"skb\" or \"auto\")" } else { "" }
    )]
    Attach {
        iface: String,
        mode: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the data plane pinned at {pin_dir} runs at the {pinned} hook, the configuration asks \
         for {wanted}: run `redis-ha-ctl unload --config FILE` then `load` again (forwarding \
         stops in between)"
    )]
    HookChanged {
        pin_dir: PathBuf,
        pinned: &'static str,
        wanted: &'static str,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error(
        "the data plane pinned at {pin_dir} was loaded by a version with other maps ({problem}): \
         run `redis-ha-ctl unload --config FILE` then start or `load` again \
         (forwarding stops in between; `upgrade` cannot keep maps whose layout changed)"
    )]
    Incompatible { pin_dir: PathBuf, problem: String },
    #[error(
        "the data plane pinned at {pin_dir} was loaded by an older version, without the map \
         {name}: run `redis-ha-ctl upgrade --config FILE` (forwarding goes on, connections \
         are kept)"
    )]
    MissingMap {
        pin_dir: PathBuf,
        name: &'static str,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

/// The map pinned as `name` under `pin_dir`.
fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, BpfError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// Makes the hash map `map` (pinned as `name`) hold exactly `wanted`: new entries first, then
/// stale ones removed, so a key listed both before and after never disappears in between.
fn sync_hash<K: aya::Pod + PartialEq, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    wanted: &[(K, V)],
) -> Result<(), BpfError> {
    for (k, v) in wanted {
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    let present: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in present {
        if !wanted.iter().any(|(k, _)| *k == key) {
            map.remove(&key).map_err(map_err(name))?;
        }
    }
    Ok(())
}

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

/// Handles on the pinned maps.
pub struct BpfDataplane {
    pin_dir: PathBuf,
    services: HashMap<MapData, ServiceKey, ServicePort>,
    state: Array<MapData, ServiceState>,
    backends: Array<MapData, Backend>,
    ring: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, Flow>,
    flows_spill: HashMap<MapData, FlowKey, Flow>,
    flows_spilled: Array<MapData, u64>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    counters: PerCpuArray<MapData, u64>,
    backend_addrs: HashMap<MapData, AddrKey, u32>,
    client_nets: LpmTrie<MapData, [u8; 4], u32>,
    floating: HashMap<MapData, [u8; 4], FloatingLease>,
    peer_devs: HashMap<MapData, u32, u32>,
    accept_local: HashMap<MapData, [u8; 16], u32>,
}

fn check_bpffs(pin_dir: &Path) -> Result<(), BpfError> {
    // statfs magic of bpffs; a pin dir elsewhere would silently fail to pin.
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let base = pin_dir.parent().unwrap_or(pin_dir);
    let c =
        std::ffi::CString::new(base.as_os_str().as_encoded_bytes()).map_err(|_| BpfError::Io {
            what: "invalid path",
            path: base.to_owned(),
            source: io::ErrorKind::InvalidInput.into(),
        })?;
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(BpfError::NoBpffs);
    }
    Ok(())
}

/// Refuses pinned maps this binary's program would misread: one whose key, value or number of
/// entries (but for `FLOWS`, sized by the configuration) differs from the program's
/// definition, or (unless `missing_ok`, when the program is about to be loaded and will
/// create it) a map not pinned at all. aya reuses a pinned map by
/// name without comparing, so without this a new program would run on an old layout.
fn check_pinned_layout(pin_dir: &Path, missing_ok: bool) -> Result<(), BpfError> {
    if !pin_dir.join(map_name::SERVICES).exists() {
        // Nothing pinned yet: everything will be created.
        return Ok(());
    }
    let obj =
        aya_obj::Object::parse(crate::ebpf_object()).map_err(|e| BpfError::Load(Box::new(e)))?;
    let incompatible = |problem: String| BpfError::Incompatible {
        pin_dir: pin_dir.to_owned(),
        problem,
    };
    for (name, path) in map_pins(pin_dir) {
        let Some(def) = obj.maps.get(name) else {
            continue;
        };
        if !path.exists() {
            if missing_ok {
                continue;
            }
            return Err(BpfError::MissingMap {
                pin_dir: pin_dir.to_owned(),
                name,
            });
        }
        let info = MapInfo::from_pin(&path).map_err(map_err(name))?;
        let mut want = (def.key_size(), def.value_size(), def.max_entries());
        let got = (info.key_size(), info.value_size(), info.max_entries());
        if name == map_name::FLOWS || name == map_name::FLOWS_SPILL {
            // Sized at load time from `flow_table_size`; any size reads the same.
            want.2 = got.2;
        }
        if want != got {
            return Err(incompatible(format!(
                "{name}: key/value/entries {}/{}/{} pinned, {}/{}/{} expected",
                got.0, got.1, got.2, want.0, want.1, want.2
            )));
        }
    }
    Ok(())
}

impl BpfDataplane {
    /// Opens the maps a previous `load` pinned.
    pub fn open(pin_dir: &Path) -> Result<Self, BpfError> {
        if !pin_dir.join(map_name::SERVICES).exists() {
            return Err(BpfError::NotLoaded(pin_dir.to_owned()));
        }
        check_pinned_layout(pin_dir, false)?;
        let open = |name| open_pinned(pin_dir, name);
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            services: HashMap::try_from(open(map_name::SERVICES)?)
                .map_err(map_err(map_name::SERVICES))?,
            state: Array::try_from(open(map_name::SERVICE_STATE)?)
                .map_err(map_err(map_name::SERVICE_STATE))?,
            backends: Array::try_from(open(map_name::BACKENDS)?)
                .map_err(map_err(map_name::BACKENDS))?,
            ring: Array::try_from(open(map_name::READ_RING)?)
                .map_err(map_err(map_name::READ_RING))?,
            flows: HashMap::try_from(open(map_name::FLOWS)?).map_err(map_err(map_name::FLOWS))?,
            flows_spill: HashMap::try_from(open(map_name::FLOWS_SPILL)?)
                .map_err(map_err(map_name::FLOWS_SPILL))?,
            flows_spilled: Array::try_from(open(map_name::FLOWS_SPILLED)?)
                .map_err(map_err(map_name::FLOWS_SPILLED))?,
            backend_stats: PerCpuArray::try_from(open(map_name::BACKEND_STATS)?)
                .map_err(map_err(map_name::BACKEND_STATS))?,
            counters: PerCpuArray::try_from(open(map_name::COUNTERS)?)
                .map_err(map_err(map_name::COUNTERS))?,
            backend_addrs: HashMap::try_from(open(map_name::BACKEND_ADDRS)?)
                .map_err(map_err(map_name::BACKEND_ADDRS))?,
            client_nets: LpmTrie::try_from(open(map_name::CLIENT_NETS)?)
                .map_err(map_err(map_name::CLIENT_NETS))?,
            floating: HashMap::try_from(open(map_name::FLOATING)?)
                .map_err(map_err(map_name::FLOATING))?,
            peer_devs: HashMap::try_from(open(map_name::PEER_DEVS)?)
                .map_err(map_err(map_name::PEER_DEVS))?,
            accept_local: HashMap::try_from(open(map_name::ACCEPT_LOCAL)?)
                .map_err(map_err(map_name::ACCEPT_LOCAL))?,
        })
    }

    /// Makes sure the program is loaded, pinned and attached to every configured interface of
    /// the current network namespace, reusing whatever an earlier run pinned (so restarting
    /// never interrupts forwarding), and detaching interfaces no longer configured.
    pub fn load_and_attach(cfg: &DataplaneConfig) -> Result<(Self, Vec<Attachment>), BpfError> {
        check_bpffs(&cfg.pin_dir)?;
        let io_err = |what, path: &Path| {
            let path = path.to_owned();
            move |source| BpfError::Io { what, path, source }
        };
        std::fs::create_dir_all(&cfg.pin_dir)
            .map_err(io_err("creating pin directory", &cfg.pin_dir))?;
        let hook = Hook::for_config(cfg);
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

        if !prog_pin.exists() {
            let (mut ebpf, pins) = load_on_pinned_maps(cfg)?;
            Loaded::verified(hook, &mut ebpf)?
                .pin(&prog_pin)
                .map_err(|e| BpfError::Load(Box::new(e)))?;
            pin_new_maps(&ebpf, &pins)?;
        }
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
            let (fd_link, mode) = prog.attach(iface, cfg.xdp_mode)?;
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
        for (iface, path) in pinned_links(&cfg.pin_dir)? {
            if !cfg.interfaces.contains(&iface) {
                detach(&path)?;
            }
        }
        let mut dp = Self::open(&cfg.pin_dir)?;
        dp.set_accept_local(&cfg.interfaces)?;
        dp.set_client_networks(&cfg.client_networks)?;
        let peers = dp.set_peer_devices(cfg, hook)?;
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
        for (iface, path) in pinned_links(pin_dir)? {
            detach(&path)?;
            detached.push(iface);
        }
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
                if write_accept_local(&iface, value)? {
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

    /// Sets `accept_local = 1` on `interfaces`, first saving in `ACCEPT_LOCAL` the value each
    /// had if this data plane never set it, and gives interfaces saved earlier but no longer
    /// listed their value back.
    fn set_accept_local(&mut self, interfaces: &[String]) -> Result<(), BpfError> {
        let name = map_name::ACCEPT_LOCAL;
        for iface in interfaces {
            let key = key_of_iface(iface);
            if self.accept_local.get(&key, 0).is_err() {
                let before = read_accept_local(iface)?;
                self.accept_local
                    .insert(key, before, 0)
                    .map_err(map_err(name))?;
            }
            write_accept_local(iface, 1)?;
        }
        let saved: Vec<([u8; 16], u32)> = self.accept_local.iter().filter_map(Result::ok).collect();
        for (key, value) in saved {
            let iface = iface_of_key(&key);
            if !interfaces.contains(&iface) {
                write_accept_local(&iface, value)?;
                self.accept_local.remove(&key).map_err(map_err(name))?;
            }
        }
        Ok(())
    }

    /// Makes `CLIENT_NETS` hold exactly `nets` (added first, then stale ones removed, so a
    /// network listed both before and after never disappears in between).
    pub fn set_client_networks(
        &mut self,
        nets: &[(std::net::Ipv4Addr, u8)],
    ) -> Result<(), BpfError> {
        let wanted: Vec<Key<[u8; 4]>> = nets
            .iter()
            .map(|(addr, len)| Key::new(u32::from(*len), addr.octets()))
            .collect();
        for key in &wanted {
            self.client_nets
                .insert(key, 1, 0)
                .map_err(map_err(map_name::CLIENT_NETS))?;
        }
        // aya's Key keeps its fields private; it is a packed (u32, [u8; 4]), so compare bytes.
        let bytes = |k: &Key<[u8; 4]>| -> [u8; 8] {
            // SAFETY: Key<[u8; 4]> is #[repr(C, packed)] of a u32 and 4 bytes: exactly 8
            // initialised bytes, any of which is a valid u8.
            unsafe { std::mem::transmute_copy(k) }
        };
        let present: Vec<Key<[u8; 4]>> = self.client_nets.keys().filter_map(Result::ok).collect();
        for key in present {
            let listed = wanted.iter().any(|w| bytes(w) == bytes(&key));
            if !listed {
                self.client_nets
                    .remove(&key)
                    .map_err(map_err(map_name::CLIENT_NETS))?;
            }
        }
        Ok(())
    }

    /// Makes `PEER_DEVS` hold exactly the configured interfaces that are veths with their
    /// peer in another network namespace (none unless the hook is TC and
    /// `veth_peer_redirect` is on). Returns their names.
    fn set_peer_devices(
        &mut self,
        cfg: &DataplaneConfig,
        hook: Hook,
    ) -> Result<Vec<String>, BpfError> {
        let peers = if hook == Hook::Tc && cfg.veth_peer_redirect {
            veth_peers(&cfg.interfaces)
        } else {
            Vec::new()
        };
        let wanted: Vec<(u32, u32)> = peers.iter().map(|(_, ifindex)| (*ifindex, 1)).collect();
        sync_hash(&mut self.peer_devs, map_name::PEER_DEVS, &wanted)?;
        Ok(peers.into_iter().map(|(name, _)| name).collect())
    }

    /// Makes `FLOATING` hold exactly these addresses, each answering ARP until `until_ns`
    /// (`CLOCK_MONOTONIC`; 0: not at all). Stale entries are removed after the new ones are in.
    pub fn set_floating_leases(
        &mut self,
        addresses: &[std::net::Ipv4Addr],
        until_ns: u64,
    ) -> Result<(), BpfError> {
        let wanted: Vec<([u8; 4], FloatingLease)> = addresses
            .iter()
            .map(|a| (a.octets(), FloatingLease { until_ns }))
            .collect();
        sync_hash(&mut self.floating, map_name::FLOATING, &wanted)
    }

    /// Replaces the running program with the one this binary embeds, without a moment
    /// unattached: the new program is loaded on the pinned maps (the connection table, state
    /// and counters carry over) and swapped into every pinned link at once (BPF_LINK_UPDATE).
    /// Returns the interfaces switched over and the old and new program ids.
    pub fn upgrade(cfg: &DataplaneConfig) -> Result<(Vec<String>, u32, u32), BpfError> {
        check_bpffs(&cfg.pin_dir)?;
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
        for (iface, path) in pinned_links(&cfg.pin_dir)? {
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
        // A version before PEER_DEVS existed leaves it empty; the configuration may also have
        // changed.
        Self::open(&cfg.pin_dir)?.set_peer_devices(cfg, hook)?;
        Ok((switched, old_id, new_id))
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Summed per-CPU counters of every slot that saw traffic.
    pub fn backend_stats(&self) -> Result<Vec<(u32, BackendStats)>, BpfError> {
        let mut out = Vec::new();
        for slot in 1..MAX_BACKENDS {
            let per_cpu = self
                .backend_stats
                .get(&slot, 0)
                .map_err(map_err(map_name::BACKEND_STATS))?;
            let mut sum = BackendStats::default();
            for s in per_cpu.iter() {
                sum.packets_in += s.packets_in;
                sum.bytes_in += s.bytes_in;
                sum.packets_out += s.packets_out;
                sum.bytes_out += s.bytes_out;
                sum.new_flows += s.new_flows;
                sum.flows_reset += s.flows_reset;
                sum.flows_closed += s.flows_closed;
            }
            if sum != BackendStats::default() {
                out.push((slot, sum));
            }
        }
        Ok(out)
    }

    /// `counter::*` values summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], BpfError> {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(i as u32), 0)
                .map_err(map_err(map_name::COUNTERS))?;
            *v = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Up to `limit` connection-table entries (`FLOWS`, then `FLOWS_SPILL`), and how many
    /// there are in all.
    pub fn flows(&self, limit: usize) -> Result<(Vec<(FlowKey, Flow)>, usize), BpfError> {
        let mut out = Vec::new();
        let mut total = 0;
        for entry in self.flows.iter().chain(self.flows_spill.iter()) {
            // An entry removed between listing keys and reading it is simply skipped.
            let Ok((k, v)) = entry else { continue };
            total += 1;
            if out.len() < limit {
                out.push((k, v));
            }
        }
        Ok((out, total))
    }

    /// When (CLOCK_MONOTONIC, ns) the program first had to put a connection into
    /// `FLOWS_SPILL` because `FLOWS` was full; `None` if it never had to since load.
    pub fn spilling_since(&self) -> Result<Option<u64>, BpfError> {
        let since = self
            .flows_spilled
            .get(&0, 0)
            .map_err(map_err(map_name::FLOWS_SPILLED))?;
        Ok((since != 0).then_some(since))
    }

    /// Removes from `FLOWS` what [`sweep::select`] picks at `now_ns` (CLOCK_MONOTONIC); returns
    /// the entries left in `FLOWS` and `FLOWS_SPILL`, and how many were removed.
    pub fn sweep_flows(&mut self, now_ns: u64) -> Result<FlowSweep, BpfError> {
        let pin = self.pin_dir.join(map_name::FLOWS);
        let capacity = MapInfo::from_pin(&pin)
            .map_err(map_err(map_name::FLOWS))?
            .max_entries() as usize;
        let entries: Vec<(FlowKey, Flow)> = self.flows.iter().filter_map(Result::ok).collect();
        // Only counted: the sweep leaves the spill table to its own LRU.
        let spilled = self.flows_spill.keys().filter(Result::is_ok).count();
        let read: std::collections::HashMap<FlowKey, Flow> = entries.iter().copied().collect();
        let mut removed = 0;
        for key in super::sweep::select(&entries, now_ns, capacity) {
            // The program may have reused the key for a new connection since it was read: only
            // an entry still as it was goes. (What changes between this read and the removal
            // is a packet's worth of time; the worst case is a connection re-admitted by its
            // next packet, as after an LRU eviction.)
            let now = self.flows.get(&key, 0).ok();
            if now.is_some() && now.as_ref() == read.get(&key) && self.flows.remove(&key).is_ok() {
                removed += 1;
            }
        }
        Ok(FlowSweep {
            entries: entries.len() - removed + spilled,
            removed,
        })
    }

    /// One of a service's Maglev tables (for inspection).
    pub fn ring(&self, service_id: u32, half: u32) -> Result<Vec<u32>, BpfError> {
        (0..RING_SIZE)
            .map(|i| {
                self.ring
                    .get(&ring_index(service_id, half, i), 0)
                    .map_err(map_err(map_name::READ_RING))
            })
            .collect()
    }
}

/// What a pass of [`BpfDataplane::sweep_flows`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSweep {
    /// Entries left in both tables.
    pub entries: usize,
    pub removed: usize,
}

/// Every map of the program, with the path it is (or will be) pinned at.
type MapPins = Vec<(&'static str, PathBuf)>;

fn map_pins(pin_dir: &Path) -> MapPins {
    [
        map_name::SERVICES,
        map_name::SERVICE_STATE,
        map_name::BACKENDS,
        map_name::READ_RING,
        map_name::FLOWS,
        map_name::FLOWS_SPILL,
        map_name::FLOWS_SPILLED,
        map_name::BACKEND_STATS,
        map_name::COUNTERS,
        map_name::BACKEND_ADDRS,
        map_name::CLIENT_NETS,
        map_name::FLOATING,
        map_name::PEER_DEVS,
        map_name::ACCEPT_LOCAL,
    ]
    .into_iter()
    .map(|n| (n, pin_dir.join(n)))
    .collect()
}

/// Loads the embedded object, reusing every map already pinned (aya's map_pin_path): that is
/// how a new program version keeps the connection table, state and counters.
fn load_on_pinned_maps(cfg: &DataplaneConfig) -> Result<(aya::Ebpf, MapPins), BpfError> {
    raise_memlock();
    let pins = map_pins(&cfg.pin_dir);
    let mut loader = EbpfLoader::new();
    // Only a map created now takes this size: a pinned one is reused as it is.
    loader.map_max_entries(map_name::FLOWS, cfg.flow_table_size);
    loader.map_max_entries(map_name::FLOWS_SPILL, cfg.flow_table_size);
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader
        .load(crate::ebpf_object())
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    Ok((ebpf, pins))
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

/// The object's XDP program, through the verifier.
fn loaded_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, BpfError> {
    let prog: &mut Xdp = ebpf
        .program_mut("redis_ha")
        .ok_or_else(|| BpfError::Load("program redis_ha missing from the object".into()))?
        .try_into()
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
    Ok(prog)
}

/// The object's TC ingress program, through the verifier.
fn loaded_tc_program(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, BpfError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut("redis_ha_tc")
        .ok_or_else(|| BpfError::Load("program redis_ha_tc missing from the object".into()))?
        .try_into()
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
    Ok(prog)
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

fn attach_err(
    iface: &str,
    mode: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> BpfError {
    BpfError::Attach {
        iface: iface.to_owned(),
        mode,
        source: Box::new(e),
    }
}

/// The kernel hook the program runs at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    /// The hook `cfg` asks for. `auto` keeps the hook of a data plane already pinned (a
    /// restart never moves it), and otherwise follows [`auto_hook`].
    fn for_config(cfg: &DataplaneConfig) -> Self {
        match cfg.xdp_mode {
            XdpMode::Tc => Self::Tc,
            XdpMode::Native | XdpMode::Skb => Self::Xdp,
            XdpMode::Auto => Self::pinned(&cfg.pin_dir).unwrap_or_else(|| {
                let drivers: Vec<Option<String>> =
                    cfg.interfaces.iter().map(|i| driver_of(i)).collect();
                auto_hook(&drivers, kernel_has_tcx())
            }),
        }
    }

    /// The hook of the data plane pinned at `pin_dir`, if any.
    fn pinned(pin_dir: &Path) -> Option<Self> {
        [Self::Xdp, Self::Tc]
            .into_iter()
            .find(|h| pin_dir.join(h.pin()).exists())
    }

    fn pin(self) -> &'static str {
        match self {
            Self::Xdp => PROG_PIN,
            Self::Tc => PROG_TC_PIN,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Xdp => "XDP",
            Self::Tc => "TC ingress",
        }
    }
}

/// `xdp_mode = "auto"` for a new data plane: the TC hook when every interface is a veth
/// (containers, testbeds: XDP would copy every packet there first) and the kernel has TCX
/// links; XDP otherwise, native where the driver has it (one program serves every interface,
/// so a mix keeps XDP for the NICs' sake).
fn auto_hook(drivers: &[Option<String>], tcx: bool) -> Hook {
    let all_veth = !drivers.is_empty() && drivers.iter().all(|d| d.as_deref() == Some("veth"));
    if all_veth && tcx { Hook::Tc } else { Hook::Xdp }
}

/// Those of `interfaces` (name, ifindex) that are veths whose peer is in another network
/// namespace, which `bpf_redirect_peer` can deliver to. Netlink says so directly: it reports
/// a link's peer namespace (`IFLA_LINK_NETNSID`) only when it differs from the link's own.
/// An interface netlink cannot describe is left out (its packets take the ordinary way), with
/// a warning.
fn veth_peers(interfaces: &[String]) -> Vec<(String, u32)> {
    use futures_util::TryStreamExt as _;
    use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

    let ask = async {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let mut found = Vec::new();
        for iface in interfaces {
            let mut links = handle.link().get().match_name(iface.clone()).execute();
            let Some(link) = links.try_next().await? else {
                continue;
            };
            let attrs = &link.attributes;
            let veth = attrs.iter().any(|a| {
                matches!(a, LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
            });
            let elsewhere = attrs
                .iter()
                .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
            if veth && elsewhere {
                found.push((iface.clone(), link.header.index));
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(found)
    };
    // On a thread of its own, which starts in the caller's network namespace: the daemon calls
    // this from inside its runtime, where blocking on another would panic.
    let answer = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(Into::into)
                .and_then(|rt| rt.block_on(ask))
        })
        .join()
    });
    match answer {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::warn!("veth_peer_redirect: asking netlink about the interfaces: {e}");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("veth_peer_redirect: the netlink query panicked");
            Vec::new()
        }
    }
}

/// TCX links came with Linux 6.6.
fn kernel_has_tcx() -> bool {
    // SAFETY: uname fills the struct it is given; all-zero is a valid utsname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    release_at_least(&release.to_string_lossy(), (6, 6))
}

/// Whether a kernel release string ("6.18.44-fc-v657") is at least `want` (major, minor).
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// The driver behind `iface` in the current network namespace (`ethtool -i`), if it says.
fn driver_of(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    /// `struct ethtool_drvinfo`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 4 * 5],
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: a plain datagram socket, closed below; the ioctl reads the interface name and
    // writes at most a `struct ethtool_drvinfo` through `data`, both live for the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The pinned program, ready to attach.
enum Pinned {
    Xdp(Xdp),
    Tc(SchedClassifier),
}

impl Pinned {
    fn open(hook: Hook, path: &Path) -> Result<Self, BpfError> {
        let load_err = |e| BpfError::Load(Box::new(e));
        Ok(match hook {
            Hook::Xdp => Self::Xdp(
                Xdp::from_pin(path, aya_obj::programs::XdpAttachType::Interface)
                    .map_err(load_err)?,
            ),
            Hook::Tc => Self::Tc(SchedClassifier::from_pin(path).map_err(load_err)?),
        })
    }

    fn id(&self) -> Result<u32, aya::programs::ProgramError> {
        match self {
            Self::Xdp(p) => p.info().map(|i| i.id()),
            Self::Tc(p) => p.info().map(|i| i.id()),
        }
    }

    /// Attaches to `iface` and returns the link, to be pinned, and the mode it got.
    fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(FdLink, &'static str), BpfError> {
        match self {
            Self::Xdp(prog) => {
                let (id, mode) = attach_xdp(prog, iface, mode)?;
                let link = prog.take_link(id).map_err(|e| attach_err(iface, mode, e))?;
                let link = FdLink::try_from(link).map_err(|e| attach_err(iface, mode, e))?;
                Ok((link, mode))
            }
            Self::Tc(prog) => {
                // TCX (kernel 6.6+): a link like XDP's, so it pins and upgrades the same way,
                // and no qdisc is needed.
                let id = prog
                    .attach_with_options(
                        iface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| attach_err(iface, "tc", e))?;
                let link = prog.take_link(id).map_err(|e| attach_err(iface, "tc", e))?;
                let link = FdLink::try_from(link).map_err(|e| attach_err(iface, "tc", e))?;
                Ok((link, "tc"))
            }
        }
    }
}

/// A program just loaded from the embedded object (not pinned yet).
enum Loaded<'a> {
    Xdp(&'a mut Xdp),
    Tc(&'a mut SchedClassifier),
}

impl<'a> Loaded<'a> {
    /// The object's program for `hook`, through the verifier.
    fn verified(hook: Hook, ebpf: &'a mut aya::Ebpf) -> Result<Self, BpfError> {
        Ok(match hook {
            Hook::Xdp => Self::Xdp(loaded_program(ebpf)?),
            Hook::Tc => Self::Tc(loaded_tc_program(ebpf)?),
        })
    }

    fn id(&self) -> Result<u32, aya::programs::ProgramError> {
        match self {
            Self::Xdp(p) => p.info().map(|i| i.id()),
            Self::Tc(p) => p.info().map(|i| i.id()),
        }
    }

    fn pin(&mut self, path: &Path) -> Result<(), aya::pin::PinError> {
        match self {
            Self::Xdp(p) => p.pin(path),
            Self::Tc(p) => p.pin(path),
        }
    }

    /// Swaps this program into the pinned link of `iface` (BPF_LINK_UPDATE).
    fn replace_in(&mut self, iface: &str, link: FdLink) -> Result<(), BpfError> {
        match self {
            Self::Xdp(prog) => {
                let link = XdpLink::try_from(link).map_err(|e| attach_err(iface, "pinned", e))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|e| attach_err(iface, "pinned", e))?;
                drop(prog.take_link(id));
            }
            Self::Tc(prog) => {
                let link = SchedClassifierLink::try_from(link)
                    .map_err(|e| attach_err(iface, "pinned", e))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|e| attach_err(iface, "pinned", e))?;
                drop(prog.take_link(id));
            }
        }
        Ok(())
    }
}

fn attach_xdp(
    prog: &mut Xdp,
    iface: &str,
    mode: XdpMode,
) -> Result<(aya::programs::xdp::XdpLinkId, &'static str), BpfError> {
    match mode {
        XdpMode::Native => prog
            .attach(iface, AyaXdpMode::Driver)
            .map(|id| (id, "native"))
            .map_err(|e| attach_err(iface, "native", e)),
        XdpMode::Skb => prog
            .attach(iface, AyaXdpMode::Skb)
            .map(|id| (id, "skb"))
            .map_err(|e| attach_err(iface, "skb", e)),
        XdpMode::Auto => match prog.attach(iface, AyaXdpMode::Driver) {
            Ok(id) => Ok((id, "native")),
            Err(_) => prog
                .attach(iface, AyaXdpMode::Skb)
                .map(|id| (id, "skb"))
                .map_err(|e| attach_err(iface, "skb", e)),
        },
        XdpMode::Tc => unreachable!("the TC hook attaches through Pinned::Tc"),
    }
}

fn pinned_links(pin_dir: &Path) -> Result<Vec<(String, PathBuf)>, BpfError> {
    let entries = std::fs::read_dir(pin_dir).map_err(|source| BpfError::Io {
        what: "listing",
        path: pin_dir.to_owned(),
        source,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let iface = name.strip_prefix(LINK_PREFIX)?.to_owned();
            Some((iface, e.path()))
        })
        .collect())
}

/// Unpinning drops the last reference to the link, which detaches the program.
fn detach(path: &Path) -> Result<(), BpfError> {
    let link = PinnedLink::from_pin(path).map_err(|e| BpfError::Io {
        what: "opening pinned link",
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    })?;
    link.unpin().map_err(|source| BpfError::Io {
        what: "unpinning",
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

/// What `unload` did.
pub struct Unloaded {
    pub detached: Vec<String>,
    /// Interfaces whose `accept_local` was given back its value from before the first load.
    pub restored: Vec<(String, u32)>,
}

/// `ACCEPT_LOCAL`'s key for an interface name (the kernel's names are at most 15 bytes).
fn key_of_iface(iface: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let n = iface.len().min(15);
    key[..n].copy_from_slice(&iface.as_bytes()[..n]);
    key
}

fn iface_of_key(key: &[u8; 16]) -> String {
    let end = key.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&key[..end]).into_owned()
}

fn accept_local_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"))
}

fn read_accept_local(iface: &str) -> Result<u32, BpfError> {
    let path = accept_local_path(iface);
    let text = std::fs::read_to_string(&path).map_err(|source| BpfError::Io {
        what: "reading",
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| BpfError::Io {
        what: "reading",
        path,
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{text:?} is no number")),
    })
}

/// Writes `net.ipv4.conf.<iface>.accept_local`; `false` when the interface no longer exists
/// (nothing to give back to). Data-plane interfaces get 1:
///
/// The program hands a rewritten reply (its source now the VIP, a local address) to the
/// kernel when the fast path cannot send it: no neighbour entry for the client (a node that
/// just took the VIP, or an entry the kernel aged out while the fast path carried the
/// connection without refreshing it), or an egress MTU to enforce. By default the kernel drops
/// a packet arriving with a local source as a martian, and the connection stalls.
fn write_accept_local(iface: &str, value: u32) -> Result<bool, BpfError> {
    let path = accept_local_path(iface);
    if !path.exists() {
        return Ok(false);
    }
    std::fs::write(&path, value.to_string()).map_err(|source| BpfError::Io {
        what: "letting the kernel forward replies from the VIP: writing",
        path,
        source,
    })?;
    Ok(true)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; the ring and flow table exceed
/// the usual 8 MiB default there.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct; failure only matters on old kernels, where
    // the load error that follows says what went wrong.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

impl Dataplane for BpfDataplane {
    type Error = BpfError;

    fn snapshot(&self) -> Result<Snapshot, BpfError> {
        let mut snap = Snapshot::default();
        for entry in self.services.iter() {
            let (k, v) = entry.map_err(map_err(map_name::SERVICES))?;
            snap.ports.insert((k.vip, k.port), v);
        }
        for id in 0..MAX_SERVICES {
            let s = self
                .state
                .get(&id, 0)
                .map_err(map_err(map_name::SERVICE_STATE))?;
            if s != ServiceState::default() {
                snap.states.insert(id, s);
            }
        }
        for slot in 1..MAX_BACKENDS {
            let b = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(map_name::BACKENDS))?;
            if b != Backend::default() {
                snap.backends.insert(slot, b);
            }
        }
        Ok(snap)
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), BpfError> {
        match op {
            MapOp::SetBackend { slot, backend } => {
                // BACKEND_ADDRS mirrors BACKENDS: the new address is findable before the slot
                // holds it, the old one is forgotten only after.
                let old = self
                    .backends
                    .get(slot, 0)
                    .map_err(map_err(map_name::BACKENDS))?;
                let key = |b: &Backend| AddrKey {
                    ip: b.ip,
                    port: b.port,
                    _pad: 0,
                };
                if *backend != Backend::default() {
                    self.backend_addrs
                        .insert(key(backend), slot, 0)
                        .map_err(map_err(map_name::BACKEND_ADDRS))?;
                }
                self.backends
                    .set(*slot, backend, 0)
                    .map_err(map_err(map_name::BACKENDS))?;
                if old != Backend::default() && (old.ip, old.port) != (backend.ip, backend.port) {
                    // Absent already is fine: the mirror may predate this map (older pins).
                    let _ = self.backend_addrs.remove(&key(&old));
                }
                Ok(())
            }
            MapOp::SetPort { key, port } => self
                .services
                .insert(key, port, 0)
                .map_err(map_err(map_name::SERVICES)),
            MapOp::RemovePort { key } => self
                .services
                .remove(key)
                .map_err(map_err(map_name::SERVICES)),
            MapOp::SetRing {
                service_id,
                half,
                table,
            } => {
                for (i, slot) in table.iter().enumerate() {
                    self.ring
                        .set(ring_index(*service_id, *half, i as u32), slot, 0)
                        .map_err(map_err(map_name::READ_RING))?;
                }
                Ok(())
            }
            MapOp::SetState { service_id, state } => self
                .state
                .set(*service_id, state, 0)
                .map_err(map_err(map_name::SERVICE_STATE)),
        }
    }
}

#[cfg(test)]
mod hook_tests {
    use super::*;

    #[test]
    fn auto_picks_tc_only_when_every_interface_is_a_veth_and_tcx_exists() {
        let veth = || Some("veth".to_owned());
        assert!(auto_hook(&[veth(), veth()], true) == Hook::Tc);
        assert!(auto_hook(&[veth(), veth()], false) == Hook::Xdp);
        assert!(auto_hook(&[veth(), Some("mlx5_core".to_owned())], true) == Hook::Xdp);
        assert!(auto_hook(&[veth(), None], true) == Hook::Xdp);
        assert!(auto_hook(&[], true) == Hook::Xdp);
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_at_least("6.18.44-fc-v657", (6, 6)));
        assert!(release_at_least("6.6.0", (6, 6)));
        assert!(!release_at_least("6.5.13-generic", (6, 6)));
        assert!(release_at_least("7.0-rc1", (6, 6)));
        assert!(!release_at_least("5.15.0-91-generic", (6, 6)));
        assert!(!release_at_least("garbage", (6, 6)));
    }

    #[test]
    fn the_driver_of_a_missing_or_misnamed_interface_is_unknown() {
        assert_eq!(driver_of("no-such-if0"), None);
        assert_eq!(driver_of("an-interface-name-too-long"), None);
    }
}
