//! The controller's durable state (epochs, votes, known masters), one JSON file written
//! atomically: a temp file in the same directory, fsync, rename, fsync of the directory. A
//! crash at any point leaves either the old or the new file, never a torn one, so a restarted
//! controller can never vote twice in an epoch.
//!
//! A write that fails leaves the file and what [`StateStore`] holds as they were, so the caller
//! can tell what is durable and try again. A file that cannot be read does not stop the
//! controller: [`StateStore::open_or_recover`] starts from an empty state and says so, and the
//! daemon then runs in safe mode (no vote) until its peers told it the current epochs.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::failover::{ControllerId, Persisted, Vote};
use crate::ha::HaPersisted;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct ServiceRecord {
    current_epoch: u64,
    vote_epoch: Option<u64>,
    vote_leader: Option<String>,
    master: std::net::SocketAddrV4,
    config_epoch: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
struct StateFile {
    services: BTreeMap<String, ServiceRecord>,
    /// Ownership of the floating addresses (absent in files written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ha: Option<HaPersisted>,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: corrupt state file ({0}); move it away to start from the config", path = .1.display())]
    Corrupt(String, PathBuf),
}

impl PersistError {
    /// The file system is full (or the quota reached): room may come back by itself.
    pub fn is_full(&self) -> bool {
        matches!(self, PersistError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    }
}

pub struct StateStore {
    path: PathBuf,
    state: StateFile,
}

impl StateStore {
    /// Opens (or starts) the state file; a missing file is an empty state.
    pub fn open(path: &Path) -> Result<Self, PersistError> {
        let state = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| PersistError::Corrupt(e.to_string(), path.to_owned()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(source) => {
                return Err(PersistError::Io {
                    path: path.to_owned(),
                    what: "reading",
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            state,
        })
    }

    pub fn get(&self, service: &str) -> Option<Persisted> {
        let r = self.state.services.get(service)?;
        Some(Persisted {
            current_epoch: r.current_epoch,
            vote: match (r.vote_epoch, &r.vote_leader) {
                (Some(epoch), Some(leader)) => Some(Vote {
                    epoch,
                    leader: ControllerId(leader.clone()),
                }),
                _ => None,
            },
            master: r.master,
            config_epoch: r.config_epoch,
        })
    }

    /// Like [`Self::open`], but a file that exists and cannot be read or parsed gives an empty
    /// state and the error, instead of no store: the caller decides how to run without what
    /// it held (the daemon: in safe mode). The file is left in place, so that every restart
    /// until the next successful write knows its votes were lost; a copy is kept next to it
    /// (`<file>.unreadable`) for whoever investigates.
    pub fn open_or_recover(path: &Path) -> (Self, Option<PersistError>) {
        match Self::open(path) {
            Ok(store) => (store, None),
            Err(e) => {
                let _ = fs::copy(path, path.with_extension("unreadable"));
                let store = Self {
                    path: path.to_owned(),
                    state: StateFile::default(),
                };
                (store, Some(e))
            }
        }
    }

    /// Checks that the state file's directory takes a new file (created if missing): write,
    /// fsync and remove a probe next to the state file. A full file system passes with a
    /// warning from the caller ([`PersistError::is_full`]): the controller can still follow
    /// the others, and abstains from votes until there is room again.
    pub fn check_writable(&self) -> Result<(), PersistError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io = |what| {
            let path = self.path.clone();
            move |source| PersistError::Io { path, what, source }
        };
        fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        let probe = self.path.with_extension("probe");
        let written = File::create(&probe)
            .and_then(|mut f| {
                f.write_all(b"redis-ha-ctl checks that it can write its state here\n")?;
                f.sync_all()
            })
            .map_err(io("writing a probe file next to"));
        let _ = fs::remove_file(&probe);
        written
    }

    /// Records `p` for `service` and makes it durable before returning. On an error nothing
    /// changed, in the file or here.
    pub fn put(&mut self, service: &str, p: &Persisted) -> Result<(), PersistError> {
        let record = ServiceRecord {
            current_epoch: p.current_epoch,
            vote_epoch: p.vote.as_ref().map(|v| v.epoch),
            vote_leader: p.vote.as_ref().map(|v| v.leader.0.clone()),
            master: p.master,
            config_epoch: p.config_epoch,
        };
        if self.state.services.get(service) == Some(&record) {
            return Ok(());
        }
        let mut next = self.state.clone();
        next.services.insert(service.to_owned(), record);
        self.write(&next)?;
        self.state = next;
        Ok(())
    }

    /// The floating addresses' epoch and last vote.
    pub fn ha(&self) -> HaPersisted {
        self.state.ha.clone().unwrap_or_default()
    }

    pub fn put_ha(&mut self, p: &HaPersisted) -> Result<(), PersistError> {
        if self.state.ha.as_ref() == Some(p) {
            return Ok(());
        }
        let mut next = self.state.clone();
        next.ha = Some(p.clone());
        self.write(&next)?;
        self.state = next;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, state: &StateFile) -> Result<(), PersistError> {
        let io = |what| {
            let path = self.path.clone();
            move |source| PersistError::Io { path, what, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(state).expect("state serializes");
        let written = File::create(&tmp)
            .map_err(io("creating temp file for"))
            .and_then(|mut f| {
                f.write_all(&body).map_err(io("writing"))?;
                f.sync_all().map_err(io("syncing"))
            })
            .and_then(|()| fs::rename(&tmp, &self.path).map_err(io("renaming into")));
        if let Err(e) = written {
            // A half-written temp file would only take the space a later write needs.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory of"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(epoch: u64) -> Persisted {
        Persisted {
            current_epoch: epoch,
            vote: Some(Vote {
                epoch,
                leader: ControllerId("c2".into()),
            }),
            master: "198.18.1.12:6379".parse().unwrap(),
            config_epoch: epoch - 1,
        }
    }

    #[test]
    fn survives_a_reopen_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("rha-persist-{}", std::process::id()));
        let path = dir.join("c1.state");
        let _ = fs::remove_dir_all(&dir);
        let mut s = StateStore::open(&path).unwrap();
        assert_eq!(s.get("mymaster"), None);
        s.put("mymaster", &sample(7)).unwrap();
        s.put("mymaster", &sample(8)).unwrap();
        assert_eq!(
            StateStore::open(&path).unwrap().get("mymaster"),
            Some(sample(8))
        );
        assert!(!path.with_extension("tmp").exists());
        fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(
            StateStore::open(&path),
            Err(PersistError::Corrupt(..))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_changes_nothing_and_can_be_retried() {
        let dir = std::env::temp_dir().join(format!("rha-persist-fail-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let blocker = dir.join("state");
        let path = blocker.join("c1.state");
        let mut s = StateStore::open(&path).unwrap();
        // A file where the state's directory should be: every write fails, even as root.
        fs::write(&blocker, b"not a directory").unwrap();
        let err = s.put("mymaster", &sample(7)).unwrap_err();
        assert!(err.to_string().contains("c1.state"), "{err}");
        assert!(s.check_writable().is_err());
        assert_eq!(
            s.get("mymaster"),
            None,
            "a failed write must not count as done"
        );
        fs::remove_file(&blocker).unwrap();
        s.check_writable().unwrap();
        s.put("mymaster", &sample(7)).unwrap();
        assert_eq!(
            StateStore::open(&path).unwrap().get("mymaster"),
            Some(sample(7))
        );
        assert!(!path.with_extension("probe").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_file_gives_an_empty_state_and_the_reason() {
        let dir = std::env::temp_dir().join(format!("rha-persist-bad-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c1.state");
        fs::write(&path, b"{\"services\": {\"mymaster\": {\"current_ep").unwrap();
        let (mut s, err) = StateStore::open_or_recover(&path);
        let err = err.expect("a truncated file is reported");
        assert!(matches!(err, PersistError::Corrupt(..)), "{err}");
        assert!(err.to_string().contains("c1.state"), "{err}");
        assert_eq!(s.get("mymaster"), None);
        assert!(path.with_extension("unreadable").exists());
        // The first write replaces it.
        s.put("mymaster", &sample(3)).unwrap();
        assert_eq!(
            StateStore::open(&path).unwrap().get("mymaster"),
            Some(sample(3))
        );
        let (_, err) = StateStore::open_or_recover(&dir.join("missing.state"));
        assert!(
            err.is_none(),
            "a missing file is a first start, not a lost one"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
