//! The deployment files stay usable: the example config passes redis-ha-ctl's own validation,
//! the systemd unit passes `systemd-analyze verify` and runs what the docs say it runs, and
//! docs/deploying.md names the same paths. Needs no root and no namespace.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_ha_ctl::config::{Config, XdpMode};
use redis_ha_tests::{find_program, output_within, workspace_root};

const CONFIG_PATH: &str = "/etc/redis-ha/redis-ha.toml";
const SECRET_LINE: &str = "secret_file = \"/etc/redis-ha/secret\"";
const EXEC_START: &str = "/usr/local/bin/redis-ha-ctl run --config /etc/redis-ha/redis-ha.toml";

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A directory removed with its contents on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("rha-deploy-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The example as an operator would install it: the secret file it names exists (the parser
/// reads it), here in a temporary directory.
fn example_config(dir: &Path) -> String {
    let text = read("deploy/redis-ha.toml.example");
    assert!(
        text.contains(SECRET_LINE),
        "the example should keep the secret in a file ({SECRET_LINE})"
    );
    let secret = dir.join("secret");
    std::fs::write(&secret, "an-example-secret-of-32-characters\n").expect("writing the secret");
    // A secret file others may read is refused.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    text.replace(
        SECRET_LINE,
        &format!("secret_file = \"{}\"", secret.display()),
    )
}

#[test]
fn example_config_is_valid() {
    let dir = TempDir::new();
    let text = example_config(&dir.0);
    let cfg = Config::parse(Path::new("deploy/redis-ha.toml.example"), &text)
        .unwrap_or_else(|e| panic!("the example config does not validate: {e}"));

    let dp = cfg.dataplane.as_ref().expect("a [dataplane] section");
    assert_eq!(dp.interfaces, ["eth0", "eth1"]);
    assert_eq!(dp.xdp_mode, XdpMode::Auto);
    assert_eq!(dp.pin_dir, Path::new("/sys/fs/bpf/redis-ha"));

    let ctl = cfg.controller.as_ref().expect("a [controller] section");
    assert_eq!(ctl.peers.len(), 2, "three controllers in all");
    assert_eq!(ctl.secret, "an-example-secret-of-32-characters");
    assert!(
        ctl.metrics_listen.is_some(),
        "the example shows metrics_listen"
    );
    // The unit's StateDirectory=redis-ha is the only writable place besides bpffs.
    assert!(
        ctl.state_file.starts_with("/var/lib/redis-ha/"),
        "{}",
        ctl.state_file.display()
    );

    let svc = &cfg.services[0];
    assert_eq!(svc.backends.len(), 3);
    assert_eq!(svc.failover.quorum, 2);
}

#[test]
fn example_config_without_dataplane_is_a_valid_controller_only_config() {
    let dir = TempDir::new();
    let text = example_config(&dir.0);
    // What the example tells controller-only nodes to do: drop the [dataplane] section.
    let start = text.find("\n[dataplane]\n").expect("a [dataplane] section");
    let end = start
        + text[start..]
            .find("\n[controller]\n")
            .expect("[controller] after it");
    let without = format!("{}{}", &text[..start], &text[end..]);
    let cfg = Config::parse(Path::new("controller-only.toml"), &without)
        .unwrap_or_else(|e| panic!("the controller-only variant does not validate: {e}"));
    assert!(cfg.dataplane.is_none());
    assert!(cfg.controller.is_some());
}

/// `Key=Value` lines of a unit file, in order (comments and section headers left out).
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn unit_value<'a>(entries: &'a [(String, String)], key: &str) -> &'a str {
    let found: Vec<&str> = entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(found.len(), 1, "{key}= should appear once: {found:?}");
    found[0]
}

#[test]
fn systemd_unit_runs_the_controller_with_its_capabilities() {
    let text = read("deploy/redis-ha-ctl.service");
    let entries = unit_entries(&text);
    assert_eq!(unit_value(&entries, "ExecStart"), EXEC_START);
    assert_eq!(unit_value(&entries, "Restart"), "always");
    assert_eq!(unit_value(&entries, "RequiresMountsFor"), "/sys/fs/bpf");
    assert_eq!(unit_value(&entries, "StateDirectory"), "redis-ha");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let caps: Vec<&str> = unit_value(&entries, key).split_whitespace().collect();
        for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_NET_RAW"] {
            assert!(caps.contains(&cap), "{key} lacks {cap}: {caps:?}");
        }
    }
    assert!(
        unit_value(&entries, "ExecStartPre").ends_with(&format!("check-config {CONFIG_PATH}")),
        "the unit validates the config before starting"
    );
    // `systemctl reload` must reach the daemon as SIGHUP, the one signal it reloads on
    // (tests/tests/reload.rs); without ExecReload systemd refuses the reload.
    assert_eq!(
        unit_value(&entries, "ExecReload"),
        "/bin/kill -HUP $MAINPID"
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = find_program("systemd-analyze") else {
        panic!(
            "systemd-analyze is missing: `apt-get install systemd` (Debian's base image has it)"
        );
    };
    let dir = TempDir::new();
    // verify checks that ExecStart's binary exists: point it at one that does. Everything
    // else is verified as shipped.
    let unit =
        read("deploy/redis-ha-ctl.service").replace("/usr/local/bin/redis-ha-ctl", "/bin/true");
    let path = dir.0.join("redis-ha-ctl.service");
    std::fs::write(&path, unit).expect("writing the unit");
    let out = output_within(
        Command::new(analyze).arg("verify").arg(&path),
        Duration::from_secs(60),
    )
    .expect("running systemd-analyze verify");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only complaints about this unit matter (the host's other units are not ours to judge).
    let ours: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains("redis-ha-ctl.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}) complains:\n{printed}",
        out.status
    );
}

#[test]
fn deploying_doc_matches_the_files() {
    let doc = read("docs/deploying.md");
    assert!(doc.contains("## Deploying on real hosts"));
    for must in [
        EXEC_START,
        "deploy/redis-ha-ctl.service",
        "deploy/redis-ha.toml.example",
        "bpftool prog show",
        "bpftool net show",
        "bpftool map dump pinned /sys/fs/bpf/redis-ha/SERVICES",
        "redis-ha-ctl maps",
        "ethtool -K",
        "TcpInCsumErrors",
        "3506",
        "net.ipv4.ip_forward",
        "rp_filter",
        "proxy_arp",
        "xdp_mode",
    ] {
        assert!(
            doc.contains(must),
            "docs/deploying.md does not mention {must:?}"
        );
    }
}
