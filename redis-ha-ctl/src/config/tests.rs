//! The config's rules, its errors' places, and that what check-config writes reads back the
//! same.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use redis_ha_common::{MAX_BACKENDS, MAX_SERVICES};

use super::*;

const GOOD: &str = r#"
[dataplane]
interfaces = ["eth0", "eth1"]
xdp_mode = "native"

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["198.18.1.11:6379", "198.18.1.12:6379", "198.18.1.13:6379"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
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
fn good_config_parses_to_typed_values() {
    let c = parse(GOOD).unwrap();
    let dp = c.dataplane.unwrap();
    assert_eq!(dp.interfaces, ["eth0", "eth1"]);
    assert_eq!(dp.xdp_mode, XdpMode::Native);
    assert_eq!(dp.pin_dir, PathBuf::from("/sys/fs/bpf/redis-ha"));
    let s = &c.services[0];
    assert_eq!(s.vip, Ipv4Addr::new(198, 18, 0, 100));
    assert_eq!((s.write_port, s.read_port), (6380, 6381));
    assert_eq!(s.backends[2], "198.18.1.13:6379".parse().unwrap());
}

#[test]
fn errors_name_line_and_key() {
    let (line, key, msg) = err(&GOOD.replace("\"198.18.0.100\"", "\"198.18.0.300\""));
    assert_eq!((line, key.as_str()), (8, "service[0].vip"));
    assert!(
        msg.contains("198.18.0.300") && msg.contains("not an IPv4"),
        "{msg}"
    );

    let (line, key, _) = err(&GOOD.replace("\"198.18.1.12:6379\"", "\"198.18.1.12\""));
    assert_eq!((line, key.as_str()), (11, "service[0].backends[1]"));

    let (line, key, msg) = err(&GOOD.replace("read_port = 6381", "read_port = 6380"));
    assert_eq!((line, key.as_str()), (10, "service[0].read_port"));
    assert!(msg.contains("already used"), "{msg}");
}

#[test]
fn unknown_keys_and_bad_types_are_reported_with_their_line() {
    let (line, _, msg) = err(&GOOD.replace("write_port = 6380", "write_prot = 6380"));
    assert_eq!(line, 9);
    assert!(msg.contains("write_prot"), "{msg}");
    let (line, _, msg) = err(&GOOD.replace("write_port = 6380", "write_port = 70000"));
    assert_eq!(line, 9, "{msg}");
    let (_, _, msg) = err(&GOOD.replace("\"native\"", "\"turbo\""));
    assert!(msg.contains("turbo"), "{msg}");
}

#[test]
fn duplicates_and_limits_are_refused() {
    let twice = format!(
        "{GOOD}\n[[service]]\nname = \"mymaster\"\nvip = \"198.18.0.101\"\nwrite_port = 1\nread_port = 2\nbackends = [\"198.18.1.21:6379\"]\n"
    );
    assert_eq!(err(&twice).1, "service[1].name");
    let shared = format!(
        "{GOOD}\n[[service]]\nname = \"other\"\nvip = \"198.18.0.101\"\nwrite_port = 1\nread_port = 2\nbackends = [\"198.18.1.11:6379\"]\n"
    );
    assert_eq!(err(&shared).1, "service[1].backends[0]");
    assert_eq!(err("").1, "service");
    let no_if = GOOD.replace("[\"eth0\", \"eth1\"]", "[]");
    assert_eq!(err(&no_if).1, "dataplane.interfaces");
    let long_if = GOOD.replace("\"eth1\"", "\"a-very-long-interface\"");
    assert_eq!(err(&long_if).1, "dataplane.interfaces[1]");
    let rel = GOOD.replace("xdp_mode = \"native\"", "pin_dir = \"relative/dir\"");
    assert_eq!(err(&rel).1, "dataplane.pin_dir");
    let net = GOOD.replace(
        "xdp_mode = \"native\"",
        "client_networks = [\"198.18.0.0/33\"]",
    );
    assert_eq!(err(&net).1, "dataplane.client_networks[0]");
    let ok = GOOD.replace(
        "xdp_mode = \"native\"",
        "client_networks = [\"198.18.0.0/24\"]",
    );
    let nets = parse(&ok).unwrap().dataplane.unwrap().client_networks;
    assert_eq!(nets, [(Ipv4Addr::new(198, 18, 0, 0), 24)]);
    let backend_if = |list: &str| {
        GOOD.replace(
            "xdp_mode = \"native\"",
            &format!("backend_interfaces = {list}"),
        )
    };
    let text = backend_if("[\"eth1\", \"eth2\"]");
    let (line, key, msg) = err(&text);
    assert_eq!(key, "dataplane.backend_interfaces[1]");
    assert!(
        msg.contains("\"eth2\" is not one of dataplane.interfaces"),
        "{msg}"
    );
    assert_eq!(
        line,
        text.lines()
            .position(|l| l.contains("backend_interfaces"))
            .unwrap()
            + 1
    );
    let (_, key, msg) = err(&backend_if("[\"eth1\", \"eth1\"]"));
    assert_eq!(key, "dataplane.backend_interfaces[1]");
    assert!(msg.contains("listed twice"), "{msg}");
    let dp = parse(&backend_if("[\"eth1\"]")).unwrap().dataplane.unwrap();
    assert_eq!(dp.backend_interfaces, ["eth1"]);
    let tc = GOOD.replace("xdp_mode = \"native\"", "xdp_mode = \"tc\"");
    assert_eq!(parse(&tc).unwrap().dataplane.unwrap().xdp_mode, XdpMode::Tc);
    let bad = GOOD.replace("xdp_mode = \"native\"", "xdp_mode = \"tcx\"");
    let line = GOOD.lines().position(|l| l.contains("xdp_mode")).unwrap() + 1;
    let (at, _, msg) = err(&bad);
    assert_eq!(at, line);
    assert!(msg.contains("`tcx`") && msg.contains("`tc`"), "{msg}");
}

#[test]
fn flow_table_size_defaults_and_is_bounded() {
    let dp = parse(GOOD).unwrap().dataplane.unwrap();
    assert_eq!(dp.flow_table_size, redis_ha_common::FLOW_TABLE_SIZE);
    let set = |v: &str| GOOD.replace("xdp_mode = \"native\"", &format!("flow_table_size = {v}"));
    let dp = parse(&set("200000")).unwrap().dataplane.unwrap();
    assert_eq!(dp.flow_table_size, 200_000);
    assert!(dp.veth_peer_redirect, "on unless turned off");
    let off = GOOD.replace("xdp_mode = \"native\"", "veth_peer_redirect = false");
    assert!(!parse(&off).unwrap().dataplane.unwrap().veth_peer_redirect);
    let (line, _, msg) = err(&GOOD.replace("xdp_mode = \"native\"", "veth_peer_redirect = 1"));
    let want = GOOD.lines().position(|l| l.contains("xdp_mode")).unwrap() + 1;
    assert_eq!(line, want, "{msg}");
    assert!(msg.contains("boolean"), "{msg}");
    for bad in ["1023", "-1", "16777217", "5000000000"] {
        let (_, key, msg) = err(&set(bad));
        assert_eq!(key, "dataplane.flow_table_size", "{bad}");
        assert!(msg.contains("out of range") && msg.contains(bad), "{msg}");
    }
}

const CONTROLLER: &str = r#"
[controller]
id = "lb1"
listen = "198.18.1.2:26379"
secret = "0123456789abcdef"
peers = [{ id = "lb2", addr = "198.18.1.3:26379" }, { id = "c3", addr = "198.18.1.4:26379" }]
"#;

#[test]
fn ha_section_is_validated() {
    let ha = "\n[ha]\npriority = 150\nheartbeat_ms = 50\ndown_after_ms = 200\naddresses = [\"198.18.0.100/24 dev eth0\", \"198.18.1.1/24 dev eth1\"]\n";
    let text = format!("{CONTROLLER}{ha}{GOOD}");
    let c = parse(&text).unwrap().ha.unwrap();
    assert_eq!(
        (c.priority, c.preempt, c.heartbeat_ms, c.down_after_ms),
        (150, false, 50, 200)
    );
    assert_eq!(c.addresses[1].to_string(), "198.18.1.1/24 dev eth1");

    let bad = |from: &str, to: &str| err(&text.replace(from, to));
    let (line, key, msg) = bad("dev eth1", "dev eth9");
    assert_eq!((line, key.as_str()), (12, "ha.addresses[1]"));
    assert!(
        msg.contains("eth9") && msg.contains("dataplane.interfaces"),
        "{msg}"
    );
    assert_eq!(bad("/24 dev eth0", " dev eth0").1, "ha.addresses[0]");
    assert_eq!(bad("198.18.1.1/24", "198.18.0.100/24").1, "ha.addresses[1]");
    assert_eq!(bad("priority = 150", "priority = 0").1, "ha.priority");
    let (_, key, msg) = bad("down_after_ms = 200", "down_after_ms = 100");
    assert_eq!(key, "ha.down_after_ms");
    assert!(msg.contains("3 heartbeats"), "{msg}");
    // Holding addresses means a data plane and peers to agree with.
    assert_eq!(err(&format!("{ha}{GOOD}")).1, "ha");
    let no_dp = format!(
        "{CONTROLLER}{ha}{}",
        &GOOD[GOOD.find("[[service]]").unwrap()..]
    );
    assert_eq!(err(&no_dp).1, "ha");
    let pair = text.replace(", { id = \"c3\", addr = \"198.18.1.4:26379\" }", "");
    let (_, key, msg) = err(&pair);
    assert_eq!(key, "ha");
    assert!(msg.contains("third"), "{msg}");
}

#[test]
fn display_names_the_file() {
    let e = parse(&GOOD.replace("6381", "0")).unwrap_err().to_string();
    assert!(e.starts_with("test.toml:10:"), "{e}");
    assert!(e.contains("service[0].read_port"), "{e}");
}

#[test]
fn slots_are_distinct_nonzero_and_in_range() {
    let mut seen = HashSet::new();
    for sid in 0..MAX_SERVICES {
        for b in 0..MAX_BACKENDS_PER_SERVICE {
            let slot = backend_slot(sid, b);
            assert!(slot != 0 && slot < MAX_BACKENDS);
            assert!(seen.insert(slot));
        }
    }
}

/// Every key of every section, each set to something other than its default.
const EVERY_KEY: &str = r#"
[dataplane]
interfaces = ["eth0", "eth1"]
backend_interfaces = ["eth1"]
xdp_mode = "tc"
pin_dir = "/sys/fs/bpf/other"
client_networks = ["198.18.0.0/24", "10.0.0.0/8"]
flow_table_size = 200000
veth_peer_redirect = false
nat = "full"
nat_address = "198.18.1.1"
nat_ports = "40000-40999"

[controller]
id = "lb1"
listen = "198.18.2.1:26380"
peers = [{ id = "lb2", addr = "198.18.2.2:26380" }, { id = "c3", addr = "198.18.2.3:26380" }]
secret = "0123456789abcdef-shared"
state_file = "/var/lib/other/lb1.state"
probe_interval_ms = 50
metrics_listen = "127.0.0.1:9480"
maxclients = 500
client_idle_timeout_ms = 60000
tcp_keepalive_s = 60
client_output_buffer_limit_normal_bytes = 4194304
client_output_buffer_limit_pubsub_hard_bytes = 16777216
client_output_buffer_limit_pubsub_soft_bytes = 1048576
client_output_buffer_limit_pubsub_soft_seconds = 30
client_max_subscriptions = 64
client_max_request_bytes = 65536
client_max_request_args = 64
requirepass = "api-admin-password"
allow_unauthenticated_reads = true
users = [{ name = "monitor", password = "api-monitor-password", access = "read-only" }]

[ha]
priority = 150
preempt = true
heartbeat_ms = 50
down_after_ms = 250
addresses = ["198.18.0.100/24 dev eth0", "198.18.1.1/24 dev eth1"]

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["198.18.1.11:6379", "198.18.1.12:6379"]
resolve_hostnames = true
announce_hostnames = true
quorum = 3
down_after_ms = 2000
failover_timeout_ms = 60000
parallel_syncs = 2
max_replica_lag_ms = 7000
read_from_master = "always"
auth = { username = "ha", password = "hunter2" }
"#;

/// Every key path of a TOML document (`service.auth.username`; arrays' entries merged).
fn key_paths(text: &str) -> BTreeSet<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.insert(path.clone());
                    walk(&path, v, out);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(prefix, v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk("", &text.parse::<toml::Table>().unwrap().into(), &mut out);
    out
}

#[test]
fn a_config_setting_every_key_reads_back_equal_from_its_serialisation() {
    let cfg = parse(EVERY_KEY).unwrap();
    let written = toml::to_string(&cfg).unwrap();
    assert_eq!(parse(&written).unwrap(), cfg, "written as:\n{written}");
    // The text above does set every key the config has: it names the same keys as the
    // serialisation of a config in which nothing is left out.
    assert_eq!(key_paths(EVERY_KEY), key_paths(&written));

    // ...and none to its default, or a key read into the wrong field could go unnoticed.
    let (dp, ctl, ha) = (
        cfg.dataplane.clone().unwrap(),
        cfg.controller.clone().unwrap(),
        cfg.ha.clone().unwrap(),
    );
    let (dd, hd, fd) = (
        DataplaneConfig::default(),
        HaConfig::default(),
        FailoverConfig::default(),
    );
    assert!(dp.xdp_mode != dd.xdp_mode && dp.pin_dir != dd.pin_dir);
    assert!(dp.client_networks != dd.client_networks && dp.flow_table_size != dd.flow_table_size);
    assert!(dp.veth_peer_redirect != dd.veth_peer_redirect);
    assert!(dp.backend_interfaces != dd.backend_interfaces);
    assert!(dp.nat != dd.nat && dp.nat_address.is_some() && dp.nat_ports != dd.nat_ports);
    assert!(ctl.probe_interval_ms != ControllerConfig::DEFAULT_PROBE_INTERVAL_MS);
    assert!(ctl.state_file != ControllerConfig::default_state_file(&ctl.id));
    let limits = toml::Table::try_from(&ctl.api_limits).unwrap();
    let defaults = toml::Table::try_from(ApiLimits::default()).unwrap();
    for (key, value) in &limits {
        assert_ne!(
            Some(value),
            defaults.get(key),
            "{key} is set to its default"
        );
    }
    assert!(ctl.api.requirepass.is_some() && !ctl.api.users.is_empty());
    assert!(
        ctl.api.allow_unauthenticated_reads != ApiAuthConfig::default().allow_unauthenticated_reads
    );
    assert!(ha.priority != hd.priority && ha.preempt != hd.preempt);
    assert!(ha.heartbeat_ms != hd.heartbeat_ms && ha.down_after_ms != hd.down_after_ms);
    let f = &cfg.services[0].failover;
    assert!(f.quorum != fd.quorum && f.down_after_ms != fd.down_after_ms);
    assert!(f.failover_timeout_ms != fd.failover_timeout_ms);
    assert!(f.parallel_syncs != fd.parallel_syncs);
    assert!(f.max_replica_lag_ms != fd.max_replica_lag_ms);
    assert!(f.read_from_master != fd.read_from_master);

    // The secret read from `secret_file` (trimmed) is the same config as the secret inline.
    let file = std::env::temp_dir().join(format!("redis-ha-secret-{}", std::process::id()));
    std::fs::write(&file, "0123456789abcdef-shared\n").unwrap();
    // A secret file others may read is refused.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let from_file = EVERY_KEY.replace(
        "secret = \"0123456789abcdef-shared\"",
        &format!("secret_file = {:?}", file.display().to_string()),
    );
    let read = parse(&from_file);
    std::fs::remove_file(&file).unwrap();
    let mut read = read.unwrap();
    let controller = read.controller.as_mut().unwrap();
    assert_eq!(controller.secret_file.take(), Some(file));
    assert_eq!(read, cfg);
}

