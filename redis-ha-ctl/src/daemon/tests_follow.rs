//! The executor following backends whose names resolve to new addresses (`follow`).

use std::{net::Ipv4Addr, path::Path, time::Duration};

use tokio::time::sleep;

use super::{Running, SharedDataplane, node, replica_of};
use crate::{
    config::{Config, FixedHosts, backend_slot},
    daemon::{executor::Input, hostnames::Lookup},
    failover::Role,
};

/// One controller alone, its backends given by name.
const NAMED: &str = r#"
[controller]
id = "c1"
listen = "127.0.0.1:26379"
secret = "0123456789abcdef-test"

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
resolve_hostnames = true
backends = ["redis1.internal:6379", "redis2.internal:6379", "redis3.internal:6379"]
quorum = 1
"#;

async fn start() -> Running {
    let hosts = FixedHosts(&[
        ("redis1.internal", "198.18.1.11"),
        ("redis2.internal", "198.18.1.12"),
        ("redis3.internal", "198.18.1.13"),
    ]);
    let cfg = Config::parse_resolving(Path::new("test.toml"), NAMED, &hosts).unwrap();
    let running = Running::start_parsed(cfg, SharedDataplane::default()).await;
    sleep(Duration::from_millis(1)).await;
    running
}

async fn resolve(running: &Running, name: &str, lookup: Lookup) {
    let input = Input::Resolved {
        name: name.to_owned(),
        lookup,
    };
    running.tx.send(input).await.unwrap();
    sleep(Duration::from_millis(1)).await;
}

fn slot_ip(running: &Running, j: usize) -> Option<[u8; 4]> {
    let dp = running.dp.0.lock().unwrap();
    dp.maps.backends.get(&backend_slot(0, j)).map(|b| b.ip)
}

fn nodes(running: &Running) -> Vec<String> {
    let status = running.status.borrow();
    status.services[0]
        .nodes
        .iter()
        .map(|n| n.addr.to_string())
        .collect()
}

/// Before, a moved name was only logged: the slot, the probes and the status kept the old
/// address. Now the replica keeps its slot at the new address, leaves the read pool until a
/// probe there finds it in sync, and the status shows the new address only.
#[tokio::test(start_paused = true)]
async fn a_moved_replica_keeps_its_slot_and_is_readable_again_once_probed_there() {
    let running = start().await;
    assert_eq!(slot_ip(&running, 1), Some([198, 18, 1, 12]));
    // Past the warm-up after the start: the pool follows the probes.
    running.probe(11, Role::Master { repl_offset: 100 }).await;
    running.probe(12, replica_of(11, 100)).await;
    running.probe(13, replica_of(11, 100)).await;
    sleep(Duration::from_millis(600)).await;
    assert!(running.dp.readable().contains(&backend_slot(0, 1)));

    resolve(
        &running,
        "redis2.internal",
        Lookup::Resolved(Ipv4Addr::new(198, 18, 1, 22)),
    )
    .await;
    assert_eq!(slot_ip(&running, 1), Some([198, 18, 1, 22]));
    assert!(!running.dp.readable().contains(&backend_slot(0, 1)));
    let shown = nodes(&running);
    assert!(shown.contains(&"198.18.1.22:6379".to_owned()), "{shown:?}");
    assert!(!shown.contains(&"198.18.1.12:6379".to_owned()), "{shown:?}");
    assert_eq!(running.dp.master(), Some([198, 18, 1, 11]));

    running.probe(22, replica_of(11, 100)).await;
    sleep(Duration::from_millis(200)).await;
    assert!(running.dp.readable().contains(&backend_slot(0, 1)));
    running.stop().await;
}

/// A moved master stays master in the same epoch, at its new address in the same slot; a
/// name that stops resolving keeps its address and is shown in the status.
#[tokio::test(start_paused = true)]
async fn a_moved_master_stays_master_and_an_unresolved_name_keeps_its_address() {
    let running = start().await;
    resolve(
        &running,
        "redis1.internal",
        Lookup::Resolved(Ipv4Addr::new(198, 18, 1, 21)),
    )
    .await;
    assert_eq!(running.dp.master(), Some([198, 18, 1, 21]));
    assert_eq!(slot_ip(&running, 0), Some([198, 18, 1, 21]));
    assert_eq!(running.dp.epoch(), Some(0), "no failover");
    let master = running.status.borrow().services[0].master;
    assert_eq!(master.to_string(), "198.18.1.21:6379");

    resolve(
        &running,
        "redis3.internal",
        Lookup::Failed("not found".into()),
    )
    .await;
    assert_eq!(slot_ip(&running, 2), Some([198, 18, 1, 13]));
    let status = running.status.borrow().clone();
    assert_eq!(status.services[0].unresolved, vec!["redis3.internal"]);
    assert!(nodes(&running).contains(&node(13).to_string()));
    running.stop().await;
}
