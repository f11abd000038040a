//! The redis-ha data plane as the bench drives it: `redis-ha-ctl load`/`unload` in the LB
//! namespace, the id of the attached program, and its run-time statistics.

use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::{Testbed, run, run_within};

/// Keeps the kernel's BPF run-time statistics on (what `sysctl kernel.bpf_stats_enabled=1`
/// does) while it lives.
///
/// Taken through the `BPF_ENABLE_STATS` command rather than the sysctl: the kernel counts the
/// holders, so another engineer toggling the sysctl cannot switch it off under the bench, and
/// the file descriptor closes when the bench exits, even on a crash, so nothing is left on.
/// While it is held, /proc/sys/kernel/bpf_stats_enabled reads 1 and every BPF program on the
/// machine pays two clock reads per run (tens of ns).
pub struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // union bpf_attr { struct { __u32 type; } enable_stats; ... }: the kernel reads the
        // first `size` bytes and wants nothing else set.
        let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
        // SAFETY: bpf(2) reads `size` bytes from a live, correctly sized buffer and returns a
        // new file descriptor (or -1); it writes nothing back for this command.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("BPF_ENABLE_STATS (kernel.bpf_stats_enabled) failed: run as root");
        }
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        Ok(BpfStats {
            _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// The program's cumulative run time and run count (`bpftool prog show id N --json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgStats {
    pub fn since(self, before: ProgStats) -> ProgStats {
        ProgStats {
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(before.run_cnt),
        }
    }
}

/// Whether redis-ha's XDP program is attached in the testbed's LB, and its id.
pub struct DataPlane<'a> {
    tb: &'a Testbed,
    ctl: &'a Path,
    prog_id: Option<u32>,
}

impl<'a> DataPlane<'a> {
    pub fn new(tb: &'a Testbed, ctl: &'a Path) -> Self {
        Self {
            tb,
            ctl,
            prog_id: None,
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.prog_id.is_some()
    }

    /// `redis-ha-ctl load` (a fresh program, empty flow table), then the attached program's id.
    pub fn load(&mut self) -> Result<u32> {
        let mut cmd = self.tb.lb().command(self.ctl);
        cmd.args(["load", "--config"]).arg(self.tb.config_path());
        run_within(&mut cmd, Duration::from_secs(60)).context("redis-ha-ctl load")?;
        let id = attached_prog_id(self.tb)?.context("redis-ha-ctl load attached nothing")?;
        self.prog_id = Some(id);
        Ok(id)
    }

    /// `redis-ha-ctl unload`: detached from every interface, pins (and flows) gone.
    pub fn unload(&mut self) -> Result<()> {
        let mut cmd = self.tb.lb().command(self.ctl);
        cmd.args(["unload", "--config"]).arg(self.tb.config_path());
        run_within(&mut cmd, Duration::from_secs(60)).context("redis-ha-ctl unload")?;
        if let Some(id) = attached_prog_id(self.tb)? {
            bail!("program {id} is still attached after redis-ha-ctl unload");
        }
        self.prog_id = None;
        Ok(())
    }

    /// Loads or unloads so that the program is attached exactly when `loaded`.
    pub fn ensure(&mut self, loaded: bool) -> Result<()> {
        match (loaded, self.is_loaded()) {
            (true, false) => self.load().map(drop),
            (false, true) => self.unload(),
            _ => Ok(()),
        }
    }

    pub fn stats(&self) -> Result<ProgStats> {
        let id = self.prog_id.context("the data plane is not loaded")?;
        prog_stats(id)
    }
}

/// The id of the XDP program attached in the LB namespace (`bpftool -j net show`), if any.
/// Program ids are machine-wide; asking the namespace names ours, not another testbed's.
pub fn attached_prog_id(tb: &Testbed) -> Result<Option<u32>> {
    let json = run(tb.lb().command("bpftool").args(["-j", "net", "show"]))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).context("parsing `bpftool -j net show`")?;
    let ids: Vec<u64> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("xdp")?.as_array())
        .flatten()
        .filter_map(|attachment| attachment.get("id")?.as_u64())
        .collect();
    match ids.first() {
        None => Ok(None),
        Some(&first) if ids.iter().all(|&id| id == first) => Ok(Some(u32::try_from(first)?)),
        Some(_) => bail!("several XDP programs attached in the LB: {ids:?}"),
    }
}

/// `bpftool prog show id N --json`: run_time_ns and run_cnt (present while stats are on).
pub fn prog_stats(id: u32) -> Result<ProgStats> {
    let json =
        run(Command::new("bpftool").args(["prog", "show", "id", &id.to_string(), "--json"]))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).context("parsing `bpftool prog show --json`")?;
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_u64);
    Ok(ProgStats {
        run_time_ns: field("run_time_ns").unwrap_or(0),
        run_cnt: field("run_cnt").unwrap_or(0),
    })
}
