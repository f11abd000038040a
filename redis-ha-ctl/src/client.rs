//! `redis-ha-ctl status | events | failover`: clients of a running controller's API (the
//! Sentinel-compatible RESP port named by `[controller] listen`), through the `redis` crate.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    config::{
        ApiAccess, Config, DEFAULT_SWITCHOVER_TIMEOUT_MS, DEFAULT_USER, check_switchover_timeout,
    },
    daemon::control::SwitchoverReport,
    failover::NodeAddr,
    sentinel_api::JSON_EVENTS_CHANNEL,
    status::{EventRecord, NodeRole, ServiceStatus, Status},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A controller's API as a config names it: its `[controller] listen` address (a wildcard
/// address is reached on loopback) and the credentials to AUTH with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTarget {
    pub addr: SocketAddr,
    /// `None`: the default user (`requirepass`).
    pub user: Option<String>,
    /// `None`: the config sets no API password, so no AUTH.
    pub password: Option<String>,
    /// The config, named in the errors that send the operator there.
    pub config: PathBuf,
    /// `[controller.tls]` with a `ca_file`: `addr` is the TLS port, reached in TLS with the
    /// controller's own certificate.
    pub tls: Option<ApiTls>,
}

/// The API of the controller `config` describes, as user `user` (default: `requirepass`'s
/// default user, else the first user allowed everything, else the first user).
pub fn api_target(config: &Path, user: Option<&str>) -> anyhow::Result<ApiTarget> {
    let cfg = Config::load(config)?;
    let ctl = cfg.controller.with_context(|| {
        format!(
            "{}: no [controller] section: it names the controller to talk to (`listen`)",
            config.display()
        )
    })?;
    // With a CA to trust and a certificate to show, the TLS port; without a CA the CLI could
    // not check the controller's certificate, and the plain port on this host is as safe.
    let tls = ctl.tls.as_ref().and_then(|t| {
        t.ca_file.as_ref().map(|ca| ApiTls {
            ca_file: ca.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
        })
    });
    let mut addr = match &ctl.tls {
        Some(t) if tls.is_some() => t.listen,
        _ => ctl.listen,
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let api = &ctl.api;
    let (user, password) = match user {
        Some(name) => {
            let (password, _) = api.user(Some(name)).with_context(|| {
                format!(
                    "{}: no API user {name:?} (controller.users, or \"default\" for requirepass)",
                    config.display()
                )
            })?;
            let name = (name != DEFAULT_USER).then(|| name.to_owned());
            (name, Some(password.to_owned()))
        }
        None if api.requirepass.is_some() => (None, api.requirepass.clone()),
        None => match api
            .users
            .iter()
            .find(|u| u.access == ApiAccess::All)
            .or(api.users.first())
        {
            Some(u) => (Some(u.name.clone()), Some(u.password.clone())),
            None => (None, None),
        },
    };
    Ok(ApiTarget {
        addr,
        user,
        password,
        config: config.to_owned(),
        tls,
    })
}

/// The files of a TLS connection to the API (`[controller.tls]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ApiTls {
    /// `info` in TLS: the CA alone trusted, the controller's certificate presented.
    fn client(&self, info: redis::ConnectionInfo) -> anyhow::Result<redis::Client> {
        // The redis crate builds its TLS config from the process's default provider: the same
        // one as the daemon's, set before (an error only says one is set already).
        let _ = std::sync::Arc::unwrap_or_clone(crate::config::crypto_provider()).install_default();
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let certificates = redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(&self.cert_file)?,
                client_key: read(&self.key_file)?,
            }),
            root_cert: Some(read(&self.ca_file)?),
        };
        let info = redis::ConnectionInfo {
            addr: match info.addr {
                redis::ConnectionAddr::Tcp(host, port) => redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    tls_params: None,
                },
                other => other,
            },
            ..info
        };
        Ok(redis::Client::build_with_tls(info, certificates)?)
    }
}

