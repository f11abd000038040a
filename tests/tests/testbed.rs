//! The testbed alone, without XDP: kernel routing through the LB namespace, replication
//! between backends, the failure knobs the controller tests use, and cleanup on drop and on
//! panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use anyhow::Result;
use redis_ha_tests::testbed::{CLIENT_IP, namespace_prefix, pin_dir};
use redis_ha_tests::{
    Testbed, TestbedOptions, leftovers, list_namespaces, require_root, wait_until,
};

fn assert_gone(tag: &str) -> Result<()> {
    let left = leftovers(&namespace_prefix(tag))?;
    assert!(left.is_empty(), "testbed {tag} left {left}");
    Ok(())
}

#[test]
fn client_reaches_backends_through_lb_routing() -> Result<()> {
    require_root();
    let tb = Testbed::up(TestbedOptions::default())?;
    let tag = tb.tag().to_owned();
    assert_eq!(
        list_namespaces(&namespace_prefix(&tag))?.len(),
        2 + tb.backends().len(),
        "client, lb and one namespace per backend"
    );

    let master = tb.backend(1).addr();
    let client = tb.client();
    assert_eq!(
        client
            .redis_cli(master, &["SET", "testbed:key", "hello"])?
            .trim(),
        "OK"
    );
    assert_eq!(
        client.redis_cli(master, &["GET", "testbed:key"])?.trim(),
        "hello"
    );
    // The master sees the client's own address: routed, not NATed.
    let clients = client.redis_cli(master, &["CLIENT", "LIST"])?;
    assert!(clients.contains(&format!("addr={CLIENT_IP}:")), "{clients}");

    let info = client.redis_cli(master, &["INFO", "replication"])?;
    assert!(info.contains("role:master"), "{info}");
    assert!(info.contains("connected_slaves:2"), "{info}");

    // Replication runs backend to backend through the LB (proxy ARP + host routes).
    for replica in &tb.backends()[1..] {
        let addr = replica.addr();
        wait_until(
            &format!("the key to reach {addr}"),
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                Ok(
                    (client.redis_cli(addr, &["GET", "testbed:key"])?.trim() == "hello")
                        .then_some(()),
                )
            },
        )?;
        let err = client
            .redis_cli(addr, &["SET", "testbed:key", "nope"])
            .expect_err("replicas are read-only");
        assert!(format!("{err:#}").contains("READONLY"), "{err:#}");
    }

    let config = tb.config_toml();
    assert!(config.contains(&format!("pin_dir = \"{}\"", pin_dir(&tag).display())));
    assert!(tb.config_path().is_file());
    assert_eq!(tb.lb_interfaces()[0], tb.lb_client_interface());

    drop(tb);
    assert_gone(&tag)
}

#[test]
fn backends_can_be_killed_frozen_and_restarted() -> Result<()> {
    require_root();
    let tb = Testbed::up(TestbedOptions {
        backends: 2,
        ..TestbedOptions::default()
    })?;
    let replica = tb.backend(2);
    let client = tb.client();

    replica.stop()?;
    let frozen = client.redis_cli_within(replica.addr(), &["PING"], Duration::from_millis(500));
    assert!(frozen.is_err(), "a SIGSTOPped server answered: {frozen:?}");
    replica.resume()?;
    assert_eq!(client.redis_cli(replica.addr(), &["PING"])?.trim(), "PONG");

    replica.kill()?;
    assert!(!replica.is_running());
    assert!(client.redis_cli(replica.addr(), &["PING"]).is_err());
    replica.start()?;
    assert!(replica.is_running());
    // Restarted with its original arguments: still a replica of backend 1.
    tb.wait_replication()?;
    Ok(())
}

#[test]
fn panic_inside_a_testbed_scope_still_cleans_up() -> Result<()> {
    require_root();
    let options = TestbedOptions {
        backends: 1,
        ..TestbedOptions::default()
    };
    let tag = options.tag.clone();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let tb = Testbed::up(options).expect("testbed up");
        assert!(
            !list_namespaces(&namespace_prefix(tb.tag()))
                .unwrap()
                .is_empty()
        );
        panic!("deliberate panic with testbed {} up", tb.tag());
    }));
    assert!(outcome.is_err());
    assert_gone(&tag)
}
