//! The controllers' API with passwords, end to end: three real `redis-ha-ctl run` controllers
//! ([`Cluster`]) whose `[controller]` sets `requirepass_file` (the default user, allowed
//! everything), a read-only user and an operator user, attacked from the client namespace with
//! the real clients: `redis-cli` (`-a`, `--user/--pass`), redis-py's `Sentinel` (Debian's
//! `python3-redis`) and `redis-ha-ctl` itself. Also the cap on a switchover's TIMEOUT, and that
//! the HTTP listener only reads.
//!
//! Run: `cargo test --release -p redis-ha-tests --test api_auth -- --test-threads=1 --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::cluster::LogMark;
use redis_ha_tests::{
    Cluster, ClusterOptions, ctl_binary, output_within, require_root, run_within,
};

/// Debian's interpreter: `python3-redis` installs into its dist-packages.
const PYTHON: &str = "/usr/bin/python3";
const ADMIN_PASSWORD: &str = "admin-e2e-password";
const MONITOR_PASSWORD: &str = "monitor-e2e-password";
const OPERATOR_PASSWORD: &str = "operator-e2e-password";
const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// How long a refused request is given to have done something after all.
const SETTLE: Duration = Duration::from_secs(2);

/// The failover events that must not appear after a refused request.
const FAILOVER_EVENTS: [&str; 4] = [
    "+try-failover",
    "+new-epoch",
    "+promoted-slave",
    "+switch-master",
];

/// The password files, removed with the guard.
struct Secrets(PathBuf);

