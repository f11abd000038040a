//! `/metrics` of a real controller owning the real data plane: scraped the way Prometheus
//! does, its per-backend counters must move with traffic sent through the VIP.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::{Cluster, ClusterOptions, METRICS_PORT, http_get, in_netns, require_root};

/// Sum of the samples of `metric` whose labels contain every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A testbed with its three controllers, every one of them healthy.
fn healthy_cluster() -> Result<Cluster> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    cluster.wait_healthy(Duration::from_secs(30))?;
    Ok(cluster)
}

#[test]
fn metrics_counters_move_with_traffic_through_the_vip() -> Result<()> {
    let cluster = healthy_cluster()?;
    let tb = cluster.testbed();
    let lb = tb.lb().path();
    let c1 = cluster.controller(1);
    let addr = SocketAddrV4::new(*c1.listen().ip(), METRICS_PORT);
    let master = ["backend=\"198.18.1.11:6379\"", "direction=\"in\""];

    let before = http_get(&lb, addr, "/metrics")?;
    let packets_before = sample(&before, "redis_ha_backend_packets_total", &master);
    let flows_before = sample(
        &before,
        "redis_ha_backend_new_flows_total",
        &["backend=\"198.18.1.11:6379\""],
    );
    assert!(
        sample(&before, "redis_ha_probe_duration_seconds_count", &[]) > 0.0,
        "no probe observed:\n{before}"
    );

    let url = format!("redis://{}/", tb.vip_write());
    let mut conn = in_netns(&tb.client().path(), move || {
        redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))
    })??;
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("metrics:{i}"))
            .arg(i)
            .query(&mut conn)?;
    }

    // The daemon re-reads the per-CPU counters at most every 500 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = http_get(&lb, addr, "/metrics")?;
        let packets = sample(&after, "redis_ha_backend_packets_total", &master);
        let flows = sample(
            &after,
            "redis_ha_backend_new_flows_total",
            &["backend=\"198.18.1.11:6379\""],
        );
        if packets >= packets_before + 50.0 && flows > flows_before {
            println!(
                "master packets in: {packets_before} -> {packets}; new flows: {flows_before} -> {flows}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "counters did not follow 50 SETs: packets {packets_before} -> {packets}, \
                 flows {flows_before} -> {flows}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = http_get(&lb, addr, "/status.json")?;
    assert!(status.contains("198.18.1.11:6379"), "{status}");
    let page = http_get(&lb, addr, "/").context("status page")?;
    assert!(page.contains("198.18.1.12:6379") && page.contains("198.18.1.13:6379"));
    Ok(())
}

/// The running controllers sweep the connection table (`FLOWS` never evicts): a connection that
/// ended with a reset two minutes ago disappears within a sweep interval (5 s), while the
/// table reports that it never had to spill.
#[test]
fn the_controllers_sweep_a_reset_connection_out_of_the_table() -> Result<()> {
    use redis_ha_common::flow_end;

    let cluster = healthy_cluster()?;
    let tb = cluster.testbed();
    let now = redis_ha_ctl::ha::net::monotonic_ns();
    let reset = tb.made_up_connection(50_000, now - 120_000_000_000, flow_end::RST);
    let mut flows = tb.flows_map()?;
    flows.insert(reset.0, reset.1, 0)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while flows.get(&reset.0, 0).is_ok() {
        if Instant::now() > deadline {
            bail!("the reset connection's entry is still in FLOWS after 15 s");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let c1 = cluster.controller(1);
    let addr = SocketAddrV4::new(*c1.listen().ip(), METRICS_PORT);
    let text = http_get(&tb.lb().path(), addr, "/metrics")?;
    assert!(
        text.lines().any(|l| l == "redis_ha_flow_table_spilled 0"),
        "{text}"
    );
    Ok(())
}