fn connect(target: &ApiTarget, read_timeout: Duration) -> anyhow::Result<redis::Connection> {
    let addr = target.addr;
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()),
        redis: redis::RedisConnectionInfo {
            username: target.user.clone(),
            password: target.password.clone(),
            ..redis::RedisConnectionInfo::default()
        },
    };
    let not_running =
        || format!("no controller running at {addr} (is `redis-ha-ctl run` started?)");
    let client = match &target.tls {
        None => redis::Client::open(info)?,
        Some(tls) => tls.client(info)?,
    };
    let conn = match client.get_connection_with_timeout(CONNECT_TIMEOUT) {
        Ok(conn) => conn,
        Err(e) if e.is_connection_refusal() || e.is_timeout() => bail!("{}", not_running()),
        Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed => bail!(
            "the controller at {addr} refused the API password {} gives{}",
            target.config.display(),
            target
                .user
                .as_ref()
                .map_or_else(String::new, |u| format!(" for user {u:?}"))
        ),
        Err(e) => return Err(e).with_context(not_running),
    };
    conn.set_read_timeout(Some(read_timeout))?;
    conn.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    Ok(conn)
}

/// A refusal that the config can mend says so; any other error is left as it is.
fn refusal(target: &ApiTarget, e: redis::RedisError) -> anyhow::Error {
    let config = target.config.display();
    match e.code() {
        Some("NOAUTH") => anyhow::anyhow!(
            "the controller at {} asks for a password: set controller.requirepass_file (or \
             requirepass, or a [[controller.users]] entry) in {config} as on the controller",
            target.addr
        ),
        Some("NOPERM") => anyhow::anyhow!(
            "the controller at {} refused: NOPERM {}; use a user with access = \"all\" (--user)",
            target.addr,
            e.detail().unwrap_or_default()
        ),
        _ => e.into(),
    }
}

fn query_json(target: &ApiTarget, what: &str) -> anyhow::Result<String> {
    let mut conn = connect(target, READ_TIMEOUT)?;
    redis::cmd("REDIS-HA")
        .arg(what)
        .query(&mut conn)
        .map_err(|e| refusal(target, e))
        .with_context(|| format!("asking the controller at {} for its {what}", target.addr))
}

/// The running controller's snapshot.
pub fn fetch_status(target: &ApiTarget) -> anyhow::Result<Status> {
    let json = query_json(target, "STATUS")?;
    serde_json::from_str(&json)
        .with_context(|| format!("the status from {} is not valid", target.addr))
}

/// `redis-ha-ctl status`.
pub fn status(target: &ApiTarget, json: bool) -> anyhow::Result<String> {
    let status = fetch_status(target)?;
    if json {
        return Ok(serde_json::to_string_pretty(&status)? + "\n");
    }
    Ok(render_status(&status))
}

/// `redis-ha-ctl events`: the recent events; with `follow`, then every new one as it happens
/// (printed here, until the controller goes away or the process is interrupted).
pub fn events(target: &ApiTarget, follow: bool, json: bool) -> anyhow::Result<String> {
    let addr = target.addr;
    let print = |e: &EventRecord| -> anyhow::Result<String> {
        Ok(if json {
            serde_json::to_string(e)? + "\n"
        } else {
            format!(
                "{} {} {} {}\n",
                format_unix_ms(e.at_unix_ms),
                e.service,
                e.name,
                e.payload
            )
        })
    };
    let recent = || -> anyhow::Result<Vec<EventRecord>> {
        serde_json::from_str(&query_json(target, "EVENTS")?)
            .with_context(|| format!("the events from {addr} are not valid"))
    };
    if !follow {
        return recent()?.iter().map(print).collect();
    }
    // Subscribe before reading the history, so that nothing falls between the two. (Dropping
    // a `PubSub` unsubscribes: this one lives as long as the loop.)
    let mut conn = connect(target, READ_TIMEOUT)?;
    conn.set_read_timeout(None)?;
    let mut pubsub = conn.as_pubsub();
    pubsub
        .subscribe(JSON_EVENTS_CHANNEL)
        .map_err(|e| refusal(target, e))
        .with_context(|| format!("subscribing to the events of {addr}"))?;
    let history = recent()?;
    let mut stdout = std::io::stdout().lock();
    for e in &history {
        stdout.write_all(print(e)?.as_bytes())?;
    }
    stdout.flush()?;
    loop {
        let msg = pubsub
            .get_message()
            .with_context(|| format!("the controller at {addr} went away"))?;
        let payload: String = msg.get_payload()?;
        let record: EventRecord = serde_json::from_str(&payload)
            .with_context(|| format!("an event from {addr} is not valid"))?;
        if history.contains(&record) {
            continue; // Published between our SUBSCRIBE and the history.
        }
        stdout.write_all(print(&record)?.as_bytes())?;
        stdout.flush()?;
    }
}

