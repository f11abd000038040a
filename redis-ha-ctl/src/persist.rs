//! The controller's durable state (epochs, votes, known masters), one JSON file written
//! atomically: a temp file in the same directory, fsync, rename, fsync of the directory. A
//! crash at any point leaves either the old or the new file, never a torn one, so a restarted
//! controller can never vote twice in an epoch.

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

    /// Records `p` for `service` and makes it durable before returning.
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
        self.state.services.insert(service.to_owned(), record);
        self.write()
    }

    /// The floating addresses' epoch and last vote.
    pub fn ha(&self) -> HaPersisted {
        self.state.ha.clone().unwrap_or_default()
    }

    pub fn put_ha(&mut self, p: &HaPersisted) -> Result<(), PersistError> {
        if self.state.ha.as_ref() == Some(p) {
            return Ok(());
        }
        self.state.ha = Some(p.clone());
        self.write()
    }

    fn write(&self) -> Result<(), PersistError> {
        let io = |what| {
            let path = self.path.clone();
            move |source| PersistError::Io { path, what, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        let mut f = File::create(&tmp).map_err(io("creating temp file for"))?;
        f.write_all(&body).map_err(io("writing"))?;
        f.sync_all().map_err(io("syncing"))?;
        fs::rename(&tmp, &self.path).map_err(io("renaming into"))?;
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
}
