//! End-to-end TLS: TLS-only redis-servers (`--port 0 --tls-port`, `tls-replication yes`,
//! `tls-auth-clients yes`) behind the data plane, three controllers that reach them with
//! `[service.tls]` and a client certificate; and the API's own TLS port (`[controller.tls]`).
//!
//! Run: `REDIS_HA_CTL=<binary> cargo test --release -p redis-ha-tests --test tls --
//! --test-threads=1`.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use redis_ha_tests::cluster::node_ip;
use redis_ha_tests::testbed::{SERVICE_NAME, Testbed};
use redis_ha_tests::tls::{AuthClients, TlsFiles};
use redis_ha_tests::{
    Cluster, ClusterOptions, netns_command, require_root, run_within, wait_until,
};

/// Writes must come back within this after the master dies (generous: correctness, not speed).
const RESUME_BOUND: Duration = Duration::from_secs(20);

/// `SET key value` through the VIP's write port from the client namespace, over TLS with the
/// test CA and client certificate; the reply, or the error.
fn set_via_vip(tb: &Testbed, key: &str, value: &str) -> Result<String> {
    let tls = tb
        .redis_tls()
        .context("the testbed's servers do not speak TLS")?;
    let mut args = tls.cli_args();
    args.extend(["SET", key, value].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(tb
        .client()
        .redis_cli(tb.vip_write(), &args)?
        .trim()
        .to_owned())
}

fn with_tls_cluster(test: impl FnOnce(&mut Cluster) -> Result<()>) -> Result<()> {
    require_root();
    let mut cluster = Cluster::up(ClusterOptions {
        redis_tls: Some(AuthClients::Yes),
        ..ClusterOptions::default()
    })?;
    let outcome = test(&mut cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(80));
    }
    outcome
}

#[test]
fn tls_only_servers_fail_over_and_take_writes_through_the_vip_in_tls() -> Result<()> {
    with_tls_cluster(|cluster| {
        let tb = cluster.testbed();
        // The cluster became healthy: the controllers probed the TLS-only servers and the
        // data plane points at the master.
        assert_eq!(set_via_vip(tb, "before", "1")?, "OK");
        // The servers have no plain port: a client without TLS gets no answer through the VIP.
        let plain = tb
            .client()
            .redis_cli(tb.vip_write(), &["SET", "plain", "1"]);
        ensure!(
            !matches!(&plain, Ok(reply) if reply.trim() == "OK"),
            "a plain-TCP client wrote to a TLS-only server: {plain:?}"
        );

        let old = cluster.master()?.addr();
        let mark = cluster.controller(1).mark();
        cluster.master()?.kill()?;
        // Probing over TLS, the controllers see it down, elect, promote with REPLICAOF (in
        // TLS) and move the write port; writes over TLS through the VIP work again.
        let reply = wait_until(
            "writes over TLS through the VIP after the failover",
            RESUME_BOUND,
            Duration::from_millis(200),
            || Ok(set_via_vip(tb, "after", "2").ok().filter(|r| r == "OK")),
        )?;
        assert_eq!(reply, "OK");
        let new = cluster.master()?;
        ensure!(new.addr() != old, "the write port still points at {old}");
        assert_eq!(new.redis_cli(&["GET", "after"])?.trim(), "2");
        cluster
            .controller(1)
            .wait_for_event("+switch-master", mark, RESUME_BOUND)?;
        let log = cluster.controller(1).log();
        ensure!(
            !log.contains("TLS handshake failed"),
            "a handshake with the right CA failed:\n{log}"
        );
        Ok(())
    })
}

