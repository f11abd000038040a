//! The data plane under attack (issue 22, items 1 and 2), end to end: forged segments sent as
//! raw frames from the client namespace and from a host on the backends' segment, against a
//! live testbed with the real XDP/TC program loaded by `redis-ha-ctl load`. What a user relies
//! on is checked from outside: a pub/sub subscriber still receives what the master publishes,
//! a pooled idle connection still answers, a read connection stays on its replica; and the
//! connection table (`FLOWS`) does not grow from segments that open no connection.
//!
//! The controller's sweep is run here as the daemon runs it (`BpfDataplane::sweep_flows`),
//! at the moment the test needs it rather than every few seconds.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_common::{Flow, FlowKey, flow_end};
use redis_ha_ctl::dataplane::bpf::BpfDataplane;
use redis_ha_tests::forge::{RawSender, Segment, flags, flood};
use redis_ha_tests::testbed::{CLIENT_IP, VIP};
use redis_ha_tests::{Testbed, TestbedOptions, XdpMode, in_netns, require_root, unique_tag};

/// Segments in the flood: far more than the table's 1,024 entries (and its spill table's).
const FLOOD: usize = 20_000;
/// The flood's source ports stay below Linux's ephemeral range (32768 and up), where the test's
/// own connections live: the flood forges no segment of a real connection.
const FLOOD_PORTS: std::ops::Range<u16> = 1024..(1024 + FLOOD as u16);
/// A sequence number the receiver's window does not hold (its real one is random: the chance
/// that this one falls inside a 64 KB window is about 1 in 65,000).
const WRONG_SEQ: u32 = 0x8bad_f00d;
/// How long a reply (or a published message) may take to arrive.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for forged segments, and what the endpoints answer to them, to cross the LB.
const SETTLE: Duration = Duration::from_millis(300);

/// A testbed with the program loaded and, with `flow_table_size`, a connection table that small.
fn testbed(mode: XdpMode, bridged: bool, flow_table_size: Option<u32>) -> Result<Testbed> {
    require_root();
    let tb = Testbed::up(TestbedOptions {
        tag: unique_tag(),
        backends: 3,
        xdp_mode: mode,
        bridged_backends: bridged,
    })?;
    if let Some(size) = flow_table_size {
        let config = tb.config_toml().replace(
            "[dataplane]\n",
            &format!("[dataplane]\nflow_table_size = {size}\n"),
        );
        std::fs::write(tb.config_path(), config)?;
    }
    tb.ctl("load", &[])?;
    Ok(tb)
}

/// A plain TCP connection from the client namespace speaking RESP inline commands, so that the
/// test knows its client port (the connection's 4-tuple) and sees exactly what arrives.
struct RespConn {
    stream: TcpStream,
    /// Bytes read and not yet matched by [`RespConn::expect`].
    buf: Vec<u8>,
}

