//! `[controller]`'s limits on the clients of the Sentinel-compatible API, named after Redis's
//! own (`maxclients`, `timeout`, `tcp-keepalive`, `client-output-buffer-limit`,
//! `proto-max-bulk-len`) where one exists, so that no client can grow the controller, hold
//! every connection slot, or make it parse the same bytes over and over on the runtime that
//! also runs failovers.

use std::{ops::RangeInclusive, time::Duration};

use serde::Serialize;
use toml::Spanned;

use super::{
    load::RawController,
    validate::{Problem, problem},
};
use crate::resp::RequestLimits;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Limits of the API's clients; every key may be left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiLimits {
    /// Connections served at once; one more is answered `-ERR max number of clients reached`
    /// and closed.
    pub maxclients: u64,
    /// A client that sent nothing for this long is closed; subscribers never are (as in Redis,
    /// whose `timeout` spares Pub/Sub clients). 0: never.
    pub client_idle_timeout_ms: u64,
    /// TCP keepalive probes after this much silence, so that a client that vanished without
    /// closing (a crashed host, a dropped NAT entry) frees its slot. 0: off.
    pub tcp_keepalive_s: u64,
    /// Replies a normal client has not read yet, in bytes: past this it is closed.
    pub client_output_buffer_limit_normal_bytes: u64,
    /// Events and replies a subscriber has not read yet, in bytes: past this it is closed.
    pub client_output_buffer_limit_pubsub_hard_bytes: u64,
    /// A subscriber that stays past this many unread bytes for
    /// `client_output_buffer_limit_pubsub_soft_seconds` is closed.
    pub client_output_buffer_limit_pubsub_soft_bytes: u64,
    pub client_output_buffer_limit_pubsub_soft_seconds: u64,
    /// Channels and patterns one client may subscribe to.
    pub client_max_subscriptions: u64,
    /// Bytes of one request as sent; a longer one is a protocol error that closes the client.
    pub client_max_request_bytes: u64,
    /// Arguments of one request (the command name included); likewise.
    pub client_max_request_args: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            // Sentinel's default.
            maxclients: 10_000,
            // Redis's `timeout` is 0 (never), which lets forgotten connections pile up until
            // they hold every slot. Five minutes frees them while sparing every client that
            // queries now and then: Sentinel-aware clients (redis-py, Jedis, go-redis)
            // check a pooled connection before use and reconnect one the server closed, and a
            // subscriber waiting for `+switch-master` is never idle-closed at all.
            client_idle_timeout_ms: 300_000,
            // Redis's default: a dead peer is found within about twice this.
            tcp_keepalive_s: 300,
            // Redis leaves normal clients unlimited; one that pipelines `REDIS-HA STATUS`
            // (replies ~100 times its request) without reading would then grow the
            // controller until it is killed. 16 MiB is far above the largest reply (a full
            // status of 64 services is a few hundred KiB) yet bounds such a client.
            client_output_buffer_limit_normal_bytes: 16 * MIB,
            // Redis's `client-output-buffer-limit pubsub 32mb 8mb 60`.
            client_output_buffer_limit_pubsub_hard_bytes: 32 * MIB,
            client_output_buffer_limit_pubsub_soft_bytes: 8 * MIB,
            client_output_buffer_limit_pubsub_soft_seconds: 60,
            // Sentinel publishes a few dozen event channels; `PSUBSCRIBE *` is one.
            client_max_subscriptions: 1024,
            // Sentinel's commands carry a handful of short names, addresses and patterns.
            client_max_request_bytes: MIB,
            client_max_request_args: 1024,
        }
    }
}

impl ApiLimits {
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.client_idle_timeout_ms > 0)
            .then(|| Duration::from_millis(self.client_idle_timeout_ms))
    }

    pub fn keepalive(&self) -> Option<Duration> {
        (self.tcp_keepalive_s > 0).then(|| Duration::from_secs(self.tcp_keepalive_s))
    }

    pub fn pubsub_soft_duration(&self) -> Duration {
        Duration::from_secs(self.client_output_buffer_limit_pubsub_soft_seconds)
    }

    pub fn request(&self) -> RequestLimits {
        RequestLimits {
            max_bytes: usize::try_from(self.client_max_request_bytes).unwrap_or(usize::MAX),
            max_args: usize::try_from(self.client_max_request_args).unwrap_or(usize::MAX),
        }
    }
}