/// A planned switchover speaks TLS at every step: CLIENT PAUSE on the master, the replica's
/// catch-up check, REPLICAOF NO ONE, and REPLICAOF to the old master, which must end up a
/// replica of the new one with every write acknowledged before the switch.
#[test]
fn a_planned_switchover_between_tls_only_servers_loses_no_write() -> Result<()> {
    with_tls_cluster(|cluster| {
        let tb = cluster.testbed();
        assert_eq!(set_via_vip(tb, "before-switch", "1")?, "OK");
        let old = cluster.master()?.addr();
        let reply = cluster.sentinel_cli(1, &["SENTINEL", "FAILOVER", SERVICE_NAME])?;
        ensure!(reply.trim() == "OK", "SENTINEL FAILOVER answered {reply:?}");
        wait_until(
            "the write port to leave the old master",
            RESUME_BOUND,
            Duration::from_millis(200),
            || Ok((cluster.master()?.addr() != old).then_some(())),
        )?;
        let reply = wait_until(
            "writes over TLS through the VIP after the switchover",
            RESUME_BOUND,
            Duration::from_millis(200),
            || {
                Ok(set_via_vip(tb, "after-switch", "2")
                    .ok()
                    .filter(|r| r == "OK"))
            },
        )?;
        assert_eq!(reply, "OK");
        let new = cluster.master()?;
        assert_eq!(new.redis_cli(&["GET", "before-switch"])?.trim(), "1");
        assert_eq!(new.redis_cli(&["GET", "after-switch"])?.trim(), "2");
        let demoted = tb
            .backend_at(old)
            .context("the old master is not a backend of the testbed")?;
        wait_until(
            "the old master to replicate from the new one over TLS",
            RESUME_BOUND,
            Duration::from_millis(200),
            || {
                let info = demoted.redis_cli(&["INFO", "replication"])?;
                Ok(
                    (info.contains("role:slave") && info.contains("master_link_status:up"))
                        .then_some(()),
                )
            },
        )?;
        Ok(())
    })
}

#[test]
fn a_controller_with_the_wrong_ca_logs_the_tls_failure_and_keeps_running() -> Result<()> {
    with_tls_cluster(|cluster| {
        let c3 = cluster.controller(3);
        c3.kill()?;
        let dir = c3
            .config_path()
            .parent()
            .context("the config has no directory")?;
        let other = TlsFiles::create(dir, "other", &[])?;
        let right = &cluster.testbed().redis_tls().context("no TLS")?.files.ca;
        let config = std::fs::read_to_string(c3.config_path())?;
        ensure!(config.contains(&right.display().to_string()), "{config}");
        std::fs::write(
            c3.config_path(),
            config.replace(
                &right.display().to_string(),
                &other.ca.display().to_string(),
            ),
        )?;
        let mark = c3.mark();
        c3.start()?;
        let line = c3.wait_for_line(
            &["TLS handshake failed", "probe failed"],
            mark,
            Duration::from_secs(10),
        )?;
        ensure!(
            line.contains(&other.ca.display().to_string()),
            "the line does not name the CA file: {line}"
        );
        // One line per node, not one per probe.
        std::thread::sleep(Duration::from_secs(1));
        let lines = c3
            .log_since(mark)
            .lines()
            .filter(|l| l.contains("TLS handshake failed"))
            .count();
        ensure!(
            lines <= cluster.testbed().backends().len(),
            "{lines} lines for 3 nodes"
        );
        ensure!(c3.is_running(), "the controller exited");
        // The others, with the right CA, still serve the master.
        let reply =
            cluster.sentinel_cli(1, &["SENTINEL", "get-master-addr-by-name", SERVICE_NAME])?;
        ensure!(reply.contains("198.18.1."), "{reply}");
        Ok(())
    })
}

/// The API's TLS port (`[controller.tls]`) on every controller, each in its own namespace.
const API_TLS_PORT: u16 = 26380;

