//! One backend: its namespace and its redis-server process, started, stopped, killed and asked
//! through `redis-cli`.

use super::*;

/// One redis-server in its own namespace. Its process can be killed, frozen and restarted to
/// simulate failures.
#[derive(Debug)]
pub struct Backend {
    pub(super) index: usize,
    pub(super) ip: Ipv4Addr,
    pub(super) ns: Netns,
    /// The backend's end of its veth.
    pub(super) interface: String,
    /// The other end of the same veth: the LB's in [`Testbed`], a bridge port of the switch
    /// in [`crate::ha::HaCluster`].
    pub(super) lb_interface: String,
    /// Working directory and log of the server.
    pub(super) dir: PathBuf,
    /// redis-server arguments, kept so [`Backend::start`] restarts it as it was.
    pub(super) args: Vec<String>,
    /// Put before the arguments of every [`Backend::redis_cli`]: TLS options once
    /// [`Testbed::use_tls`] made the server TLS-only.
    pub(super) cli_args: Vec<String>,
    /// `None` while killed; behind a mutex so a test can fail a backend through `&Testbed`
    /// while another thread drives the controller.
    pub(super) server: ProcessSlot,
}

impl Backend {
    /// Backend `n` (at [`backend_ip`]`(n)`) in `ns`, not started: its server keeps its data and
    /// log in `dir` and, unless it is backend 1, replicates backend 1; `extra_args` go to
    /// redis-server after the testbed's own. For topologies other than [`Testbed`]'s, which
    /// wire the namespace themselves.
    pub(crate) fn new(
        n: usize,
        ns: Netns,
        interface: String,
        lb_interface: String,
        dir: PathBuf,
        extra_args: &[&str],
    ) -> Result<Backend> {
        let replica_of = (n > 1).then(|| backend_ip(1));
        Self::at(
            n,
            backend_ip(n),
            replica_of,
            ns,
            interface,
            lb_interface,
            dir,
            extra_args,
        )
    }

    /// [`Self::new`] for a topology with its own addressing: the server binds `ip` (and
    /// 127.0.0.1) and, with `replica_of`, replicates that address.
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor for every topology; each argument is a distinct part of the wiring"
    )]
    pub(crate) fn at(
        n: usize,
        ip: Ipv4Addr,
        replica_of: Option<Ipv4Addr>,
        ns: Netns,
        interface: String,
        lb_interface: String,
        dir: PathBuf,
        extra_args: &[&str],
    ) -> Result<Backend> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut args = redis_args(ip, &dir, replica_of);
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Ok(Backend {
            index: n,
            ip,
            ns,
            interface,
            lb_interface,
            args,
            cli_args: Vec::new(),
            dir,
            server: ProcessSlot::default(),
        })
    }

    /// 1-based: backend 1 lives in `rha-<tag>-r1` at 198.18.1.11.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `198.18.1.1N:6379`.
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, REDIS_PORT)
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn lb_interface(&self) -> &str {
        &self.lb_interface
    }

    /// redis-server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Whether the server process exists (a SIGSTOPped one counts as running).
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// `redis-cli ARGS...` against this backend, from inside its own namespace.
    pub fn redis_cli(&self, args: &[&str]) -> Result<String> {
        let all: Vec<&str> = self
            .cli_args
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        self.ns.redis_cli(self.addr(), &all)
    }

    /// Crashes the server: SIGKILL, then reap.
    pub fn kill(&self) -> Result<()> {
        if let Some(mut server) = self.server().take() {
            server.kill()?;
        }
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as with a
    /// hung host.
    pub fn stop(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Thaws a server frozen by [`Self::stop`] (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        match self.server().as_mut() {
            Some(server) => server.signal(signal),
            None => bail!("backend {} is not running", self.index),
        }
    }

    /// Starts the server again with the arguments it had, and waits until it answers PING.
    /// An error if it already runs.
    pub fn start(&self) -> Result<()> {
        if self.is_running() {
            bail!("backend {} already runs", self.index);
        }
        let server = self.spawn_server()?;
        *self.server() = Some(server);
        self.wait_ready()
    }

    pub(super) fn spawn_server(&self) -> Result<ChildGuard> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let mut cmd = self.ns.command("redis-server");
        cmd.args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        ChildGuard::spawn(&mut cmd)
            .with_context(|| format!("starting redis-server of backend {}", self.index))
    }

    /// Waits (bounded) until the server answers PING.
    pub fn wait_ready(&self) -> Result<()> {
        wait_until(
            &format!("backend {} ({}) to answer PING", self.index, self.addr()),
            READY_TIMEOUT,
            POLL_INTERVAL,
            || {
                if !self.is_running() {
                    return Err(GiveUp(format!(
                        "redis-server exited; its log ({}) ends with:\n{}",
                        self.log_path().display(),
                        log_tail(&self.log_path())
                    ))
                    .into());
                }
                let reply = self.redis_cli(&["PING"])?;
                Ok((reply.trim() == "PONG").then_some(()))
            },
        )
    }

    pub(super) fn server(&self) -> std::sync::MutexGuard<'_, Option<ChildGuard>> {
        self.server.lock()
    }

    pub(crate) fn disarm(&mut self) {
        self.ns.disarm();
        if let Some(server) = self.server().as_mut() {
            server.disarm();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

pub(super) fn redis_args(ip: Ipv4Addr, dir: &Path, replica_of: Option<Ipv4Addr>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        &ip.to_string(),
        "127.0.0.1",
        "--port",
        &REDIS_PORT.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        // Redis waits 5 s by default before a diskless sync, hoping more replicas join.
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(str::to_owned)
    .into();
    if let Some(master) = replica_of {
        args.extend([
            "--replicaof".to_owned(),
            master.to_string(),
            REDIS_PORT.to_string(),
        ]);
    }
    args
}
