//! The client the LB-failover bar describes: one connection to each VIP port, a request every
//! 10 ms with a 5 s timeout, so a connection breaks only if the path really breaks (a reset,
//! or no answer for 5 s).

use std::time::Duration;

use anyhow::{Result, ensure};

use super::HaCluster;
use crate::process::wait_until;
use crate::trial::{LoopOptions, Request, TrafficLoop};

impl HaCluster {
    /// Writes `read_key` through the VIP, waits until both replicas have it, then starts a
    /// writer of unique `prefix` keys on the write port and a reader of `read_key` on the read
    /// port, one connection each, each bounded by `max_duration` and `max_requests`.
    pub fn start_vip_clients(
        &self,
        prefix: &str,
        read_key: &str,
        max_duration: Duration,
        max_requests: u64,
    ) -> Result<(TrafficLoop, TrafficLoop)> {
        let client = self.client();
        ensure!(
            client
                .redis_cli(self.vip_write(), &["SET", read_key, "here"])?
                .trim()
                == "OK"
        );
        wait_until(
            "the read key to reach the replicas",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let values = self.backends()[1..]
                    .iter()
                    .map(|b| b.redis_cli(&["GET", read_key]))
                    .collect::<Result<Vec<_>>>()?;
                Ok(values.iter().all(|v| v.trim() == "here").then_some(()))
            },
        )?;
        let one_connection = |addr, request| LoopOptions {
            addr,
            request,
            pause: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            reconnect_every: None,
            max_duration,
            max_requests,
        };
        let writer = TrafficLoop::start(
            client.path(),
            one_connection(
                self.vip_write(),
                Request::Set {
                    prefix: prefix.into(),
                },
            ),
        )?;
        let reader = TrafficLoop::start(
            client.path(),
            one_connection(
                self.vip_read(),
                Request::Get {
                    key: read_key.into(),
                },
            ),
        )?;
        Ok((writer, reader))
    }
}
