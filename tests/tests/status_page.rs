//! The status page as a browser sees it: redis-ha-ctl's HTTP server on loopback, serving a
//! realistic snapshot (a master, a replica in the read pool, a replica that is down), loaded
//! in Debian's headless Chromium. The DOM Chromium builds must have the master and replica
//! rows; with `REDIS_HA_SCREENSHOT=1` the screenshot is kept as `docs/status-page.png` (the
//! one the README shows).
//!
//! A second test does the same with the real thing, still on loopback only: three real
//! redis-servers (a master and two replicas), a real `redis-ha-ctl run` (a controller without
//! data plane, which needs no root) with `metrics_listen`, one replica killed, and the page the
//! controller itself serves loaded in Chromium.
//!
//! Needs no root and no namespace. Chromium missing or unable to start fails the test (with
//! what to do), never skips it: a skipped browser test would pass CI while testing nothing.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_ha_ctl::{
    http,
    metrics::Metrics,
    status::{
        BackendTraffic, DataplaneStatus, FailoverPhase, NodeRole, NodeStatus, PeerStatus,
        ServiceStatus, Status,
    },
};
use redis_ha_tests::{ChildGuard, ctl_binary, find_program, wait_until, workspace_root};

/// One Chromium run (start, load, render, exit) on a busy 2-core machine.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
const MASTER: &str = "198.18.1.11:6379";
const REPLICA_UP: &str = "198.18.1.12:6379";
const REPLICA_DOWN: &str = "198.18.1.13:6379";

/// What an operator would see a few minutes after a failover: c1 owns the data plane, the
/// old master (.13) is down, .11 was promoted in epoch 2, c2 agrees, c3 is lagging behind.
fn addr(text: &str) -> SocketAddrV4 {
    text.parse().unwrap()
}

fn sample_status() -> Status {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let traffic = |at: &str, slot, is_master, readable, scale: u64| BackendTraffic {
        service: "mymaster".into(),
        addr: addr(at),
        slot,
        is_master,
        readable,
        packets_in: 41_873 * scale,
        bytes_in: 3_120_554 * scale,
        packets_out: 40_112 * scale,
        bytes_out: 9_874_310 * scale,
        new_flows: 212 * scale,
        flows_reset: if is_master { 0 } else { 3 },
        flows_closed: 200 * scale,
    };
    Status {
        controller: "c1".into(),
        listen: Some("198.18.2.1:26379".parse().unwrap()),
        at_unix_ms: now,
        services: vec![ServiceStatus {
            name: "mymaster".into(),
            vip: "198.18.0.100".parse().unwrap(),
            write_port: 6380,
            read_port: 6381,
            master: addr(MASTER),
            config_epoch: 2,
            current_epoch: 2,
            quorum: 2,
            down_after_ms: 1000,
            failover_phase: FailoverPhase::Idle,
            odown: false,
            nodes: vec![
                NodeStatus {
                    addr: addr(MASTER),
                    role: NodeRole::Master,
                    repl_offset: Some(18_442_150),
                    priority: Some(100),
                    last_ok_ms_ago: Some(37),
                    probe_latency_ms: Some(0.21),
                    ..NodeStatus::default()
                },
                NodeStatus {
                    addr: addr(REPLICA_UP),
                    role: NodeRole::Replica,
                    master: Some(addr(MASTER)),
                    link_up: Some(true),
                    lag_ms: Some(0),
                    repl_offset: Some(18_442_150),
                    priority: Some(100),
                    in_read_pool: true,
                    last_ok_ms_ago: Some(41),
                    probe_latency_ms: Some(0.34),
                    ..NodeStatus::default()
                },
                NodeStatus {
                    addr: addr(REPLICA_DOWN),
                    role: NodeRole::Replica,
                    sdown: true,
                    master: Some(addr(MASTER)),
                    link_up: Some(false),
                    repl_offset: Some(17_905_332),
                    priority: Some(100),
                    last_ok_ms_ago: Some(184_000),
                    ..NodeStatus::default()
                },
            ],
            read_pool: vec![addr(REPLICA_UP)],
            peers: vec![
                PeerStatus {
                    id: "c2".into(),
                    addr: "198.18.2.2:26379".parse().unwrap(),
                    last_heard_ms_ago: Some(63),
                    master: Some(addr(MASTER)),
                    config_epoch: Some(2),
                    agrees: true,
                },
                PeerStatus {
                    id: "c3".into(),
                    addr: "198.18.2.3:26379".parse().unwrap(),
                    last_heard_ms_ago: Some(12_400),
                    master: Some(addr(REPLICA_DOWN)),
                    config_epoch: Some(1),
                    agrees: false,
                },
            ],
            failovers: 1,
            tilt_since_unix_ms: None,
            safe_mode: false,
            unresolved: Vec::new(),
        }],
        dataplane: Some(DataplaneStatus {
            pin_dir: "/sys/fs/bpf/redis-ha".into(),
            interfaces: vec![
                ("eth0".into(), "native".into()),
                ("eth1".into(), "native".into()),
            ],
            backends: vec![
                traffic(MASTER, 1, true, false, 3),
                traffic(REPLICA_UP, 2, false, true, 2),
                traffic(REPLICA_DOWN, 3, false, false, 1),
            ],
            counters: BTreeMap::from([
                ("fwd_to_backend".into(), 291_219),
                ("fwd_to_client".into(), 280_784),
                ("pass_rewritten".into(), 14),
                ("pass_not_service".into(), 5_210),
                ("pass_not_tcp".into(), 388),
                ("reset_stale_flow".into(), 3),
                ("reset_no_backend".into(), 0),
            ]),
            flow_entries: 96,
            flows_spilled: false,
        }),
        ha: None,
        reload: None,
    }
}

