//! Backends given by name: how they are spelled, when a name is refused, what it resolves to,
//! and how check-config shows it.

use std::path::Path;

use super::*;

const NAMED: &str = r#"[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
resolve_hostnames = true
backends = ["redis1.internal:6379", "Redis2.Internal:6379", "198.18.1.13:6379"]
"#;

const HOSTS: FixedHosts = FixedHosts(&[
    ("redis1.internal", "198.18.1.11"),
    ("redis2.internal", "198.18.1.12"),
]);

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_resolving(Path::new("named.toml"), text, &HOSTS)
}

/// Line, key and message of the validation error `text` must give.
fn err(text: &str) -> (usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            line, key, message, ..
        }) => (line, key, message),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn host_port_and_ip_port_are_both_backends() {
    assert_eq!(
        BackendSpec::parse("198.18.1.11:6379"),
        Ok(BackendSpec::Addr("198.18.1.11:6379".parse().unwrap()))
    );
    assert_eq!(
        BackendSpec::parse("Redis1.internal:6380"),
        Ok(BackendSpec::Host {
            name: "redis1.internal".into(),
            port: 6380
        })
    );
    assert_eq!(
        BackendSpec::parse("localhost:1"),
        Ok(BackendSpec::Host {
            name: "localhost".into(),
            port: 1
        })
    );
    // A mistyped address is not sent to DNS as a name; no port, a bad port, or characters
    // no host name has are refused.
    for bad in [
        "198.18.1.300:6379",
        "redis1.internal",
        "redis1.internal:",
        "redis1.internal:65536",
        "redis_1.internal:6379",
        "-redis1:6379",
        "redis1..internal:6379",
        ":6379",
        "[::1]:6379",
    ] {
        let e = BackendSpec::parse(bad).unwrap_err();
        assert!(
            e.contains("not an IPv4 address:port or a host:port"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn names_resolve_at_load_and_are_kept_for_check_config() {
    let c = parse(NAMED).unwrap();
    let s = &c.services[0];
    assert_eq!(
        s.backends,
        ["198.18.1.11:6379", "198.18.1.12:6379", "198.18.1.13:6379"]
            .map(|a| a.parse::<SocketAddrV4>().unwrap())
    );
    assert_eq!(s.backend_name(s.backends[1]), Some("redis2.internal"));
    assert_eq!(s.backend_name(s.backends[2]), None);
    assert!(s.resolve_hostnames && !s.announce_hostnames);

    let shown = c.effective_toml().unwrap();
    assert!(
        shown.contains(
            r#"backends = ["redis1.internal:6379", "redis2.internal:6379", "198.18.1.13:6379"]"#
        ),
        "{shown}"
    );
    assert!(
        shown.contains("# service[0].backends[0]: redis1.internal resolves to 198.18.1.11"),
        "{shown}"
    );
    assert!(shown.contains("resolve_hostnames = true\nannounce_hostnames = false"));
    // What check-config writes reads back the same.
    assert_eq!(parse(&shown).unwrap(), c);
}

#[test]
fn a_name_is_refused_without_resolve_hostnames() {
    let (line, key, msg) = err(&NAMED.replace("resolve_hostnames = true\n", ""));
    assert_eq!((line, key.as_str()), (6, "service[0].backends[0]"));
    assert!(msg.contains("set resolve_hostnames = true"), "{msg}");
}

#[test]
fn announce_hostnames_needs_resolve_hostnames() {
    let text = NAMED
        .replace("resolve_hostnames = true", "announce_hostnames = true")
        .replace(
            "\"redis1.internal:6379\", \"Redis2.Internal:6379\"",
            "\"198.18.1.11:6379\"",
        );
    let (line, key, msg) = err(&text);
    assert_eq!((line, key.as_str()), (6, "service[0].announce_hostnames"));
    assert!(msg.contains("needs resolve_hostnames = true"), "{msg}");
}

#[test]
fn a_name_that_does_not_resolve_stops_the_load_naming_it() {
    let (line, key, msg) = err(&NAMED.replace("Redis2.Internal", "redis9.internal"));
    assert_eq!((line, key.as_str()), (7, "service[0].backends[1]"));
    assert!(
        msg.contains("redis9.internal does not resolve") && msg.contains("/etc/hosts"),
        "{msg}"
    );
}

#[test]
fn two_names_of_one_node_are_one_backend_listed_twice() {
    let text = NAMED.replace("198.18.1.13:6379", "198.18.1.11:6379");
    let (line, key, msg) = err(&text);
    assert_eq!((line, key.as_str()), (7, "service[0].backends[2]"));
    assert!(msg.contains("198.18.1.11:6379 is listed twice"), "{msg}");
    let text = NAMED.replace("Redis2.Internal", "redis1.internal");
    let (_, key, msg) = err(&text);
    assert_eq!(key, "service[0].backends[1]");
    assert!(msg.contains("(redis1.internal resolves to it)"), "{msg}");
}

/// With announce_hostnames, an event names a backend given by name as Sentinel does:
/// `+switch-master <name> <oldhost> <oldport> <newhost> <newport>`.
#[test]
fn events_announce_names_only_when_asked() {
    let mut c = parse(&NAMED.replace(
        "resolve_hostnames = true",
        "resolve_hostnames = true\nannounce_hostnames = true",
    ))
    .unwrap();
    let s = &mut c.services[0];
    let switch = "mymaster 198.18.1.11 6379 198.18.1.13 6379";
    assert_eq!(
        s.announce_in(switch),
        "mymaster redis1.internal 6379 198.18.1.13 6379"
    );
    assert_eq!(
        s.announce_in("slave 198.18.1.12:6379 198.18.1.12 6379 @ mymaster 198.18.1.11 6379"),
        "slave redis2.internal:6379 redis2.internal 6379 @ mymaster redis1.internal 6379"
    );
    // Another port of the same address is another node, not the named one.
    assert_eq!(
        s.announce_in("mymaster 198.18.1.11 6390"),
        "mymaster 198.18.1.11 6390"
    );
    s.announce_hostnames = false;
    assert_eq!(s.announce_in(switch), switch);
    assert_eq!(s.announced_host(s.backends[0]), "198.18.1.11");
}

/// check-config on a host where a name does not resolve (`.invalid` never does) shows the
/// whole config, then that problem, naming the key; it shows no made-up address for it.
#[test]
fn check_config_shows_a_name_that_does_not_resolve_as_such() {
    let path = std::env::temp_dir().join(format!("redis-ha-hosts-{}.toml", std::process::id()));
    let text = NAMED
        .replace("redis1.internal", "198.18.1.11")
        .replace("Redis2.Internal", "nosuch.invalid");
    std::fs::write(&path, text).unwrap();
    let loaded = Config::load_for_check(&path);
    std::fs::remove_file(&path).unwrap();
    let (cfg, deferred) = loaded.unwrap();
    let [ConfigError::Invalid { key, message, .. }] = &deferred[..] else {
        panic!("expected one deferred problem, got {deferred:?}");
    };
    assert_eq!(key, "service[0].backends[1]");
    assert!(
        message.contains("nosuch.invalid does not resolve"),
        "{message}"
    );
    let shown = crate::commands::effective_config(&cfg).unwrap();
    assert!(
        shown.contains("# service[0].backends[1]: nosuch.invalid does not resolve on this host"),
        "{shown}"
    );
    assert!(
        shown.contains("not known here, a backend name does not resolve"),
        "{shown}"
    );
    assert!(!shown.contains("0.0.0.0"), "{shown}");
}
