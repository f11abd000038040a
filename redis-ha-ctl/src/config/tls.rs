//! `[service.tls]`: the controller talks TLS to a service's Redis servers (`tls-port`), trusting
//! only the configured CA and, for `tls-auth-clients yes`, presenting a client certificate.
//!
//! The files are read and parsed at validation, so a wrong path, a PEM file of the wrong kind
//! or a key that does not match its certificate is refused at start (and by `check-config`)
//! with the key that names it, rather than showing up later as probes that all fail.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::validate::{Problem, SecretFiles, problem};

/// How a service's Redis servers are reached over TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RedisTlsConfig {
    /// PEM certificates of the CA(s) that signed the servers' certificates (Redis's
    /// `tls-ca-cert-file`); the only ones trusted: the system's store is not used.
    pub ca_file: PathBuf,
    /// The controller's client certificate (PEM chain), for servers with `tls-auth-clients`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM), kept from other users like a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name checked in every server's certificate (and sent as SNI). Unset: the backend's
    /// address, which the certificate must then list as an IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub ca_file: Spanned<String>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
}

impl RedisTlsConfig {
    /// The rustls client config these files make. Validation has read them once; this reads
    /// them again where a connection needs them, so the error says which file changed since.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let roots = read_ca(&self.ca_file)?;
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((read_chain(cert)?, read_key(key)?)),
            _ => None,
        };
        build(roots, identity)
    }

    /// The name to check in the certificate of the server at `addr`: `server_name`, else the
    /// backend's host name when the config gives it by name (`host`), else its address.
    pub fn server_name(&self, addr: std::net::Ipv4Addr, host: Option<&str>) -> ServerName<'static> {
        let ip = ServerName::IpAddress(std::net::IpAddr::V4(addr).into());
        // Validation checked server_name parses, and a backend's host name is a DNS name.
        match self.server_name.as_deref().or(host) {
            Some(name) => ServerName::try_from(name.to_owned()).unwrap_or(ip),
            None => ip,
        }
    }
}

/// `service[i].tls`, its files read and checked; an unreadable file is deferred like a
/// `secret_file` when `check-config` runs on another host than the one deployed.
pub(super) fn validate_tls(
    raw: &Spanned<RawTls>,
    prefix: &str,
    secret_files: &mut SecretFiles,
) -> Result<RedisTlsConfig, Problem> {
    let t = raw.get_ref();
    let key = |k: &str| format!("{prefix}.{k}");
    let mut deferred = false;
    let mut read = |file: &Spanned<String>,
                    name: &str,
                    reader: &dyn Fn(&Path) -> Result<(), FileError>|
     -> Result<(), Problem> {
        deferred |= check_file(file, &key(name), secret_files, reader)?;
        Ok(())
    };
    read(&t.ca_file, "ca_file", &|p| {
        read_ca(p).map(drop).map_err(kind(p))
    })?;
    match (&t.cert_file, &t.key_file) {
        (None, None) => {}
        (Some(cert), Some(key_file)) => {
            read(cert, "cert_file", &|p| {
                read_chain(p).map(drop).map_err(kind(p))
            })?;
            read(key_file, "key_file", &|p| {
                check_key_mode(p)?;
                read_key(p).map(drop).map_err(kind(p))
            })?;
        }
        (Some(only), None) | (None, Some(only)) => {
            let (set, unset) = if t.cert_file.is_some() {
                ("cert_file", "key_file")
            } else {
                ("key_file", "cert_file")
            };
            return Err(problem(
                only,
                key(set),
                format!("{set} is set but {unset} is not: a client certificate needs both"),
            ));
        }
    }
    if let Some(name) = &t.server_name
        && ServerName::try_from(name.get_ref().as_str()).is_err()
    {
        return Err(problem(
            name,
            key("server_name"),
            format!(
                "{:?} is neither a DNS name nor an IP address",
                name.get_ref()
            ),
        ));
    }
    let tls = RedisTlsConfig {
        ca_file: PathBuf::from(t.ca_file.get_ref()),
        cert_file: t.cert_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
        key_file: t.key_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
        server_name: t.server_name.as_ref().map(|n| n.get_ref().clone()),
    };
    // The files parse one by one; together they must also make a config (the key must be the
    // certificate's).
    if !deferred && let Err(e) = tls.client_config() {
        let at = t.key_file.as_ref().unwrap_or(&t.ca_file);
        return Err(problem(at, key("key_file"), e));
    }
    Ok(tls)
}

/// Reads `file` with `reader`; `Ok(true)` when it could not be read and `secret_files` defers
/// that (`check-config` on another host).
pub(super) fn check_file(
    file: &Spanned<String>,
    key: &str,
    secret_files: &mut SecretFiles,
    reader: &dyn Fn(&Path) -> Result<(), FileError>,
) -> Result<bool, Problem> {
    match reader(Path::new(file.get_ref())) {
        Ok(()) => Ok(false),
        Err(FileError::Unreadable(e)) => match secret_files {
            SecretFiles::Read => Err(problem(file, key, e)),
            SecretFiles::Defer(list) => {
                list.push(problem(file, key, e));
                Ok(true)
            }
        },
        Err(FileError::Invalid(e)) => Err(problem(file, key, e)),
    }
}

pub(super) enum FileError {
    /// Missing or unreadable here: deferred by `check-config`.
    Unreadable(String),
    /// Read, but not what the key asks for.
    Invalid(String),
}

/// Tells an unreadable file (which `check-config` may defer) from one read but wrong.
pub(super) fn kind(path: &Path) -> impl Fn(String) -> FileError + '_ {
    move |e| {
        if std::fs::metadata(path).is_err() || std::fs::read(path).is_err() {
            FileError::Unreadable(e)
        } else {
            FileError::Invalid(e)
        }
    }
}

/// A private key others may read is no longer private (see `secret.rs` for the same rule).
pub(super) fn check_key_mode(path: &Path) -> Result<(), FileError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| FileError::Unreadable(format!("cannot read {path:?}: {e}")))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & super::secret::FORBIDDEN != 0 {
        return Err(FileError::Invalid(format!(
            "{path:?} has mode {mode:04o}: other users may read or change the private key; \
             run `chmod 600 {}` (or 640 for a group that must read it)",
            path.display()
        )));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))
}

pub(super) fn read_ca(path: &Path) -> Result<RootCertStore, String> {
    let certs = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{path:?}: not a usable CA certificate: {e}"))?;
    }
    Ok(roots)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    read_certs(path)
}

pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path:?}: unreadable PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{path:?} holds no certificate (a PEM `BEGIN CERTIFICATE` block)"
        ));
    }
    Ok(certs)
}

pub(super) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{path:?} holds no usable private key (PEM): {e}"))
}

/// The one crypto provider of every TLS config (Redis client, API server), named rather
/// than taken from the process default, so that another crate enabling a second provider
/// cannot make the choice ambiguous at run time.
#[expect(
    deprecated,
    reason = "ring lacks the post-quantum key exchanges rustls now prefers; it builds with a C \
              compiler alone where aws-lc-rs needs far longer builds, and Redis's OpenSSL \
              negotiates X25519 or P-256 with it. Moving to aws-lc-rs is one change here"
)]
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn build(roots: RootCertStore, identity: Option<Identity>) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the client certificate and key do not go together: {e}"))?,
    };
    Ok(Arc::new(config))
}
