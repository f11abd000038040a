//! HTTP endpoint of the controller, at `[controller] metrics_listen`:
//! - `GET /metrics`: Prometheus exposition (OpenMetrics when the scraper asks for it);
//! - `GET /status.json`: the [`Status`] snapshot as JSON, for scripts;
//! - `GET /`: the status page, one self-contained HTML page that refreshes itself, the way
//!   operators use HAProxy's stats page.
//!
//! Everything is rendered from the latest snapshot the daemon published on its `watch`
//! channel, so the three views always agree. The server is deliberately small and defensive:
//! a connection must send its request headers within [`HEADER_READ_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] are served at once, and dropping [`serve`] closes all of them.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::{debug, info, warn};

use crate::{
    metrics::{Format, Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE},
    status::{BackendTraffic, FailoverPhase, NodeStatus, ServiceStatus, Status},
};

/// A client that has not sent its whole request head by then is disconnected, so idle or
/// slow connections cannot pile up.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed on accept. A scraper or two and a few browser
/// tabs need far fewer.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head accepted (hyper's minimum); ours are a few hundred bytes, and a
/// client sending more gets 431 instead of making us buffer it.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// Seconds between reloads of the status page.
pub const REFRESH_SECONDS: u32 = 2;

/// The status page forbids itself everything but its inline style: no script, no external
/// asset, no framing. Escaping is the first defence against a hostile string in the Status;
/// this is the second.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the HTTP listener {addr} (controller.metrics_listen): is it in use?")
    })?;
    info!(%addr, "serving /metrics, /status.json and the status page");
    serve_on(listener, status, metrics).await
}

/// Serves on an already bound listener until the task is dropped (tests bind port 0 and read
/// the port from the listener first).
pub async fn serve_on(
    listener: TcpListener,
    status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let app = router(status, metrics);
    // Owning the connection tasks means dropping this future aborts them all.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: transient, and no reason to stop
                // serving; the pause keeps a persistent error from spinning.
                warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            debug!(%peer, "HTTP connection refused: {MAX_CONNECTIONS} already open");
            continue;
        }
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD);
            // Malformed requests end here: hyper answers 400 (or just closes) and we log it.
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}

#[derive(Clone)]
struct App {
    status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
}

impl App {
    /// A copy, so no lock on the daemon's channel is held while rendering.
    fn snapshot(&self) -> Status {
        self.status.borrow().clone()
    }
}

fn router(status: watch::Receiver<Status>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(prometheus))
        .route("/status.json", get(json))
        .fallback(not_found)
        .with_state(App { status, metrics })
}

async fn prometheus(State(app): State<App>, headers: HeaderMap) -> Response {
    let format = if accepts_openmetrics(&headers) {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    };
    let content_type = match format {
        Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
    };
    let body = app.metrics.encode_as(&app.snapshot(), format);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Whether the scraper lists OpenMetrics 1.0 (or an unversioned OpenMetrics) in `Accept`, as
/// Prometheus does; anything else gets the classic text format.
fn accepts_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut params = item.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let mut version = None;
            let mut q = 1.0f32;
            for p in params {
                if let Some(v) = p.strip_prefix("version=") {
                    version = Some(v);
                } else if let Some(v) = p.strip_prefix("q=") {
                    q = v.parse().unwrap_or(0.0);
                }
            }
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && matches!(version, None | Some("1.0.0"))
                && q > 0.0
        })
}

async fn json(State(app): State<App>) -> Response {
    match serde_json::to_string_pretty(&app.snapshot()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the status: {e}\n"),
        )
            .into_response(),
    }
}

async fn page(State(app): State<App>) -> Response {
    let mut response = render_page(&app.snapshot()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found: this server has /, /metrics and /status.json\n",
    )
        .into_response()
}

/// `s` made safe for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font: 13px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 0; background: #f3f4f6; color: #1f2937; }
header { background: #1e3a5f; color: #fff; padding: 10px 18px; display: flex;
  align-items: baseline; gap: 18px; flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0; }
