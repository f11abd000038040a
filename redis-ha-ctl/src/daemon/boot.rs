//! The boot counter: which start of this controller a peer datagram comes from.
//!
//! Receivers refuse a datagram whose `(boot, seq)` is not above the last one they accepted from
//! its sender, so every start must send a boot id above all earlier ones. The wall clock gave
//! no such promise: a controller restarted with its clock behind its previous start was
//! refused as a replay by every peer until they restarted themselves. So the id is a counter,
//! kept in its own file next to the state file (`<state_file>.boot`), incremented and made
//! durable at every start before the first datagram leaves.
//!
//! The very first count starts from the wall clock (nanoseconds since the Unix epoch), once:
//! the boot ids of versions that used the clock are then below it, so peers still running
//! such a version accept the restarted controller.
//!
//! A counter file that cannot be read, or does not hold a count, stops the start with an
//! error naming the file: starting over from the clock could repeat an id the peers already
//! saw, and they would silently refuse this controller as a replay. Removing the file is the
//! remedy, and safe whenever the clock is right.

use std::{
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a boot counter ({found:?}, expected one decimal number); remove the file to \
         count again from the clock",
        path = .path.display()
    )]
    Corrupt { path: PathBuf, found: String },
    #[error("{path}: the boot counter is at its maximum; remove the file to count again from the clock", path = .0.display())]
    Exhausted(PathBuf),
}

/// Where the counter of the controller with state file `state_file` lives.
pub(super) fn counter_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".boot");
    PathBuf::from(name)
}

/// Counts this start: returns its boot id, durable on disk (fsynced, and the directory
/// entry too) before it returns.
pub(super) fn next_boot(state_file: &Path) -> Result<u64, BootError> {
    next_boot_at(&counter_path(state_file), wall_clock_ns)
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn next_boot_at(path: &Path, clock: impl FnOnce() -> u64) -> Result<u64, BootError> {
    let io = |what| {
        move |source| BootError::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let next = match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let last: u64 = text.trim().parse().map_err(|_| BootError::Corrupt {
                path: path.to_owned(),
                found: text.chars().take(40).collect(),
            })?;
            last.checked_add(1)
                .ok_or_else(|| BootError::Exhausted(path.to_owned()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => clock().max(1),
        Err(source) => return Err(io("reading")(source)),
    };
    // Written aside and renamed: a crash leaves the old count or the new one, never a torn
    // file that would stop the next start.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io("creating"))?;
    f.write_all(format!("{next}\n").as_bytes())
        .map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))?;
    fs::rename(&tmp, path).map_err(io("renaming into"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the directory of"))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed when the test ends.
    struct Dir(PathBuf);
    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn dir() -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("rha-boot-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[test]
    fn the_first_start_counts_from_the_clock_then_every_start_adds_one() {
        let d = dir();
        let state = d.path().join("state.json");
        let path = counter_path(&state);
        assert_eq!(path, d.path().join("state.json.boot"));
        assert_eq!(
            next_boot_at(&path, || 1_700_000_000_000_000_000).unwrap(),
            1_700_000_000_000_000_000
        );
        // The clock stepped back by a day, then stopped: the count goes on regardless.
        assert_eq!(
            next_boot_at(&path, || 1_699_913_600_000_000_000).unwrap(),
            1_700_000_000_000_000_001
        );
        assert_eq!(
            next_boot_at(&path, || 0).unwrap(),
            1_700_000_000_000_000_002
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "1700000000000000002\n");
        // A clock before 1970 still gives a usable first id.
        let other = d.path().join("other.boot");
        assert_eq!(next_boot_at(&other, || 0).unwrap(), 1);
    }

    #[test]
    fn a_damaged_counter_stops_the_start_with_the_file_named() {
        let d = dir();
        let path = d.path().join("state.json.boot");
        fs::write(&path, "12x\n").unwrap();
        let e = next_boot_at(&path, || 5).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("not a boot counter (\"12x\\n\""), "{e}");
        assert!(e.contains("remove the file"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "12x\n", "left as found");

        fs::write(&path, format!("{}\n", u64::MAX)).unwrap();
        let e = next_boot_at(&path, || 5).unwrap_err().to_string();
        assert!(e.contains("at its maximum"), "{e}");

        // A directory where the file should be: an I/O error, named.
        let blocked = d.path().join("blocked.boot");
        fs::create_dir(&blocked).unwrap();
        let e = next_boot_at(&blocked, || 5).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: reading:", blocked.display())),
            "{e}"
        );
    }
}
