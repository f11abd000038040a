//! The redis-ha data plane as the bench drives it: `redis-ha-ctl load`/`unload` in the LB
//! namespace, the id of the attached program, and its run-time statistics.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::{Testbed, XdpMode, in_netns, run, run_within};

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
        let id = if self.tb.xdp_mode() == XdpMode::Tc {
            tc_prog_id(self.tb)?
        } else {
            attached_prog_id(self.tb)?.context("redis-ha-ctl load attached nothing")?
        };
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
        if let Some(id) = self.prog_id.filter(|_| self.tb.xdp_mode() == XdpMode::Tc) {
            let links = prog_link_count(id)?;
            if links > 0 {
                bail!("program {id} still has {links} link(s) after redis-ha-ctl unload");
            }
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

/// The id of the TC program `redis-ha-ctl load` pinned, checked to be attached (bpftool 7.1
/// does not list TCX attachments under `net show`; its links it does list).
fn tc_prog_id(tb: &Testbed) -> Result<u32> {
    let pin = tb.pin_dir().join("prog_tc");
    let json = run(Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(&pin))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).context("parsing `bpftool -j prog show pinned`")?;
    let id = value
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no program id for {}", pin.display()))?;
    let id = u32::try_from(id)?;
    if prog_link_count(id)? == 0 {
        bail!("redis-ha-ctl load left program {id} without a link");
    }
    Ok(id)
}

/// How many BPF links (machine-wide) run program `id`.
fn prog_link_count(id: u32) -> Result<usize> {
    let json = run(Command::new("bpftool").args(["-j", "link", "show"]))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).context("parsing `bpftool -j link show`")?;
    Ok(value
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l.get("prog_id").and_then(serde_json::Value::as_u64) == Some(u64::from(id)))
        .count())
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

/// What BPF run-time statistics count for a program that does nothing: `run_time_ns /
/// run_cnt` of a two-instruction XDP program (`return XDP_PASS`), run `RUNS` times through
/// BPF_PROG_TEST_RUN while statistics are on (`BpfStats` must be held).
///
/// With statistics on, the kernel reads the clock before and after every program run and adds
/// the difference to `run_time_ns`; that difference includes part of the clock reads themselves
/// and the call into the program. On this VM that is tens of ns a run, a large share of a
/// program that needs about 35 ns per packet, so `run_time_ns` alone overstates the program.
/// The bench reports the raw figure and the figure net of this floor (run count × floor).
pub fn stats_floor_ns_per_run() -> Result<f64> {
    const RUNS: u32 = 1_000_000;
    let prog = load_pass_program()?;
    let id = prog_id(&prog)?;
    let before = prog_stats(id)?;
    test_run(&prog, RUNS)?;
    let d = prog_stats(id)?.since(before);
    if d.run_cnt == 0 {
        bail!("BPF statistics counted no runs of the empty program: are they on?");
    }
    Ok(d.run_time_ns as f64 / d.run_cnt as f64)
}

/// The same floor measured under real traffic, at the TC hook: a two-instruction program
/// (`return TCX_NEXT`) attached first at the TCX ingress hook of every LB interface, in front
/// of redis-ha's, so it runs for the same packets. Under traffic the clock reads cost more
/// than in BPF_PROG_TEST_RUN's hot loop (on this VM 44 against 22 ns a run: the paravirtual
/// clock's page and the per-CPU statistics are no longer in cache). XDP has no such chaining
/// without a dispatcher, so the XDP modes keep the test-run floor. Detached when dropped.
pub struct LiveFloor {
    id: u32,
    _prog: OwnedFd,
    _links: Vec<OwnedFd>,
}

impl LiveFloor {
    pub fn attach(tb: &Testbed) -> Result<LiveFloor> {
        let prog = load_empty_program(BPF_PROG_TYPE_SCHED_CLS, TCX_NEXT, BPF_TCX_INGRESS)
            .context("loading an empty TC program")?;
        let id = prog_id(&prog)?;
        let prog_fd = prog.as_raw_fd() as u32;
        let interfaces = tb.lb_interfaces();
        // Interface indexes, and the links, belong to the LB's namespace.
        let links = in_netns(&tb.lb().path(), move || -> Result<Vec<OwnedFd>> {
            interfaces
                .iter()
                .map(|dev| tcx_attach_first(prog_fd, dev))
                .collect()
        })??;
        Ok(LiveFloor {
            id,
            _prog: prog,
            _links: links,
        })
    }

    pub fn stats(&self) -> Result<ProgStats> {
        prog_stats(self.id)
    }
}

/// BPF_LINK_CREATE at `dev`'s TCX ingress hook, before every program already there.
fn tcx_attach_first(prog_fd: u32, dev: &str) -> Result<OwnedFd> {
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        relative_fd: u32,
        _pad: u32,
        expected_revision: u64,
    }
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_F_BEFORE: u32 = 1 << 3;
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name that lives across the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("no interface {dev}"));
    }
    let mut attr = LinkCreate {
        prog_fd,
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        // Before "nothing" (relative_fd 0): first of all.
        flags: BPF_F_BEFORE,
        relative_fd: 0,
        _pad: 0,
        expected_revision: 0,
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)
        .with_context(|| format!("attaching the empty TC program to {dev}"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const XDP_PASS: i32 = 2;
/// A TCX program's "go on with the next program, then the kernel" verdict.
const TCX_NEXT: i32 = -1;
const BPF_TCX_INGRESS: u32 = 46;

/// bpf(2) with `attr` (a prefix of `union bpf_attr`: the kernel zero-fills the rest).
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable, correctly sized buffer; the kernel reads and writes
    // at most size_of::<T>() bytes of it, and any pointers inside it point to live buffers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("bpf command {cmd}"));
    }
    Ok(rc)
}

/// `r0 = XDP_PASS; exit`, loaded as an XDP program (not attached anywhere).
fn load_pass_program() -> Result<OwnedFd> {
    load_empty_program(BPF_PROG_TYPE_XDP, XDP_PASS, 0).context("loading an empty XDP program")
}

/// `r0 = verdict; exit` as a program of `prog_type` (for `expected_attach_type`).
fn load_empty_program(prog_type: u32, verdict: i32, expected_attach_type: u32) -> Result<OwnedFd> {
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let v = verdict.to_le_bytes();
    // BPF_MOV64_IMM(r0, verdict), BPF_EXIT_INSN(): opcode, registers, offset, immediate.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, v[0], v[1], v[2], v[3]]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..11].copy_from_slice(b"bench_floor");
    let mut attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type,
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn prog_id(prog: &OwnedFd) -> Result<u32> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // The first two fields of struct bpf_prog_info: type, id.
    let mut info = [0u32; 2];
    let mut attr = InfoByFd {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading the empty program's id")?;
    Ok(info[1])
}

fn test_run(prog: &OwnedFd, repeat: u32) -> Result<()> {
    #[repr(C)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
    }
    // Any frame of Ethernet size or more: the program does not look at it.
    let frame = [0u8; 64];
    let mut attr = TestRun {
        prog_fd: prog.as_raw_fd() as u32,
        retval: 0,
        data_size_in: frame.len() as u32,
        data_size_out: 0,
        data_in: frame.as_ptr() as u64,
        data_out: 0,
        repeat,
        duration: 0,
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN of the empty program")?;
    if attr.retval != 2 {
        bail!(
            "the empty program returned {} instead of XDP_PASS",
            attr.retval
        );
    }
    Ok(())
}