impl RespConn {
    fn connect(tb: &Testbed, to: SocketAddrV4) -> Result<Self> {
        let stream = in_netns(&tb.client().path(), move || {
            TcpStream::connect_timeout(&to.into(), REPLY_TIMEOUT)
        })?
        .with_context(|| format!("connecting to {to} from the client namespace"))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// The client's port: with [`CLIENT_IP`] and the VIP port, the connection's `FLOWS` key.
    fn port(&self) -> Result<u16> {
        Ok(self.stream.local_addr()?.port())
    }

    fn send(&mut self, command: &str) -> Result<()> {
        self.stream
            .write_all(format!("{command}\r\n").as_bytes())
            .with_context(|| format!("sending {command:?}"))
    }

    /// Reads (bounded by [`REPLY_TIMEOUT`]) until `needle` has arrived, and drops what came
    /// up to its end.
    fn expect(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            if let Some(at) = text.find(needle) {
                self.buf.drain(..at + needle.len());
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{needle:?} did not arrive within {REPLY_TIMEOUT:?}; got {text:?}");
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("the connection was closed; before that came {text:?}"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => bail!("the connection broke ({e}); before that came {text:?}"),
            }
        }
    }

    fn ping(&mut self) -> Result<()> {
        self.send("PING")?;
        self.expect("+PONG\r\n")
    }

    fn subscribe(&mut self, channel: &str) -> Result<()> {
        self.send(&format!("SUBSCRIBE {channel}"))?;
        self.expect(":1\r\n")
    }
}

/// `FLOWS`' key for a connection from the client's `port` to the VIP's `vip_port`.
fn flow_key(port: u16, vip_port: u16) -> FlowKey {
    FlowKey {
        src_ip: CLIENT_IP.octets(),
        dst_ip: VIP.octets(),
        src_port: port,
        dst_port: vip_port,
    }
}

fn flow_entry(tb: &Testbed, key: &FlowKey) -> Result<Option<Flow>> {
    Ok(tb.flows_map()?.get(key, 0).ok())
}

/// Connections in the table (`FLOWS` and its spill table), as `redis-ha-ctl maps` counts them.
fn flow_count(tb: &Testbed) -> Result<usize> {
    let maps = tb.ctl("maps", &["--flows", "0"])?;
    maps.lines()
        .find_map(|l| l.strip_prefix("flows: ")?.strip_suffix(" connections"))
        .with_context(|| format!("no `flows: N connections` in:\n{maps}"))?
        .parse()
        .context("the number of connections in `maps`")
}

/// Packets `interface` in `ns` has sent: proof that forged segments left their namespace.
fn tx_packets(ns: &redis_ha_tests::Netns, interface: &str) -> Result<u64> {
    let out = ns.ip(&["-j", "-s", "link", "show", "dev", interface])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("`ip -j -s link`")?;
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .with_context(|| format!("no tx packets for {interface} in {out}"))
}

/// The controller's sweep of the connection table, as the daemon runs it, at `now_ns`.
fn sweep(tb: &Testbed, now_ns: u64) -> Result<()> {
    BpfDataplane::open(&tb.pin_dir())?.sweep_flows(now_ns)?;
    Ok(())
}

/// Publishes `message` on the master and checks that `subscriber` receives it.
fn delivered(tb: &Testbed, subscriber: &mut RespConn, channel: &str, message: &str) -> Result<()> {
    let receivers = tb.backend(1).redis_cli(&["PUBLISH", channel, message])?;
    ensure!(
        receivers.trim() == "1",
        "the master counts {} subscribers of {channel}, not 1",
        receivers.trim()
    );
    subscriber.expect(message)
}

/// Runs every check, keeping each failure, so that one run shows all that an attack broke.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, what: &str, outcome: Result<()>) {
        if let Err(e) = outcome {
            self.0.push(format!("{what}: {e:#}"));
        }
    }

    fn assert_none(self, tb: &Testbed) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let maps = tb.ctl("maps", &["--flows", "8"]).unwrap_or_default();
        bail!("{}\n\n`redis-ha-ctl maps`:\n{maps}", self.0.join("\n"))
    }
}

/// Issue 22, item 1: segments that open no connection (bare ACKs, FINs, RSTs from many source
/// ports of one host) must not take room in the connection table. Before, each made an entry;
/// a 1,024-entry table filled within the flood, and the sweep that keeps the table below its
/// high-water mark then removed the least recently active entries: those of the idle
/// subscriber and the pooled connection. The next message the master pushed left without the
/// VIP as its source, and the subscriber's kernel answered it with a reset.
#[test]
fn a_flood_of_segments_that_open_nothing_leaves_the_table_and_idle_connections_alone() -> Result<()>
{
    let tb = testbed(XdpMode::Native, false, Some(1024))?;
    tb.wait_replication()?;
    let mut subscriber = RespConn::connect(&tb, tb.vip_write())?;
    subscriber.subscribe("attack:news")?;
    let mut pooled = RespConn::connect(&tb, tb.vip_read())?;
    pooled.ping()?;
    let before = flow_count(&tb)?;
    ensure!(before == 2, "{before} connections before the flood, not 2");

    let sender = RawSender::open(&tb.client().path())?;
    let kinds = [flags::ACK, flags::FIN | flags::ACK, flags::RST];
    let sent_before = tx_packets(tb.client(), tb.client_interface())?;
    let mut sent = 0;
    // Every kind to both VIP ports, each batch from source ports of its own.
    let batch = FLOOD / (2 * kinds.len());
    let mut first_port = FLOOD_PORTS.start;
    for kind in kinds {
        for vip in [tb.vip_write(), tb.vip_read()] {
            let ports = first_port..first_port + batch as u16;
            first_port = ports.end;
            sent += sender.send_all(
                flood(CLIENT_IP, ports, vip, kind, batch),
                Duration::from_secs(30),
            )?;
        }
    }
    let left = tx_packets(tb.client(), tb.client_interface())? - sent_before;
    ensure!(
        left >= sent as u64 && sent >= FLOOD * 9 / 10,
        "the flood did not leave the client: {sent} sent, {left} left its veth"
    );
    std::thread::sleep(SETTLE);

    let mut findings = Findings::default();
    let after = flow_count(&tb)?;
    findings.check(
        "the table grew from segments that are not SYNs",
        (after <= before).then_some(()).with_context(|| {
            format!("{before} connections before {sent} forged ACK/FIN/RST segments, {after} after")
        }),
    );
    // The flood reached the program, which forwarded it by the live state alone.
    let maps = tb.ctl("maps", &["--flows", "0"])?;
    findings.check(
        "the flood reached the program",
        maps.contains("fwd_to_backend_no_flow")
            .then_some(())
            .context("no fwd_to_backend_no_flow counted"),
    );
    sweep(&tb, redis_ha_ctl::ha::net::monotonic_ns())?;
    findings.check(
        "the subscriber opened before the flood",
        delivered(&tb, &mut subscriber, "attack:news", "after-the-flood"),
    );
    findings.check("the pooled idle connection", pooled.ping());
    findings.check(
        "the table after the sweep",
        (flow_count(&tb)? == before)
            .then_some(())
            .context("the two connections' entries are not what is left"),
    );
    findings.assert_none(&tb)
}