#[test]
fn keys_left_out_take_their_sections_defaults() {
    let text = format!(
        "{CONTROLLER}\n[ha]\naddresses = [\"198.18.0.100/24 dev eth0\"]\n{}",
        GOOD.replace("xdp_mode = \"native\"\n", "")
    );
    let cfg = parse(&text).unwrap();
    let dp = cfg.dataplane.unwrap();
    assert_eq!(
        dp,
        DataplaneConfig {
            interfaces: dp.interfaces.clone(),
            // Not a key: derived from `[controller] secret`.
            flow_hash_key: dp.flow_hash_key,
            ..DataplaneConfig::default()
        }
    );
    assert_ne!(dp.flow_hash_key, redis_ha_common::FlowHashKey::default());
    let ha = cfg.ha.unwrap();
    assert_eq!(
        ha,
        HaConfig {
            addresses: ha.addresses.clone(),
            ..HaConfig::default()
        }
    );
    let ctl = cfg.controller.unwrap();
    assert_eq!(
        ctl.probe_interval_ms,
        ControllerConfig::DEFAULT_PROBE_INTERVAL_MS
    );
    assert_eq!(ctl.state_file, PathBuf::from("/var/lib/redis-ha/lb1.state"));
    assert_eq!(cfg.services[0].failover, FailoverConfig::default());
}