/// `redis-ha-ctl failover`: a planned switchover (a forced failover if the master is down),
/// waiting for its outcome.
pub fn failover(
    target: &ApiTarget,
    service: &str,
    to: Option<NodeAddr>,
    timeout_ms: Option<u64>,
    json: bool,
) -> anyhow::Result<String> {
    let addr = target.addr;
    let bound = match timeout_ms {
        Some(ms) => check_switchover_timeout(ms).map_err(anyhow::Error::msg)?,
        None => DEFAULT_SWITCHOVER_TIMEOUT_MS,
    };
    // The controller answers within about three times the switchover's bound.
    let mut conn = connect(target, Duration::from_millis(bound * 3) + READ_TIMEOUT)?;
    let mut cmd = redis::cmd("REDIS-HA");
    cmd.arg("FAILOVER").arg(service);
    if let Some(to) = to {
        cmd.arg("TO").arg(to.to_string());
    }
    if let Some(ms) = timeout_ms {
        cmd.arg("TIMEOUT").arg(ms);
    }
    let reply: String = match cmd.query(&mut conn) {
        Ok(reply) => reply,
        Err(e) if matches!(e.code(), Some("NOAUTH" | "NOPERM")) => {
            return Err(refusal(target, e));
        }
        // An error reply: the controller's own words (`NOGOODSLAVE ...`, `ABORTED ...`).
        Err(e) if e.code().is_some() => bail!(
            "{service}: {} {}",
            e.code().unwrap_or_default(),
            e.detail().unwrap_or_default()
        ),
        Err(e) => return Err(e).context(format!("asking {addr} for a failover of {service}")),
    };
    let report: SwitchoverReport = serde_json::from_str(&reply)
        .with_context(|| format!("the answer from {addr} is not valid: {reply}"))?;
    if json {
        return Ok(serde_json::to_string_pretty(&report)? + "\n");
    }
    let pause = report.write_pause_ms.map_or_else(
        || "no write pause (the master was down)".to_owned(),
        |ms| format!("writes paused {ms:.1} ms"),
    );
    Ok(format!(
        "{}: switched from {} to {} in epoch {}; {pause}; took {:.1} ms\n",
        report.service, report.from, report.to, report.epoch, report.total_ms
    ))
}

/// `2026-11-25 21:04:00.123 UTC`.
pub fn format_unix_ms(ms: u64) -> String {
    crate::status::format_utc(ms, true)
}

