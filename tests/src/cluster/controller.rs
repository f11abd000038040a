//! One controller process: starting it (in its namespace), signalling it, and reading what it
//! logged, its events and its state file.

use super::*;

/// A position in a controller's log: "what it logged since then".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogMark(u64);

/// One `redis_ha::event` line, e.g. `+switch-master` with payload
/// `mymaster 198.18.1.11 6379 198.18.1.12 6379`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLine {
    pub name: String,
    pub payload: String,
    /// The whole line, for messages.
    pub line: String,
}

/// What a controller persisted for the testbed's service (its state file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerState {
    pub current_epoch: u64,
    pub vote_epoch: Option<u64>,
    pub vote_leader: Option<String>,
    pub master: SocketAddrV4,
    pub config_epoch: u64,
}

/// One `redis-ha-ctl run` process and its files.
#[derive(Debug)]
pub struct Controller {
    pub(super) id: String,
    pub(super) ns_name: String,
    pub(super) listen: SocketAddrV4,
    pub(super) config_path: PathBuf,
    pub(super) log_path: PathBuf,
    pub(super) state_path: PathBuf,
    /// `None` while not running; behind a mutex so a test can kill one through `&Cluster`.
    pub(super) process: ProcessSlot,
    pub(super) started_at: Mutex<Option<Instant>>,
    /// Extra environment of the next starts (e.g. the `REDIS_HA_FAILPOINT` test hook).
    pub(super) env: Mutex<Vec<(String, String)>>,
}

impl Controller {
    /// A controller not started yet, whose config is already at `config_path`; it runs in the
    /// namespace `ns_name`. For topologies other than [`Cluster`]'s.
    pub(crate) fn new(
        id: &str,
        ns_name: &str,
        listen: SocketAddrV4,
        config_path: PathBuf,
        log_path: PathBuf,
        state_path: PathBuf,
    ) -> Controller {
        Controller {
            id: id.to_owned(),
            ns_name: ns_name.to_owned(),
            listen,
            config_path,
            log_path,
            state_path,
            process: ProcessSlot::default(),
            started_at: Mutex::new(None),
            env: Mutex::new(Vec::new()),
        }
    }

