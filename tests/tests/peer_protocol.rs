//! The peer protocol against real controllers: a controller restarted with its clock stepped
//! back is still heard by its peers (the boot id is a counter, not the clock); a datagram
//! captured before a controller restarted is refused when replayed to it, while its peers
//! resume at once; and a flood of bad datagrams at the VIP holder's peer port neither moves
//! the VIP nor floods its log, while its metrics count every refusal.
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
    ChildGuard, Cluster, ClusterOptions, HaCluster, HaOptions, METRICS_PORT, http_get, in_netns,
    require_root, run_within, wait_until,
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
// A datagram replayed after its receiver restarted.

/// Starts `tcpdump` in `ns` writing the UDP datagrams `from` sends to `to` into `file` (pcap),
/// and waits until it listens.
fn capture_udp(
    ns: &redis_ha_tests::Netns,
    from: SocketAddrV4,
    to: SocketAddrV4,
    file: &Path,
) -> Result<ChildGuard> {
    let messages = file.with_extension("err");
    let mut cmd = ns.command("tcpdump");
    cmd.args(["-i", "any", "-n", "-U", "--immediate-mode", "-w"])
        .arg(file)
        .arg(format!(
            "udp and src host {} and dst host {} and dst port {}",
            from.ip(),
            to.ip(),
            to.port()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&messages)?);
    let mut child = ChildGuard::spawn(&mut cmd)?;
    wait_until(
        "tcpdump to listen",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let said = std::fs::read_to_string(&messages).unwrap_or_default();
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("tcpdump exited ({status}): {said}");
            }
            Ok(said.contains("listening on").then_some(()))
        },
    )?;
    Ok(child)
}

/// The UDP payloads in a pcap file (Ethernet or Linux cooked captures of IPv4).
fn udp_payloads(pcap: &[u8]) -> Result<Vec<Vec<u8>>> {
    let u32_at = |at: usize| -> Result<u32> {
        let b: [u8; 4] = pcap.get(at..at + 4).context("truncated pcap")?.try_into()?;
        Ok(u32::from_le_bytes(b))
    };
    ensure!(u32_at(0)? == 0xa1b2_c3d4, "not a little-endian pcap file");
    let link_header = match u32_at(20)? {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked (SLL)
        276 => 20, // Linux cooked v2 (SLL2)
        other => anyhow::bail!("unexpected pcap link type {other}"),
    };
    let mut payloads = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caught = u32_at(at + 8)? as usize;
        let frame = pcap
            .get(at + 16..at + 16 + caught)
            .context("truncated pcap record")?;
        at += 16 + caught;
        let ip = frame.get(link_header..).context("short frame")?;
        let ihl = usize::from(ip.first().context("empty IP packet")? & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let udp = ip.get(ihl..total).context("truncated IP packet")?;
        payloads.push(udp.get(8..).context("short UDP datagram")?.to_vec());
    }
    Ok(payloads)
}

/// Every `redis_ha_peer_messages_refused_total` series of a scrape, summed.
fn refused_all(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("redis_ha_peer_messages_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Before: a restarted controller knew its peers' boots but not their sequence numbers, so
/// until it heard a peer again, a datagram of that peer's current boot captured before the
/// restart was accepted (once): the controller took it for the peer's word. Now every datagram
/// names its receiver's boot, and the capture is refused as addressed to an earlier boot; the
/// peers and the restarted controller hear each other as before.
#[test]
fn a_datagram_replayed_after_its_receiver_restarted_is_refused() -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    let outcome = replay_after_restart(&cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(40));
    }
    outcome
}

