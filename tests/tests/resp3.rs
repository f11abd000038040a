//! RESP3 and Sentinel's events end to end: three real `redis-ha-ctl run` controllers
//! ([`Cluster`]) with real redis-servers, asked from the client namespace by `redis-cli -3` and
//! by the `redis` crate with `protocol=resp3`, while a real failover (kill -9 of the master)
//! happens under their subscriptions.
//!
//! redis-py is not used here: Debian 12's `python3-redis` is 4.3, and RESP3 (`protocol=3`)
//! came with redis-py 5.
//!
//! Run: `cargo test --release -p redis-ha-tests --test resp3 -- --test-threads=1 --nocapture`.

use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::cluster::{LogMark, node_ip};
use redis_ha_tests::process::ChildGuard;
use redis_ha_tests::{Cluster, ClusterOptions, in_netns, require_root};

/// Bound of each wait for the controllers (a failover takes a few seconds here).
const WAIT: Duration = Duration::from_secs(30);
/// How long the old master may take to be demoted once it runs again (`convert_delay_ms`
/// and the probes around it).
const DEMOTION: Duration = Duration::from_secs(60);

/// What a subscriber received: (channel, payload), in order.
type Messages = Vec<(String, String)>;

/// `redis-cli -3 PSUBSCRIBE *` against one controller, its output in a file (line-buffered,
/// so that what it printed is there when it is killed).
struct CliSubscriber {
    child: ChildGuard,
    out: PathBuf,
}

impl CliSubscriber {
    fn start(cluster: &Cluster, n: usize, dir: &Path) -> Result<Self> {
        let api = cluster.controller(n).listen();
        let out = dir.join(format!("resp3-subscriber-c{n}.out"));
        let file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let mut cmd = cluster.testbed().client().command("stdbuf");
        cmd.args(["-oL", "redis-cli", "-3", "-h"])
            .arg(api.ip().to_string())
            .args(["-p", &api.port().to_string(), "PSUBSCRIBE", "*"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null());
        let child = ChildGuard::spawn(&mut cmd)?;
        Ok(Self { child, out })
    }

    /// Waits (bounded) until redis-cli printed the subscription's confirmation.
    fn wait_subscribed(&self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if std::fs::read_to_string(&self.out)?.contains("psubscribe\n*\n1\n") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "redis-cli -3 PSUBSCRIBE did not confirm: {:?}",
            std::fs::read_to_string(&self.out)?
        )
    }

    /// Stops redis-cli and parses what it printed: `pmessage`, pattern, channel, payload, one
    /// line each (redis-cli's raw output, since its stdout is not a terminal).
    fn finish(mut self) -> Result<Messages> {
        self.child.kill()?;
        let text = std::fs::read_to_string(&self.out)?;
        let lines: Vec<&str> = text.lines().collect();
        let mut messages = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            if lines[i] == "pmessage" && i + 3 < lines.len() {
                messages.push((lines[i + 2].to_owned(), lines[i + 3].to_owned()));
                i += 4;
            } else {
                i += 1;
            }
        }
        Ok(messages)
    }
}

/// A `redis` crate client with `protocol=resp3` subscribed to `*` on `api` from the client
/// namespace: every message arrives as a push, collected until `stop` (bounded by `limit`).
fn crate_subscriber(
    ns: PathBuf,
    api: SocketAddrV4,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> Result<(
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<Result<Messages>>,
)> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || -> Result<Messages> {
        in_netns(&ns, move || -> Result<Messages> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = redis::Client::open(format!("redis://{api}/?protocol=resp3"))?;
                let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
                let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
                // Bounded retries: the controller may have just started.
                let mut attempts = 0;
                let mut c = loop {
                    match client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                    {
                        Ok(c) => break c,
                        Err(e) if attempts >= 50 => return Err(e.into()),
                        Err(_) => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                c.psubscribe("*").await?;
                let _ = ready_tx.send(());
                let started = Instant::now();
                let mut messages = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                    let Ok(Some(push)) =
                        tokio::time::timeout(Duration::from_millis(200), pushes.recv()).await
                    else {
                        continue;
                    };
                    if push.kind == redis::PushKind::PMessage {
                        let (_, channel, payload): (String, String, String) =
                            redis::from_redis_value(&redis::Value::Array(push.data))?;
                        messages.push((channel, payload));
                    }
                }
                Ok(messages)
            })
        })?
    });
    Ok((ready, handle))
}

