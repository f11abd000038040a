//! The systemd unit's least privilege, tried on real controllers: a data-plane node started
//! with exactly the unit's capability bounding set, NoNewPrivileges and UMask loads, attaches,
//! serves and follows a failover; a controller-only node keeps no capability at all; every
//! system call the daemon makes is in the unit's SystemCallFilter; and the daemon speaks
//! systemd's readiness and watchdog protocol.
//!
//! systemd is not this machine's init, so `systemd-run` cannot apply the unit here: the
//! capability settings are applied by `setpriv` (util-linux), which sets the same kernel
//! state systemd does; the system-call filter is checked by tracing the daemon with `strace`
//! and comparing against the filter's expansion by `systemd-analyze syscall-filter`.
//!
//! Run: `cargo test --release -p redis-ha-tests --test privileges -- --test-threads=1`.

use std::{
    collections::BTreeSet,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::{
    Cluster, ClusterOptions, find_program, netns::netns_command, require_root, run, wait_until,
    workspace_root,
};

/// The values of `key` in the unit, every line of it, split on whitespace.
fn unit_values(key: &str) -> Vec<String> {
    let path = workspace_root().join("deploy/redis-ha-ctl.service");
    let text = std::fs::read_to_string(&path).expect("reading the unit");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .flat_map(|(_, v)| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// `setpriv` arguments for the unit's CapabilityBoundingSet and NoNewPrivileges, behind a
/// shell that applies its UMask first.
fn unit_launcher() -> Vec<String> {
    let caps: Vec<String> = unit_values("CapabilityBoundingSet")
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty(), "the unit has no CapabilityBoundingSet");
    assert_eq!(unit_values("NoNewPrivileges"), ["yes"]);
    let umask = unit_values("UMask");
    assert_eq!(umask.len(), 1, "the unit sets one UMask");
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "umask {}; exec setpriv --bounding-set=-all,{} --inh-caps=-all --no-new-privs -- \"$@\"",
            umask[0],
            caps.join(",")
        ),
        "sh".into(),
    ]
}

/// The capability mask a process has in `set` (CapEff, CapPrm, CapBnd) from /proc.
fn capabilities(pid: u32, set: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{set}:")))
        .with_context(|| format!("no {set} in /proc/{pid}/status"))?;
    Ok(u64::from_str_radix(line.trim(), 16)?)
}

/// Stops controller `n`, removes the data plane it left pinned (as an operator's `unload`),
/// so that its next start loads and attaches from scratch.
fn stop_and_unload(cluster: &Cluster, n: usize) -> Result<()> {
    let c = cluster.controller(n);
    c.kill()?;
    let mut unload = netns_command(c.netns_name(), redis_ha_tests::ctl_binary()?);
    unload.arg("unload").arg("--config").arg(c.config_path());
    run(&mut unload)?;
    Ok(())
}

/// A write through the VIP comes back from the backend the write port points at.
fn write_through_vip(cluster: &Cluster, key: &str) -> Result<()> {
    let tb = cluster.testbed();
    let set = tb
        .client()
        .redis_cli(tb.vip_write(), &["SET", key, "through-the-vip"])?;
    ensure!(set.trim() == "OK", "SET through the VIP: {set}");
    let master = cluster.master()?;
    let got = master.redis_cli(&["GET", key])?;
    ensure!(
        got.trim() == "through-the-vip",
        "{key} on {}: {got}",
        master.addr()
    );
    Ok(())
}

/// `kill -9` of the master, then waits until the write port points elsewhere.
fn kill_master_and_wait_for_the_switch(cluster: &Cluster) -> Result<()> {
    let old = cluster.master()?.addr();
    cluster.master()?.kill()?;
    wait_until(
        "the write port to leave the killed master",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || Ok(cluster.maps()?.master().filter(|m| *m != old).map(|_| ())),
    )
}

#[test]
fn a_data_plane_node_with_only_the_units_privileges_loads_serves_and_fails_over() -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    stop_and_unload(&cluster, 1)?;
    let c1 = cluster.controller(1);
    std::fs::remove_file(c1.state_path()).ok();
    let launcher = unit_launcher();
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    let mark = c1.mark();
    c1.start_via(&launcher, &[])?;
    let log = c1.log_since(mark);
    ensure!(
        log.contains("data plane attached") && log.contains("new=true"),
        "c1 did not load and attach afresh:\n{log}"
    );
    let pid = c1.pid().context("c1's pid")?;
    // The bounding set is the unit's, and what the daemon holds is within it.
    let bounding = capabilities(pid, "CapBnd")?;
    let effective = capabilities(pid, "CapEff")?;
    ensure!(
        effective & !bounding == 0
            && bounding.count_ones() as usize == unit_values("CapabilityBoundingSet").len(),
        "CapEff {effective:x}, CapBnd {bounding:x}"
    );
    cluster.wait_healthy(Duration::from_secs(30))?;
    write_through_vip(&cluster, "privileges:before")?;
    // After a failover the maps follow the new master: the daemon's writes at run time need
    // nothing the unit withholds.
    kill_master_and_wait_for_the_switch(&cluster)?;
    write_through_vip(&cluster, "privileges:after")?;
    // The failover's epoch is on disk, written under the unit's UMask.
    let mode = wait_until(
        "c1's state file",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            Ok(std::fs::metadata(c1.state_path())
                .ok()
                .map(|m| m.permissions().mode() & 0o777))
        },
    )?;
    ensure!(mode & 0o077 == 0, "the state file has mode {mode:o}");
    Ok(())
}

