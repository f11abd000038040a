//! Backends given by name in end-to-end tests: a hosts file of the test's own, seen only by
//! the processes a test starts (see [`with_private_hosts`]), and a cluster rewritten to name
//! its backends.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{Cluster, testbed::backend_ip};

/// The name of backend `n` in the test's hosts file.
pub fn name(n: usize) -> String {
    format!("redis{n}.internal")
}

/// Runs `f` on a thread in a new mount namespace where `hosts` is /etc/hosts: every process
/// `f` starts (and theirs) resolves the test's names; nothing else on the machine sees them.
pub fn with_private_hosts<T: Send>(
    hosts: &Path,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let source = CString::new(hosts.as_os_str().as_encoded_bytes())?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain system calls on this thread's own namespaces, with valid
            // NUL-terminated paths. CLONE_NEWNS unshares this thread only (not the process).
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
                }
                // Private first: a bind mount in a namespace that shares its mounts with the
                // host's would show up over the machine's /etc/hosts.
                let root = c"/";
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ) != 0
                {
                    bail!("making / private: {}", std::io::Error::last_os_error());
                }
                let target = c"/etc/hosts";
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    bail!(
                        "bind-mounting the test's hosts file: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes the test's hosts file (`redisN.internal` for backend N) beside the testbed's config
/// and rewrites every controller's config to give the backends by name, with `keys` (e.g.
/// `resolve_hostnames = true`) added to the service. The controllers are killed first; the
/// caller starts them again inside [`with_private_hosts`]. Returns the hosts file's path.
pub fn name_backends(cluster: &Cluster, keys: &str) -> Result<PathBuf> {
    let backends = cluster.testbed().backends().len();
    let dir = cluster
        .testbed()
        .config_path()
        .parent()
        .context("the testbed's config has no directory")?
        .to_owned();
    let hosts = dir.join("hosts");
    let mut table = String::from("127.0.0.1 localhost\n");
    for n in 1..=backends {
        table += &format!("{} {}\n", backend_ip(n), name(n));
    }
    std::fs::write(&hosts, table)?;
    for c in cluster.controllers() {
        c.kill()?;
        let path = c.config_path();
        let mut text = std::fs::read_to_string(path)?;
        for n in 1..=backends {
            let addr = format!("\"{}:6379\"", backend_ip(n));
            text = text.replace(&addr, &format!("\"{}:6379\"", name(n)));
        }
        text = text.replace("backends = [", &format!("{keys}\nbackends = ["));
        ensure!(text.contains(&name(1)), "no backend renamed in:\n{text}");
        std::fs::write(path, text)?;
    }
    Ok(hosts)
}
