//! TLS for the testbed's Redis servers: a CA and certificates made in-process, and the
//! arguments that turn a backend into a TLS-only server (`--port 0 --tls-port`) and
//! `redis-cli` into a TLS client.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM files in a directory: a CA and one certificate (with its key) it signed, which names
/// every given address and serves as the servers' certificate, the replicas' client
/// certificate and the controllers' client certificate alike.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `tls-auth-clients`: whether a server asks clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthClients {
    Yes,
    Optional,
}

/// How the testbed's backends speak TLS ([`crate::ClusterOptions::redis_tls`]).
#[derive(Clone, Debug)]
pub struct RedisTls {
    pub files: TlsFiles,
    pub auth_clients: AuthClients,
}

impl TlsFiles {
    /// Creates the CA and a certificate for `ips` (and 127.0.0.1) in `dir`, which must exist.
    /// The key files get mode 600, which redis-ha-ctl asks of a private key.
    pub fn create(dir: &Path, name: &str, ips: &[Ipv4Addr]) -> Result<TlsFiles> {
        let ca = ca(&format!("redis-ha test CA {name}"))?;
        let key = KeyPair::generate()?;
        let mut names: Vec<String> = ips.iter().map(ToString::to_string).collect();
        names.push("127.0.0.1".to_owned());
        names.push("redis.test".to_owned());
        let cert = CertificateParams::new(names)?.signed_by(&key, &ca)?;
        let files = TlsFiles {
            ca: dir.join(format!("{name}-ca.crt")),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        write(&files.ca, &ca.pem(), 0o644)?;
        write(&files.cert, &cert.pem(), 0o644)?;
        write(&files.key, &key.serialize_pem(), 0o600)?;
        Ok(files)
    }
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

impl RedisTls {
    /// redis-server arguments after the testbed's own: TLS on `port`, no plain port, TLS
    /// replication (a later `--port` wins over the testbed's).
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let f = &self.files;
        let auth = match self.auth_clients {
            AuthClients::Yes => "yes",
            AuthClients::Optional => "optional",
        };
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &f.cert.display().to_string(),
            "--tls-key-file",
            &f.key.display().to_string(),
            "--tls-ca-cert-file",
            &f.ca.display().to_string(),
            "--tls-replication",
            "yes",
            "--tls-auth-clients",
            auth,
        ]
        .map(str::to_owned)
        .into()
    }

    /// `redis-cli` arguments for a TLS connection to such a server, with the client
    /// certificate.
    pub fn cli_args(&self) -> Vec<String> {
        let f = &self.files;
        [
            "--tls",
            "--cacert",
            &f.ca.display().to_string(),
            "--cert",
            &f.cert.display().to_string(),
            "--key",
            &f.key.display().to_string(),
        ]
        .map(str::to_owned)
        .into()
    }

    /// The `tls` key of a `[[service]]` section, inline so it can sit among the failover keys
    /// the cluster appends after the testbed's.
    pub fn service_toml(&self) -> String {
        let f = &self.files;
        format!(
            "tls = {{ ca_file = {}, cert_file = {}, key_file = {} }}\n",
            crate::testbed::toml_string(&f.ca.display().to_string()),
            crate::testbed::toml_string(&f.cert.display().to_string()),
            crate::testbed::toml_string(&f.key.display().to_string()),
        )
    }
}
