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
//! - `hook`: the kernel hook the program runs at (XDP or TC ingress), choosing it, and loading
//!   and attaching the program there;
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