/// Positions of `events` as they first appear in `messages` (after the previous one), or what
/// is missing.
fn in_order(messages: &Messages, events: &[&str]) -> Result<()> {
    let mut from = 0;
    for event in events {
        match messages[from..].iter().position(|(c, _)| c == event) {
            Some(i) => from += i + 1,
            None => bail!(
                "{event} missing after position {from} (expected order {events:?}); got {:?}",
                messages.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()
            ),
        }
    }
    Ok(())
}

fn find<'a>(messages: &'a Messages, channel: &str, needle: &str) -> Option<&'a str> {
    messages
        .iter()
        .find(|(c, p)| c == channel && p.contains(needle))
        .map(|(_, p)| p.as_str())
}

fn with_cluster(test: impl FnOnce(&mut Cluster) -> Result<()>) -> Result<()> {
    require_root();
    let mut cluster = Cluster::up(ClusterOptions::default())?;
    let outcome = test(&mut cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(80));
    }
    outcome
}

#[test]
fn redis_cli_3_gets_hello_maps_and_nulls_as_from_sentinel() -> Result<()> {
    with_cluster(|cluster| {
        let master = cluster.master()?.addr();
        let cli3 = |args: &[&str]| -> Result<String> {
            let mut all = vec!["-3", "--no-raw"];
            all.extend_from_slice(args);
            cluster.sentinel_cli(2, &all)
        };
        let hello = cli3(&["HELLO", "3"])?;
        ensure!(
            hello.contains("\"proto\" => (integer) 3")
                && hello.contains("\"mode\" => \"sentinel\""),
            "HELLO 3: {hello}"
        );
        // Each instance is a map (`1# key => value`), not the flat list RESP2 clients get.
        let masters = cli3(&["SENTINEL", "MASTERS"])?;
        ensure!(
            masters.contains("1# \"name\" => \"mymaster\""),
            "SENTINEL MASTERS: {masters}"
        );
        let flat = cluster.sentinel_cli(2, &["--no-raw", "SENTINEL", "MASTERS"])?;
        ensure!(
            flat.contains("1) \"name\""),
            "RESP2 SENTINEL MASTERS: {flat}"
        );
        let replicas = cli3(&["SENTINEL", "REPLICAS", "mymaster"])?;
        ensure!(
            replicas.matches("1# \"name\" => ").count() == 2
                && replicas.contains("\"master-host\" => \""),
            "SENTINEL REPLICAS: {replicas}"
        );
        let addr = cli3(&["SENTINEL", "get-master-addr-by-name", "mymaster"])?;
        ensure!(
            addr == format!("1) \"{}\"\n2) \"{}\"", master.ip(), master.port()),
            "get-master-addr-by-name: {addr}"
        );
        let none = cli3(&["SENTINEL", "get-master-addr-by-name", "nope"])?;
        ensure!(none == "(nil)", "unknown master: {none}");
        let help = cli3(&["SENTINEL", "HELP"])?;
        ensure!(
            help.contains("SENTINEL <subcommand>") && help.contains("GET-MASTER-ADDR-BY-NAME"),
            "SENTINEL HELP: {help}"
        );
        Ok(())
    })
}

