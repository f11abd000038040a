//! Named network namespaces as RAII guards, and removal of whatever a crashed run left behind.

use std::ffi::OsStr;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::process::{run, run_within};

/// Where `ip netns add` puts its namespace handles.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Bound for one `redis-cli` call: a stopped or unreachable server makes it hang forever.
pub const REDIS_CLI_TIMEOUT: Duration = Duration::from_secs(5);

/// The handle `nsenter --net=` takes for the namespace called `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// A command that runs `program` inside the named network namespace.
///
/// Enters only the network namespace (`nsenter --net`): `ip netns exec` also remounts `/sys`
/// in a private mount namespace, where pinning under `/sys/fs/bpf` fails.
pub fn netns_command(name: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(name).display()))
        .arg("--")
        .arg(program);
    cmd
}

/// A network namespace created with `ip netns add`; dropping it kills every process inside
/// and deletes it, also when a test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
    armed: bool,
}

impl Netns {
    /// Creates the namespace and brings its `lo` up (`lo` starts down in a new namespace, and
    /// servers bind 127.0.0.1).
    pub fn create(name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') {
            bail!("invalid namespace name {name:?}");
        }
        run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Self {
            name: name.to_owned(),
            armed: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// A command that runs `program` inside this namespace (see [`netns_command`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.name, program)
    }

    /// Runs `program args...` inside the namespace, bounded in time; returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// `ip ARGS...` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.run("ip", args)
    }

    /// A veth pair: `here` in this namespace, its peer `there` in `peer_ns`.
    pub fn add_veth(&self, here: &str, there: &str, peer_ns: &Netns) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            peer_ns.name(),
        ])?;
        Ok(())
    }

    /// Sets a network sysctl of this namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    ///
    /// Written through /proc/sys from a shell entered into the namespace: /proc/sys/net shows
    /// the writer's network namespace, and `sh` is present even where `sysctl` is not.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        run(self
            .command("sh")
            .args(["-c", r#"printf '%s\n' "$1" > "$2""#, "sh", value, &path]))
        .with_context(|| format!("setting {key}={value} in namespace {}", self.name))?;
        Ok(())
    }

    /// Process ids of every process in the namespace.
    pub fn pids(&self) -> Result<Vec<u32>> {
        namespace_pids(&self.name)
    }

    /// SIGKILLs every process in the namespace and waits (bounded) until none is left.
    pub fn kill_all(&self) -> Result<()> {
        kill_namespace_processes(&self.name)
    }

    /// `redis-cli -e -h IP -p PORT ARGS...` from inside the namespace, bounded by
    /// [`REDIS_CLI_TIMEOUT`]. `-e` makes an error reply (e.g. `READONLY`) a failed command.
    pub fn redis_cli(&self, addr: SocketAddrV4, args: &[&str]) -> Result<String> {
        self.redis_cli_within(addr, args, REDIS_CLI_TIMEOUT)
    }

    /// [`Self::redis_cli`] with an explicit time bound.
    pub fn redis_cli_within(
        &self,
        addr: SocketAddrV4,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let mut cmd = self.command("redis-cli");
        cmd.args([
            "-e",
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
        ])
        .args(args);
        run_within(&mut cmd, timeout)
    }

    /// Leaves the namespace in place when the guard is dropped.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove_namespace(&self.name)
        {
            eprintln!("redis-ha-tests: cleaning up namespace {}: {e:#}", self.name);
        }
    }
}

fn namespace_pids(name: &str) -> Result<Vec<u32>> {
    let out = run(Command::new("ip").args(["netns", "pids", name]))?;
    out.split_whitespace()
        .map(|pid| {
            pid.parse()
                .with_context(|| format!("`ip netns pids {name}` printed {pid:?}"))
        })
        .collect()
}

