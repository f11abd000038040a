//! The peer socket (UDP, on the controller's `listen` port): a task that receives,
//! authenticates and forwards the peers' datagrams to the executor, and the executor's side
//! that seals and sends its own.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::UdpSocket, sync::mpsc, task::JoinSet};
use tracing::warn;

use super::executor::Input;
use crate::{
    config::PeerConfig,
    failover::{ControllerId, Event, PeerMsg},
    ha::HaMsg,
    metrics::Metrics,
    peer::{MAX_DATAGRAM, Payload, PeerCodec, Refused},
};

/// Receives, authenticates and forwards peer datagrams: service messages to the machine of
/// the service they name (`names`: the services in config order), the floating addresses'
/// to the ownership machine.
pub(super) fn spawn_receiver(
    tasks: &mut JoinSet<()>,
    socket: Arc<UdpSocket>,
    mut codec: PeerCodec,
    names: Vec<String>,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
) {
    tasks.spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            match codec.open(&buf[..n]) {
                Ok((from, _, Payload::Ha(msg))) => {
                    if tx.send(Input::Ha { from, msg }).await.is_err() {
                        return;
                    }
                }
                Ok((peer, service, Payload::Service(msg))) => {
                    if let Some(i) = names.iter().position(|s| *s == service) {
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
                    metrics.peer_refused(match e {
                        Refused::BadMac => "bad-mac",
                        Refused::UnknownPeer(_) => "unknown-peer",
                        Refused::Replay(_) => "replay",
                        Refused::Short | Refused::Malformed(_) => "malformed",
                    });
                    warn!(%from, "refused peer message: {e}");
                }
            }
        }
    });
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
        for (_, addr) in &self.peers {
            send(&self.socket, &mut self.codec, service, msg, *addr).await;
        }
    }

    /// A service machine's message to one peer (a vote's answer).
    pub(super) async fn send_to(&mut self, to: &ControllerId, service: &str, msg: &PeerMsg) {
        if let Some((_, addr)) = self.peers.iter().find(|(id, _)| id == to) {
            send(&self.socket, &mut self.codec, service, msg, *addr).await;
        }
    }

    /// The ownership machine's message to one peer, or (`to` = `None`) to all.
    pub(super) async fn send_ha(&mut self, to: Option<&ControllerId>, msg: &HaMsg) {
        let datagram = self.codec.seal_ha(msg);
        for (id, addr) in &self.peers {
            if to.is_none_or(|t| t == id)
                && let Err(e) = self.socket.send_to(&datagram, addr).await
            {
                warn!(to = %addr, "peer send failed: {e}");
            }
        }
    }
}

async fn send(
    socket: &UdpSocket,
    codec: &mut PeerCodec,
    service: &str,
    msg: &PeerMsg,
    to: SocketAddr,
) {
    let datagram = codec.seal(service, msg);
    if let Err(e) = socket.send_to(&datagram, to).await {
        warn!(%to, "peer send failed: {e}");
    }
}
