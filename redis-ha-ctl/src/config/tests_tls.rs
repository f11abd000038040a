//! `[service.tls]`: what validation accepts, and the key and line of what it refuses.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::*;

/// A directory of PEM files for one test, removed at the end (also on failure).
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("redis-ha-tls-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    }

    /// A CA, and a client certificate and key it signed: (ca, cert, key) paths.
    fn pki(&self) -> (String, String, String) {
        let ca = ca("test CA");
        let (cert, key) = leaf(&ca, &["redis-ha-ctl"]);
        (
            self.write("ca.pem", &ca.pem(), 0o644),
            self.write("client.pem", &cert, 0o644),
            self.write("client.key", &key, 0o600),
        )
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` signed by `ca`, and its key, in PEM.
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    (
        params.signed_by(&key, ca).unwrap().pem(),
        key.serialize_pem(),
    )
}

/// One service whose `[service.tls]` section has `tls` (lines 8 on).
fn config(tls: &str) -> String {
    format!(
        r#"[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["198.18.1.11:6379", "198.18.1.12:6379"]
[service.tls]
{tls}
"#
    )
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("tls.toml"), text)
}

fn err(text: &str) -> (usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            line, key, message, ..
        }) => (line, key, message),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn a_ca_alone_or_with_a_client_certificate_and_a_server_name_is_accepted() {
    let files = Files::new("good");
    let (ca, cert, key) = files.pki();
    let c = parse(&config(&format!("ca_file = {ca:?}"))).unwrap();
    let tls = c.services[0].tls.as_ref().unwrap();
    assert_eq!(tls.ca_file, PathBuf::from(&ca));
    assert_eq!((&tls.cert_file, &tls.key_file), (&None, &None));
    // Without server_name, the backend's address is the name checked.
    assert_eq!(
        tls.server_name("198.18.1.11".parse().unwrap(), None)
            .to_str(),
        "198.18.1.11"
    );
    // A backend given by host name is checked by that name.
    assert_eq!(
        tls.server_name("198.18.1.11".parse().unwrap(), Some("redis1.internal"))
            .to_str(),
        "redis1.internal"
    );

    let c = parse(&config(&format!(
        "ca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\nserver_name = \"redis.internal\""
    )))
    .unwrap();
    let tls = c.services[0].tls.as_ref().unwrap();
    assert_eq!(tls.key_file, Some(PathBuf::from(&key)));
    assert_eq!(
        tls.server_name("198.18.1.11".parse().unwrap(), Some("redis1.internal"))
            .to_str(),
        "redis.internal"
    );
    assert!(tls.client_config().is_ok());
    // What check-config writes reads back the same.
    let written = toml::to_string(&c).unwrap();
    assert_eq!(parse(&written).unwrap(), c, "{written}");
}

#[test]
fn a_certificate_without_its_key_or_a_key_without_its_certificate_is_refused() {
    let files = Files::new("pair");
    let (ca, cert, key) = files.pki();
    let (line, k, msg) = err(&config(&format!("ca_file = {ca:?}\ncert_file = {cert:?}")));
    assert_eq!((line, k.as_str()), (9, "service[0].tls.cert_file"));
    assert!(msg.contains("key_file is not"), "{msg}");
    let (line, k, _) = err(&config(&format!("ca_file = {ca:?}\nkey_file = {key:?}")));
    assert_eq!((line, k.as_str()), (9, "service[0].tls.key_file"));
}

#[test]
fn missing_or_wrong_files_are_named_with_their_key_and_line() {
    let files = Files::new("files");
    let (ca, cert, key) = files.pki();
    let (line, k, msg) = err(&config("ca_file = \"/nonexistent/ca.pem\""));
    assert_eq!((line, k.as_str()), (8, "service[0].tls.ca_file"));
    assert!(msg.contains("cannot read \"/nonexistent/ca.pem\""), "{msg}");

    // A key where the CA should be: no certificate in it.
    let (line, k, msg) = err(&config(&format!("ca_file = {key:?}")));
    assert_eq!((line, k.as_str()), (8, "service[0].tls.ca_file"));
    assert!(msg.contains("holds no certificate"), "{msg}");

    // A certificate where the key should be.
    let not_key = files.write("not.key", &std::fs::read_to_string(&cert).unwrap(), 0o600);
    let (line, k, msg) = err(&config(&format!(
        "ca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {not_key:?}"
    )));
    assert_eq!((line, k.as_str()), (10, "service[0].tls.key_file"));
    assert!(msg.contains("no usable private key"), "{msg}");
}

#[test]
fn a_private_key_other_users_may_read_is_refused() {
    let files = Files::new("mode");
    let (ca, cert, key) = files.pki();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (line, k, msg) = err(&config(&format!(
        "ca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}"
    )));
    assert_eq!((line, k.as_str()), (10, "service[0].tls.key_file"));
    assert!(msg.contains("0644") && msg.contains("chmod 600"), "{msg}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let files = Files::new("mismatch");
    let (ca, cert, _) = files.pki();
    let other = KeyPair::generate().unwrap().serialize_pem();
    let other = files.write("other.key", &other, 0o600);
    let (line, k, msg) = err(&config(&format!(
        "ca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {other:?}"
    )));
    assert_eq!((line, k.as_str()), (10, "service[0].tls.key_file"));
    assert!(msg.contains("do not go together"), "{msg}");
}

#[test]
fn a_server_name_that_is_no_name_and_unknown_keys_are_refused() {
    let files = Files::new("name");
    let (ca, _, _) = files.pki();
    let (line, k, msg) = err(&config(&format!(
        "ca_file = {ca:?}\nserver_name = \"not a name\""
    )));
    assert_eq!((line, k.as_str()), (9, "service[0].tls.server_name"));
    assert!(msg.contains("neither a DNS name"), "{msg}");

    let (line, _, msg) = err(&config(&format!("ca_file = {ca:?}\ncafile = \"x\"")));
    assert_eq!(line, 9);
    assert!(msg.contains("cafile"), "{msg}");
}

#[test]
fn check_config_on_another_host_shows_the_config_and_the_unreadable_file() {
    let files = Files::new("check");
    let path = files.write(
        "redis-ha.toml",
        &config("ca_file = \"/etc/redis-ha/tls/ca.pem\""),
        0o644,
    );
    let (cfg, deferred) = Config::load_for_check(Path::new(&path)).unwrap();
    assert_eq!(
        cfg.services[0].tls.as_ref().unwrap().ca_file,
        PathBuf::from("/etc/redis-ha/tls/ca.pem")
    );
    let deferred: Vec<String> = deferred.iter().map(ToString::to_string).collect();
    assert!(
        matches!(&deferred[..], [one] if one.contains(":8:") && one.contains("service[0].tls.ca_file: cannot read")),
        "{deferred:?}"
    );
}

/// A `[controller]` whose `[controller.tls]` section has `tls` (lines 13 on); one controller, so a quorum of 1.
fn controller(tls: &str) -> String {
    format!(
        r#"{}[controller]
id = "c1"
listen = "198.18.2.1:26379"
secret = "a-secret-of-16-characters"
[controller.tls]
{tls}
"#,
        config("")
            .replace("[service.tls]\n", "quorum = 1\n")
            .trim_end_matches('\n')
            .to_owned()
            + "\n"
    )
}

#[test]
fn the_api_tls_port_takes_a_certificate_its_key_and_an_optional_ca() {
    let files = Files::new("api");
    let (ca, cert, key) = files.pki();
    let c = parse(&controller(&format!(
        "listen = \"0.0.0.0:26380\"\ncert_file = {cert:?}\nkey_file = {key:?}\nca_file = {ca:?}"
    )))
    .unwrap();
    let tls = c.controller.as_ref().unwrap().tls.as_ref().unwrap();
    assert_eq!(tls.listen, "0.0.0.0:26380".parse().unwrap());
    assert_eq!(tls.ca_file, Some(PathBuf::from(&ca)));
    assert!(tls.server_config().is_ok());
    let written = toml::to_string(&c).unwrap();
    assert_eq!(parse(&written).unwrap(), c, "{written}");

    // The plain API's port is taken.
    let (line, k, msg) = err(&controller(&format!(
        "listen = \"198.18.2.1:26379\"\ncert_file = {cert:?}\nkey_file = {key:?}"
    )));
    assert_eq!((line, k.as_str()), (13, "controller.tls.listen"));
    assert!(msg.contains("its own"), "{msg}");
    // A key others may read.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (line, k, msg) = err(&controller(&format!(
        "listen = \"0.0.0.0:26380\"\ncert_file = {cert:?}\nkey_file = {key:?}"
    )));
    assert_eq!((line, k.as_str()), (15, "controller.tls.key_file"));
    assert!(msg.contains("chmod 600"), "{msg}");
    // Both files are required.
    let (_, _, msg) = err(&controller(&format!(
        "listen = \"0.0.0.0:26380\"\ncert_file = {cert:?}"
    )));
    assert!(msg.contains("key_file"), "{msg}");
}