/// What the test checks of one connection's `FLOWS` entry after forged segments: still there,
/// on the same backend, and no close or reset noted from segments its endpoints never sent.
fn entry_unchanged(tb: &Testbed, key: &FlowKey, was: &Flow) -> Result<()> {
    let Some(now) = flow_entry(tb, key)? else {
        bail!("its FLOWS entry is gone");
    };
    ensure!(
        now.backend == was.backend && now.backend_ip == was.backend_ip,
        "its entry moved from backend {} to {}",
        Ipv4Addr::from(was.backend_ip),
        Ipv4Addr::from(now.backend_ip)
    );
    ensure!(
        now.end & (flow_end::BOTH_FIN | flow_end::RST) == 0,
        "its entry notes an end nobody sent (end bits {:#x})",
        now.end
    );
    Ok(())
}

/// Issue 22, item 2: forged segments with a live connection's addresses but a sequence number
/// outside its window, from the client side and from a host on the backends' segment spoofing
/// the master, must not end or move the connection. Before, a FIN from each side removed the
/// subscriber's entry once the client's kernel acknowledged the second (the next message then
/// left unrewritten and the subscriber was reset); an RST marked the entry ended, so the sweep removed it a minute later; a bare
/// SYN replaced a read connection's entry and picked its replica again, which after the read
/// pool grew was another one, and the connection was reset.
#[test]
fn forged_closes_resets_and_syns_leave_live_connections_alone() -> Result<()> {
    // The backends' segment is a bridge, which the program serves at the TC hook.
    let tb = testbed(XdpMode::Tc, true, None)?;
    tb.wait_replication()?;
    let (replica, other_replica) = (tb.backend(2).addr(), tb.backend(3).addr());
    tb.ctl("set-read-pool", &["mymaster", &replica.to_string()])?;

    let mut closed = RespConn::connect(&tb, tb.vip_write())?;
    closed.subscribe("attack:fin")?;
    let mut reset = RespConn::connect(&tb, tb.vip_write())?;
    reset.subscribe("attack:rst")?;
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut r = RespConn::connect(&tb, tb.vip_read())?;
        r.ping()?;
        readers.push(r);
    }
    // The pool grows: a replica picked again for one of these 4-tuples is now, for about half
    // of them, the other one. A connection already on the first stays valid.
    tb.ctl(
        "set-read-pool",
        &["mymaster", &replica.to_string(), &other_replica.to_string()],
    )?;

    let write_key =
        |c: &RespConn| Ok::<_, anyhow::Error>(flow_key(c.port()?, tb.vip_write().port()));
    let read_keys: Vec<FlowKey> = readers
        .iter()
        .map(|r| Ok(flow_key(r.port()?, tb.vip_read().port())))
        .collect::<Result<_>>()?;
    let entry = |key: &FlowKey| -> Result<Flow> {
        flow_entry(&tb, key)?.with_context(|| format!("no FLOWS entry for {key:?}"))
    };
    let closed_key = write_key(&closed)?;
    let reset_key = write_key(&reset)?;
    let closed_was = entry(&closed_key)?;
    let reset_was = entry(&reset_key)?;
    let read_was: Vec<Flow> = read_keys.iter().map(entry).collect::<Result<_>>()?;
    for (key, flow) in read_keys.iter().zip(&read_was) {
        ensure!(
            flow.backend_ip == replica.ip().octets(),
            "read connection {key:?} is not on {replica}"
        );
    }

    let client = RawSender::open(&tb.client().path())?;
    let intruder_ns = tb.add_backend_side_host(Ipv4Addr::new(198, 18, 1, 66))?;
    let intruder = RawSender::open(&intruder_ns.path())?;
    let from_client = |port: u16, vip: SocketAddrV4, flags: u8| Segment {
        src: SocketAddrV4::new(CLIENT_IP, port),
        dst: vip,
        seq: WRONG_SEQ,
        ack: WRONG_SEQ,
        flags,
    };
    let mut findings = Findings::default();

    // The orderly close, forged: the client's FIN and the master's FIN. The client's kernel
    // answers the second with an ACK, which would be the close's last segment.
    let port = closed.port()?;
    client.send(&from_client(port, tb.vip_write(), flags::FIN | flags::ACK))?;
    intruder.send(&Segment {
        src: tb.backend(1).addr(),
        dst: SocketAddrV4::new(CLIENT_IP, port),
        seq: WRONG_SEQ,
        ack: WRONG_SEQ,
        flags: flags::FIN | flags::ACK,
    })?;
    std::thread::sleep(SETTLE);
    findings.check(
        "forged FINs from both sides",
        entry_unchanged(&tb, &closed_key, &closed_was),
    );
    findings.check(
        "the subscriber after forged FINs",
        delivered(&tb, &mut closed, "attack:fin", "after-the-fins"),
    );
    // And the last ACK, forged too.
    client.send(&from_client(port, tb.vip_write(), flags::ACK))?;
    std::thread::sleep(SETTLE);
    findings.check(
        "forged FINs and a forged ACK",
        entry_unchanged(&tb, &closed_key, &closed_was),
    );
    findings.check(
        "the subscriber after forged FINs and ACK",
        delivered(&tb, &mut closed, "attack:fin", "after-the-ack"),
    );

    let port = reset.port()?;
    client.send(&from_client(port, tb.vip_write(), flags::RST))?;
    std::thread::sleep(SETTLE);
    findings.check("a forged RST", entry_unchanged(&tb, &reset_key, &reset_was));
    // The sweep as it runs once the subscriber has been quiet for two minutes, past the grace
    // an ended connection's entry gets.
    let two_minutes = 120_000_000_000;
    sweep(&tb, redis_ha_ctl::ha::net::monotonic_ns() + two_minutes)?;
    findings.check(
        "the sweep after a forged RST",
        flow_entry(&tb, &reset_key)?
            .map(|_| ())
            .context("the reset-marked entry was swept"),
    );
    findings.check(
        "the subscriber after a forged RST",
        delivered(&tb, &mut reset, "attack:rst", "after-the-rst"),
    );

    for key in &read_keys {
        client.send(&from_client(key.src_port, tb.vip_read(), flags::SYN))?;
    }
    std::thread::sleep(SETTLE);
    for ((key, was), reader) in read_keys.iter().zip(&read_was).zip(&mut readers) {
        let what = format!("a forged SYN on read connection from port {}", key.src_port);
        findings.check(&what, entry_unchanged(&tb, key, was));
        findings.check(&format!("{what}, then PING"), reader.ping());
    }
    drop(intruder_ns);
    // The forged FINs and the RST reached the program (a test whose segments never arrive
    // would pass too) and were judged outside their connection's window.
    let maps = tb.ctl("maps", &["--flows", "0"])?;
    findings.check(
        "the forged closes reached the program",
        maps.contains("drop_out_of_window")
            .then_some(())
            .context("no drop_out_of_window counted"),
    );
    findings.assert_none(&tb)
}
