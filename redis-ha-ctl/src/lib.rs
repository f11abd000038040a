//! redis-ha-ctl: loads redis-ha's XDP program, drives its maps, and (as a daemon) fails over.
//!
//! Layout:
//! - [`config`]: the TOML config and its validation;
//! - [`maglev`]: the consistent-hash table behind the read port;
//! - [`dataplane`]: the desired map contents, computed purely, and the aya code that applies them;
//! - [`failover`]: Sentinel-style decisions (SDOWN, ODOWN, votes, promotion) as a pure state machine;
//! - [`ha`]: which data-plane node holds the VIP (majority lease) and moving the addresses;
//! - [`daemon`]: `redis-ha-ctl run`, the executor around the machines (probes, peers, commands,
//!   map writes), which publishes a [`status::Status`] snapshot and the operator events;
//! - [`resp`] and [`sentinel_api`]: the Sentinel-compatible RESP API on the controller's port;
//! - [`probe`] and [`redis_conn`]: probes and commands to Redis, and the one place their
//!   connections (plain or TLS) are opened;
//! - [`client`]: `redis-ha-ctl status | events | failover`, which talk to that API;
//! - [`assets`]: the man pages and shell completions the .deb ships.

pub mod assets;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod failover;
#[doc(hidden)]
pub mod fuzzing;
pub mod ha;
pub mod http;
pub mod maglev;
pub mod metrics;
pub mod peer;
pub mod persist;
pub mod probe;
pub mod redis_conn;
pub mod resp;
pub mod sentinel_api;
pub mod status;

/// The compiled XDP program (redis-ha-ebpf), embedded at build time by `build.rs`.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redis-ha"))
}