impl Secrets {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("rha-api-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("admin"), format!("{ADMIN_PASSWORD}\n"))?;
        std::fs::write(dir.join("operator"), format!("{OPERATOR_PASSWORD}\n"))?;
        // Password files others may read are refused.
        for name in ["admin", "operator"] {
            std::fs::set_permissions(
                dir.join(name),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
        }
        Ok(Self(dir))
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cluster(secrets: &Secrets) -> Result<Cluster> {
    require_root();
    let controller_toml = format!(
        "requirepass_file = {:?}\n\
         [[controller.users]]\n\
         name = \"monitor\"\n\
         password = \"{MONITOR_PASSWORD}\"\n\
         access = \"read-only\"\n\
         [[controller.users]]\n\
         name = \"operator\"\n\
         password_file = {:?}\n\
         access = \"all\"\n",
        secrets.file("admin"),
        secrets.file("operator"),
    );
    Cluster::up(ClusterOptions {
        controller_toml,
        api_cli_auth: vec!["-a".into(), ADMIN_PASSWORD.into()],
        ..ClusterOptions::default()
    })
}

/// `redis-cli ARGS...` against controller 1 from the client namespace, stdout and stderr
/// together, whatever its exit status (a refusal is what these tests look for).
fn redis_cli(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let api = cluster.controller(1).listen();
    let mut cmd = cluster.testbed().client().command("redis-cli");
    cmd.args(["-h", &api.ip().to_string(), "-p", &api.port().to_string()])
        .arg("--no-auth-warning")
        .args(args);
    printed(&mut cmd)
}

fn printed(cmd: &mut Command) -> Result<String> {
    let out = output_within(cmd, Duration::from_secs(30))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `redis-ha-ctl SUBCOMMAND --config <config> ARGS...` in the client namespace; its output
/// and whether it succeeded.
fn ctl(
    cluster: &Cluster,
    config: &Path,
    subcommand: &str,
    args: &[&str],
) -> Result<(bool, String)> {
    let mut cmd = cluster.testbed().client().command(ctl_binary()?);
    cmd.arg(subcommand).arg("--config").arg(config).args(args);
    let out = output_within(&mut cmd, Duration::from_secs(60))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn marks(cluster: &Cluster) -> Vec<LogMark> {
    cluster.controllers().iter().map(|c| c.mark()).collect()
}

/// After a refused request: nothing moved. The write port keeps its master, no controller
/// started a failover, and the master takes a write at once (no `CLIENT PAUSE` was left on it).
fn nothing_moved(
    cluster: &Cluster,
    master: std::net::SocketAddrV4,
    marks: &[LogMark],
) -> Result<()> {
    std::thread::sleep(SETTLE);
    let now = cluster.master()?;
    ensure!(
        now.addr() == master,
        "the master moved from {master} to {}",
        now.addr()
    );
    for (c, mark) in cluster.controllers().iter().zip(marks) {
        for event in FAILOVER_EVENTS {
            let seen = c.events(event, *mark);
            ensure!(seen.is_empty(), "{} logged {event}: {seen:?}", c.id());
        }
    }
    let started = Instant::now();
    let reply = now.redis_cli(&["SET", "api-auth:probe", "1"])?;
    ensure!(
        reply.trim() == "OK" && started.elapsed() < Duration::from_secs(1),
        "the master answered a write with {reply:?} after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// redis-ha-ctl's output for redis-py's `Sentinel` asked for the master of `mymaster`, with
/// `password` (if any) in `sentinel_kwargs`; then a plain PING of that Sentinel, whose error
/// (if any) says why.
const REDIS_PY: &str = r#"
import sys
try:
    from redis.sentinel import Sentinel
except ImportError:
    sys.exit("python3-redis is missing: apt-get install python3-redis (cargo xtask build installs it)")
host, port = sys.argv[1], int(sys.argv[2])
kwargs = {"socket_timeout": 2.0}
if len(sys.argv) > 3:
    kwargs["password"] = sys.argv[3]
sentinel = Sentinel([(host, port)], sentinel_kwargs=kwargs)
try:
    print("master %s:%d" % sentinel.discover_master("mymaster"))
except Exception as e:
    print("discover_master failed: %s: %s" % (type(e).__name__, e))
try:
    sentinel.sentinels[0].ping()
    print("ping ok")
except Exception as e:
    print("ping failed: %s: %s" % (type(e).__name__, e))
"#;

fn redis_py(cluster: &Cluster, password: Option<&str>) -> Result<String> {
    let api = cluster.controller(1).listen();
    let mut cmd = cluster.testbed().client().command(PYTHON);
    cmd.arg("-c")
        .arg(REDIS_PY)
        .arg(api.ip().to_string())
        .arg(api.port().to_string())
        .args(password);
    run_within(&mut cmd, Duration::from_secs(30))
        .context("redis-py (Debian's python3-redis; `cargo xtask build` installs it)")
}

#[test]
fn a_password_protected_api_refuses_strangers_and_serves_its_users() -> Result<()> {
    let secrets = Secrets::new()?;
    let cluster = cluster(&secrets)?;
    let outcome = attack(&cluster);
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(60));
    }
    outcome
}

fn attack(cluster: &Cluster) -> Result<()> {
    let master = cluster.master()?.addr();
    let expected_master = format!("master {}:{}", master.ip(), master.port());

    // A stranger: every failover and every query is refused, and nothing moves.
    let marks_before = marks(cluster);
    for request in [
        &["SENTINEL", "FAILOVER", "mymaster"][..],
        &["REDIS-HA", "FAILOVER", "mymaster"],
        &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        &["REDIS-HA", "STATUS"],
    ] {
        let out = redis_cli(cluster, request)?;
        ensure!(
            out.contains(NOAUTH),
            "{request:?} without AUTH answered {out:?}"
        );
    }
    // A wrong password is told so; the command after it is still refused.
    let out = redis_cli(
        cluster,
        &["-a", "not-the-password", "SENTINEL", "FAILOVER", "mymaster"],
    )?;
    ensure!(out.contains(WRONGPASS) && out.contains(NOAUTH), "{out:?}");
    let out = redis_cli(
        cluster,
        &[
            "--user",
            "monitor",
            "--pass",
            ADMIN_PASSWORD,
            "SENTINEL",
            "FAILOVER",
            "mymaster",
        ],
    )?;
    ensure!(out.contains(WRONGPASS), "{out:?}");
    // The read-only user reads, and may not fail over.
    let out = redis_cli(
        cluster,
        &[
            "--user",
            "monitor",
            "--pass",
            MONITOR_PASSWORD,
            "SENTINEL",
            "get-master-addr-by-name",
            "mymaster",
        ],
    )?;
    ensure!(out.contains(&master.ip().to_string()), "{out:?}");
    let out = redis_cli(
        cluster,
        &[
            "--user",
            "monitor",
            "--pass",
            MONITOR_PASSWORD,
            "SENTINEL",
            "FAILOVER",
            "mymaster",
        ],
    )?;
    ensure!(
        out.contains(
            "NOPERM User monitor has no permissions to run the 'sentinel|failover' command"
        ),
        "{out:?}"
    );
    let config = cluster.controller(1).config_path();
    let (ok, out) = ctl(
        cluster,
        config,
        "failover",
        &["--user", "monitor", "mymaster"],
    )?;
    ensure!(
        !ok && out.contains("NOPERM"),
        "redis-ha-ctl failover --user monitor: {out}"
    );
    nothing_moved(cluster, master, &marks_before)?;

    // The default user, by password (redis-cli -a) and by name.
    for auth in [
        &["-a", ADMIN_PASSWORD][..],
        &["--user", "default", "--pass", ADMIN_PASSWORD],
    ] {
        let out = redis_cli(
            cluster,
            &[
                auth,
                &["SENTINEL", "get-master-addr-by-name", "mymaster"][..],
            ]
            .concat(),
        )?;
        ensure!(
            out.lines()
                .map(str::trim)
                .eq([master.ip().to_string(), master.port().to_string()]),
            "{auth:?}: {out:?}"
        );
    }

    // redis-py's Sentinel with the password in sentinel_kwargs, and without it.
    let with = redis_py(cluster, Some(ADMIN_PASSWORD))?;
    println!("redis-py with the password:\n{with}");
    ensure!(
        with.contains(&expected_master) && with.contains("ping ok"),
        "{with}"
    );
    let without = redis_py(cluster, None)?;
    println!("redis-py without it:\n{without}");
    ensure!(
        without.contains("discover_master failed")
            && without.contains("ping failed: AuthenticationError: Authentication required."),
        "{without}"
    );
    let wrong = redis_py(cluster, Some("not-the-password"))?;
    ensure!(
        wrong.contains("discover_master failed") && wrong.contains("ping failed"),
        "{wrong}"
    );

    // redis-ha-ctl reads the password from the controller's config.
    let (ok, out) = ctl(cluster, config, "status", &[])?;
    ensure!(
        ok && out.contains(&master.to_string()),
        "redis-ha-ctl status: {out}"
    );
    let (ok, out) = ctl(cluster, config, "status", &["--user", "monitor", "--json"])?;
    ensure!(
        ok && out.contains("\"services\""),
        "redis-ha-ctl status --user monitor: {out}"
    );
    // A config without the password (an operator's copy that lacks it) is told what to set.
    let bare = config.with_extension("bare.toml");
    let text = std::fs::read_to_string(config)?;
    let text = &text[..text
        .find("requirepass_file")
        .context("no requirepass_file")?];
    std::fs::write(&bare, text)?;
    let (ok, out) = ctl(cluster, &bare, "status", &[])?;
    ensure!(
        !ok && out.contains("asks for a password") && out.contains("requirepass"),
        "redis-ha-ctl status without the password: {out}"
    );

    // An operator with the right password does fail over.
    let (ok, out) = ctl(
        cluster,
        config,
        "failover",
        &["--user", "operator", "mymaster"],
    )?;
    ensure!(
        ok && out.contains("switched from"),
        "redis-ha-ctl failover --user operator: {out}"
    );
    let after = cluster.wait_healthy(Duration::from_secs(30))?;
    ensure!(
        after != master,
        "the master is still {master} after the failover"
    );
    Ok(())
}

/// On a cluster without API passwords (which keeps working as before), a switchover asking for
/// a longer write pause than the cap allows is refused, by the controller and by the CLI, with
/// the maximum named; the master's writes are never paused.
#[test]
fn a_switchover_timeout_above_the_cap_is_refused_and_nothing_moves() -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    let master = cluster.master()?.addr();
    let marks = marks(&cluster);
    let out = redis_cli(
        &cluster,
        &["REDIS-HA", "FAILOVER", "mymaster", "TIMEOUT", "60000"],
    )?;
    ensure!(
        out.contains("TIMEOUT 60000 is above the maximum of 10000 ms"),
        "REDIS-HA FAILOVER ... TIMEOUT 60000 answered {out:?}"
    );
    let config = cluster.controller(1).config_path();
    let (ok, out) = ctl(
        &cluster,
        config,
        "failover",
        &["mymaster", "--timeout", "60000"],
    )?;
    ensure!(
        !ok && out.contains("above the maximum of 10000 ms"),
        "redis-ha-ctl failover --timeout 60000: {out}"
    );
    nothing_moved(&cluster, master, &marks)?;
    // The cap itself is accepted: a switchover with it goes through.
    let (ok, out) = ctl(
        &cluster,
        config,
        "failover",
        &["mymaster", "--timeout", "10000"],
    )?;
    ensure!(
        ok && out.contains("switched from"),
        "redis-ha-ctl failover --timeout 10000: {out}"
    );
    Ok(())
}

#[test]
fn the_http_listener_serves_only_reads_on_metrics_listen() -> Result<()> {
    let secrets = Secrets::new()?;
    let cluster = cluster(&secrets)?;
    let c1 = cluster.controller(1);
    let http = format!(
        "http://{}:{}",
        c1.listen().ip(),
        redis_ha_tests::METRICS_PORT
    );
    let curl = |args: &[&str]| -> Result<String> {
        let mut cmd = cluster.testbed().client().command("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(args);
        run_within(&mut cmd, Duration::from_secs(10))
    };
    ensure!(curl(&[&format!("{http}/status.json")])? == "200");
    for method in ["POST", "PUT", "DELETE"] {
        for path in ["/", "/metrics", "/status.json"] {
            let code = curl(&["-X", method, &format!("{http}{path}")])?;
            ensure!(code == "405", "{method} {path} answered {code}");
        }
    }
    // Bound to metrics_listen alone, not to every address of the node.
    let mut ss = cluster.testbed().lb().command("ss");
    ss.args([
        "-Hltn",
        &format!("sport = :{}", redis_ha_tests::METRICS_PORT),
    ]);
    let listening = run_within(&mut ss, Duration::from_secs(10))?;
    let locals: Vec<&str> = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    if locals
        != [format!(
            "{}:{}",
            c1.listen().ip(),
            redis_ha_tests::METRICS_PORT
        )]
    {
        bail!("the HTTP listener is bound to {locals:?}");
    }
    Ok(())
}
