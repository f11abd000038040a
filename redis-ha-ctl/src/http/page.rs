//! The status page: one self-contained HTML document (inline style, no script, no external
//! asset) rendered from a [`Status`], the way operators read HAProxy's stats page. Kept apart
//! from the server because it is a pure function of the snapshot: what it shows is tested
//! here without any I/O, and the server only adds headers.

use std::fmt::Write as _;

use super::REFRESH_SECONDS;
use crate::status::{BackendTraffic, FailoverPhase, NodeStatus, ServiceStatus, Status};

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
pub(super) fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms ago"),
        1_000..60_000 => format!("{:.1} s ago", ms as f64 / 1000.0),
        _ => format!("{} min ago", ms / 60_000),
    }
}

pub(super) fn bytes(n: u64) -> String {
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
pub(super) fn utc(unix_ms: u64) -> String {
    crate::status::format_utc(unix_ms, false)
}
