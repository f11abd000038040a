//! TCP keepalive on the Sentinel-compatible API of a real controller: clients that vanish
//! without closing (their host crashed, a NAT entry was dropped) are found by the keepalive
//! probes and closed, so their `maxclients` slots come back.
//!
//! The vanishing clients live in a namespace of their own (`rha-<tag>-v`, 198.18.3.2, a veth to
//! the LB namespace where controller 1 listens). They vanish by a blackhole route to the
//! controller in their namespace: the controller's probes still reach their sockets, but no
//! answer, no FIN and no RST ever leaves, as with a host that lost power.
//!
//! Run: `flock /tmp/rha-netns.lock cargo test --release -p redis-ha-tests --test api_keepalive
//! -- --test-threads=1`.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use redis_ha_tests::{
    Cluster, ClusterOptions, METRICS_PORT, Netns, in_netns, require_root,
    testbed::namespace_prefix, wait_until,
};

const MAXCLIENTS: usize = 8;
/// Probes after 1 s of silence, then every second, three of them (the controller's rule:
/// every third of the idle time, at least 1 s).
const KEEPALIVE: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 3;

/// The vanishing clients' own namespace and its veth to the LB; removed on drop.
const LB_SIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);

struct VanishingHost {
    ns: Netns,
    /// The LB's end of the veth, and the LB namespace's name.
    lb_end: String,
    lb_ns_name: String,
}

impl VanishingHost {
    fn attach(cluster: &Cluster) -> Result<Self> {
        let prefix = namespace_prefix(cluster.testbed().tag());
        let ns = Netns::create(&format!("{prefix}v"))?;
        let (inside, outside) = (format!("{prefix}vv"), format!("{prefix}lv"));
        let lb = cluster.testbed().lb();
        let host = Self {
            ns,
            lb_end: outside.clone(),
            lb_ns_name: lb.name().to_owned(),
        };
        lb.ip(&[
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
            "netns",
            host.ns.name(),
        ])?;
        lb.ip(&["addr", "add", &format!("{LB_SIDE_IP}/30"), "dev", &outside])?;
        lb.set_sysctl(&format!("net.ipv4.conf.{outside}.rp_filter"), "0")?;
        lb.ip(&["link", "set", &outside, "up"])?;
        host.ns
            .ip(&["addr", "add", &format!("{CLIENT_IP}/30"), "dev", &inside])?;
        host.ns.ip(&["link", "set", &inside, "up"])?;
        host.ns
            .ip(&["route", "add", "default", "via", &LB_SIDE_IP.to_string()])?;
        Ok(host)
    }

    /// A client of `addr` from this host.
    fn connect(&self, addr: SocketAddrV4) -> Result<TcpStream> {
        let stream = in_netns(&self.ns.path(), move || {
            TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
        })??;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    }

    /// From now on nothing this host sends to `ip` leaves it: keepalive probes arrive, the
    /// answers are discarded, and the sockets stay open (no FIN, no RST).
    fn vanish(&self, ip: Ipv4Addr) -> Result<()> {
        self.ns
            .ip(&["route", "add", "blackhole", &format!("{ip}/32")])?;
        Ok(())
    }
}

impl Drop for VanishingHost {
    fn drop(&mut self) {
        // Deleting the namespace (the `ns` guard, dropped next) deletes the veth, unless a
        // socket still keeps the namespace alive: the LB's end is deleted here first.
        let _ = redis_ha_tests::netns_command(&self.lb_ns_name, "ip")
            .args(["link", "del", &self.lb_end])
            .output();
    }
}

fn metrics(cluster: &Cluster) -> Result<String> {
    let addr = SocketAddrV4::new(*cluster.controller(1).listen().ip(), METRICS_PORT);
    redis_ha_tests::http_get(&cluster.testbed().lb().path(), addr, "/metrics")
}

fn connected(cluster: &Cluster) -> Result<u64> {
    metrics(cluster)?
        .lines()
        .find_map(|l| l.strip_prefix("redis_ha_api_connected_clients "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .context("no redis_ha_api_connected_clients in /metrics")
}

/// PING over `stream`: `+PONG`, or what came instead.
fn ping(stream: &mut TcpStream) -> Result<String> {
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A new client from the testbed's client namespace: served, or refused at `maxclients`.
fn fresh_ping(cluster: &Cluster) -> Result<String> {
    let addr = cluster.controller(1).listen();
    let mut s = in_netns(&cluster.testbed().client().path(), move || {
        TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
    })??;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    match ping(&mut s) {
        Ok(reply) => Ok(reply),
        Err(e)
            if e.downcast_ref::<std::io::Error>().map(|e| e.kind())
                == Some(ErrorKind::ConnectionReset) =>
        {
            Ok("reset".into())
        }
        Err(e) => Err(e),
    }
}

fn keepalive_cluster(tcp_keepalive_s: u64) -> Result<Cluster> {
    require_root();
    Cluster::up(ClusterOptions {
        // The idle timeout off: only keepalive may close a silent client.
        controller_toml: format!(
            "maxclients = {MAXCLIENTS}\n\
             client_idle_timeout_ms = 0\n\
             tcp_keepalive_s = {tcp_keepalive_s}\n"
        ),
        ..ClusterOptions::default()
    })
}

/// Before: nothing showed that keepalive frees the slots of vanished clients. Now: clients
/// that hold every slot and vanish are closed within the keepalive bound, and a new client is
/// served; with keepalive off (checked by hand: `tcp_keepalive_s = 0` here) they would hold
/// their slots for ever and the wait below fails.
#[test]
fn keepalive_closes_clients_that_vanished_and_frees_their_slots() -> Result<()> {
    let cluster = keepalive_cluster(KEEPALIVE.as_secs())?;
    let outcome = vanish_and_recover(&cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(40));
    }
    outcome
}

fn vanish_and_recover(cluster: &Cluster) -> Result<()> {
    cluster.wait_healthy(Duration::from_secs(30))?;
    let host = VanishingHost::attach(cluster)?;
    let api = cluster.controller(1).listen();
    let baseline = connected(cluster)?;
    let free = MAXCLIENTS
        .checked_sub(baseline as usize)
        .context("the harness holds every slot")?;
    let mut clients = (0..free)
        .map(|_| host.connect(api))
        .collect::<Result<Vec<_>>>()?;
    for c in &mut clients {
        let reply = ping(c)?;
        ensure!(reply == "+PONG\r\n", "a vanishing client got {reply:?}");
    }
    wait_until(
        "the clients to hold every slot",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || Ok((connected(cluster)? == MAXCLIENTS as u64).then_some(())),
    )?;
    let refused = fresh_ping(cluster)?;
    ensure!(
        refused.contains("max number of clients reached") || refused == "reset",
        "with every slot held, a new client got {refused:?}"
    );

    host.vanish(*api.ip())?;
    let vanished = Instant::now();
    // Closed after the idle time and the unanswered probes; twice that, and a second for the
    // metrics, is the bound.
    let bound = (KEEPALIVE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES) * 2 + Duration::from_secs(1);
    wait_until(
        "the controller to close the vanished clients",
        bound,
        Duration::from_millis(200),
        || Ok((connected(cluster)? == baseline).then_some(())),
    )?;
    println!(
        "{free} vanished clients closed by keepalive after {:?} (bound {bound:?})",
        vanished.elapsed()
    );
    let reply = fresh_ping(cluster)?;
    ensure!(
        reply == "+PONG\r\n",
        "after the vanished clients' slots came back, a new client got {reply:?}"
    );
    drop(clients);
    Ok(())
}
