//! What one API client may take, enforced: its unread replies ([`Output`], Redis's
//! `client-output-buffer-limit`), the reasons a client is closed ([`Closed`]), the logs of the
//! limits hit (rate-limited: a flood of offenders must not flood the journal), TCP keepalive,
//! and fitting `maxclients` in the process's file descriptor limit.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::{net::TcpStream, time::Instant};
use tracing::{info, warn};

use crate::{config::ApiLimits, resp::ProtocolError};

/// Why the controller closed a client; the metric label and the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Closed {
    IdleTimeout,
    OutputBuffer { pubsub: bool, pending: usize },
    Protocol(ProtocolError),
}

impl Closed {
    /// The `reason` label of `redis_ha_api_clients_closed_total`.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Closed::IdleTimeout => "idle-timeout",
            Closed::OutputBuffer { pubsub: false, .. } => "output-buffer-normal",
            Closed::OutputBuffer { pubsub: true, .. } => "output-buffer-pubsub",
            Closed::Protocol(e) if e.is_size_limit() => "request-too-large",
            Closed::Protocol(_) => "protocol-error",
        }
    }

    /// What happened, with the limit's key and value.
    pub(super) fn describe(&self, limits: &ApiLimits) -> String {
        match self {
            Closed::IdleTimeout => format!(
                "idle for client_idle_timeout_ms = {}",
                limits.client_idle_timeout_ms
            ),
            Closed::OutputBuffer {
                pubsub: false,
                pending,
            } => format!(
                "{pending} bytes of replies unread, over \
                 client_output_buffer_limit_normal_bytes = {}",
                limits.client_output_buffer_limit_normal_bytes
            ),
            Closed::OutputBuffer {
                pubsub: true,
                pending,
            } => format!(
                "subscriber with {pending} bytes unread, over \
                 client_output_buffer_limit_pubsub_hard_bytes = {} or over \
                 client_output_buffer_limit_pubsub_soft_bytes = {} for {} s",
                limits.client_output_buffer_limit_pubsub_hard_bytes,
                limits.client_output_buffer_limit_pubsub_soft_bytes,
                limits.client_output_buffer_limit_pubsub_soft_seconds
            ),
            Closed::Protocol(e) if e.is_size_limit() => format!(
                "protocol error: {e} (client_max_request_bytes = {}, \
                 client_max_request_args = {})",
                limits.client_max_request_bytes, limits.client_max_request_args
            ),
            Closed::Protocol(e) => format!("protocol error: {e}"),
        }
    }
}

/// Replies not yet taken by the socket: appended to, and written from the front.
#[derive(Default)]
pub(super) struct Output {
    buf: Vec<u8>,
    /// `buf[..sent]` is written.
    sent: usize,
    /// Since when a subscriber's pending output has been over the soft limit.
    over_soft_since: Option<Instant>,
}

/// A buffer this big is let go of once written, so one burst does not pin its memory for the
/// connection's life.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Output {
    /// Where replies are appended.
    pub(super) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub(super) fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    pub(super) fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// `n` more bytes were written. The written front is dropped once it is at least half the
    /// buffer, so moving what is left costs at most one move per byte overall.
    pub(super) fn written(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        } else if self.sent >= self.buf.len() / 2 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// The limit the pending output passed, if any: the hard limit of the client's class, or,
    /// for a subscriber, the soft one for longer than its period.
    pub(super) fn check(
        &mut self,
        limits: &ApiLimits,
        pubsub: bool,
        now: Instant,
    ) -> Option<Closed> {
        let pending = self.pending();
        let over = |limit: u64| u64::try_from(pending).unwrap_or(u64::MAX) > limit;
        let closed = Closed::OutputBuffer { pubsub, pending };
        if !pubsub {
            self.over_soft_since = None;
            return over(limits.client_output_buffer_limit_normal_bytes).then_some(closed);
        }
        if over(limits.client_output_buffer_limit_pubsub_hard_bytes) {
            return Some(closed);
        }
        if !over(limits.client_output_buffer_limit_pubsub_soft_bytes) {
            self.over_soft_since = None;
            return None;
        }
        let since = *self.over_soft_since.get_or_insert(now);
        (now.duration_since(since) >= limits.pubsub_soft_duration()).then_some(closed)
    }

    /// When a subscriber over its soft limit is to be closed if it stays there.
    pub(super) fn soft_deadline(&self, limits: &ApiLimits) -> Option<Instant> {
        self.over_soft_since
            .map(|since| since + limits.pubsub_soft_duration())
    }
}

/// At most one warning per kind of limit per period, with how many went unlogged in between:
/// the metrics count every one.
pub struct LimitLog {
    period: Duration,
    /// Per reason: when it was last logged, and how many were not logged since.
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Default for LimitLog {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(10),
            last: Mutex::default(),
        }
    }
}

impl LimitLog {
    /// Logs `what` (about `client`) unless `reason` was logged within the period.
    pub(super) fn warn(&self, reason: &'static str, client: &str, what: &str) {
        let now = Instant::now();
        let suppressed = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            match last.get_mut(reason) {
                Some((at, skipped)) if now.duration_since(*at) < self.period => {
                    *skipped += 1;
                    return;
                }
                Some((at, skipped)) => {
                    *at = now;
                    std::mem::take(skipped)
                }
                None => {
                    last.insert(reason, (now, 0));
                    0
                }
            }
        };
        warn!(
            reason,
            client,
            suppressed,
            "API client {client}: {what} (and {suppressed} more like it unlogged in the last {:?})",
            self.period
        );
    }
}

/// Turns on TCP keepalive as Redis does: probes after `idle`, then every third of it, 3 of
/// them, so a vanished peer is found within about twice `idle`.
pub(super) fn set_keepalive(stream: &TcpStream, idle: Duration) -> std::io::Result<()> {
    let interval = (idle / 3).max(Duration::from_secs(1));
    let params = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(3);
    socket2::SockRef::from(stream).set_tcp_keepalive(&params)
}

/// File descriptors the controller needs besides its API clients (peers, Redis connections,
/// BPF maps, the state file, HTTP clients), as Redis reserves 32 beyond `maxclients`.
const RESERVED_FDS: u64 = 256;

/// How many clients fit: raises the soft `RLIMIT_NOFILE` toward `maxclients` plus a reserve
/// (Redis does the same), and when the hard limit does not allow it, serves fewer and says so.
/// Past the limit `accept` would fail with EMFILE, and so would every probe's reconnect.
pub(super) fn fit_maxclients(maxclients: u64) -> u64 {
    let want = maxclients.saturating_add(RESERVED_FDS);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return maxclients;
    }
    if limit.rlim_cur >= want {
        return maxclients;
    }
    let raised = libc::rlimit {
        rlim_cur: want.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct; lowering is impossible here (cur < want, ≤ max).
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        limit.rlim_cur = raised.rlim_cur;
    }
    if limit.rlim_cur >= want {
        info!(
            open_files = limit.rlim_cur,
            "raised the open files limit for maxclients {maxclients}"
        );
        return maxclients;
    }
    let fits = limit.rlim_cur.saturating_sub(RESERVED_FDS).max(1);
    warn!(
        maxclients,
        serving = fits,
        open_files = limit.rlim_cur,
        "the open files limit (RLIMIT_NOFILE, LimitNOFILE= in systemd) is too low for \
         maxclients: serving at most {fits} API clients"
    );
    fits
}
