//! `[controller.tls]`: the Sentinel-compatible API also served in TLS on a port of its own, as
//! Sentinel's `tls-port` (with `tls-cert-file`, `tls-key-file` and, for `tls-auth-clients
//! yes`, `tls-ca-cert-file`). The plain port (`listen`) stays: it is also the peers' UDP port.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ServerConfig, server::WebPkiClientVerifier};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    tls::{check_file, check_key_mode, crypto_provider, kind, read_ca, read_certs, read_key},
    validate::{Problem, SecretFiles, problem},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiTlsConfig {
    /// Where the API is served in TLS (Sentinel's `tls-port`).
    pub listen: SocketAddr,
    /// The API's certificate chain (PEM); clients check it against their CA.
    pub cert_file: PathBuf,
    /// Its private key (PEM), kept from other users like a secret.
    pub key_file: PathBuf,
    /// Set: clients must present a certificate this CA signed (Sentinel's
    /// `tls-auth-clients yes`). Unset: any client may connect, and AUTH still applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiTls {
    pub listen: Spanned<String>,
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
    pub ca_file: Option<Spanned<String>>,
}

impl ApiTlsConfig {
    /// The rustls server config these files make (read again at each start).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let chain = read_certs(&self.cert_file)?;
        let key = read_key(&self.key_file)?;
        let builder = ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    read_ca(ca)?.into(),
                    crypto_provider(),
                )
                .build()
                .map_err(|e| format!("{ca:?}: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
        Ok(Arc::new(config))
    }
}

/// `controller.tls`; `plain` is the plain API's address, which the TLS port may not reuse.
pub(super) fn validate_api_tls(
    raw: &Spanned<RawApiTls>,
    plain: SocketAddr,
    secret_files: &mut SecretFiles,
) -> Result<ApiTlsConfig, Problem> {
    let t = raw.get_ref();
    let key = |k: &str| format!("controller.tls.{k}");
    let listen = t.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
        problem(
            &t.listen,
            key("listen"),
            format!("{:?} is not an address:port", t.listen.get_ref()),
        )
    })?;
    if listen.port() == plain.port() {
        return Err(problem(
            &t.listen,
            key("listen"),
            format!(
                "port {} is controller.listen's: the TLS port needs its own",
                listen.port()
            ),
        ));
    }
    let mut deferred = check_file(&t.cert_file, &key("cert_file"), secret_files, &|p| {
        read_certs(p).map(drop).map_err(kind(p))
    })?;
    deferred |= check_file(&t.key_file, &key("key_file"), secret_files, &|p: &Path| {
        check_key_mode(p)?;
        read_key(p).map(drop).map_err(kind(p))
    })?;
    if let Some(ca) = &t.ca_file {
        deferred |= check_file(ca, &key("ca_file"), secret_files, &|p| {
            read_ca(p).map(drop).map_err(kind(p))
        })?;
    }
    let tls = ApiTlsConfig {
        listen,
        cert_file: PathBuf::from(t.cert_file.get_ref()),
        key_file: PathBuf::from(t.key_file.get_ref()),
        ca_file: t.ca_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
    };
    if !deferred && let Err(e) = tls.server_config() {
        return Err(problem(&t.key_file, key("key_file"), e));
    }
    Ok(tls)
}