fn ms_ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 10_000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The human form of a snapshot: per service the ports, nodes and controllers, then the data
/// plane.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "controller {} at {} ({})",
        s.controller,
        s.listen_text(),
        format_unix_ms(s.at_unix_ms)
    );
    if let Some(r) = &s.reload {
        let _ = writeln!(
            out,
            "last config reload {}: {}",
            format_unix_ms(r.at_unix_ms),
            if r.applied {
                r.message.clone()
            } else {
                format!("REFUSED, running the config from before: {}", r.message)
            }
        );
    }
    for svc in &s.services {
        render_service(&mut out, s, svc);
    }
    if let Some(ha) = &s.ha {
        let _ = writeln!(
            out,
            "\nfloating addresses: held by {} (epoch {}); this node: {}{}",
            ha.owner.as_deref().unwrap_or("nobody"),
            ha.epoch,
            ha.role,
            ha.priority
                .map(|p| format!(
                    ", priority {p}{}",
                    if ha.preempt { ", preempt" } else { "" }
                ))
                .unwrap_or_default(),
        );
        if !ha.addresses.is_empty() {
            let since = ha
                .holding_since_unix_ms
                .map(|ms| format!(", holding since {}", format_unix_ms(ms)))
                .unwrap_or_else(|| ", not holding".to_owned());
            let _ = writeln!(out, "  {}{since}", ha.addresses.join(", "));
        }
    }
    match &s.dataplane {
        None => {
            let _ = writeln!(
                out,
                "\ndata plane: none on this node (another controller's host owns it)"
            );
        }
        Some(dp) => {
            let _ = writeln!(
                out,
                "\ndata plane on this node: pinned at {}, {} connections in the flow table",
                dp.pin_dir, dp.flow_entries
            );
            let ifaces: Vec<String> = dp
                .interfaces
                .iter()
                .map(|(i, mode)| format!("{i} ({mode})"))
                .collect();
            let _ = writeln!(out, "  attached: {}", ifaces.join(", "));
            let _ = writeln!(
                out,
                "  {:<10} {:<21} {:>4}  {:<7} {:<5} {:>9} {:>11} {:>9} {:>11} {:>9} {:>9} {:>6}",
                "SERVICE",
                "BACKEND",
                "SLOT",
                "ROLE",
                "READS",
                "PKTS-IN",
                "BYTES-IN",
                "PKTS-OUT",
                "BYTES-OUT",
                "NEW-FLOWS",
                "CLOSED",
                "RESETS"
            );
            for b in &dp.backends {
                let _ = writeln!(
                    out,
                    "  {:<10} {:<21} {:>4}  {:<7} {:<5} {:>9} {:>11} {:>9} {:>11} {:>9} {:>9} {:>6}",
                    b.service,
                    b.addr,
                    b.slot,
                    if b.is_master { "master" } else { "-" },
                    if b.readable { "yes" } else { "no" },
                    b.packets_in,
                    b.bytes_in,
                    b.packets_out,
                    b.bytes_out,
                    b.new_flows,
                    b.flows_closed,
                    b.flows_reset
                );
            }
            let counters: Vec<String> = dp
                .counters
                .iter()
                .filter(|(_, v)| **v != 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  packets: {}", counters.join(", "));
        }
    }
    out
}