/// Checks the keys `c` sets; the others keep their default.
pub(super) fn validate(c: &Spanned<RawController>) -> Result<ApiLimits, Problem> {
    let raw = c.get_ref();
    let d = ApiLimits::default();
    let key =
        |value: &Option<Spanned<i64>>, name: &str, default: u64, range: RangeInclusive<u64>| {
            let Some(value) = value else {
                return Ok(default);
            };
            u64::try_from(*value.get_ref())
                .ok()
                .filter(|v| range.contains(v))
                .ok_or_else(|| {
                    problem(
                        value,
                        format!("controller.{name}"),
                        format!("must be between {} and {}", range.start(), range.end()),
                    )
                })
        };
    // A limit that can be 0 to turn it off accepts 0 and the range.
    let key_or_off =
        |value: &Option<Spanned<i64>>, name: &str, default: u64, range: RangeInclusive<u64>| {
            match value {
                Some(v) if *v.get_ref() == 0 => Ok(0),
                _ => key(value, name, default, range.clone()).map_err(|mut p| {
                    p.message.push_str(", or 0 for none");
                    p
                }),
            }
        };
    let limits = ApiLimits {
        maxclients: key(&raw.maxclients, "maxclients", d.maxclients, 1..=1_000_000)?,
        client_idle_timeout_ms: key_or_off(
            &raw.client_idle_timeout_ms,
            "client_idle_timeout_ms",
            d.client_idle_timeout_ms,
            100..=30 * 24 * 3600 * 1000,
        )?,
        // The kernel takes at most 32767 s (`TCP_KEEPIDLE`).
        tcp_keepalive_s: key_or_off(
            &raw.tcp_keepalive_s,
            "tcp_keepalive_s",
            d.tcp_keepalive_s,
            1..=32_767,
        )?,
        // Below 64 KiB a single status reply could close the client asking for it.
        client_output_buffer_limit_normal_bytes: key(
            &raw.client_output_buffer_limit_normal_bytes,
            "client_output_buffer_limit_normal_bytes",
            d.client_output_buffer_limit_normal_bytes,
            64 * KIB..=64 * 1024 * MIB,
        )?,
        client_output_buffer_limit_pubsub_hard_bytes: key(
            &raw.client_output_buffer_limit_pubsub_hard_bytes,
            "client_output_buffer_limit_pubsub_hard_bytes",
            d.client_output_buffer_limit_pubsub_hard_bytes,
            64 * KIB..=64 * 1024 * MIB,
        )?,
        client_output_buffer_limit_pubsub_soft_bytes: key(
            &raw.client_output_buffer_limit_pubsub_soft_bytes,
            "client_output_buffer_limit_pubsub_soft_bytes",
            d.client_output_buffer_limit_pubsub_soft_bytes,
            64 * KIB..=64 * 1024 * MIB,
        )?,
        client_output_buffer_limit_pubsub_soft_seconds: key(
            &raw.client_output_buffer_limit_pubsub_soft_seconds,
            "client_output_buffer_limit_pubsub_soft_seconds",
            d.client_output_buffer_limit_pubsub_soft_seconds,
            0..=24 * 3600,
        )?,
        client_max_subscriptions: key(
            &raw.client_max_subscriptions,
            "client_max_subscriptions",
            d.client_max_subscriptions,
            1..=1_000_000,
        )?,
        // Enough for any command the API knows, at the least.
        client_max_request_bytes: key(
            &raw.client_max_request_bytes,
            "client_max_request_bytes",
            d.client_max_request_bytes,
            KIB..=512 * MIB,
        )?,
        client_max_request_args: key(
            &raw.client_max_request_args,
            "client_max_request_args",
            d.client_max_request_args,
            16..=1_000_000,
        )?,
    };
    if limits.client_output_buffer_limit_pubsub_soft_bytes
        > limits.client_output_buffer_limit_pubsub_hard_bytes
    {
        let at = raw
            .client_output_buffer_limit_pubsub_soft_bytes
            .as_ref()
            .map_or(c.span(), Spanned::span);
        return Err(Problem {
            span: at,
            key: "controller.client_output_buffer_limit_pubsub_soft_bytes".into(),
            message: format!(
                "controller.client_output_buffer_limit_pubsub_soft_bytes: {} is above the hard \
                 limit client_output_buffer_limit_pubsub_hard_bytes ({})",
                limits.client_output_buffer_limit_pubsub_soft_bytes,
                limits.client_output_buffer_limit_pubsub_hard_bytes
            ),
        });
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::ApiLimits;
    use crate::config::{Config, ConfigError};

    fn config(keys: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[controller]\nid = \"c1\"\nlisten = \"127.0.0.1:26379\"\n\
             secret = \"0123456789abcdef-test\"\n{keys}\n\
             [[service]]\nname = \"m\"\nvip = \"198.18.0.100\"\nwrite_port = 6380\n\
             read_port = 6381\nbackends = [\"198.18.1.11:6379\"]\nquorum = 1\n"
        );
        Config::parse(Path::new("api.toml"), &text)
    }

    #[test]
    fn left_out_limits_take_their_defaults_and_zero_turns_off_timeouts() {
        let limits = config("").unwrap().controller.unwrap().api_limits;
        assert_eq!(limits, ApiLimits::default());
        assert_eq!(limits.maxclients, 10_000);
        let off = config("client_idle_timeout_ms = 0\ntcp_keepalive_s = 0")
            .unwrap()
            .controller
            .unwrap()
            .api_limits;
        assert_eq!((off.idle_timeout(), off.keepalive()), (None, None));
    }

    #[test]
    fn out_of_range_limits_name_the_line_and_key() {
        let cases = [
            ("maxclients = 0", "controller.maxclients", "between 1 and"),
            ("maxclients = -5", "controller.maxclients", "between 1 and"),
            (
                "client_idle_timeout_ms = 5",
                "controller.client_idle_timeout_ms",
                "or 0 for none",
            ),
            (
                "tcp_keepalive_s = 40000",
                "controller.tcp_keepalive_s",
                "32767",
            ),
            (
                "client_output_buffer_limit_normal_bytes = 100",
                "controller.client_output_buffer_limit_normal_bytes",
                "between 65536",
            ),
            (
                "client_output_buffer_limit_pubsub_soft_bytes = 67108864",
                "controller.client_output_buffer_limit_pubsub_soft_bytes",
                "above the hard limit",
            ),
            (
                "client_max_request_args = 2",
                "controller.client_max_request_args",
                "between 16",
            ),
        ];
        for (line, want_key, want) in cases {
            match config(line) {
                Err(ConfigError::Invalid {
                    line: at,
                    key,
                    message,
                    ..
                }) => {
                    assert_eq!((at, key.as_str()), (5, want_key), "{line}: {message}");
                    assert!(message.contains(want), "{line}: {message}");
                }
                other => panic!("{line}: expected an error, got {other:?}"),
            }
        }
    }
}
