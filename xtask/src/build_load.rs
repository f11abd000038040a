//! `cargo xtask build` and `cargo xtask build-and-load`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::netns::netns_path;
use redis_ha_tests::{DEFAULT_PIN_DIR, describe, netns_command, output_within, target_dir};

/// `cargo` as invoked by `cargo xtask` (the same toolchain), run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(redis_ha_tests::workspace_root());
    cmd
}

/// Release build of redis-ha-ctl; its build.rs compiles the XDP program it embeds.
pub fn build() -> Result<PathBuf> {
    println!("==> building redis-ha-ctl (release; includes the XDP program)");
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "redis-ha-ctl"]);
    let status = cmd
        .status()
        .with_context(|| format!("running `{}`", describe(&cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(&cmd));
    }
    let binary = target_dir().join("release/redis-ha-ctl");
    if !binary.is_file() {
        bail!("the build succeeded but {} is missing", binary.display());
    }
    Ok(binary)
}

/// Prints `$ COMMAND` and what it printed; fails if it fails.
pub fn run_shown(cmd: &mut Command, timeout: Duration) -> Result<String> {
    println!("$ {}", describe(cmd));
    let output = output_within(cmd, timeout)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    for text in [stdout.trim_end(), stderr.trim_end()] {
        if !text.is_empty() {
            println!("{text}");
        }
    }
    if !output.status.success() {
        bail!("`{}` failed ({})", describe(cmd), output.status);
    }
    Ok(stdout)
}

/// Runs `program` in `netns` if given, else in the current namespace.
fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => netns_command(ns, program),
        None => Command::new(program),
    }
}

/// Ids of the XDP programs in `bpftool net show` output (`rha-tb-lc(2) driver id 141`).
fn attached_prog_ids(net_show: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut in_xdp = false;
    for line in net_show.lines() {
        if line.ends_with(':') {
            in_xdp = line == "xdp:";
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(id) = words
            .windows(2)
            .find(|w| w[0] == "id")
            .map(|w| w[1].to_owned())
            && in_xdp
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

/// `pin_dir` from the config's `[dataplane]` table, or redis-ha-ctl's default.
fn pin_dir_of(config: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", config.display()))?;
    Ok(table
        .get("dataplane")
        .and_then(|d| d.get("pin_dir"))
        .and_then(|p| p.as_str())
        .unwrap_or(DEFAULT_PIN_DIR)
        .to_owned())
}

/// `cargo xtask build-and-load`.
pub fn build_and_load(config: &Path, netns: Option<&str>) -> Result<()> {
    let config = config
        .canonicalize()
        .with_context(|| format!("config file {}", config.display()))?;
    if let Some(ns) = netns
        && !netns_path(ns).exists()
    {
        bail!("there is no network namespace {ns} (for the testbed: `cargo xtask testbed up`)");
    }
    let ctl = build()?;
    load(&ctl, &config, netns)
}

/// Runs `redis-ha-ctl load`, then shows what is attached and how to inspect it.
pub fn load(ctl: &Path, config: &Path, netns: Option<&str>) -> Result<()> {
    let pin_dir = pin_dir_of(config)?;
    println!("==> loading the data plane");
    let mut load = command_in(netns, ctl);
    load.args(["load", "--config"]).arg(config);
    run_shown(&mut load, Duration::from_secs(120)).context(
        "redis-ha-ctl load failed: if the driver refused native XDP, try xdp_mode = \"skb\" \
         (the testbed: --xdp-mode skb)",
    )?;

    println!("==> attached");
    let net = run_shown(
        command_in(netns, "bpftool").args(["net", "show"]),
        Duration::from_secs(30),
    )?;
    // Program ids are machine-wide: `prog show name redis_ha` would also list the data planes
    // of other namespaces (other testbeds), so show the ones attached here.
    let ids = attached_prog_ids(&net);
    let tc_pin = Path::new(&pin_dir).join("prog_tc");
    if tc_pin.exists() {
        // xdp_mode = "tc": TCX links, which this bpftool may leave out of `net show`.
        run_shown(
            Command::new("bpftool")
                .args(["prog", "show", "pinned"])
                .arg(&tc_pin),
            Duration::from_secs(30),
        )?;
    } else if ids.is_empty() {
        run_shown(
            Command::new("bpftool").args(["prog", "show", "name", "redis_ha"]),
            Duration::from_secs(30),
        )?;
    }
    for id in ids {
        run_shown(
            Command::new("bpftool").args(["prog", "show", "id", &id]),
            Duration::from_secs(30),
        )?;
    }

    let enter = netns
        .map(|ns| format!("nsenter --net={} -- ", netns_path(ns).display()))
        .unwrap_or_default();
    println!("==> inspect it with");
    println!("    bpftool map dump pinned {pin_dir}/SERVICES");
    println!(
        "    {enter}{} maps --config {}",
        ctl.display(),
        config.display()
    );
    println!("    {enter}bpftool net show");
    Ok(())
}
