//! What `redis-ha-ctl maps` prints, parsed: the master slot and every backend's row.

use super::*;

/// `redis-ha-ctl maps` for the testbed's one service.
#[derive(Clone, Debug)]
pub struct MapsView {
    pub epoch: u64,
    pub master_slot: u32,
    pub backends: Vec<BackendRow>,
    /// Entries in the connection tables (FLOWS + FLOWS_SPILL), when `maps` printed the count.
    pub flows: Option<u64>,
    /// The whole output, for messages.
    pub raw: String,
}

/// One backend line of `redis-ha-ctl maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendRow {
    pub slot: u32,
    pub addr: SocketAddrV4,
    pub readable: bool,
    pub pkts_in: u64,
    pub bytes_in: u64,
    pub pkts_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
    pub closed: u64,
    pub resets: u64,
}

impl MapsView {
    /// The backend the write port points at.
    pub fn master(&self) -> Option<SocketAddrV4> {
        self.backends
            .iter()
            .find(|b| b.slot == self.master_slot)
            .map(|b| b.addr)
    }

    pub fn row(&self, addr: SocketAddrV4) -> Option<&BackendRow> {
        self.backends.iter().find(|b| b.addr == addr)
    }

    /// The read pool: backends with the READABLE flag.
    pub fn readable(&self) -> Vec<SocketAddrV4> {
        self.backends
            .iter()
            .filter(|b| b.readable)
            .map(|b| b.addr)
            .collect()
    }
}

impl FromStr for MapsView {
    type Err = anyhow::Error;

    fn from_str(raw: &str) -> Result<Self> {
        let header = raw
            .lines()
            .find(|l| l.starts_with("service ") && l.contains(&format!(" {SERVICE_NAME}:")))
            .with_context(|| format!("no service {SERVICE_NAME} in `maps`:\n{raw}"))?;
        let after = |label: &str| -> Result<u64> {
            header
                .split("; ")
                .find_map(|part| part.strip_prefix(label))
                .with_context(|| format!("no `{label}` in {header:?}"))?
                .trim()
                .parse()
                .with_context(|| format!("`{label}` in {header:?}"))
        };
        let epoch = after("epoch ")?;
        let master_slot = u32::try_from(after("master slot ")?)?;
        let mut backends = Vec::new();
        // Columns are found by their header names, so a column added to `maps` cannot shift
        // the others unnoticed.
        let mut names: Vec<&str> = Vec::new();
        for line in raw.lines().skip_while(|l| *l != header).skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if line.trim().is_empty() || cols.first().is_some_and(|c| c.ends_with(':')) {
                break;
            }
            if cols.first() == Some(&"slot") {
                names = cols;
                continue;
            }
            if cols.len() != names.len() {
                bail!("`maps` row {line:?} does not match its header {names:?}");
            }
            let col = |name: &str| -> Result<&str> {
                let i = names
                    .iter()
                    .position(|n| *n == name)
                    .with_context(|| format!("no column {name:?} in `maps` header {names:?}"))?;
                Ok(cols[i])
            };
            let n = |name: &str| -> Result<u64> {
                col(name)?
                    .parse()
                    .with_context(|| format!("column {name} of {line:?}"))
            };
            backends.push(BackendRow {
                slot: u32::try_from(n("slot")?)?,
                addr: col("backend")?
                    .parse()
                    .with_context(|| format!("address in {line:?}"))?,
                readable: col("readable")? == "yes",
                pkts_in: n("pkts_in")?,
                bytes_in: n("bytes_in")?,
                pkts_out: n("pkts_out")?,
                bytes_out: n("bytes_out")?,
                new_flows: n("new_flows")?,
                closed: n("closed")?,
                resets: n("resets")?,
            });
        }
        if backends.is_empty() {
            bail!("no backend rows in `maps`:\n{raw}");
        }
        let flows = raw
            .lines()
            .find_map(|l| l.strip_prefix("flows: ")?.strip_suffix(" connections"))
            .and_then(|n| n.trim().parse().ok());
        Ok(MapsView {
            epoch,
            master_slot,
            backends,
            flows,
            raw: raw.to_owned(),
        })
    }
}
