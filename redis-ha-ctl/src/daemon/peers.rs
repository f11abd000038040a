//! The peer socket (UDP, on the controller's `listen` port): a task that receives,
//! authenticates and forwards the peers' datagrams to the executor, and the executor's side
//! that seals and sends its own.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::warn;

use super::executor::Input;
use crate::{
    config::PeerConfig,
    failover::{ControllerId, Event, PeerMsg},
    ha::HaMsg,
    metrics::Metrics,
    peer::{MAX_DATAGRAM, Payload, PeerCodec},
};

/// Receives, authenticates and forwards peer datagrams: service messages to the machine of
/// the service they name (`names`: the services in config order, as the last reload left
/// them), the floating addresses'
/// to the ownership machine.
pub(super) fn spawn_receiver(
    tasks: &mut JoinSet<()>,
    socket: Arc<UdpSocket>,
    mut codec: PeerCodec,
    names: watch::Receiver<Vec<String>>,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    boots_file: std::path::PathBuf,
) {
    let mut saved_boots = super::peer_boots::load(&boots_file);
    codec.remember_boots(&saved_boots);
    tasks.spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut log = RefusalLog::default();
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let opened = codec.open(&buf[..n]);
            if let Ok((peer, _, _)) = &opened
                && let Some(boot) = codec.boot_of(&peer.0)
                && saved_boots.get(&peer.0) != Some(&boot)
            {
                // A peer restarted (or is heard for the first time): remember its boot across
                // our own restarts. Tried once per change: a failing disk must not turn every
                // datagram into a write and a log line.
                saved_boots.insert(peer.0.clone(), boot);
                if let Err(e) = super::peer_boots::save(&boots_file, &saved_boots) {
                    warn!(path = %boots_file.display(), "saving the peers' last boots: {e}");
                }
            }
            match opened {
                Ok((from, _, Payload::Ha(msg))) => {
                    if tx.send(Input::Ha { from, msg }).await.is_err() {
                        return;
                    }
                }
                Ok((peer, service, Payload::Service(msg))) => {
                    let i = names.borrow().iter().position(|s| *s == service);
                    if let Some(i) = i {
                        let input = Input::Event {
                            service: i,
                            event: Event::Peer { from: peer, msg },
                        };
                        if tx.send(input).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let reason = e.reason();
                    metrics.peer_refused(reason);
                    match log.note(reason, Instant::now()) {
                        Some(0) => warn!(%from, reason, "refused peer message: {e}"),
                        Some(unlogged) => warn!(
                            %from,
                            reason,
                            unlogged,
                            "refused peer message: {e} ({unlogged} more refused as {reason} \
                             since the last such line)"
                        ),
                        None => {}
                    }
                }
            }
        }
    });
}

/// At most one line per reason this often: a flood of bad datagrams must not flood the journal
/// and hide everything else. The metrics count every refusal.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Which refusals get a log line.
#[derive(Default)]
struct RefusalLog {
    /// Per reason: when its last line was written, and how many were refused since.
    reasons: HashMap<&'static str, (Instant, u64)>,
}

impl RefusalLog {
    /// `Some(n)` if this refusal is to be logged, `n` being how many of the same reason were
    /// refused without a line since the last one; `None` to stay quiet.
    fn note(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.reasons.get_mut(reason) {
            None => {
                self.reasons.insert(reason, (now, 0));
                Some(0)
            }
            Some((last, unlogged)) if now.saturating_duration_since(*last) < REFUSAL_LOG_EVERY => {
                *unlogged += 1;
                None
            }
            Some((last, unlogged)) => {
                *last = now;
                Some(std::mem::take(unlogged))
            }
        }
    }
}

/// Seals the executor's messages and sends them to the peers, in the order it performs them.
pub(super) struct PeerSender {
    socket: Arc<UdpSocket>,
    /// The sending half of the codec (sequence numbers); receiving has its own.
    codec: PeerCodec,
    peers: Vec<(ControllerId, SocketAddr)>,
}

impl PeerSender {
    pub(super) fn new(socket: Arc<UdpSocket>, codec: PeerCodec, peers: &[PeerConfig]) -> Self {
        Self {
            socket,
            codec,
            peers: peers
                .iter()
                .map(|p| (ControllerId(p.id.clone()), p.addr))
                .collect(),
        }
    }

    /// A service machine's message to every peer.
    pub(super) async fn send_to_all(&mut self, service: &str, msg: &PeerMsg) {
        for (id, addr) in &self.peers {
            let datagram = self.codec.seal(&id.0, service, msg);
            send(&self.socket, &datagram, *addr).await;
        }
    }

    /// A service machine's message to one peer (a vote's answer).
    pub(super) async fn send_to(&mut self, to: &ControllerId, service: &str, msg: &PeerMsg) {
        if let Some((id, addr)) = self.peers.iter().find(|(id, _)| id == to) {
            let datagram = self.codec.seal(&id.0, service, msg);
            send(&self.socket, &datagram, *addr).await;
        }
    }

    /// The ownership machine's message to one peer, or (`to` = `None`) to all. Sealed per
    /// peer: each datagram names its receiver's boot.
    pub(super) async fn send_ha(&mut self, to: Option<&ControllerId>, msg: &HaMsg) {
        for (id, addr) in &self.peers {
            if to.is_none_or(|t| t == id) {
                let datagram = self.codec.seal_ha(&id.0, msg);
                send(&self.socket, &datagram, *addr).await;
            }
        }
    }
}

async fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(datagram, to).await {
        warn!(%to, "peer send failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_reason_and_interval_with_the_count_between() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.note("bad-mac", at(0)), Some(0));
        for ms in 1..=1_000 {
            assert_eq!(log.note("bad-mac", at(ms)), None);
        }
        // Another reason has its own line.
        assert_eq!(log.note("replay", at(500)), Some(0));
        assert_eq!(log.note("replay", at(600)), None);
        assert_eq!(log.note("bad-mac", at(9_999)), None);
        assert_eq!(log.note("bad-mac", at(10_000)), Some(1_001));
        assert_eq!(log.note("bad-mac", at(10_001)), None);
        assert_eq!(log.note("replay", at(30_000)), Some(1));
        assert_eq!(log.note("bad-mac", at(30_000)), Some(1));
    }
}