/// A directory for the API's certificates, removed at the end (also on failure).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_api_serves_tls_on_its_own_port_and_refuses_plain_clients_there() -> Result<()> {
    require_root();
    let dir =
        TempDir(std::env::temp_dir().join(format!("redis-ha-api-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let ips = [node_ip(1), node_ip(2), node_ip(3)];
    let api = TlsFiles::create(&dir.0, "api", &ips)?;
    let stranger = TlsFiles::create(&dir.0, "stranger", &ips)?;
    // Debug quoting is a TOML basic string for these plain ASCII paths.
    let path = |p: &Path| format!("{:?}", p.display().to_string());
    let cluster = Cluster::up(ClusterOptions {
        controller_toml: format!(
            "[controller.tls]\nlisten = \"0.0.0.0:{API_TLS_PORT}\"\ncert_file = {}\n\
             key_file = {}\nca_file = {}\n",
            path(&api.cert),
            path(&api.key),
            path(&api.ca)
        ),
        ..ClusterOptions::default()
    })?;
    let outcome = (|| {
        let tb = cluster.testbed();
        let c1 = cluster.controller(1);
        let tls_port = SocketAddrV4::new(node_ip(1), API_TLS_PORT);
        let cli = |files: &TlsFiles, with_cert: bool, args: &[&str]| {
            let (ca, cert, key) = (
                files.ca.display().to_string(),
                files.cert.display().to_string(),
                files.key.display().to_string(),
            );
            let mut all = vec!["--tls", "--cacert", ca.as_str()];
            if with_cert {
                all.extend(["--cert", cert.as_str(), "--key", key.as_str()]);
            }
            all.extend(args);
            tb.client().redis_cli(tls_port, &all)
        };
        let ask = ["SENTINEL", "get-master-addr-by-name", SERVICE_NAME];
        let master = cluster.master()?.addr();

        // A Sentinel client in TLS, with a certificate the CA signed, gets the master.
        let reply = cli(&api, true, &ask)?;
        let want = [master.ip().to_string(), master.port().to_string()];
        ensure!(
            reply
                .lines()
                .map(str::trim)
                .eq(want.iter().map(String::as_str)),
            "{reply}"
        );

        // Plain TCP on the TLS port: no reply, the connection is closed, and the controller
        // says why.
        let mark = c1.mark();
        let plain = tb.client().redis_cli(tls_port, &ask);
        ensure!(
            !matches!(&plain, Ok(r) if r.contains(&want[0])),
            "a plain client was served on the TLS port: {plain:?}"
        );
        c1.wait_for_line(&["TLS handshake failed"], mark, Duration::from_secs(5))?;
        ensure!(c1.is_running(), "the controller exited");

        // ca_file set: a client without a certificate, or with one another CA signed, is
        // refused (tls-auth-clients yes).
        let no_cert = cli(&api, false, &ask);
        ensure!(
            !matches!(&no_cert, Ok(r) if r.contains(&want[0])),
            "a client without a certificate was served: {no_cert:?}"
        );
        let (ca, cert, key) = (
            api.ca.display().to_string(),
            stranger.cert.display().to_string(),
            stranger.key.display().to_string(),
        );
        let mut args = vec!["--tls", "--cacert", &ca, "--cert", &cert, "--key", &key];
        args.extend(ask);
        let foreign = tb.client().redis_cli(tls_port, &args);
        ensure!(
            !matches!(&foreign, Ok(r) if r.contains(&want[0])),
            "a client with another CA's certificate was served: {foreign:?}"
        );

        // The plain port still answers, and `redis-ha-ctl status` (run on the controller's
        // host, where 0.0.0.0 is reached on loopback) goes through the TLS port.
        let plain_port = cluster.sentinel_cli(1, &ask)?;
        ensure!(plain_port.contains(&want[0]), "{plain_port}");
        let mark = c1.mark();
        let mut status = netns_command(c1.netns_name(), redis_ha_tests::ctl_binary()?);
        status.arg("status").arg("--config").arg(c1.config_path());
        let text = run_within(&mut status, Duration::from_secs(20))?;
        ensure!(text.contains(&master.to_string()), "{text}");
        std::thread::sleep(Duration::from_millis(300));
        ensure!(
            !c1.log_since(mark).contains("TLS handshake failed"),
            "the CLI's handshake failed:\n{}",
            c1.log_since(mark)
        );
        Ok(())
    })();
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(80));
    }
    outcome
}