/// One real failover under the subscriptions of `redis-cli -3` (on every controller) and of
/// the `redis` crate with RESP3 (on c2): the leader's subscriber sees Sentinel's sequence in
/// Sentinel's order, and c2's sees a peer first heard (`+sentinel`), the replicas listed
/// under the new master (`+slave`) and the old master's role changes as it returns and is
/// demoted (`-role-change`, `+role-change`).
#[test]
fn subscribers_see_sentinels_events_of_a_real_failover_as_pushes() -> Result<()> {
    with_cluster(|cluster| {
        let dir = cluster
            .controller(1)
            .log_path()
            .parent()
            .context("the controllers' directory")?
            .to_owned();
        // c2 restarts while c3's datagrams cannot reach it, so that c3 is heard for the first
        // time while c2's subscriber listens.
        cluster.block(3, node_ip(2))?;
        let c2 = cluster.controller(2);
        c2.kill()?;
        c2.start()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, crate_sub) = crate_subscriber(
            cluster.testbed().client().path(),
            c2.listen(),
            stop.clone(),
            Duration::from_secs(180),
        )?;
        if ready.recv_timeout(Duration::from_secs(20)).is_err() {
            stop.store(true, Ordering::Relaxed);
            let outcome = crate_sub.join();
            bail!("the redis crate's RESP3 subscriber did not subscribe: {outcome:?}");
        }
        let clis = (1..=3)
            .map(|n| CliSubscriber::start(cluster, n, &dir))
            .collect::<Result<Vec<_>>>()?;
        for cli in &clis {
            cli.wait_subscribed()?;
        }
        let mark = c2.mark();
        cluster.unblock(3, node_ip(2))?;
        c2.wait_for_event("+sentinel", mark, WAIT)?;
        let old = cluster.wait_healthy(WAIT)?;

        let marks: Vec<LogMark> = (1..=3).map(|n| cluster.controller(n).mark()).collect();
        let old_backend = cluster
            .testbed()
            .backend_at(old)
            .context("the master is a backend")?;
        old_backend.kill()?;
        for (n, mark) in (1..=3).zip(&marks) {
            cluster
                .controller(n)
                .wait_for_event("+switch-master", *mark, WAIT)?;
        }
        old_backend.start()?;
        let demoted = c2.wait_for_line(
            &[
                "+role-change",
                &old.to_string(),
                "new reported role is slave",
            ],
            marks[1],
            DEMOTION,
        )?;
        // The event reaches subscribers right after the log line; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let seen_by_crate = crate_sub
            .join()
            .map_err(|_| anyhow::anyhow!("the subscriber thread panicked"))??;
        let seen_by_cli = clis
            .into_iter()
            .map(CliSubscriber::finish)
            .collect::<Result<Vec<_>>>()?;

        // c2, through the redis crate's push messages.
        let c3 = cluster.controller(3);
        let sentinel = format!(
            "sentinel {} {} {} @ mymaster {} {}",
            c3.id(),
            c3.listen().ip(),
            c3.listen().port(),
            old.ip(),
            old.port()
        );
        ensure!(
            find(&seen_by_crate, "+sentinel", &sentinel).is_some(),
            "no `+sentinel {sentinel}` in {seen_by_crate:?}"
        );
        let switch = find(&seen_by_crate, "+switch-master", "mymaster")
            .context("no +switch-master pushed to the redis crate")?
            .to_owned();
        let new: Vec<&str> = switch.split(' ').collect();
        ensure!(new.len() == 5, "+switch-master payload: {switch}");
        let old_as_slave = format!(
            "slave {old} {} {} @ mymaster {} {}",
            old.ip(),
            old.port(),
            new[3],
            new[4]
        );
        in_order(&seen_by_crate, &["+sentinel", "+switch-master", "+slave"])?;
        ensure!(
            find(&seen_by_crate, "+slave", &old_as_slave).is_some(),
            "the old master is not listed as a replica of the new one (`+slave {old_as_slave}`): \
             {seen_by_crate:?}"
        );
        let returned = format!("{old_as_slave} new reported role is master");
        let demoted_payload = format!("{old_as_slave} new reported role is slave");
        ensure!(
            find(&seen_by_crate, "-role-change", &returned).is_some()
                && find(&seen_by_crate, "+role-change", &demoted_payload).is_some(),
            "role changes of the returning old master missing ({demoted}): {seen_by_crate:?}"
        );
        in_order(
            &seen_by_crate,
            &["+switch-master", "-role-change", "+role-change"],
        )?;

        // The leader's redis-cli: Sentinel's failover sequence, in Sentinel's order.
        let leader = seen_by_cli
            .iter()
            .position(|m| m.iter().any(|(c, _)| c == "+elected-leader"))
            .context("no subscriber saw +elected-leader")?;
        in_order(
            &seen_by_cli[leader],
            &[
                "+sdown",
                "+odown",
                "+new-epoch",
                "+try-failover",
                "+vote-for-leader",
                "+elected-leader",
                "+failover-state-select-slave",
                "+selected-slave",
                "+failover-state-send-slaveof-noone",
                "+failover-state-wait-promotion",
                "-role-change",
                "+promoted-slave",
                "+failover-state-reconf-slaves",
                "+slave-reconf-sent",
                "+slave-reconf-inprog",
                "+slave-reconf-done",
                "+failover-end",
                "+switch-master",
                "+slave",
            ],
        )
        .with_context(|| format!("the leader c{}", leader + 1))?;
        let odown = find(&seen_by_cli[leader], "+odown", "#quorum").context("+odown payload")?;
        ensure!(
            odown.starts_with(&format!("master mymaster {} {}", old.ip(), old.port())),
            "+odown payload: {odown}"
        );
        // The others saw the leader's failover as Sentinel's documentation lists it.
        for (n, messages) in seen_by_cli.iter().enumerate() {
            if n != leader {
                in_order(
                    messages,
                    &["+failover-detected", "+switch-master", "+slave"],
                )
                .with_context(|| format!("c{}", n + 1))?;
            }
        }
        Ok(())
    })
}