    /// Leaves the process running when the controller is dropped (`cargo xtask testbed up`).
    pub(crate) fn disarm(&self) {
        if let Some(p) = self.process().as_mut() {
            p.disarm();
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn listen(&self) -> SocketAddrV4 {
        self.listen
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// The namespace the process runs in.
    pub fn netns_name(&self) -> &str {
        &self.ns_name
    }

    fn process(&self) -> MutexGuard<'_, Option<ChildGuard>> {
        self.process.lock()
    }

    pub(crate) fn started_at(&self) -> Option<Instant> {
        *self.started_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Starts `redis-ha-ctl run` (output appended to its log) and waits until it logs that it
    /// runs. An error if it already runs or exits meanwhile.
    pub fn start(&self) -> Result<()> {
        self.start_via(&[], &[])
    }

    /// [`Controller::start`], with the daemon run by `launcher` (a program and its arguments,
    /// which then executes the daemon's command line: `setpriv ...`, `strace ...`) and with
    /// `env` added to its environment.
    pub fn start_via(&self, launcher: &[&str], env: &[(&str, &str)]) -> Result<()> {
        if self.is_running() {
            bail!("controller {} already runs", self.id);
        }
        let mark = self.mark();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = netns_command(&self.ns_name, program);
                cmd.args(args).arg(crate::ctl_binary()?);
                cmd
            }
            None => netns_command(&self.ns_name, crate::ctl_binary()?),
        };
        cmd.envs(env.iter().copied());
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            // Plain text: the tests read the log.
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .envs(self.env.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        *self.process() = Some(
            ChildGuard::spawn(&mut cmd)
                .with_context(|| format!("starting controller {}", self.id))?,
        );
        *self.started_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        wait_until(
            &format!("controller {} to start", self.id),
            START_TIMEOUT,
            Duration::from_millis(50),
            || {
                if !self.is_running() {
                    return Err(GiveUp(format!(
                        "controller {} exited; its log ends with:\n{}",
                        self.id,
                        tail(&self.log_since(mark), 20)
                    ))
                    .into());
                }
                Ok(self
                    .log_since(mark)
                    .contains("controller started")
                    .then_some(()))
            },
        )
    }

    /// Freezes the process (SIGSTOP), as a paused VM or a host stalled on I/O would; a
    /// [`Self::kill`] or the cluster's drop still ends it.
    pub fn stop(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Thaws a process frozen by [`Self::stop`] (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Asks the process to reload its config (SIGHUP, what `systemctl reload` sends).
    pub fn reload(&self) -> Result<()> {
        self.signal(libc::SIGHUP)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        match self.process().as_mut() {
            Some(p) => p.signal(signal),
            None => bail!("controller {} is not running", self.id),
        }
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the next starts.
    pub fn set_env(&self, key: &str, value: Option<&str>) {
        let mut env = self.env.lock().unwrap_or_else(|e| e.into_inner());
        env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Waits (bounded) until the process exited by itself (a crash, a refused start), reaps it
    /// and returns what it logged since `mark`.
    pub fn wait_exit(&self, since: LogMark, timeout: Duration) -> Result<String> {
        wait_until(
            &format!("controller {} to exit", self.id),
            timeout,
            POLL,
            || Ok((!self.is_running()).then_some(())),
        )?;
        self.kill()?;
        Ok(self.log_since(since))
    }

    /// SIGKILL and reap: a crash, no chance to clean up.
    pub fn kill(&self) -> Result<()> {
        if let Some(mut p) = self.process().take() {
            p.kill()?;
        }
        Ok(())
    }

    /// The current end of the log.
    pub fn mark(&self) -> LogMark {
        LogMark(std::fs::metadata(&self.log_path).map_or(0, |m| m.len()))
    }

    /// The whole log, without terminal colours.
    pub fn log(&self) -> String {
        self.log_since(LogMark::default())
    }

    /// What the log gained since `mark`.
    pub fn log_since(&self, mark: LogMark) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        let from = (mark.0 as usize).min(bytes.len());
        strip_ansi(&String::from_utf8_lossy(&bytes[from..]))
    }

    /// The `name` events (e.g. `+switch-master`) logged since `mark`.
    pub fn events(&self, name: &str, since: LogMark) -> Vec<EventLine> {
        self.log_since(since)
            .lines()
            .filter_map(parse_event)
            .filter(|e| e.name == name)
            .collect()
    }

    pub fn count_events(&self, name: &str, since: LogMark) -> usize {
        self.events(name, since).len()
    }

    /// Waits (bounded) for the first `name` event after `since`.
    pub fn wait_for_event(
        &self,
        name: &str,
        since: LogMark,
        timeout: Duration,
    ) -> Result<EventLine> {
        wait_until(
            &format!("{} to log {name}", self.id),
            timeout,
            Duration::from_millis(50),
            || Ok(self.events(name, since).into_iter().next()),
        )
    }

    /// Waits (bounded) for a log line containing every one of `needles` after `since`.
    pub fn wait_for_line(
        &self,
        needles: &[&str],
        since: LogMark,
        timeout: Duration,
    ) -> Result<String> {
        wait_until(
            &format!("{} to log a line with {needles:?}", self.id),
            timeout,
            Duration::from_millis(50),
            || {
                Ok(self
                    .log_since(since)
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(str::to_owned))
            },
        )
    }

    /// Its state file, `None` before it first persisted anything.
    pub fn state(&self) -> Result<Option<ControllerState>> {
        let text = match std::fs::read_to_string(&self.state_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", self.state_path.display()));
            }
        };
        parse_state(&text)
            .with_context(|| {
                format!(
                    "{}: unexpected state file:\n{text}",
                    self.state_path.display()
                )
            })
            .map(Some)
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} in {})", self.id, self.listen, self.ns_name)
    }
}

pub(super) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences end with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `<time> INFO redis_ha::event: +switch-master mymaster ... service=mymaster event="+switch-master"`.
pub(super) fn parse_event(line: &str) -> Option<EventLine> {
    let (_, rest) = line.split_once("redis_ha::event: ")?;
    let message = rest.split(" service=").next().unwrap_or(rest);
    let (name, payload) = message.split_once(' ').unwrap_or((message, ""));
    Some(EventLine {
        name: name.to_owned(),
        payload: payload.to_owned(),
        line: line.to_owned(),
    })
}

/// The testbed's state file holds one service; reading its five scalar fields by name needs no
/// JSON library.
pub(super) fn parse_state(text: &str) -> Result<ControllerState> {
    let service = text
        .find(&format!("\"{SERVICE_NAME}\""))
        .map(|at| &text[at..])
        .with_context(|| format!("no service {SERVICE_NAME}"))?;
    let field = |key: &str| -> Result<Option<String>> {
        let at = service
            .find(&format!("\"{key}\""))
            .with_context(|| format!("no field {key}"))?;
        let value = service[at + key.len() + 2..]
            .trim_start()
            .strip_prefix(':')
            .with_context(|| format!("{key} has no value"))?
            .trim_start();
        let token = if let Some(s) = value.strip_prefix('"') {
            s.split('"').next().unwrap_or_default()
        } else {
            value
                .split(|c: char| c == ',' || c == '}' || c.is_whitespace())
                .next()
                .unwrap_or_default()
        };
        Ok((token != "null").then(|| token.to_owned()))
    };
    let number = |key: &str| -> Result<Option<u64>> {
        field(key)?
            .map(|v| v.parse().with_context(|| format!("{key} = {v:?}")))
            .transpose()
    };
    Ok(ControllerState {
        current_epoch: number("current_epoch")?.context("current_epoch is null")?,
        vote_epoch: number("vote_epoch")?,
        vote_leader: field("vote_leader")?,
        master: field("master")?
            .context("master is null")?
            .parse()
            .context("master is not an address")?,
        config_epoch: number("config_epoch")?.context("config_epoch is null")?,
    })
}

/// Copies each controller's log to `<target>/e2e-logs/<tag>/`; returns that directory.
pub(crate) fn save_logs(controllers: &[Controller], tag: &str) -> Result<PathBuf> {
    let dir = crate::target_dir().join("e2e-logs").join(tag);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for c in controllers {
        if let Some(name) = c.log_path.file_name() {
            std::fs::write(dir.join(name), c.log())
                .with_context(|| format!("saving {}", c.log_path.display()))?;
        }
    }
    Ok(dir)
}

/// The last `lines` lines of each controller's log, each under a header naming it.
pub(crate) fn log_tails(controllers: &[Controller], lines: usize) -> String {
    controllers
        .iter()
        .map(|c| {
            format!(
                "---- end of {c}, {} ----\n{}\n",
                c.log_path.display(),
                tail(&c.log(), lines)
            )
        })
        .collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