fn render_service(out: &mut String, s: &Status, svc: &ServiceStatus) {
    let _ = writeln!(
        out,
        "\nservice {}: write {}:{} -> {}; read {}:{} -> [{}]",
        svc.name,
        svc.vip,
        svc.write_port,
        svc.master,
        svc.vip,
        svc.read_port,
        svc.read_pool
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut flags = Vec::new();
    if svc.odown {
        flags.push("MASTER ODOWN".to_owned());
    }
    let _ = writeln!(
        out,
        "  epoch {} (master's config epoch {}), quorum {}, down-after {} ms, failover: {}, \
         failovers seen: {}{}",
        svc.current_epoch,
        svc.config_epoch,
        svc.quorum,
        svc.down_after_ms,
        svc.failover_phase,
        svc.failovers,
        flags.iter().map(|f| format!(", {f}")).collect::<String>()
    );
    let _ = writeln!(
        out,
        "  {:<21} {:<8} {:<5} {:<21} {:<5} {:>7} {:>10} {:>4} {:<5} {:>8} {:>8}",
        "NODE",
        "ROLE",
        "STATE",
        "FOLLOWS",
        "LINK",
        "LAG",
        "OFFSET",
        "PRIO",
        "READS",
        "LAST-OK",
        "PROBE"
    );
    for n in &svc.nodes {
        let link = match n.link_up {
            Some(true) => "up",
            Some(false) => "down",
            None => "-",
        };
        let _ = writeln!(
            out,
            "  {:<21} {:<8} {:<5} {:<21} {:<5} {:>7} {:>10} {:>4} {:<5} {:>8} {:>8}",
            n.addr,
            if n.addr == svc.master && n.role == NodeRole::Master {
                "MASTER"
            } else {
                n.role.as_str()
            },
            if n.sdown { "DOWN" } else { "up" },
            or_dash(n.master),
            link,
            n.lag_ms.map_or_else(|| "-".into(), |l| format!("{l} ms")),
            or_dash(n.repl_offset),
            or_dash(n.priority),
            if n.in_read_pool { "yes" } else { "no" },
            ms_ago(n.last_ok_ms_ago),
            n.probe_latency_ms
                .map_or_else(|| "-".into(), |l| format!("{l:.2} ms")),
        );
    }
    let _ = writeln!(
        out,
        "  {:<12} {:<21} {:>8} {:<21} {:>6} {:<6}",
        "CONTROLLER", "ADDRESS", "HEARD", "ITS MASTER", "EPOCH", "AGREES"
    );
    let _ = writeln!(
        out,
        "  {:<12} {:<21} {:>8} {:<21} {:>6} {:<6}",
        format!("{} (this)", s.controller),
        s.listen_text(),
        "-",
        svc.master,
        svc.config_epoch,
        "-"
    );
    for p in &svc.peers {
        let _ = writeln!(
            out,
            "  {:<12} {:<21} {:>8} {:<21} {:>6} {:<6}",
            p.id,
            p.addr,
            ms_ago(p.last_heard_ms_ago),
            or_dash(p.master),
            or_dash(p.config_epoch),
            if p.agrees { "yes" } else { "NO" }
        );
    }
    let agreeing = 1 + svc.peers.iter().filter(|p| p.agrees).count();
    let _ = writeln!(
        out,
        "  {agreeing}/{} controllers agree on {} (config epoch {})",
        svc.peers.len() + 1,
        svc.master,
        svc.config_epoch
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_time() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(
            format_unix_ms(1_764_104_640_123),
            "2025-11-25 21:04:00.123 UTC"
        );
        assert_eq!(
            format_unix_ms(951_782_400_000),
            "2000-02-29 00:00:00.000 UTC"
        );
    }

    #[test]
    fn renders_every_part_of_the_picture() {
        let text = render_status(&crate::sentinel_api::testdata::status());
        for needle in [
            "service mymaster: write 198.18.0.100:6380 -> 198.18.1.11:6379",
            "read 198.18.0.100:6381 -> [198.18.1.12:6379]",
            "198.18.1.12:6379      replica",
            "DOWN",
            "c3",
            "2/3 controllers agree",
            "eth0 (native)",
            "fwd_to_backend 15",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn a_refused_reload_is_shown_with_its_reason() {
        let mut status = crate::sentinel_api::testdata::status();
        assert!(!render_status(&status).contains("reload"));
        status.reload = Some(crate::status::ReloadStatus {
            at_unix_ms: 0,
            applied: false,
            message: "/etc/redis-ha.toml:6:1: controller.id: cannot change".to_owned(),
        });
        let text = render_status(&status);
        assert!(
            text.contains("last config reload 1970-01-01 00:00:00.000 UTC: REFUSED, running the config from before: /etc/redis-ha.toml:6:1: controller.id"),
            "{text}"
        );
    }

    #[test]
    fn no_controller_is_a_clear_message() {
        // Port 1 on loopback: nothing listens there in a test environment.
        let target = ApiTarget {
            addr: "127.0.0.1:1".parse().unwrap(),
            user: None,
            password: None,
            config: "redis-ha.toml".into(),
            tls: None,
        };
        let Err(err) = connect(&target, READ_TIMEOUT) else {
            panic!("something answers on 127.0.0.1:1");
        };
        assert_eq!(
            err.to_string(),
            "no controller running at 127.0.0.1:1 (is `redis-ha-ctl run` started?)"
        );
    }
}