#[test]
fn a_default_left_out_is_blamed_on_its_section() {
    // heartbeat_ms = 200 needs down_after_ms >= 600, above the default of 500.
    let text = format!(
        "{CONTROLLER}\n[ha]\nheartbeat_ms = 200\naddresses = [\"198.18.0.100/24 dev eth0\"]\n{GOOD}"
    );
    let (line, key, msg) = err(&text);
    let section = text.lines().position(|l| l == "[ha]").unwrap() + 1;
    assert_eq!((line, key.as_str()), (section, "ha.down_after_ms"), "{msg}");
}

#[test]
fn the_effective_toml_hides_secrets_and_shows_what_is_left_out() {
    let text = EVERY_KEY.replace("[ha]", "[unused]");
    let text = &text[..text.find("[unused]").unwrap()];
    let cfg = parse(&format!(
        "{text}{}",
        &EVERY_KEY[EVERY_KEY.find("[[service]]").unwrap()..]
    ))
    .unwrap();
    let shown = cfg.effective_toml().unwrap();
    assert!(!shown.contains("0123456789abcdef") && !shown.contains("hunter2"));
    assert!(!shown.contains("api-admin-password") && !shown.contains("api-monitor-password"));
    assert!(
        shown.contains("requirepass = \"<18 characters, not shown>\""),
        "{shown}"
    );
    assert!(
        shown.contains("password = \"<20 characters, not shown>\""),
        "{shown}"
    );
    assert!(shown.contains("secret = \"<23 characters, not shown>\""));
    assert!(shown.contains("password = \"<not shown>\""));
    assert!(shown.contains("# [ha]: not set"), "{shown}");
    assert!(shown.contains("# priority = 100\n"), "{shown}");
    // The keys of the absent section, uncommented, are the ones [ha] has.
    let template: String = shown
        .lines()
        .skip_while(|l| *l != "# [ha]")
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    let written = toml::to_string(&BTreeMap::from([("ha", HaConfig::default())])).unwrap();
    assert_eq!(key_paths(&template), key_paths(&written));
}