/// The HTTP server under test, on its own runtime; dropping it stops the server.
struct Server {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn start(status: Status) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let (tx, rx) = tokio::sync::watch::channel(status);
        // The sender must outlive the server: keep it in the task.
        runtime.spawn(async move {
            let _tx = tx;
            http::serve_on(listener, rx, Arc::new(Metrics::new())).await
        });
        Server {
            addr,
            runtime: Some(runtime),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// A fresh directory (Chromium's profile, its output), removed with everything in it on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("rha-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Chromium and everything it forked (zygote, renderer, GPU and utility processes), in a
/// process group of its own that is killed on drop, so no test leaves a browser behind, even
/// when it panics or times out.
struct Browser {
    child: Child,
    group: libc::pid_t,
}

impl Browser {
    /// Runs headless Chromium with `args` until it exits; stdout and stderr go to files in
    /// `dir` (files, not pipes: a forked helper holding a pipe open cannot hang us).
    fn run(dir: &Path, name: &str, args: &[String]) -> (ExitStatus, String, String) {
        let Some(chromium) = find_program("chromium") else {
            panic!(
                "chromium is not installed, and this test needs a real browser: any `cargo xtask` \
                 command (e.g. `cargo xtask build`, as root) installs Debian's package, or run \
                 `apt-get install chromium`"
            );
        };
        let profile = dir.join(format!("profile-{name}"));
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        let file = |p: &Path| std::fs::File::create(p).expect("creating an output file");
        let mut cmd = Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(file(&stdout_path))
        .stderr(file(&stderr_path))
        .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let group = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        let mut browser = Browser { child, group };
        let started = Instant::now();
        let status = loop {
            if let Some(status) = browser.child.try_wait().expect("waiting for chromium") {
                break status;
            }
            if started.elapsed() > CHROMIUM_TIMEOUT {
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!(
                    "chromium {args:?} did not finish within {CHROMIUM_TIMEOUT:?} (killed); its \
                     stderr ends with:\n{}",
                    tail(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(browser);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (status, read(&stdout_path), read(&stderr_path))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory effects. The group is the one this guard created
        // (process_group(0) made the child its leader); ESRCH once everything has exited.
        unsafe { libc::kill(-self.group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The opening `<tr ...>` tag of `node`'s row in Chromium's serialized DOM.
fn row_tag<'a>(dom: &'a str, node: &str) -> &'a str {
    let at = dom
        .find(&format!("data-node=\"{node}\""))
        .unwrap_or_else(|| panic!("no row for {node} in the DOM:\n{dom}"));
    let start = dom[..at].rfind("<tr").expect("a <tr before data-node");
    let end = at + dom[at..].find('>').expect("the end of the <tr> tag");
    &dom[start..=end]
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let server = Server::start(sample_status());
    let dir = TempDir::new("chromium");

    let (status, dom, stderr) =
        Browser::run(&dir.0, "dom", &["--dump-dom".to_owned(), server.url("/")]);
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium could not load the status page ({status}); stderr ends with:\n{}",
        tail(&stderr)
    );
    assert!(dom.contains("<title>redis-ha: c1</title>"), "{dom}");

    let master = row_tag(&dom, MASTER);
    assert!(master.contains("class=\"node up master\""), "{master}");
    assert!(master.contains("data-role=\"master\""), "{master}");
    let replica = row_tag(&dom, REPLICA_UP);
    assert!(replica.contains("class=\"node up\""), "{replica}");
    assert!(replica.contains("data-role=\"replica\""), "{replica}");
    let down = row_tag(&dom, REPLICA_DOWN);
    assert!(down.contains("class=\"node down\""), "{down}");
    assert!(down.contains("data-role=\"replica\""), "{down}");
    // Exactly one highlighted master, and the other views of the page.
    assert_eq!(dom.matches("class=\"node up master\"").count(), 1, "{dom}");
    assert!(dom.contains("2/3 controllers agree"), "{dom}");
    assert!(dom.contains("data-peer=\"c3\""), "{dom}");
    assert!(dom.contains("data-interface=\"eth0\""), "{dom}");
    assert!(dom.contains("data-counter=\"fwd_to_backend\""), "{dom}");

    let png = dir.0.join("status-page.png");
    let (status, _, stderr) = Browser::run(
        &dir.0,
        "screenshot",
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,900".to_owned(),
            server.url("/"),
        ],
    );
    let image = std::fs::read(&png).unwrap_or_default();
    assert!(
        status.success() && image.starts_with(b"\x89PNG\r\n\x1a\n") && image.len() > 10_000,
        "chromium took no screenshot of the status page ({status}, {} bytes); stderr ends with:\n{}",
        image.len(),
        tail(&stderr)
    );
    if std::env::var_os("REDIS_HA_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = workspace_root().join("docs");
        std::fs::create_dir_all(&docs).expect("creating docs/");
        let kept = docs.join("status-page.png");
        std::fs::write(&kept, &image).expect("writing docs/status-page.png");
        println!("screenshot written to {}", kept.display());
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released: the tiny race with another process
/// taking it meanwhile is acceptable in a test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET path` over HTTP/1.1: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let code = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_owned()))
}

/// One redis-server on 127.0.0.1, killed on drop.
fn redis_server(dir: &Path, port: u16, replica_of: Option<u16>) -> ChildGuard {
    let data = dir.join(format!("redis-{port}"));
    std::fs::create_dir_all(&data).expect("creating a redis dir");
    let log = std::fs::File::create(data.join("log")).expect("creating a redis log");
    let mut cmd = Command::new(find_program("redis-server").expect(
        "redis-server is not installed: any `cargo xtask` command installs it (Debian's package)",
    ));
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("cloning a file handle"))
        .stderr(log);
    if let Some(master) = replica_of {
        cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
    }
    ChildGuard::spawn(&mut cmd).expect("starting redis-server")
}

/// The `<tr ...>` tag of `node`'s row, if the page has one.
fn find_row<'a>(page: &'a str, node: &str) -> Option<&'a str> {
    let at = page.find(&format!("data-node=\"{node}\""))?;
    let start = page[..at].rfind("<tr")?;
    let end = at + page[at..].find('>')?;
    Some(&page[start..=end])
}

#[test]
fn real_controller_page_renders_in_headless_chromium() {
    let dir = TempDir::new("controller");
    let ports = [free_port(), free_port(), free_port()];
    let node = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let _master = redis_server(&dir.0, ports[0], None);
    let _replica = redis_server(&dir.0, ports[1], Some(ports[0]));
    let mut doomed = redis_server(&dir.0, ports[2], Some(ports[0]));

    // A controller without [dataplane] (no BPF, no root), two peers that never answer: the
    // page must show them as not heard from.
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.0.join("redis-ha.toml");
    std::fs::write(
        &config,
        format!(
            r#"[controller]
id = "c1"
listen = "127.0.0.1:{listen}"
secret = "status-page-test-secret"
state_file = "{state}"
probe_interval_ms = 100
metrics_listen = "{http_addr}"

[[controller.peers]]
id = "c2"
addr = "127.0.0.1:{peer2}"

[[controller.peers]]
id = "c3"
addr = "127.0.0.1:{peer3}"

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["{n0}", "{n1}", "{n2}"]
quorum = 2
down_after_ms = 500
failover_timeout_ms = 5000
"#,
            listen = free_port(),
            state = dir.0.join("c1.state").display(),
            peer2 = free_port(),
            peer3 = free_port(),
            n0 = node(0),
            n1 = node(1),
            n2 = node(2),
        ),
    )
    .expect("writing the config");
    let ctl = ctl_binary().expect("the redis-ha-ctl binary");
    let log_path = dir.0.join("controller.log");
    let log = std::fs::File::create(&log_path).expect("creating the controller log");
    let _controller = ChildGuard::spawn(
        Command::new(&ctl)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log),
    )
    .expect("starting redis-ha-ctl run");
    let controller_log = || tail(&std::fs::read_to_string(&log_path).unwrap_or_default());

    // All three up, the replicas linked to the master; then one replica dies and must show as
    // down (SDOWN after down_after_ms).
    let page_when = |what: &str, ok: &dyn Fn(&str) -> bool| {
        wait_until(
            what,
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let (code, page) = http_get(http_addr, "/")?;
                Ok((code == 200 && ok(&page)).then_some(page))
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}; the controller's log ends with:\n{}",
                controller_log()
            )
        })
    };
    page_when("the master and both replicas up", &|page| {
        find_row(page, &node(0)).is_some_and(|r| r.contains("class=\"node up master\""))
            && (1..3).all(|i| {
                find_row(page, &node(i)).is_some_and(|r| {
                    r.contains("class=\"node up\"") && r.contains("data-role=\"replica\"")
                })
            })
    });
    doomed.kill().expect("killing a replica");
    page_when("the killed replica down", &|page| {
        find_row(page, &node(2)).is_some_and(|r| r.contains("class=\"node down\""))
    });

