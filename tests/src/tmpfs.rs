//! A tiny tmpfs the test mounts for one controller's state file, to fill it (a full disk) or
//! remount it read-only; unmounted and removed on drop, also during a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::process::run;

#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Creates `dir` (which must not exist) and mounts a tmpfs of `size` (e.g. "64k") on it.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs> {
        if dir.exists() {
            bail!("{} exists already: left by an earlier run?", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let guard = Tmpfs {
            dir: dir.to_owned(),
        };
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir))?;
        Ok(guard)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a file until the file system is full; returns its path (remove it to make room).
    pub fn fill(&self) -> Result<PathBuf> {
        use std::io::Write as _;
        let path = self.dir.join("filler");
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk = [0u8; 4096];
        // Bounded: a 64 KiB tmpfs is full after 16 chunks; stop long after that regardless.
        for _ in 0..100_000 {
            match f.write_all(&chunk).and_then(|()| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(path),
                Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
            }
        }
        bail!("{} never filled up", self.dir.display())
    }

    /// Remounts read-only (`true`) or read-write.
    pub fn set_read_only(&self, read_only: bool) -> Result<()> {
        let opt = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        run(Command::new("mount").args(["-o", opt]).arg(&self.dir))?;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not keep the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
