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
//!
//! This file is the server: the listener, the connection limits and the routes. The page's
//! HTML is built in `page`, a pure function of the snapshot, so it is tested without a server.

mod page;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, sync::Arc, time::Duration};

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

pub use page::{escape, render_page};

use crate::{
    metrics::{Format, Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE},
    status::Status,
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
        .route("/", get(status_page))
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

async fn status_page(State(app): State<App>) -> Response {
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