#[test]
fn full_nat_ports_must_be_a_range_clear_of_every_service_port() {
    let full = |extra: &str| {
        GOOD.replace(
            "xdp_mode = \"native\"",
            &format!("xdp_mode = \"native\"\nnat = \"full\"\n{extra}"),
        )
    };
    let c = parse(&full("")).unwrap().dataplane.unwrap();
    assert_eq!(
        (c.nat, c.nat_ports, c.nat_address),
        (NatMode::Full, NatPorts::DEFAULT, None)
    );

    let (line, key, msg) = err(&full("nat_ports = \"6000-6379\""));
    assert_eq!((line, key.as_str()), (6, "dataplane.nat_ports"));
    assert!(
        msg.contains("6379") && msg.contains("service[0].backends[0]"),
        "{msg}"
    );
    let (_, key, msg) = err(&full("nat_ports = \"6380-6380\""));
    assert!(
        key == "dataplane.nat_ports" && msg.contains("write_port"),
        "{msg}"
    );
    for bad in ["\"40000\"", "\"5-900\"", "\"50000-40000\"", "\"x-y\""] {
        let (_, key, msg) = err(&full(&format!("nat_ports = {bad}")));
        assert_eq!(key, "dataplane.nat_ports", "{bad}: {msg}");
    }
    // The same range is fine with destination NAT, which uses no source ports.
    assert!(
        parse(&GOOD.replace(
            "xdp_mode = \"native\"",
            "xdp_mode = \"native\"\nnat_ports = \"6000-7000\""
        ))
        .is_ok()
    );

    let (_, key, msg) = err(&full("nat_address = \"198.18.0.300\""));
    assert!(
        key == "dataplane.nat_address" && msg.contains("not an IPv4"),
        "{msg}"
    );
    let (_, key, msg) = err(&GOOD.replace(
        "xdp_mode = \"native\"",
        "xdp_mode = \"native\"\nnat_address = \"198.18.0.1\"",
    ));
    assert!(
        key == "dataplane.nat_address" && msg.contains("only used with nat = \"full\""),
        "{msg}"
    );
}

