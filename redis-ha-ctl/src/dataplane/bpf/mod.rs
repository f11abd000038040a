//! The real data plane: the program attached to interfaces, its links, program and maps
//! pinned under the pin directory so forwarding goes on while no controller runs.
//!
//! One job per file:
//! - `maps`: [`BpfDataplane`], the typed handles on the pinned maps, taken once when the data
//!   plane is opened; which maps there are and where each is pinned; the check that refuses
//!   pinned maps this binary's program would misread;
//! - `apply`: [`Dataplane`](super::Dataplane) on those handles, the one place the controller
//!   writes a map (and the connection-table sweep, the one write that is no
//!   [`MapOp`](super::MapOp), said there why);
//! - `inspect`: reads for operators and metrics: counters, per-backend stats, the
//!   connection tables, the Maglev tables;
//! - `lifecycle`: load, pin, attach, upgrade and unload, reusing what an earlier run pinned;
//! - `placement`: which hook a configuration gets (XDP or TC ingress) and the mode of new XDP
//!   links, refusing interfaces XDP cannot transmit through;
//! - `hook`: loading the program for its hook and attaching it there;
//! - `egress`: the TC egress program that maps a local backend's replies back;
//! - `nat`: what NAT asks of the host (its addresses, forwarding, reserved ports);
//! - `host`: what is asked of or set on the host: bpffs, the memlock limit, the kernel
//!   release, an interface's driver, veth peers (netlink), the `accept_local` sysctls.

mod apply;
mod egress;
mod hook;
mod host;
mod inspect;
mod lifecycle;
mod maps;
mod nat;
mod placement;

use std::{io, path::PathBuf};

use aya::maps::MapError;

pub use apply::FlowSweep;
pub use lifecycle::{Attachment, Unloaded};
pub use maps::BpfDataplane;
pub use nat::{NatSetupError, local_addresses};

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
    #[error(
        "interface {iface} {what} (a packet the program redirects there is dropped without a \
         trace): {remedy}"
    )]
    NoXdpTransmit {
        iface: String,
        /// What the interface is, e.g. "is a bridge: XDP cannot transmit through it".
        what: String,
        remedy: String,
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
    #[error(transparent)]
    Nat(#[from] NatSetupError),
}

/// Turns an aya error on the map `name` into ours.
fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}
