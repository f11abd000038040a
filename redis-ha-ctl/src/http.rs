//! HTTP endpoint of the controller: `/metrics` (Prometheus), `/` (status page), `/status.json`
//! (being written; see issue 4).

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::watch;

use crate::{metrics::Metrics, status::Status};

/// Serves until the task is dropped.
pub async fn serve(
    _addr: SocketAddr,
    _status: watch::Receiver<Status>,
    _metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    Ok(())
}
