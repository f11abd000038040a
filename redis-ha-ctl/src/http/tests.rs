//! The page as rendered from a sample snapshot, and the server over real TCP: routes, content
//! negotiation, and how it copes with malformed and idle connections.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::page::{ago, bytes, utc};
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