header a { color: #bfdbfe; }
main { padding: 12px 18px; }
section { background: #fff; border: 1px solid #d1d5db; border-radius: 4px; margin: 0 0 14px;
  padding: 8px 12px 12px; }
h2 { font-size: 15px; margin: 4px 0 6px; display: flex; gap: 10px; align-items: center; }
h3 { font-size: 13px; margin: 12px 0 4px; color: #374151; }
.summary { margin: 0 0 8px; color: #374151; }
.summary b { color: #111827; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th { background: #e5e7eb; text-align: left; font-weight: 600; white-space: nowrap; }
th, td { border: 1px solid #d1d5db; padding: 3px 6px; }
table.nodes { font-size: 12.5px; }
td.n { text-align: right; }
table.nodes td { white-space: nowrap; }
.scroll { overflow-x: auto; }
tr.master td { background: #dbeafe; font-weight: 600; }
tr.down td { background: #fee2e2; }
.badge { font-size: 11px; font-weight: 700; padding: 1px 7px; border-radius: 9px; color: #fff; }
.ok { background: #15803d; } .bad { background: #b91c1c; } .warn { background: #b45309; }
.muted { background: #6b7280; }
.state-up { color: #15803d; font-weight: 700; } .state-down { color: #b91c1c; font-weight: 700; }
.state-unknown { color: #6b7280; font-weight: 700; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 0 14px; }
.grid table { width: auto; min-width: 100%; }
footer { color: #6b7280; padding: 0 18px 14px; }
"#;

/// The status page for `status`: every free-form string from it (names, ids, interfaces,
/// counters) is escaped; addresses, roles and phases are typed and cannot carry markup.
pub fn render_page(status: &Status) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>redis-ha: {ctl}</title><style>{STYLE}</style></head><body>\n\
         <header><h1>redis-ha</h1><span>controller <b>{ctl}</b> on {listen}</span>\
         <span>snapshot {at}</span><span>refreshes every {REFRESH_SECONDS} s</span>\
         <span><a href=\"/status.json\">status.json</a> · <a href=\"/metrics\">metrics</a></span>\
         </header>\n<main>\n",
        ctl = escape(&status.controller),
        listen = status.listen_text(),
        at = utc(status.at_unix_ms),
    );
    if status.services.is_empty() {
        h.push_str("<section><p>No service is configured.</p></section>\n");
    }
    for svc in &status.services {
        let traffic = status.dataplane.as_ref().map(|d| &d.backends[..]);
        render_service(&mut h, status, svc, traffic);
    }
    render_ha(&mut h, status);
    render_dataplane(&mut h, status);
    h.push_str("</main>\n<footer>redis-ha-ctl status page</footer>\n</body></html>\n");
    h
}

fn render_service(
    h: &mut String,
    status: &Status,
    svc: &ServiceStatus,
    traffic: Option<&[BackendTraffic]>,
) {
    let name = escape(&svc.name);
    let (badge, class) = if svc.odown {
        ("ODOWN".to_owned(), "bad")
    } else if svc.failover_phase != FailoverPhase::Idle {
        (format!("failover: {}", svc.failover_phase), "warn")
    } else if svc.nodes.iter().any(|n| n.addr == svc.master && !n.sdown) {
        ("OK".to_owned(), "ok")
    } else {
        ("master unknown".to_owned(), "bad")
    };
    let agreeing = 1 + svc.peers.iter().filter(|p| p.agrees).count();
    let controllers = 1 + svc.peers.len();
    let agree_class = if agreeing >= svc.quorum.max(1) {
        "ok"
    } else {
        "bad"
    };
    let _ = write!(
        h,
        "<section class=\"service\" id=\"service-{name}\" data-service=\"{name}\">\n\
         <h2>{name} <span class=\"badge {class}\">{badge}</span>\
         <span class=\"badge {agree_class}\">{agreeing}/{controllers} controllers agree</span></h2>\n\
         <p class=\"summary\">write <b>{vip}:{wp}</b> → <b class=\"master-addr\">{master}</b> · \
         read <b>{vip}:{rp}</b> → {pool} backend{plural} · epoch <b>{cfg}</b> (current {cur}) · \
         quorum {quorum} · down after {down} ms · failovers seen {failovers}</p>\n",
        badge = escape(&badge),
        vip = svc.vip,
        wp = svc.write_port,
        rp = svc.read_port,
        master = svc.master,
        pool = svc.read_pool.len(),
        plural = if svc.read_pool.len() == 1 { "" } else { "s" },
        cfg = svc.config_epoch,
        cur = svc.current_epoch,
        quorum = svc.quorum,
        down = svc.down_after_ms,
        failovers = svc.failovers,
    );
    h.push_str(
        "<div class=\"scroll\"><table class=\"nodes\"><thead><tr><th>Node</th><th>Role</th>\
         <th>State</th><th>Replication</th><th>Lag</th><th>Offset</th><th>Priority</th>\
         <th>Read pool</th><th>Last OK</th><th>Probe</th>",
    );
    // Traffic columns only where there is a data plane to count it.
    if traffic.is_some() {
        h.push_str("<th>Packets in / out</th><th>Bytes in / out</th><th>Flows new / reset</th>");
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for node in &svc.nodes {
        let t = traffic.map(|all| {
            all.iter()
                .find(|t| t.service == svc.name && t.addr == node.addr)
        });
        render_node(h, svc, node, t);
    }
    h.push_str("</tbody></table></div>\n");

    h.push_str(
        "<h3>Controllers</h3>\n<table class=\"peers\"><thead><tr><th>Controller</th>\
         <th>Address</th><th>Last heard</th><th>Announces master</th><th>Config epoch</th>\
         <th>Agrees</th></tr></thead>\n<tbody>\n",
    );
    let _ = writeln!(
        h,
        "<tr class=\"peer self\" data-peer=\"{id}\"><td>{id} (this one)</td><td>{listen}</td>\
         <td class=\"n\">—</td><td>{master}</td><td class=\"n\">{epoch}</td><td>—</td></tr>",
        id = escape(&status.controller),
        listen = status.listen_text(),
        master = svc.master,
        epoch = svc.config_epoch,
    );
    for p in &svc.peers {
        let _ = writeln!(
            h,
            "<tr class=\"peer\" data-peer=\"{id}\"><td>{id}</td><td>{addr}</td><td class=\"n\">{heard}</td>\
             <td>{master}</td><td class=\"n\">{epoch}</td><td>{agrees}</td></tr>",
            id = escape(&p.id),
            addr = p.addr,
            heard = p.last_heard_ms_ago.map_or("never".to_owned(), ago),
            master = p.master.map_or("—".to_owned(), |m| m.to_string()),
            epoch = p.config_epoch.map_or("—".to_owned(), |e| e.to_string()),
            agrees = if p.agrees {
                "<span class=\"state-up\">yes</span>"
            } else {
                "<span class=\"state-down\">no</span>"
            },
        );
    }
    h.push_str("</tbody></table>\n</section>\n");
}

/// `traffic`: None without a data plane (no traffic cells), Some(None) for a backend the data
/// plane has no counters for.
fn render_node(
    h: &mut String,
    svc: &ServiceStatus,
    node: &NodeStatus,
    traffic: Option<Option<&BackendTraffic>>,
) {
    let is_master = node.addr == svc.master;
    let (state, state_class) = if node.sdown {
        ("DOWN", "down")
    } else if node.last_ok_ms_ago.is_none() {
        ("no reply yet", "unknown")
    } else {
        ("UP", "up")
    };
    let mut classes = vec!["node", state_class];
    if is_master {
        classes.push("master");
    }
    let dash = || "—".to_owned();
    // Whom a replica follows only needs saying when it is not the service's master.
    let link = match node.link_up {
        Some(true) => "<span class=\"state-up\">link up</span>",
        Some(false) => "<span class=\"state-down\">link down</span>",
        None => "",
    };
    let follows = match node.master {
        None => dash(),
        Some(m) if m == svc.master && !link.is_empty() => link.to_owned(),
        Some(m) => format!("follows {m} {link}"),
    };
    // Traffic as "in / out".
    let cells = traffic.map_or_else(String::new, |t| {
        let pair = |f: fn(&BackendTraffic) -> (String, String)| {
            t.map_or_else(dash, |t| {
                let (a, b) = f(t);
                format!("{a} / {b}")
            })
        };
        format!(
            "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
            pair(|t| (t.packets_in.to_string(), t.packets_out.to_string())),
            pair(|t| (bytes(t.bytes_in), bytes(t.bytes_out))),
            pair(|t| (t.new_flows.to_string(), t.flows_reset.to_string())),
        )
    });
    let _ = writeln!(
        h,
        "<tr class=\"{classes}\" data-node=\"{addr}\" data-role=\"{role}\" data-state=\"{state_class}\">\
         <td>{addr}{star}</td><td>{role}</td><td class=\"state-{state_class}\">{state}</td>\
         <td>{follows}</td><td class=\"n\">{lag}</td><td class=\"n\">{offset}</td>\
         <td class=\"n\">{priority}</td><td>{pool}</td><td class=\"n\">{last_ok}</td>\
         <td class=\"n\">{probe}</td>{cells}</tr>",
        classes = classes.join(" "),
        addr = node.addr,
        star = if is_master { " ★" } else { "" },
        role = node.role,
        lag = node.lag_ms.map_or_else(dash, |ms| format!("{ms} ms")),
        offset = node.repl_offset.map_or_else(dash, |o| o.to_string()),
        priority = node.priority.map_or_else(dash, |p| p.to_string()),
        pool = if node.in_read_pool { "yes" } else { "no" },
        last_ok = node.last_ok_ms_ago.map_or("never".to_owned(), ago),
        probe = node
            .probe_latency_ms
            .map_or_else(dash, |ms| format!("{ms:.2} ms")),
    );
}

/// Who holds the floating addresses (the VIP), when the cluster uses `[ha]`.
fn render_ha(h: &mut String, status: &Status) {
    let Some(ha) = &status.ha else {
        return;
    };
    let mine = if ha.addresses.is_empty() {
        String::new()
    } else {
        format!(
            " · this node's addresses <b>{}</b> {}",
            escape(&ha.addresses.join(", ")),
            match ha.holding_since_unix_ms {
                Some(ms) => format!("held since {}", utc(ms)),
                None => "not held".to_owned(),
            }
        )
    };
    let _ = writeln!(
        h,
        "<section class=\"ha\" id=\"ha\"><h2>Floating addresses</h2><p class=\"summary\">held by \
         <b id=\"vip-holder\">{owner}</b> (epoch {epoch}) · this node: <b>{role}</b>{mine}</p></section>",
        owner = escape(ha.owner.as_deref().unwrap_or("nobody")),
        epoch = ha.epoch,
        role = ha.role,
    );
}

fn render_dataplane(h: &mut String, status: &Status) {
    let Some(dp) = &status.dataplane else {
        h.push_str(
            "<section class=\"dataplane\"><h2>Data plane</h2><p>This controller owns no XDP \
             data plane (a controller-only node): traffic counters are on the data-plane \
             nodes' pages.</p></section>\n",
        );
        return;
    };
    let _ = write!(
        h,
        "<section class=\"dataplane\"><h2>Data plane</h2>\n<p class=\"summary\">pinned at \
         <b>{pin}</b> · connection table <b>{flows}</b> connections</p>\n\
         <div class=\"grid\"><div><h3>Interfaces</h3><table class=\"interfaces\"><thead><tr>\
         <th>Interface</th><th>Attach mode</th></tr></thead><tbody>\n",
        pin = escape(&dp.pin_dir),
        flows = dp.flow_entries,
    );
    if dp.interfaces.is_empty() {
        h.push_str("<tr><td colspan=\"2\">none attached</td></tr>\n");
    }
    for (iface, mode) in &dp.interfaces {
        let _ = writeln!(
            h,
            "<tr data-interface=\"{i}\"><td>{i}</td><td>{m}</td></tr>",
            i = escape(iface),
            m = escape(mode)
        );
    }
    h.push_str(
        "</tbody></table></div>\n<div><h3>Packet counters</h3><table class=\"counters\">\
         <thead><tr><th>Counter</th><th>Packets</th></tr></thead><tbody>\n",
    );
    for (name, value) in &dp.counters {
        let _ = writeln!(
            h,
            "<tr data-counter=\"{n}\"><td>{n}</td><td class=\"n\">{value}</td></tr>",
            n = escape(name)
        );
    }
    h.push_str("</tbody></table></div></div>\n</section>\n");
}

/// "40 ms ago", "3.2 s ago", "5 min ago".
fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms ago"),
        1_000..60_000 => format!("{:.1} s ago", ms as f64 / 1000.0),
        _ => format!("{} min ago", ms / 60_000),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time in milliseconds.
fn utc(unix_ms: u64) -> String {
    crate::status::format_utc(unix_ms, false)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::metrics::testdata::sample;

    /// The `<tr>` of `node` on `page`.
    fn row<'a>(page: &'a str, node: &str) -> &'a str {
        let at = page
            .find(&format!("data-node=\"{node}\""))
            .unwrap_or_else(|| panic!("no row for {node}"));
        let start = page[..at].rfind("<tr").unwrap();
        let end = at + page[at..].find("</tr>").unwrap();
        &page[start..end]
    }

    #[test]
    fn page_has_a_row_per_node_with_the_master_highlighted() {
        let page = render_page(&sample());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        let master = row(&page, "198.18.1.11:6379");
        assert!(master.contains("class=\"node up master\""), "{master}");
        assert!(master.contains("data-role=\"master\""), "{master}");
        assert!(master.contains("123456"), "{master}");
        assert!(master.contains("0.31 ms"), "{master}");
        assert!(master.contains(">10 / 9<"), "packets in / out: {master}");
        assert!(
            master.contains(">1000 B / 900 B<"),
            "bytes in / out: {master}"
        );
        assert!(master.contains(">2 / 1<"), "flows new / reset: {master}");
        let replica = row(&page, "198.18.1.12:6379");
        assert!(replica.contains("class=\"node up\""), "{replica}");
        assert!(replica.contains("250 ms"), "lag: {replica}");
        assert!(replica.contains("link up"), "{replica}");
        assert!(replica.contains("<td>yes</td>"), "in read pool: {replica}");
        let down = row(&page, "198.18.1.13:6379");
        assert!(down.contains("class=\"node down\""), "{down}");
        assert!(down.contains(">DOWN<"), "{down}");
        // Epochs, controllers and agreement, data plane.
        assert!(page.contains("epoch <b>3</b> (current 4)"));
        assert!(page.contains("2/3 controllers agree"));
        assert!(page.contains("data-peer=\"ctl-b\""));
        assert!(page.contains("<td>never</td>") || page.contains(">never<"));
        assert!(page.contains("<tr data-interface=\"eth0\"><td>eth0</td><td>native</td></tr>"));
        assert!(page.contains("data-counter=\"fwd_to_backend\""));
        assert!(page.contains("2023-11-14 22:13:20 UTC"), "{page}");
    }

    #[test]
    fn page_is_self_contained() {
        let page = render_page(&sample());
        for external in ["<script", "<link", "src=", "http://", "https://", "@import"] {
            assert!(!page.contains(external), "page contains {external}");
        }
    }

    #[test]
    fn every_status_string_is_escaped() {
        let mut s = sample();
        let evil = "<script>alert('x')</script>\"&";
        s.controller = evil.into();
        s.services[0].name = evil.into();
        s.services[0].peers[0].id = evil.into();
        // A node's role and the failover phase are enums: no hostile string can reach them.
        s.dataplane.as_mut().unwrap().interfaces[0].1 = evil.into();
        s.dataplane
            .as_mut()
            .unwrap()
            .counters
            .insert(evil.into(), 1);
        let page = render_page(&s);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("'x'"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"));
    }

    #[test]
    fn the_floating_addresses_holder_is_shown() {
        // The sample: this controller holds them, in epoch 7.
        let page = render_page(&sample());
        assert!(
            page.contains("<b id=\"vip-holder\">ctl-a</b> (epoch 7)"),
            "{page}"
        );
        let mut s = sample();
        s.ha = None;
        assert!(!render_page(&s).contains("Floating addresses"));
    }

    #[test]
    fn a_controller_only_node_says_so() {
        let mut s = sample();
        s.dataplane = None;
        let page = render_page(&s);
        assert!(page.contains("owns no XDP data plane"));
        assert!(!page.contains("Packets in / out"), "no traffic columns");
        assert!(row(&page, "198.18.1.11:6379").contains("0.31 ms"));
    }

    #[test]
    fn small_formatters() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(bytes(900), "900 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(ago(40), "40 ms ago");
        assert_eq!(ago(1500), "1.5 s ago");
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            accepts_openmetrics(&h)
        };
        assert!(accept(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!accept("text/plain;version=0.0.4"));
        assert!(!accept("application/openmetrics-text;version=0.0.1"));
        assert!(!accept("*/*"));
    }

    /// One HTTP/1.1 exchange over raw TCP: (status code, head, body).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before an oversized request is fully sent: a failed
        // write or a reset while reading just ends the exchange, keeping what arrived.
        let _ = stream.write_all(request).await;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let read = async {
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                raw.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the server answers (or closes) within 5 s");
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, head.to_owned(), body.to_owned())
    }

    async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n");
        exchange(addr, req.as_bytes()).await
    }

    fn has_header(head: &str, name: &str, value: &str) -> bool {
        head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
            })
        })
    }

    #[tokio::test]
    async fn serves_metrics_json_page_and_404_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(sample());
        let metrics = Arc::new(Metrics::new());
        metrics.observe_probe(
            "mymaster",
            "198.18.1.11:6379",
            true,
            Duration::from_micros(300),
        );
        let server = tokio::spawn(serve_on(listener, rx, metrics));

        let (code, head, body) = get(addr, "/metrics", None).await;
        assert_eq!(code, 200, "{head}");
        assert!(
            has_header(&head, "content-type", PROMETHEUS_CONTENT_TYPE),
            "{head}"
        );
        assert!(
            body.contains(
                "redis_ha_backend_sdown{service=\"mymaster\",backend=\"198.18.1.13:6379\"} 1"
            ),
            "{body}"
        );
        assert!(body.contains("redis_ha_probe_duration_seconds_count{service=\"mymaster\",backend=\"198.18.1.11:6379\"} 1"), "{body}");

        let (code, head, body) = get(
            addr,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        )
        .await;
        assert_eq!(code, 200);
        assert!(
            has_header(&head, "content-type", OPENMETRICS_CONTENT_TYPE),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"));

        let (code, head, body) = get(addr, "/status.json", None).await;
        assert_eq!(code, 200);
        assert!(
            has_header(&head, "content-type", "application/json"),
            "{head}"
        );
        let parsed: Status = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed, sample());

        let (code, head, body) = get(addr, "/", None).await;
        assert_eq!(code, 200);
        assert!(
            has_header(&head, "content-type", "text/html; charset=utf-8"),
            "{head}"
        );
        assert!(
            has_header(&head, "content-security-policy", PAGE_CSP),
            "{head}"
        );
        assert!(body.contains("data-node=\"198.18.1.12:6379\""));

        // The page follows the daemon's latest snapshot.
        let mut next = sample();
        next.services[0].master = "198.18.1.12:6379".parse().unwrap();
        tx.send(next).unwrap();
        let (_, _, body) = get(addr, "/", None).await;
        assert!(row(&body, "198.18.1.12:6379").contains("master"), "{body}");

        let (code, _, body) = get(addr, "/nope", None).await;
        assert_eq!(code, 404);
        assert!(body.contains("/metrics"));
        let (code, _, _) = get(addr, "/metrics/extra", None).await;
        assert_eq!(code, 404);
        // Other methods on a known path are refused, not served.
        let (code, _, _) = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(code, 405);
        server.abort();
    }

    #[tokio::test]
    async fn dropping_the_server_closes_open_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(sample());
        let server = tokio::spawn(serve_on(listener, rx, Arc::new(Metrics::new())));
        // A kept-alive connection that has been served once, as a scraper leaves it.
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /status.json HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        server.abort();
        let _ = server.await;
        let closed = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("the connection is closed once the server is dropped");
    }

    #[tokio::test]
    async fn malformed_requests_do_not_stop_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(sample());
        let server = tokio::spawn(serve_on(listener, rx, Arc::new(Metrics::new())));

        let garbage: [&[u8]; 5] = [
            b"\x00\x01\x02garbage\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            &[b'A'; 100_000],
        ];
        for bad in garbage {
            let (code, _, _) = exchange(addr, bad).await;
            // hyper answers 400 (or 431/505) or just closes (code 0); never a success.
            assert!(code == 0 || code >= 400, "{code}");
        }
        // A client that connects and sends nothing does not block others.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (code, _, _) = get(addr, "/metrics", None).await;
        assert_eq!(code, 200);
        assert!(!server.is_finished());
        server.abort();
    }
}
