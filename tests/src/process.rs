//! Running helper programs (`ip`, `ethtool`, `redis-cli`, ...) with a time bound, and a guard
//! that kills a long-running child when the test that started it ends, also on panic.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

/// Bound for one short helper command. Generous: `ip` and `ethtool` answer in milliseconds,
/// but 2 cores shared with compilers can stall a process for seconds.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `program arg1 arg2 ...` as a person would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = shell_word(cmd.get_program());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&shell_word(arg));
    }
    line
}

fn shell_word(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion (stdin closed, output captured), killing it after `timeout`.
/// A non-zero exit is not an error here: see [`run_within`] for that.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot start `{what}` (is it installed? `cargo xtask build` installs what redis-ha needs)")
        })?;
    // Reader threads so a chatty child never blocks on a full pipe while we poll it; results
    // come back through channels so a grandchild that keeps the pipe open cannot hang us.
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{what}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {timeout:?}; killed it");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(remaining)
            .map_err(|_| anyhow!("`{what}` exited but something it started keeps its output open"))
    };
    Ok(Output {
        status,
        stdout: collect(stdout)?,
        stderr: collect(stderr)?,
    })
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Runs `cmd` within `timeout` and returns its stdout; a non-zero exit is an error naming the
/// command and quoting what it printed.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let output = output_within(cmd, timeout)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let printed = [stderr.trim(), stdout.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        bail!("`{}` failed ({}): {printed}", describe(cmd), output.status);
    }
    Ok(stdout)
}

/// [`run_within`] with [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Result<String> {
    run_within(cmd, COMMAND_TIMEOUT)
}

/// Polls `probe` every `interval` until it returns `Ok(Some(_))`, at most `timeout` long (and so
/// at most `timeout / interval + 1` times). `Ok(None)` and `Err` both mean "not yet"; the last
/// error is quoted if time runs out.
/// An error a [`wait_until`] probe returns to stop waiting at once (the process it waits for
/// exited, say) rather than retrying until the timeout.
#[derive(Debug)]
pub struct GiveUp(pub String);

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GiveUp {}

pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    let attempts = (timeout.as_millis() / interval.as_millis().max(1)) as u64 + 1;
    let mut last_error = None;
    for attempt in 0..attempts {
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => last_error = None,
            Err(e) if e.is::<GiveUp>() => {
                return Err(e.context(format!("stopped waiting for {what}")));
            }
            Err(e) => last_error = Some(e),
        }
        if started.elapsed() >= timeout || attempt + 1 == attempts {
            break;
        }
        thread::sleep(interval);
    }
    let waited = started.elapsed();
    match last_error {
        Some(e) => Err(e.context(format!("gave up waiting for {what} after {waited:.1?}"))),
        None => bail!("gave up waiting for {what} after {waited:.1?}"),
    }
}

/// A long-running child process, killed (SIGKILL) and reaped when the guard is dropped, so a
/// failing test never leaves a server running.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    what: String,
    armed: bool,
}

impl ChildGuard {
    /// Spawns `cmd` as is (the caller chooses where its output goes), without any file
    /// descriptor of ours beyond stdin, stdout and stderr.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let what = describe(cmd);
        // A server left running (`testbed up`, `demo --keep`) would otherwise keep what it
        // inherited open for its whole life: the lock of `flock LOCKFILE cargo xtask testbed
        // up` would stay held until the testbed is taken down. Marked close-on-exec rather
        // than closed, so the pipe std uses to report a failed exec still works.
        // SAFETY: close_range(2) is async-signal-safe and touches no memory of this process.
        unsafe {
            cmd.pre_exec(|| {
                // Kernels before 5.11 lack it: the child then inherits as before.
                libc::close_range(
                    3,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
                );
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        Ok(Self {
            child,
            what,
            armed: true,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// `Some(status)` once the process has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking on `{}`", self.what))
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the process if it has not exited.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!("`{}` already exited ({status})", self.what);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) has no memory effects. The pid cannot have been reused: the child
        // is not reaped (try_wait just said it runs, and only this guard reaps it), so at
        // worst it is a zombie, which ignores the signal.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending signal {signal} to `{}`", self.what));
        }
        Ok(())
    }

    /// SIGKILL (SIGCONT is not needed: a stopped process dies of SIGKILL) and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.child
            .kill()
            .with_context(|| format!("killing `{}`", self.what))?;
        self.child
            .wait()
            .with_context(|| format!("reaping `{}`", self.what))
    }

    /// Leaves the process running when the guard is dropped (`cargo xtask testbed up`).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.kill();
        }
    }
}

/// A restartable process (a redis-server, a controller): at most one child at a time, shared
/// between threads; restarting puts a new child in the slot.
#[derive(Debug, Default)]
pub struct ProcessSlot(std::sync::Mutex<Option<ChildGuard>>);

impl ProcessSlot {
    /// The child, if any; a panicked holder does not poison the slot for the cleanup.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Option<ChildGuard>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(ChildGuard::id)
    }

    /// Whether the process exists (a SIGSTOPped one counts as running); forgets one that
    /// exited.
    pub fn is_running(&self) -> bool {
        let mut child = self.lock();
        match child.as_mut().map(ChildGuard::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                *child = None;
                false
            }
            None => false,
        }
    }
}

/// The resident memory of `pid` in KiB (`VmRSS` of /proc/PID/status); `None` once it is gone.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many file descriptors `pid` has open (entries of /proc/PID/fd); `None` once it is gone.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_stops_at_once_on_give_up_and_retries_other_errors() {
        let mut calls = 0;
        let started = Instant::now();
        let r: Result<()> = wait_until(
            "x",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                Err(GiveUp("it exited".into()).into())
            },
        );
        assert_eq!(calls, 1);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(format!("{:#}", r.unwrap_err()).contains("it exited"));

        let mut calls = 0;
        let r = wait_until(
            "y",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                if calls < 3 {
                    anyhow::bail!("not yet")
                }
                Ok(Some(calls))
            },
        );
        assert_eq!(r.unwrap(), 3);
    }
}