#[test]
fn api_passwords_come_inline_or_from_a_file_and_users_are_checked() {
    let with = |keys: &str| format!("{CONTROLLER}{keys}\n{GOOD}");
    // Nothing set: the API is open, as before.
    let api = parse(&with("")).unwrap().controller.unwrap().api;
    assert_eq!(api, ApiAuthConfig::default());
    assert!(!api.required());

    // From files, trimmed as `secret_file` is; the same config as inline.
    let dir = std::env::temp_dir().join(format!("redis-ha-api-pass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (admin, monitor) = (dir.join("admin"), dir.join("monitor"));
    std::fs::write(&admin, "admin-pass\n").unwrap();
    std::fs::write(&monitor, "monitor-pass\n").unwrap();
    // Password files others may read are refused, as secret files are.
    for f in [&admin, &monitor] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let from_files = parse(&with(&format!(
        "requirepass_file = {:?}\n[[controller.users]]\nname = \"monitor\"\npassword_file = {:?}\naccess = \"read-only\"\n",
        admin.display().to_string(),
        monitor.display().to_string()
    )));
    std::fs::remove_dir_all(&dir).unwrap();
    let mut api = from_files.unwrap().controller.unwrap().api;
    assert_eq!(api.requirepass_file.take(), Some(admin.clone()));
    assert_eq!(api.users[0].password_file.take(), Some(monitor));
    let inline = parse(&with(
        "requirepass = \"admin-pass\"\nusers = [{ name = \"monitor\", password = \"monitor-pass\", access = \"read-only\" }]",
    ))
    .unwrap()
    .controller
    .unwrap()
    .api;
    assert_eq!(api, inline);
    assert_eq!(inline.user(None), Some(("admin-pass", ApiAccess::All)));
    assert_eq!(
        inline.user(Some("monitor")),
        Some(("monitor-pass", ApiAccess::ReadOnly))
    );

    // Each problem names its line and key.
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let text = with(&format!(
        "requirepass_file = {:?}",
        admin.display().to_string()
    ));
    let (line, key, msg) = err(&text);
    assert_eq!(
        (line, key.as_str()),
        (
            line_of(&text, "requirepass_file"),
            "controller.requirepass_file"
        )
    );
    assert!(msg.contains("cannot read"), "{msg}");

    let text = with("requirepass = \"\"");
    let (line, key, msg) = err(&text);
    assert_eq!(
        (line, key.as_str()),
        (line_of(&text, "requirepass"), "controller.requirepass")
    );
    assert!(msg.contains("empty"), "{msg}");

    let (_, key, msg) = err(&with("requirepass = \"a\"\nrequirepass_file = \"/x\""));
    assert_eq!(key, "controller.requirepass");
    assert!(msg.contains("at most one"), "{msg}");

    for (users, bad_key, says) in [
        (
            "{ name = \"a b\", password = \"p\", access = \"all\" }",
            "controller.users[0].name",
            "not a valid user name",
        ),
        (
            "{ name = \"m\", password = \"p\", access = \"all\" }, { name = \"m\", password = \"q\", access = \"all\" }",
            "controller.users[1].name",
            "used twice",
        ),
        (
            "{ name = \"default\", password = \"p\", access = \"all\" }",
            "controller.users[0].name",
            "requirepass",
        ),
        (
            "{ name = \"m\", access = \"all\" }",
            "controller.users[0].password",
            "set one of",
        ),
        (
            "{ name = \"m\", password = \"p\", password_file = \"/x\", access = \"all\" }",
            "controller.users[0].password",
            "at most one",
        ),
    ] {
        let text = with(&format!("requirepass = \"x\"\nusers = [{users}]"));
        let (line, key, msg) = err(&text);
        assert_eq!(
            (line, key.as_str()),
            (line_of(&text, "users ="), bad_key),
            "{msg}"
        );
        assert!(msg.contains(says), "{msg}");
    }
    // An access that is neither is refused by name, with the line.
    let text = with("users = [{ name = \"m\", password = \"p\", access = \"write\" }]");
    let (line, _, msg) = err(&text);
    assert_eq!(line, line_of(&text, "users ="));
    assert!(msg.contains("read-only"), "{msg}");
}
