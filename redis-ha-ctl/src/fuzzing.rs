//! What the `cargo fuzz` targets (`fuzz/`, outside the workspace) need of the crate's
//! internals, and nothing else: hidden from the docs, not an API to build on.

use std::{net::Ipv4Addr, path::Path};

use crate::config::{Config, ConfigError, Resolver};

/// Resolves no name: a fuzz run must not query DNS (slow, and different from one run to the
/// next), so backends given by name fail as a name that does not resolve does.
struct NoResolver;

impl Resolver for NoResolver {
    fn resolve(&self, name: &str) -> Result<Ipv4Addr, String> {
        Err(format!(
            "{name} does not resolve: names are not looked up while fuzzing"
        ))
    }
}

/// Parses and validates config text as `check-config` does (an unreadable `*_file` is noted
/// beside the config rather than failing it), without resolving names.
pub fn check_config(path: &Path, text: &str) -> Result<(Config, Vec<ConfigError>), ConfigError> {
    Config::parse_for_check(path, text, &NoResolver)
}

/// A peer datagram carrying `body` with a valid MAC under `secret`.
pub fn peer_datagram(secret: &str, body: &[u8]) -> Vec<u8> {
    crate::peer::authenticated(secret.as_bytes(), body)
}