    let (status, dom, stderr) = Browser::run(
        &dir.0,
        "real-dom",
        &["--dump-dom".to_owned(), format!("http://{http_addr}/")],
    );
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium could not load the controller's page ({status}); stderr ends with:\n{}",
        tail(&stderr)
    );
    let master = row_tag(&dom, &node(0));
    assert!(master.contains("class=\"node up master\""), "{master}");
    let replica = row_tag(&dom, &node(1));
    assert!(
        replica.contains("class=\"node up\"") && replica.contains("data-role=\"replica\""),
        "{replica}"
    );
    let down = row_tag(&dom, &node(2));
    assert!(down.contains("class=\"node down\""), "{down}");
    assert!(dom.contains("<title>redis-ha: c1</title>"), "{dom}");
    assert!(dom.contains("data-peer=\"c2\""), "{dom}");
    assert!(dom.contains("owns no XDP data plane"), "{dom}");

    // The same controller's /metrics and /status.json, scraped as Prometheus would.
    let (code, metrics) = http_get(http_addr, "/metrics").expect("scraping /metrics");
    assert_eq!(code, 200);
    let sdown = format!(
        "redis_ha_backend_sdown{{service=\"mymaster\",backend=\"{}\"}} 1",
        node(2)
    );
    assert!(metrics.contains(&sdown), "{metrics}");
    let (code, json) = http_get(http_addr, "/status.json").expect("fetching /status.json");
    assert_eq!(code, 200);
    assert!(
        json.contains(&format!("\"master\": \"{}\"", node(0))),
        "{json}"
    );
}