#[test]
fn a_controller_only_node_gives_up_every_capability_and_speaks_systemds_protocol() -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    // Started as plain root with every capability, c2 (no [dataplane]) keeps none.
    let c2 = cluster.controller(2);
    let pid = c2.pid().context("c2's pid")?;
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        let mask = capabilities(pid, set)?;
        ensure!(
            mask == 0,
            "c2 {set} = {mask:x}: a controller-only node needs none"
        );
    }
    // c1, the data-plane node without [ha], keeps only what loading needs.
    let c1_pid = cluster.controller(1).pid().context("c1's pid")?;
    let c1_caps = capabilities(c1_pid, "CapEff")?;
    const NET_RAW: u64 = 1 << 13;
    ensure!(
        c1_caps & NET_RAW == 0,
        "c1 kept CAP_NET_RAW ({c1_caps:x}) without [ha]"
    );

    // Under systemd (Type=notify, WatchdogSec=): READY=1 once it serves, then WATCHDOG=1 from
    // the decision loop at half the period.
    c2.kill()?;
    let dir = std::env::temp_dir().join(format!("rha-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = DirGuard(dir.clone());
    let socket_path = dir.join("notify");
    let socket = UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    // systemd names the process the watchdog is for: the daemon, which `exec` keeps at the
    // shell's pid.
    c2.start_via(
        &["sh", "-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().context("path")?),
            ("WATCHDOG_USEC", "400000"),
        ],
    )?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        let n = socket
            .recv(&mut buf)
            .with_context(|| format!("waiting for systemd notifications; got {got:?}"))?;
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        ensure!(got.len() < 100, "too many notifications: {got:?}");
    }
    ensure!(
        got.first().is_some_and(|m| m.contains("READY=1")),
        "READY=1 should come first: {got:?}"
    );
    Ok(())
}

/// Removes a directory on drop.
struct DirGuard(std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The system calls `systemd-analyze syscall-filter` lists for `token` (a group such as
/// `@system-service`, expanded recursively, or one call's name).
fn filter_calls(analyze: &Path, token: &str, out: &mut BTreeSet<String>) -> Result<()> {
    if !token.starts_with('@') {
        out.insert(token.to_owned());
        return Ok(());
    }
    let listing = run(Command::new(analyze).args(["syscall-filter", "--no-pager", token]))?;
    for line in listing.lines().skip(1) {
        let word = line.trim();
        if word.is_empty() || word.starts_with('#') {
            continue;
        }
        if word.starts_with('@') {
            filter_calls(analyze, word, out)?;
        } else {
            out.insert(word.to_owned());
        }
    }
    Ok(())
}

#[test]
fn every_system_call_of_a_data_plane_node_is_in_the_units_filter() -> Result<()> {
    require_root();
    let (Some(analyze), Some(strace)) = (find_program("systemd-analyze"), find_program("strace"))
    else {
        bail!("needs systemd-analyze and strace (`apt-get install systemd strace`)");
    };
    let filter = unit_values("SystemCallFilter");
    ensure!(
        !filter.is_empty() && filter.iter().all(|t| !t.starts_with('~')),
        "the unit's SystemCallFilter should be an allow list: {filter:?}"
    );
    let mut allowed = BTreeSet::new();
    for token in &filter {
        filter_calls(&analyze, token, &mut allowed)?;
    }

    let cluster = Cluster::up(ClusterOptions::default())?;
    stop_and_unload(&cluster, 1)?;
    let c1 = cluster.controller(1);
    let trace = c1.log_path().with_extension("strace");
    let trace_arg = trace.to_str().context("path")?.to_owned();
    let strace = strace.to_str().context("path")?.to_owned();
    c1.start_via(&[&strace, "-f", "-qq", "-o", &trace_arg, "--"], &[])?;
    cluster.wait_healthy(Duration::from_secs(30))?;
    write_through_vip(&cluster, "syscalls")?;
    // A failover exercises the map writes and the rest of the run-time paths.
    kill_master_and_wait_for_the_switch(&cluster)?;
    // SIGTERM to the daemon (strace's child): the orderly stop's calls count too, and strace
    // exits with it.
    let strace_pid = c1.pid().context("c1's pid")?;
    let daemon = run(Command::new("pgrep").args(["-P", &strace_pid.to_string()]))?;
    let daemon = daemon
        .lines()
        .next()
        .context("strace has no child")?
        .trim()
        .to_owned();
    run(Command::new("kill").args(["-TERM", &daemon]))?;
    wait_until(
        "c1 to stop",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || Ok((!c1.is_running()).then_some(())),
    )?;

    let text = std::fs::read_to_string(&trace)?;
    let mut used = BTreeSet::new();
    for line in text.lines() {
        // "PID name(args...) = result"; "<... name resumed>" repeats a call already counted.
        let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
        if rest.starts_with('<') || rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        }
        if let Some((name, _)) = rest.split_once('(')
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            used.insert(name.to_owned());
        }
    }
    ensure!(
        used.contains("bpf"),
        "the trace has no bpf() call: {used:?}"
    );
    // Before exec, the trace shows strace's own child setting up: only the daemon counts.
    let refused: Vec<&String> = used
        .difference(&allowed)
        .filter(|c| *c != "execve")
        .collect();
    ensure!(
        refused.is_empty(),
        "calls the unit's SystemCallFilter ({filter:?}) would refuse: {refused:?} (all calls: {used:?})"
    );
    Ok(())
}
