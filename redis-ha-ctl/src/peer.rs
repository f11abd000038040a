//! The controllers' peer protocol: one UDP datagram per message, JSON, authenticated with
//! HMAC-SHA256 over the shared secret. Views are re-sent every probe interval, so a lost
//! datagram costs one interval, never correctness; vote requests are retried by the machine.
//!
//! A datagram is `HMAC (32 bytes) || JSON envelope`. A receiver drops (and logs) anything whose
//! MAC does not verify (wrong secret, tampering), whose sender is not a configured peer, or
//! that replays an older sequence number of the sender's current boot.

use std::{collections::HashMap, net::SocketAddrV4};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::failover::{ControllerId, Epoch, Hello, NodeAddr, PeerMsg};
use crate::ha::HaMsg;

/// What a datagram carries: a service's failover message, or (service name empty) one about
/// who holds the floating addresses, which concerns the node rather than a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Service(PeerMsg),
    Ha(HaMsg),
}

const MAC_LEN: usize = 32;
/// Comfortably below the 64 KiB UDP limit; a hello lists at most a service's backends.
pub const MAX_DATAGRAM: usize = 16 * 1024;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Envelope {
    from: String,
    /// Process start (ns since the Unix epoch): a restarted sender starts a new sequence.
    boot: u64,
    seq: u64,
    service: String,
    msg: WireMsg,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum WireMsg {
    Hello {
        current_epoch: Epoch,
        master: SocketAddrV4,
        config_epoch: Epoch,
        sdown: Vec<SocketAddrV4>,
        /// Absent from an older controller's hellos, which announce no failover.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failover_epoch: Option<Epoch>,
    },
    VoteRequest {
        epoch: Epoch,
        master: SocketAddrV4,
    },
    VoteReply {
        epoch: Epoch,
        leader: String,
    },
    Ha {
        ha: HaMsg,
    },
}

impl From<&PeerMsg> for WireMsg {
    fn from(m: &PeerMsg) -> Self {
        match m {
            PeerMsg::Hello(h) => WireMsg::Hello {
                current_epoch: h.current_epoch,
                master: h.master,
                config_epoch: h.config_epoch,
                sdown: h.sdown.clone(),
                failover_epoch: h.failover_epoch,
            },
            PeerMsg::VoteRequest { epoch, master } => WireMsg::VoteRequest {
                epoch: *epoch,
                master: *master,
            },
            PeerMsg::VoteReply { epoch, leader } => WireMsg::VoteReply {
                epoch: *epoch,
                leader: leader.0.clone(),
            },
        }
    }
}

impl From<WireMsg> for Payload {
    fn from(m: WireMsg) -> Self {
        Payload::Service(match m {
            WireMsg::Ha { ha } => return Payload::Ha(ha),
            WireMsg::Hello {
                current_epoch,
                master,
                config_epoch,
                sdown,
                failover_epoch,
            } => PeerMsg::Hello(Hello {
                current_epoch,
                master: NodeAddr::from(master),
                config_epoch,
                sdown,
                failover_epoch,
            }),
            WireMsg::VoteRequest { epoch, master } => PeerMsg::VoteRequest { epoch, master },
            WireMsg::VoteReply { epoch, leader } => PeerMsg::VoteReply {
                epoch,
                leader: ControllerId(leader),
            },
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("too short to carry a MAC")]
    Short,
    #[error("bad MAC: the sender does not share our secret (or the datagram was altered)")]
    BadMac,
    #[error("not a valid message: {0}")]
    Malformed(String),
    #[error("sender {0:?} is not a configured peer")]
    UnknownPeer(String),
    #[error("replayed or reordered message from {0}")]
    Replay(String),
}

/// Seals outgoing and opens incoming datagrams for one controller.
pub struct PeerCodec {
    me: String,
    secret: Vec<u8>,
    boot: u64,
    seq: u64,
    peers: Vec<String>,
    /// Per sender: (boot, highest seq) seen.
    seen: HashMap<String, (u64, u64)>,
}

impl PeerCodec {
    pub fn new(me: &str, secret: &str, peers: Vec<String>, boot: u64) -> Self {
        Self {
            me: me.to_owned(),
            secret: secret.as_bytes().to_vec(),
            boot,
            seq: 0,
            peers,
            seen: HashMap::new(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length")
    }

    pub fn seal(&mut self, service: &str, msg: &PeerMsg) -> Vec<u8> {
        self.seal_wire(service, msg.into())
    }

    /// A message about the floating addresses (no service).
    pub fn seal_ha(&mut self, msg: &HaMsg) -> Vec<u8> {
        self.seal_wire("", WireMsg::Ha { ha: msg.clone() })
    }

    fn seal_wire(&mut self, service: &str, msg: WireMsg) -> Vec<u8> {
        self.seq += 1;
        let env = Envelope {
            from: self.me.clone(),
            boot: self.boot,
            seq: self.seq,
            service: service.to_owned(),
            msg,
        };
        let body = serde_json::to_vec(&env).expect("envelope serializes");
        let mut mac = self.mac();
        mac.update(&body);
        let mut out = mac.finalize().into_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// Starts from the boots of peers heard before this controller's start: a datagram of an
    /// earlier boot than a peer's remembered one is then refused as a replay.
    pub fn remember_boots(&mut self, boots: &std::collections::BTreeMap<String, u64>) {
        for (peer, &boot) in boots {
            if self.peers.contains(peer) {
                self.seen.insert(peer.clone(), (boot, 0));
            }
        }
    }

    /// The boot last accepted from `peer`.
    pub fn boot_of(&self, peer: &str) -> Option<u64> {
        self.seen.get(peer).map(|&(boot, _)| boot)
    }

    /// Verifies and decodes a datagram: (sender, service name, message).
    pub fn open(&mut self, datagram: &[u8]) -> Result<(ControllerId, String, Payload), Refused> {
        if datagram.len() <= MAC_LEN {
            return Err(Refused::Short);
        }
        let (tag, body) = datagram.split_at(MAC_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| Refused::BadMac)?;
        let env: Envelope =
            serde_json::from_slice(body).map_err(|e| Refused::Malformed(e.to_string()))?;
        if !self.peers.contains(&env.from) {
            return Err(Refused::UnknownPeer(env.from));
        }
        check_numbers(&env.msg)?;
        let last = self.seen.get(&env.from).copied().unwrap_or((0, 0));
        if (env.boot, env.seq) <= last {
            return Err(Refused::Replay(env.from));
        }
        self.seen.insert(env.from.clone(), (env.boot, env.seq));
        Ok((ControllerId(env.from), env.service, env.msg.into()))
    }
}

/// Largest epoch, clock stamp or duration a peer may send. Far beyond any real one (an epoch
/// per nanosecond for 292 years), and small enough that adding two of them (a stamp and a
/// lease, our clock and a peer's `down_after_ms`) cannot overflow: a wrapped sum would make a
/// live holder look gone, or an epoch roll back to 0.
pub const MAX_WIRE_NUMBER: u64 = i64::MAX as u64;

/// Refuses a message carrying a number no controller could send (see [`MAX_WIRE_NUMBER`]).
fn check_numbers(msg: &WireMsg) -> Result<(), Refused> {
    let numbers: Vec<(&str, u64)> = match msg {
        WireMsg::Hello {
            current_epoch,
            config_epoch,
            failover_epoch,
            ..
        } => {
            let mut n = vec![
                ("current_epoch", *current_epoch),
                ("config_epoch", *config_epoch),
            ];
            n.extend(failover_epoch.map(|e| ("failover_epoch", e)));
            n
        }
        WireMsg::VoteRequest { epoch, .. } | WireMsg::VoteReply { epoch, .. } => {
            vec![("epoch", *epoch)]
        }
        WireMsg::Ha { ha } => match ha {
            HaMsg::Claim {
                epoch,
                stamp,
                down_after_ms,
                ..
            }
            | HaMsg::VoteRequest {
                epoch,
                stamp,
                down_after_ms,
                ..
            } => vec![
                ("epoch", *epoch),
                ("stamp", *stamp),
                ("down_after_ms", *down_after_ms),
            ],
            HaMsg::Ack { epoch, stamp } | HaMsg::Vote { epoch, stamp } => {
                vec![("epoch", *epoch), ("stamp", *stamp)]
            }
            HaMsg::Candidate { epoch, .. } | HaMsg::Release { epoch } => vec![("epoch", *epoch)],
        },
    };
    match numbers.into_iter().find(|&(_, n)| n > MAX_WIRE_NUMBER) {
        Some((field, n)) => Err(Refused::Malformed(format!(
            "{field} {n} is out of range (at most {MAX_WIRE_NUMBER})"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-test";

    fn pair() -> (PeerCodec, PeerCodec) {
        (
            PeerCodec::new("c1", SECRET, vec!["c2".into()], 1),
            PeerCodec::new("c2", SECRET, vec!["c1".into()], 1),
        )
    }

    fn hello() -> PeerMsg {
        PeerMsg::Hello(Hello {
            current_epoch: 3,
            master: "198.18.1.11:6379".parse().unwrap(),
            config_epoch: 2,
            sdown: vec!["198.18.1.13:6379".parse().unwrap()],
            failover_epoch: Some(3),
        })
    }

    #[test]
    fn round_trip() {
        let (mut a, mut b) = pair();
        for msg in [
            hello(),
            PeerMsg::VoteRequest {
                epoch: 4,
                master: "198.18.1.11:6379".parse().unwrap(),
            },
            PeerMsg::VoteReply {
                epoch: 4,
                leader: ControllerId("c1".into()),
            },
        ] {
            let d = a.seal("mymaster", &msg);
            assert_eq!(
                b.open(&d).unwrap(),
                (
                    ControllerId("c1".into()),
                    "mymaster".into(),
                    Payload::Service(msg)
                )
            );
        }
        let claim = HaMsg::Claim {
            epoch: 2,
            stamp: 1234,
            priority: 150,
            down_after_ms: 200,
        };
        let d = a.seal_ha(&claim);
        assert_eq!(
            b.open(&d).unwrap(),
            (ControllerId("c1".into()), String::new(), Payload::Ha(claim))
        );
    }

    #[test]
    fn wrong_secret_tampering_and_strangers_are_refused() {
        let (mut a, mut b) = pair();
        let mut intruder = PeerCodec::new("c1", "another-secret-entirely", vec![], 1);
        assert_eq!(b.open(&intruder.seal("m", &hello())), Err(Refused::BadMac));
        let mut d = a.seal("m", &hello());
        let last = d.len() - 2;
        d[last] ^= 1;
        assert_eq!(b.open(&d), Err(Refused::BadMac));
        let mut stranger = PeerCodec::new("c9", SECRET, vec![], 1);
        assert_eq!(
            b.open(&stranger.seal("m", &hello())),
            Err(Refused::UnknownPeer("c9".into()))
        );
        assert_eq!(b.open(&[1, 2, 3]), Err(Refused::Short));
    }

    #[test]
    fn replays_are_refused_but_a_restarted_peer_is_heard() {
        let (mut a, mut b) = pair();
        let d1 = a.seal("m", &hello());
        let d2 = a.seal("m", &hello());
        b.open(&d2).unwrap();
        assert_eq!(b.open(&d1), Err(Refused::Replay("c1".into())));
        assert_eq!(b.open(&d2), Err(Refused::Replay("c1".into())));
        let mut restarted = PeerCodec::new("c1", SECRET, vec![], 2);
        assert!(b.open(&restarted.seal("m", &hello())).is_ok());
    }

    /// A receiver restarted with the boots it had heard refuses a datagram captured from an
    /// earlier boot of a peer; one it started without (the old behaviour) accepts it once.
    #[test]
    fn a_restarted_receiver_refuses_datagrams_of_earlier_boots_it_remembers() {
        let mut old_boot = PeerCodec::new("c1", SECRET, vec![], 1);
        let captured = old_boot.seal("m", &hello());
        let mut current = PeerCodec::new("c1", SECRET, vec![], 2);
        let (_, mut b) = pair();
        b.open(&current.seal("m", &hello())).unwrap();
        assert_eq!(b.boot_of("c1"), Some(2));
        let remembered = std::collections::BTreeMap::from([("c1".to_owned(), 2)]);

        let (_, mut forgetful) = pair();
        assert!(forgetful.open(&captured).is_ok(), "the old behaviour");
        let (_, mut restarted) = pair();
        restarted.remember_boots(&remembered);
        assert_eq!(restarted.open(&captured), Err(Refused::Replay("c1".into())));
        // The peer's current boot, and its next one, are heard.
        assert!(restarted.open(&current.seal("m", &hello())).is_ok());
        let mut next = PeerCodec::new("c1", SECRET, vec![], 3);
        assert!(restarted.open(&next.seal("m", &hello())).is_ok());
    }

    /// A peer with the secret (a compromised or broken controller) sending numbers whose sums
    /// would wrap: refused, naming the field, before the machines see them.
    #[test]
    fn numbers_no_controller_could_send_are_refused() {
        let (mut a, mut b) = pair();
        let huge = u64::MAX;
        let hello = PeerMsg::Hello(Hello {
            current_epoch: huge,
            master: "198.18.1.11:6379".parse().unwrap(),
            config_epoch: 2,
            sdown: vec![],
            failover_epoch: None,
        });
        let Err(Refused::Malformed(why)) = b.open(&a.seal("m", &hello)) else {
            panic!("a hello in epoch {huge} was accepted")
        };
        assert!(
            why.starts_with("current_epoch 18446744073709551615"),
            "{why}"
        );
        let vote = PeerMsg::VoteReply {
            epoch: MAX_WIRE_NUMBER + 1,
            leader: ControllerId("c1".into()),
        };
        assert!(matches!(
            b.open(&a.seal("m", &vote)),
            Err(Refused::Malformed(_))
        ));
        for claim in [
            HaMsg::Claim {
                epoch: 2,
                stamp: 1,
                priority: 1,
                down_after_ms: huge,
            },
            HaMsg::Ack {
                epoch: 2,
                stamp: huge,
            },
            HaMsg::Release { epoch: huge },
        ] {
            assert!(
                matches!(b.open(&a.seal_ha(&claim)), Err(Refused::Malformed(_))),
                "{claim:?}"
            );
        }
        // The largest allowed values pass.
        let release = HaMsg::Release {
            epoch: MAX_WIRE_NUMBER,
        };
        assert!(b.open(&a.seal_ha(&release)).is_ok());
    }
}
