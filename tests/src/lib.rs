//! Test support for redis-ha: a network-namespace testbed with real redis-servers, shared by
//! the end-to-end tests and `cargo xtask`.
//!
//! Layout:
//! - [`process`]: bounded command runs, [`ChildGuard`] for long-running children, [`wait_until`];
//! - [`netns`]: the [`Netns`] guard, [`cleanup_prefix`] for leftovers of crashed runs;
//! - [`testbed`]: [`Testbed`] — client, load balancer and backends wired as the data plane
//!   expects, and the redis-ha-ctl config describing them;
//! - [`cluster`]: [`Cluster`] — a testbed with three controller processes (`redis-ha-ctl run`),
//!   their logs, state files and the data plane's view (`maps`);
//! - [`ha`]: [`HaCluster`] — two data-plane nodes on bridged segments, the floating VIP and
//!   gateway, three controllers, and the failure knobs of LB high availability;
//! - [`seed`]: [`SeedCluster`] — the seed's own shape: three machines on one subnet, each with
//!   a redis-server, a controller and the data plane, the VIP held by one of them; a
//!   same-subnet and a routed client; and its failover trials ([`seed::trial`]);
//! - [`trial`]: traffic through the VIP and the failover trial ([`run_trial`]): gap, lost
//!   acknowledged writes, writes reaching the old master;
//! - [`forge`]: forged TCP segments (any source address) sent from inside a namespace;
//! - [`tls`]: certificates made at test time and the arguments of TLS-only redis-servers;
//! - [`package`]: the .deb (`cargo xtask package`, tests/tests/package.rs);
//! - this file: finding the redis-ha-ctl binary and checking for root.
//!
//! Everything is named with the `rha-` prefix and a per-testbed tag, so concurrent tests never
//! collide and leftovers are easy to find.

pub mod cluster;
pub mod forge;
pub mod ha;
pub mod hosts;
pub mod http;
pub mod netns;
pub mod package;
pub mod process;
pub mod seed;
pub mod testbed;
pub mod tls;
pub mod tmpfs;
pub mod trial;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

pub use cluster::{Cluster, ClusterOptions, Controller, ControllerSpec, METRICS_PORT, MapsView};
pub use ha::{AddressHolders, ArpCapture, ArpClaim, ArpKind, HaCluster, HaOptions, LbNode};
pub use http::http_get;
pub use netns::{
    Leftovers, Netns, cleanup_prefix, in_netns, leftovers, list_namespaces, netns_command,
};
pub use process::{
    ChildGuard, GiveUp, ProcessSlot, describe, open_fds, output_within, run, run_within,
    vm_rss_kib, wait_until,
};
pub use seed::{FULL_NAT, SeedCluster, SeedNode, SeedOptions};
pub use testbed::{Backend, Testbed, TestbedOptions, XdpMode, unique_tag};
pub use trial::{Fault, TrafficLoop, TrialOptions, TrialOutcome, run_trial};

/// The pin directory redis-ha-ctl uses when its config names none.
pub use redis_ha_common::PIN_DIR as DEFAULT_PIN_DIR;

/// The workspace's root directory.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The redis-ha-ctl binary to test: `$REDIS_HA_CTL` if set, else the newer of
/// `target/release/redis-ha-ctl` and `target/debug/redis-ha-ctl`.
pub fn ctl_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("REDIS_HA_CTL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "REDIS_HA_CTL={} does not exist: build it with `cargo xtask build`",
                path.display()
            );
        }
        return Ok(path);
    }
    let target = target_dir();
    let newest = ["release", "debug"]
        .into_iter()
        .map(|profile| target.join(profile).join("redis-ha-ctl"))
        .filter_map(|path| {
            let modified = path.metadata().ok()?.modified().ok()?;
            Some((modified, path))
        })
        .max();
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "redis-ha-ctl is not built (looked in {}/{{release,debug}}): run `cargo xtask build` \
             (or `cargo build --release -p redis-ha-ctl`), or set REDIS_HA_CTL to the binary",
            target.display()
        ),
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// First thing every end-to-end test calls: they need root, and a test that silently skips
/// would pass CI while testing nothing, so this fails the test instead.
#[track_caller]
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (it creates network namespaces and loads XDP programs): \
         run it as root, e.g. with `cargo xtask test`"
    );
}

/// Where `program` is installed: the first match on `$PATH`, then the sbin directories a
/// non-login root shell may lack on its `$PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
