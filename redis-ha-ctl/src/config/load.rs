//! Reading a config file: the raw sections as the file spells them, each value with its place
//! in the text, and the errors that name that place.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Config, RedisAuth, XdpMode,
    hosts::{Resolver, SystemResolver},
    validate::{Problem, SecretFiles, validate},
};
use crate::failover::ReadFromMaster;

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// e.g. `service[1].vip` (empty when the problem is not one key's).
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in error messages. Backends
    /// given by name are resolved by the system's resolver.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::parse_resolving(path, text, &SystemResolver)
    }

    /// Like [`Config::parse`], with backend names resolved by `resolver`.
    pub fn parse_resolving(
        path: &Path,
        text: &str,
        resolver: &dyn Resolver,
    ) -> Result<Config, ConfigError> {
        Self::parse_with(path, text, SecretFiles::Read, resolver)
    }

    /// Like [`Config::load`] for `check-config`, which may run on another host than the one
    /// deployed: a `secret_file` that cannot be read here comes back as a problem beside the
    /// config (whose secret is then empty) instead of hiding every other key. So does a
    /// backend name that does not resolve here (its address is then shown as 0.0.0.0).
    pub fn load_for_check(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_for_check(path, &text, &SystemResolver)
    }

    /// [`Config::load_for_check`] on text already read, with names resolved by `resolver`.
    pub(crate) fn parse_for_check(
        path: &Path,
        text: &str,
        resolver: &dyn Resolver,
    ) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let mut deferred = Vec::new();
        let config = Self::parse_with(path, text, SecretFiles::Defer(&mut deferred), resolver)?;
        let deferred = deferred
            .into_iter()
            .map(|p| invalid(path, text, p))
            .collect();
        Ok((config, deferred))
    }

    fn parse_with(
        path: &Path,
        text: &str,
        secrets: SecretFiles,
        resolver: &dyn Resolver,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let problem = Problem {
                span: e.span().unwrap_or(0..0),
                key: String::new(),
                message: e.message().trim_end().replace('\n', " "),
            };
            invalid(path, text, problem)
        })?;
        validate(raw, secrets, resolver).map_err(|p| invalid(path, text, p))
    }
}

fn invalid(path: &Path, text: &str, Problem { span, key, message }: Problem) -> ConfigError {
    let (line, column) = line_col(text, span.start);
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        column,
        key,
        message,
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

// The file as written. A key the file may leave out is an `Option` here, so that validation
// fills it from the one place defaults are stated (see the module `config`), and so that a
// problem with a value the file did not write can be pointed at its section instead.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub dataplane: Option<Spanned<RawDataplane>>,
    pub controller: Option<Spanned<RawController>>,
    pub ha: Option<Spanned<RawHa>>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    pub interfaces: Spanned<Vec<Spanned<String>>>,
    pub xdp_mode: Option<XdpMode>,
    pub pin_dir: Option<Spanned<String>>,
    pub client_networks: Option<Vec<Spanned<String>>>,
    pub backend_interfaces: Option<Vec<Spanned<String>>>,
    /// Signed, so that a negative size gets our range message rather than serde's.
    pub flow_table_size: Option<Spanned<i64>>,
    pub veth_peer_redirect: Option<bool>,
    pub nat: Option<super::NatMode>,
    pub nat_address: Option<Spanned<String>>,
    pub nat_ports: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawController {
    pub id: Spanned<String>,
    pub listen: Spanned<String>,
    /// No peers is a valid (single-controller) setup, not a default to choose.
    #[serde(default)]
    pub peers: Vec<Spanned<RawPeer>>,
    pub secret: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub state_file: Option<Spanned<String>>,
    pub probe_interval_ms: Option<Spanned<u64>>,
    // The API's limits (`api_limits`); signed, so a negative value gets the range message.
    pub maxclients: Option<Spanned<i64>>,
    pub client_idle_timeout_ms: Option<Spanned<i64>>,
    pub tcp_keepalive_s: Option<Spanned<i64>>,
    pub client_output_buffer_limit_normal_bytes: Option<Spanned<i64>>,
    pub client_output_buffer_limit_pubsub_hard_bytes: Option<Spanned<i64>>,
    pub client_output_buffer_limit_pubsub_soft_bytes: Option<Spanned<i64>>,
    pub client_output_buffer_limit_pubsub_soft_seconds: Option<Spanned<i64>>,
    pub client_max_subscriptions: Option<Spanned<i64>>,
    pub client_max_request_bytes: Option<Spanned<i64>>,
    pub client_max_request_args: Option<Spanned<i64>>,
    pub metrics_listen: Option<Spanned<String>>,
    pub requirepass: Option<Spanned<String>>,
    pub requirepass_file: Option<Spanned<String>>,
    #[serde(default)]
    pub users: Vec<Spanned<super::api_auth::RawApiUser>>,
    pub allow_unauthenticated_reads: Option<bool>,
    pub tls: Option<Spanned<super::api_tls::RawApiTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub id: Spanned<String>,
    pub addr: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    /// Wider than the `u8` it becomes, so that 0 and 256 get the same range message.
    pub priority: Option<Spanned<u32>>,
    pub preempt: Option<bool>,
    pub heartbeat_ms: Option<Spanned<u64>>,
    pub down_after_ms: Option<Spanned<u64>>,
    pub addresses: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Spanned<String>,
    pub vip: Spanned<String>,
    pub write_port: Spanned<u16>,
    pub read_port: Spanned<u16>,
    pub backends: Spanned<Vec<Spanned<String>>>,
    pub quorum: Option<Spanned<usize>>,
    pub down_after_ms: Option<Spanned<u64>>,
    pub failover_timeout_ms: Option<Spanned<u64>>,
    pub parallel_syncs: Option<Spanned<usize>>,
    pub max_replica_lag_ms: Option<u64>,
    pub read_from_master: Option<ReadFromMaster>,
    pub auth: Option<RedisAuth>,
    pub tls: Option<Spanned<super::tls::RawTls>>,
    pub resolve_hostnames: Option<bool>,
    pub announce_hostnames: Option<Spanned<bool>>,
}