fn kill_namespace_processes(name: &str) -> Result<()> {
    // Bounded: a SIGKILLed process leaves the namespace as it exits, which takes
    // milliseconds; 100 rounds of 20 ms also catch processes forked meanwhile.
    for _ in 0..100 {
        let pids = namespace_pids(name)?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let Ok(pid) = libc::pid_t::try_from(pid) else {
                continue;
            };
            // SAFETY: kill(2) has no memory effects; `pid` was just listed as running in a
            // namespace this project created, so it is one of ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("processes in namespace {name} survive SIGKILL")
}

/// Kills every process in the namespace, then deletes it.
fn remove_namespace(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    let killed = kill_namespace_processes(name);
    run(Command::new("ip").args(["netns", "del", name]))
        .with_context(|| format!("deleting network namespace {name}"))?;
    killed
}

/// Names of the existing network namespaces that start with `prefix`, sorted.
pub fn list_namespaces(prefix: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_RUN_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// What a testbed leaves on the machine: its namespaces, its bpffs pin directory and its
/// temporary directory (server data and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub namespaces: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.dirs.is_empty()
    }

    /// Kills the processes in the namespaces, deletes them and the directories; tries every
    /// item even when one fails.
    pub fn remove(&self) -> Result<()> {
        let mut errors = Vec::new();
        for name in &self.namespaces {
            if let Err(e) = remove_namespace(name) {
                errors.push(format!("{e:#}"));
            }
        }
        for dir in &self.dirs {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    errors.push(format!("removing {}: {e}", dir.display()));
                }
                _ => {}
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    /// Everything in `self` that is not in `before`.
    pub fn since(&self, before: &Leftovers) -> Leftovers {
        Leftovers {
            namespaces: self
                .namespaces
                .iter()
                .filter(|n| !before.namespaces.contains(n))
                .cloned()
                .collect(),
            dirs: self
                .dirs
                .iter()
                .filter(|d| !before.dirs.contains(d))
                .cloned()
                .collect(),
        }
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self
            .namespaces
            .iter()
            .map(|n| format!("namespace {n}"))
            .chain(self.dirs.iter().map(|d| d.display().to_string()))
            .collect();
        if items.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&items.join(", "))
        }
    }
}

/// Namespaces whose name starts with `prefix` (e.g. `rha-` for all, `rha-tb-` for one testbed),
/// and the pin and temporary directories of the testbeds whose namespaces would match it.
pub fn leftovers(prefix: &str) -> Result<Leftovers> {
    let namespaces = list_namespaces(prefix)?;
    let mut dirs = Vec::new();
    for parent in crate::testbed::state_dir_parents() {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(tag) = crate::testbed::tag_of_state_dir(&name)
                && crate::testbed::namespace_prefix(tag).starts_with(prefix)
            {
                dirs.push(entry.path());
            }
        }
    }
    dirs.sort();
    Ok(Leftovers { namespaces, dirs })
}

/// Removes everything [`leftovers`] finds for `prefix` (killing the processes in those
/// namespaces) and returns what it removed.
pub fn cleanup_prefix(prefix: &str) -> Result<Leftovers> {
    if !prefix.starts_with(crate::testbed::PREFIX) {
        bail!(
            "refusing to clean up {prefix:?}: only names starting with {:?} belong to redis-ha tests",
            crate::testbed::PREFIX
        );
    }
    let found = leftovers(prefix)?;
    found
        .remove()
        .with_context(|| format!("cleaning up {prefix}*"))?;
    Ok(found)
}

/// Runs `f` on a fresh thread that has entered the network namespace at `ns_path` (only its
/// network namespace, so bpffs and /sys stay as they are). Sockets created inside `f` stay in
/// that namespace for their whole life, whichever thread uses them afterwards: this is how a
/// test holds a client connection that lives in the client namespace.
pub fn in_netns<T: Send + 'static>(
    ns_path: &std::path::Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(ns_path)
        .with_context(|| format!("opening network namespace {}", ns_path.display()))?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on an open namespace fd; it changes only this (short-lived) thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns into the namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread inside the namespace panicked"))?
}
