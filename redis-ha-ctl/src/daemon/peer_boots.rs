//! The boot of each peer last heard, kept across this controller's restarts
//! (`<state_file>.peers`). Receivers refuse a datagram whose `(boot, seq)` is not above the
//! last one accepted from its sender; that record lived only in memory, so a restarted
//! controller would accept, once, a datagram captured from any earlier boot of a peer (an old
//! claim of the VIP, an old vote) until that peer's next genuine datagram. With the boots
//! remembered, only datagrams of a peer's newest known boot or later are accepted after a
//! restart. Written only when a peer's boot changes (a peer restarted): rare, so each write
//! is made durable.
//!
//! An unreadable file is not fatal: the controller starts as it did before this file
//! existed (every boot accepted once) and says so.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
};

use tracing::warn;

/// Where the peers' boots of the controller with state file `state_file` live.
pub(super) fn path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".peers");
    PathBuf::from(name)
}

/// The boots saved at `path`; empty when there is no file, or (logged) an unreadable one.
pub(super) fn load(path: &Path) -> BTreeMap<String, u64> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(
                path = %path.display(),
                "the peers' last boots cannot be read ({e}): until each peer is heard again, a \
                 datagram from an earlier boot of it would be accepted once; the file is \
                 rewritten at the next peer restart"
            );
            BTreeMap::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            warn!(path = %path.display(), "reading the peers' last boots: {e}");
            BTreeMap::new()
        }
    }
}

/// Saves `boots` at `path`, durably: written aside, fsynced, renamed, directory fsynced.
pub(super) fn save(path: &Path, boots: &BTreeMap<String, u64>) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(boots).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boots_survive_a_restart_and_a_damaged_file_starts_empty() {
        let dir = std::env::temp_dir().join(format!("rha-peer-boots-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = path(&dir.join("c1.state"));
        assert_eq!(file, dir.join("c1.state.peers"));
        assert!(load(&file).is_empty());
        let boots = BTreeMap::from([("c2".to_owned(), 7), ("c3".to_owned(), 9)]);
        save(&file, &boots).unwrap();
        assert_eq!(load(&file), boots);
        fs::write(&file, "{not json").unwrap();
        assert!(load(&file).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
