//! The effective config as TOML, for `redis-ha-ctl check-config`: written by serialising the
//! validated config, so a key added to a section shows up without anyone remembering to print
//! it.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{Config, DataplaneConfig, HaConfig, NatMode};

impl Config {
    /// Every key with the value it has, defaults filled in, as TOML an operator can diff or
    /// reuse; the secret and the Redis passwords are replaced by placeholders. Then, as
    /// comments, what the file leaves out and what that means, with the keys of an absent
    /// section and their defaults, ready to uncomment.
    pub fn effective_toml(&self) -> Result<String, toml::ser::Error> {
        let mut shown = self.clone();
        if let Some(c) = &mut shown.controller {
            c.secret = hidden(&c.secret, c.secret_file.as_deref());
            let api = &mut c.api;
            if let Some(pass) = &mut api.requirepass {
                *pass = hidden(pass, api.requirepass_file.as_deref());
            }
            for u in &mut api.users {
                u.password = hidden(&u.password, u.password_file.as_deref());
            }
        }
        for s in &mut shown.services {
            if let Some(auth) = &mut s.failover.auth {
                auth.password = "<not shown>".into();
            }
        }
        let mut out = toml::to_string(&shown)?;
        out += &resolved_names(&self.services);

        let mut unset = String::new();
        // Writing to a String cannot fail.
        let mut note =
            |key: &str, meaning: &str| _ = writeln!(unset, "# {key}: not set: {meaning}");
        match &self.controller {
            None => note("[controller]", "this node runs no controller"),
            Some(c) => {
                if c.metrics_listen.is_none() {
                    note("controller.metrics_listen", "no /metrics, no status page");
                }
                if c.api.requirepass.is_none() {
                    note(
                        "controller.requirepass",
                        if c.api.required() {
                            "only the named users (controller.users) may use the API"
                        } else {
                            "anyone who can connect to the API may fail over: a trusted network only"
                        },
                    );
                }
                if c.api.users.is_empty() {
                    note("controller.users", "no named API users");
                }
                match &c.tls {
                    None => {
                        let plain = "the API is served in plain TCP on listen only";
                        note("controller.tls", plain);
                        for key in ["listen", "cert_file", "key_file", "ca_file"] {
                            note(&format!("controller.tls.{key}"), plain);
                        }
                    }
                    Some(t) if t.ca_file.is_none() => note(
                        "controller.tls.ca_file",
                        "TLS clients need no certificate (AUTH still applies)",
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(dp) = &self.dataplane
            && dp.nat_address.is_none()
        {
            let meaning = match dp.nat {
                NatMode::Full => format!(
                    "translated connections come from the first IPv4 address of {}, found at load",
                    dp.interfaces[0]
                ),
                NatMode::Destination => "used only with nat = \"full\"".to_owned(),
            };
            note("dataplane.nat_address", &meaning);
        }
        for (i, s) in self.services.iter().enumerate() {
            match &s.failover.auth {
                None => note(
                    &format!("service[{i}].auth"),
                    "probes and commands do not AUTH",
                ),
                Some(a) if a.username.is_none() => note(
                    &format!("service[{i}].auth.username"),
                    "AUTH with the password alone (requirepass)",
                ),
                Some(_) => {}
            }
            let tls = |key: &str| format!("service[{i}].tls.{key}");
            match &s.tls {
                None => {
                    note(
                        &format!("service[{i}].tls"),
                        "probes and commands use plain TCP",
                    );
                    note(
                        &tls("ca_file"),
                        "probes and commands use plain TCP ([service.tls] absent)",
                    );
                    note(&tls("cert_file"), "no client certificate");
                    note(&tls("key_file"), "no client certificate");
                    note(
                        &tls("server_name"),
                        "each backend's certificate must list its host name or IP address, as backends gives it",
                    );
                }
                Some(t) => {
                    if t.cert_file.is_none() {
                        note(
                            &tls("cert_file"),
                            "no client certificate (servers with tls-auth-clients yes refuse)",
                        );
                        note(&tls("key_file"), "no client certificate");
                    }
                    if t.server_name.is_none() {
                        note(
                            &tls("server_name"),
                            "each backend's certificate must list its host name or IP address, as backends gives it",
                        );
                    }
                }
            }
        }
        if self.dataplane.is_none() {
            unset += &absent_section(
                "dataplane",
                "this node runs no data plane (a controller-only node)",
                "interfaces",
                &DataplaneConfig::default(),
            )?;
        }
        if self.ha.is_none() {
            unset += &absent_section(
                "ha",
                "this node never holds the floating addresses",
                "addresses",
                &HaConfig::default(),
            )?;
        }
        if !unset.is_empty() {
            out += "\n# Left out of the file, and what that means:\n";
            out += &unset;
        }
        Ok(out)
    }
}

/// What each backend name resolves to on this host now, as comments: the file keeps the
/// names, the operator sees the addresses the probes and the data plane would use.
fn resolved_names(services: &[super::ServiceConfig]) -> String {
    let mut out = String::new();
    for (i, s) in services.iter().enumerate() {
        for (j, (spec, addr)) in s.backend_specs.iter().zip(&s.backends).enumerate() {
            let super::BackendSpec::Host { name, .. } = spec else {
                continue;
            };
            let now = if addr.ip().is_unspecified() {
                "does not resolve on this host".to_owned()
            } else {
                format!("resolves to {}", addr.ip())
            };
            // Writing to a String cannot fail.
            _ = writeln!(out, "# service[{i}].backends[{j}]: {name} {now}");
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("\n# Backend names, resolved by this host (again every second while running):\n{out}")
}

/// A secret as check-config shows it: its length and where it comes from, never itself.
fn hidden(secret: &str, file: Option<&std::path::Path>) -> String {
    match file {
        Some(f) if secret.is_empty() => format!("<read from {} at start>", f.display()),
        Some(f) => format!(
            "<{} characters read from {}, not shown>",
            secret.chars().count(),
            f.display()
        ),
        None => format!("<{} characters, not shown>", secret.chars().count()),
    }
}

/// A note that section `name` is absent, then the section with its defaults, commented out.
/// `required` is the key without a default, shown empty.
fn absent_section(
    name: &str,
    meaning: &str,
    required: &str,
    defaults: &impl Serialize,
) -> Result<String, toml::ser::Error> {
    let toml = toml::to_string(&BTreeMap::from([(name, defaults)]))?;
    let mut out = format!(
        "# [{name}]: not set: {meaning}.\n# Its keys, with their defaults ({required} has none):\n"
    );
    for line in toml.lines() {
        out += &format!("# {line}\n");
    }
    Ok(out)
}