fn replay_after_restart(cluster: &Cluster) -> Result<()> {
    let master = cluster.wait_healthy(Duration::from_secs(30))?;
    let (c2, c3) = (cluster.controller(2), cluster.controller(3));
    let metrics_addr = SocketAddrV4::new(*c3.listen().ip(), METRICS_PORT);
    let lb = cluster.testbed().lb().path();
    let scrape = || http_get(&lb, metrics_addr, "/metrics");

    // A real datagram c2 sent to c3 (c2's hellos go out every probe interval).
    let pcap = c3.log_path().with_extension("replay.pcap");
    let mut tcpdump = capture_udp(cluster.node_netns(3)?, c2.listen(), c3.listen(), &pcap)?;
    let captured = wait_until(
        "a datagram from c2 to c3",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || Ok(udp_payloads(&std::fs::read(&pcap)?)?.into_iter().last()),
    )?;
    tcpdump.kill()?;
    println!("captured a {}-byte datagram from c2 to c3", captured.len());

    // The replay must come before c3 hears c2 again: a newer datagram of c2 would make it a
    // plain replay of an older sequence number, refused before as now. So c2's own datagrams
    // do not reach c3 until the replay is done.
    cluster.block(2, *c3.listen().ip())?;
    let outcome = (|| {
        c3.kill()?;
        c3.start()?;
        for (n, peer) in [(3, "c1"), (1, "c3"), (2, "c3")] {
            wait_until(
                &format!("c{n} to hear {peer} after c3's restart"),
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    Ok(heard_ms_ago(cluster, n, peer)?
                        .is_some_and(|ms| ms < 500)
                        .then_some(()))
                },
            )?;
        }
        // c1's datagrams addressed to c3's previous boot (one interval's worth) are behind us:
        // the count holds still from here on.
        let settled = wait_until(
            "c3's refusals to settle",
            Duration::from_secs(10),
            Duration::from_millis(300),
            {
                let mut last = None;
                move || {
                    let now = refused_all(&scrape()?);
                    let settled = last == Some(now);
                    last = Some(now);
                    Ok(settled.then_some(now))
                }
            },
        )?;
        let stale_before = refused(&scrape()?, "not-for-this-boot");
        ensure!(
            heard_ms_ago(cluster, 3, "c2")?.is_none(),
            "c3 heard c2 through the block"
        );
        let state_before = c3.state()?;

        // Replayed from the LB namespace: the receiver does not look at the source address.
        let target = c3.listen();
        in_netns(&lb, move || -> Result<()> {
            UdpSocket::bind("0.0.0.0:0")?.send_to(&captured, target)?;
            Ok(())
        })??;
        std::thread::sleep(Duration::from_secs(1));

        let after = scrape()?;
        ensure!(
            refused_all(&after) == settled + 1,
            "c3 refused {} datagrams since its peers resumed, where the replay alone was due",
            refused_all(&after) - settled,
        );
        ensure!(
            refused(&after, "not-for-this-boot") == stale_before + 1,
            "the replay was refused, but not as addressed to an earlier boot"
        );
        // Accepted, it would have been c2's word: c2 heard, its view taken.
        ensure!(
            heard_ms_ago(cluster, 3, "c2")?.is_none(),
            "c3 took the replayed datagram for c2's word"
        );
        ensure!(c3.state()? == state_before, "c3's state changed");
        Ok(())
    })();
    cluster.unblock(2, *c3.listen().ip())?;
    outcome?;
    for (n, peer) in [(3, "c1"), (3, "c2"), (1, "c3"), (2, "c3")] {
        wait_until(
            &format!("c{n} to hear {peer} once c2 is unblocked"),
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                Ok(heard_ms_ago(cluster, n, peer)?
                    .is_some_and(|ms| ms < 500)
                    .then_some(()))
            },
        )?;
    }
    ensure!(cluster.wait_healthy(Duration::from_secs(10))? == master);
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
    let holder_id = format!("lb{holder}");
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
        datagrams.push(("bad-mac", forger.seal_ha(&holder_id, &claim)));
        datagrams.push(("replay", replayer.seal_ha(&holder_id, &claim)));
        datagrams.push(("unknown-peer", stranger.seal_ha(&holder_id, &claim)));
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
