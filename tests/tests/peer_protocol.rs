//! The peer protocol against real controllers: a controller restarted with its clock stepped
//! back is still heard by its peers (the boot id is a counter, not the clock), and a flood of
//! bad datagrams at the VIP holder's peer port neither moves the VIP nor floods its log, while
//! its metrics count every refusal.
//!
//! Run: `cargo test --release -p redis-ha-tests --test peer_protocol -- --test-threads=1
//! --nocapture`.

use std::{
    net::{SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use redis_ha_ctl::{ha::HaMsg, peer::PeerCodec, status::Status};
use redis_ha_tests::{
    Cluster, ClusterOptions, HaCluster, HaOptions, METRICS_PORT, http_get, in_netns, require_root,
    run_within, wait_until,
};

/// libfaketime, from Debian's `faketime` package.
fn libfaketime() -> Result<PathBuf> {
    let found = std::fs::read_dir("/usr/lib")?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file());
    found.context(
        "libfaketime.so.1 not found: install Debian's faketime (cargo xtask prerequisites)",
    )
}

/// How long ago controller `n` last heard peer `peer`, by its `status --json`.
fn heard_ms_ago(cluster: &Cluster, n: usize, peer: &str) -> Result<Option<u64>> {
    let mut cmd = cluster.ctl_command(n, "status")?;
    cmd.arg("--json");
    let status: Status = serde_json::from_str(&run_within(&mut cmd, Duration::from_secs(10))?)?;
    let service = status
        .services
        .first()
        .context("no service in the status")?;
    let p = service
        .peers
        .iter()
        .find(|p| p.id == peer)
        .with_context(|| format!("c{n} does not list peer {peer}"))?;
    Ok(p.last_heard_ms_ago)
}

fn boot_counter(path: &Path) -> Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().parse().with_context(|| {
            format!("{}: not a number: {text:?}", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[test]
fn a_controller_restarted_with_its_clock_stepped_back_is_heard_by_its_peers() -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    let outcome = restarts(&cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(40));
    }
    outcome
}

fn restarts(cluster: &Cluster) -> Result<()> {
    let faketime = libfaketime()?;
    let preload = faketime.display().to_string();
    let c2 = cluster.controller(2);
    let counter = PathBuf::from(format!("{}.boot", c2.state_path().display()));
    // Once as usual, once with its wall clock a day behind (the monotonic clock, which the
    // machines use, left alone).
    let rounds: [(&str, Vec<(&str, &str)>); 2] = [
        ("a plain restart", vec![]),
        (
            "a restart with the clock stepped back by a day",
            vec![
                ("LD_PRELOAD", preload.as_str()),
                ("FAKETIME", "-1d"),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        ),
    ];
    let mut counters = Vec::new();
    for (what, env) in rounds {
        let marks = [cluster.controller(1).mark(), cluster.controller(3).mark()];
        let before = boot_counter(&counter)?;
        c2.kill()?;
        // Long enough for the peers to notice the silence.
        std::thread::sleep(Duration::from_millis(1500));
        let mark = c2.mark();
        c2.start_via(&[], &env)?;
        let restarted = Instant::now();
        for n in [1, 3] {
            wait_until(
                &format!("c{n} to hear c2 after {what}"),
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    Ok(heard_ms_ago(cluster, n, "c2")?
                        .is_some_and(|ms| ms < 500)
                        .then_some(()))
                },
            )?;
        }
        println!(
            "after {what}, c1 and c3 heard c2 within {:?}",
            restarted.elapsed()
        );
        for (n, m) in [(1, marks[0]), (3, marks[1])] {
            let refused: Vec<String> = cluster
                .controller(n)
                .log_since(m)
                .lines()
                .filter(|l| l.contains("refused peer message"))
                .map(str::to_owned)
                .collect();
            ensure!(
                refused.is_empty(),
                "c{n} refused c2 after {what}: {refused:?}"
            );
        }
        counters.push((before, boot_counter(&counter)?));
        if !env.is_empty() {
            // The clock really was a day behind: the log's own timestamps say so.
            let line = c2
                .log_since(mark)
                .lines()
                .find(|l| l.contains("controller started"))
                .map(str::to_owned)
                .context("c2 logged no start")?;
            let today = c2.log().lines().next().map(|l| l[..10].to_owned());
            ensure!(
                Some(line[..10].to_owned()) != today,
                "faketime had no effect: {line}"
            );
        }
    }
    // Checked last, so that a controller that does not count its starts still shows how its
    // peers treat it.
    println!("c2's boot counter, before and after each restart: {counters:?}");
    for (before, after) in counters {
        let after = after.with_context(|| format!("no boot counter at {}", counter.display()))?;
        if let Some(before) = before {
            ensure!(
                after == before + 1,
                "the boot counter went {before} -> {after}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The flood.

/// Datagrams of each kind sent at the holder, 1 ms apart: a bounded flood of about 4 s.
const PER_KIND: usize = 1000;

fn refused(metrics: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("redis_ha_peer_messages_refused_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Cheap deterministic noise.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn a_flood_of_bad_datagrams_leaves_the_vip_holder_its_lease_and_a_quiet_log() -> Result<()> {
    require_root();
    let ha = HaCluster::up(HaOptions::default())?;
    let outcome = flood(&ha);
    if outcome.is_err() {
        eprintln!("{}", ha.log_tails(40));
    }
    outcome
}

fn flood(ha: &HaCluster) -> Result<()> {
    let holder = ha.wait_single_holder(Duration::from_secs(20))?;
    let other = 3 - holder;
    let target = ha.controller(holder).listen();
    let metrics_addr = SocketAddrV4::new(*target.ip(), METRICS_PORT);
    // Sent from the voting controller's namespace, on the holder's segment.
    let ns = ha.k3().path();
    let before = http_get(&ns, metrics_addr, "/metrics")?;
    let log_mark = ha.controller(holder).mark();
    let marks: Vec<_> = ha.controllers().iter().map(|c| c.mark()).collect();

    // Each a claim of a far newer epoch by the other LB node: one that got through would make
    // the holder let go of the VIP.
    let claim = HaMsg::Claim {
        epoch: 1_000,
        stamp: 1,
        priority: 255,
        down_after_ms: 200,
    };
    let other_id = format!("lb{other}");
    let secret = ha.options().secret.clone();
    let mut noise = Noise(0x5eed_1234_abcd_9876);
    let mut datagrams: Vec<(&str, Vec<u8>)> = Vec::new();
    // A stranger's key.
    let mut forger = PeerCodec::new(&other_id, "not-the-cluster-secret-at-all", vec![], u64::MAX);
    // The real key, but the boot and sequence of a start long gone: what a replay of a
    // datagram captured before the sender's last restart looks like.
    let mut replayer = PeerCodec::new(&other_id, &secret, vec![], 1);
    // The real key and a name no controller lists.
    let mut stranger = PeerCodec::new("intruder", &secret, vec![], u64::MAX);
    for i in 0..PER_KIND {
        datagrams.push(("bad-mac", forger.seal_ha(&claim)));
        datagrams.push(("replay", replayer.seal_ha(&claim)));
        datagrams.push(("unknown-peer", stranger.seal_ha(&claim)));
        // Random bytes: too short for a MAC half of the time, a wrong MAC otherwise.
        let len = if i % 2 == 0 {
            1 + (noise.next() % 32) as usize
        } else {
            33 + (noise.next() % 500) as usize
        };
        datagrams.push((
            if len <= 32 { "malformed" } else { "bad-mac" },
            noise.bytes(len),
        ));
    }
    let sent = datagrams.len();
    let flood_started = Instant::now();
    in_netns(&ns, move || -> Result<()> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for (_, d) in &datagrams {
            socket.send_to(d, target)?;
            std::thread::sleep(Duration::from_micros(1000));
        }
        Ok(())
    })??;
    println!(
        "sent {sent} bad datagrams to lb{holder} in {:?}",
        flood_started.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));

    ensure!(
        ha.address_holders()?.single() == Some(holder),
        "the VIP moved: {:?}",
        ha.address_holders()?
    );
    for (c, mark) in ha.controllers().iter().zip(&marks) {
        let moved: Vec<String> = c
            .log_since(*mark)
            .lines()
            .filter(|l| l.contains("vip-owner") || l.contains("vip-election"))
            .map(str::to_owned)
            .collect();
        ensure!(moved.is_empty(), "{}: {moved:?}", c.id());
    }

    let log = ha.controller(holder).log_since(log_mark);
    let lines: Vec<&str> = log.lines().collect();
    println!("lb{holder} logged {} lines during the flood:", lines.len());
    for l in &lines {
        println!("  {l}");
    }
    let refusal_lines = lines
        .iter()
        .filter(|l| l.contains("refused peer message"))
        .count();
    ensure!(
        refusal_lines <= 4 && lines.len() <= 10,
        "the flood flooded the log: {} lines, {refusal_lines} about refusals",
        lines.len()
    );

    let after = http_get(&ns, metrics_addr, "/metrics")?;
    let expected = [
        ("bad-mac", PER_KIND + PER_KIND / 2),
        ("replay", PER_KIND),
        ("unknown-peer", PER_KIND),
        ("malformed", PER_KIND / 2),
    ];
    for (reason, want) in expected {
        let counted = refused(&after, reason) - refused(&before, reason);
        println!("refused as {reason}: {counted} (sent {want})");
        // Loopback-like veths drop nothing at this pace; a few lost to a full socket buffer
        // would not be the controller's doing.
        ensure!(
            counted as usize <= want && counted as usize >= want * 95 / 100,
            "{reason}: counted {counted} of {want}"
        );
    }
    Ok(())
}
