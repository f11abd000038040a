//! The controllers' peer protocol: one UDP datagram per message, JSON, authenticated with
//! HMAC-SHA256 over the shared secret. Views are re-sent every probe interval, so a lost
//! datagram costs one interval, never correctness; vote requests are retried by the machine.
//!
//! A datagram is `HMAC (32 bytes) || JSON envelope`. A receiver drops (and logs) anything whose
//! MAC does not verify (wrong secret, tampering), whose sender is not a configured peer, that
//! replays an older sequence number of the sender's current boot, or that was addressed to an
//! earlier boot of the receiver.
//!
//! Why the receiver's boot travels too (`to_boot`): a receiver keeps the highest sequence
//! number per sender in memory only, so after its own restart it cannot tell a captured
//! datagram of the sender's current boot from a fresh one. Every datagram names the boot of its
//! receiver as the sender last heard it, and the receiver accepts only its own current boot;
//! its boot grows at every start, so whatever was captured before the restart is refused. The
//! price is one hello interval after a start: until a peer hears the new boot (from this
//! controller's own datagrams, which the peer accepts since their boot is newer), what it
//! sends is addressed to the old one and refused.

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    sync::{Arc, Mutex},
};

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
    /// The receiver's boot as the sender last heard it (0: never heard). Absent from an older
    /// controller's datagrams, which are judged by `(boot, seq)` alone, as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to_boot: Option<u64>,
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
    #[error(
        "message from {from} addressed to our boot {to_boot}, but we are boot {boot}: captured \
         before our restart and replayed, or {from} has not heard us since (it will within one \
         hello interval)"
    )]
    NotForThisBoot {
        from: String,
        to_boot: u64,
        boot: u64,
    },
}

impl Refused {
    /// The metric label and log field of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::BadMac => "bad-mac",
            Refused::UnknownPeer(_) => "unknown-peer",
            Refused::Replay(_) => "replay",
            Refused::NotForThisBoot { .. } => "not-for-this-boot",
            Refused::Short | Refused::Malformed(_) => "malformed",
        }
    }
}

/// Per peer, the highest boot heard in an authentic datagram: written by a controller's
/// receiving codec, read by its sending one for `to_boot`.
pub type HeardBoots = Arc<Mutex<HashMap<String, u64>>>;

/// Seals outgoing and opens incoming datagrams for one controller.
pub struct PeerCodec {
    me: String,
    secret: Vec<u8>,
    boot: u64,
    seq: u64,
    peers: Vec<String>,
    /// Per sender: (boot, highest seq) accepted.
    seen: HashMap<String, (u64, u64)>,
    /// Shared with the [`PeerCodec::twin`]: what the receiving side heard, the sending side
    /// addresses.
    heard: HeardBoots,
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
            heard: HeardBoots::default(),
        }
    }

    /// A codec of the same controller with its own sequence state but the same knowledge of
    /// the peers' boots: one seals (in the executor), the other opens (in the receiving task).
    pub fn twin(&self) -> Self {
        Self {
            me: self.me.clone(),
            secret: self.secret.clone(),
            boot: self.boot,
            seq: 0,
            peers: self.peers.clone(),
            seen: HashMap::new(),
            heard: self.heard.clone(),
        }
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // The map holds plain numbers: one a panicking holder left is still consistent.
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mac(&self) -> Hmac<Sha256> {
        mac(&self.secret)
    }

    /// A service's message to peer `to`: sealed per receiver, since it names the receiver's
    /// boot.
    pub fn seal(&mut self, to: &str, service: &str, msg: &PeerMsg) -> Vec<u8> {
        self.seal_wire(to, service, msg.into())
    }

    /// A message about the floating addresses (no service) to peer `to`.
    pub fn seal_ha(&mut self, to: &str, msg: &HaMsg) -> Vec<u8> {
        self.seal_wire(to, "", WireMsg::Ha { ha: msg.clone() })
    }

    fn seal_wire(&mut self, to: &str, service: &str, msg: WireMsg) -> Vec<u8> {
        self.seq += 1;
        let to_boot = self.heard().get(to).copied().unwrap_or(0);
        let env = Envelope {
            from: self.me.clone(),
            boot: self.boot,
            seq: self.seq,
            to_boot: Some(to_boot),
            service: service.to_owned(),
            msg,
        };
        let body = serde_json::to_vec(&env).expect("envelope serializes");
        authenticated(&self.secret, &body)
    }

    /// Starts from the boots of peers heard before this controller's start: a datagram of an
    /// earlier boot than a peer's remembered one is then refused as a replay, and the first
    /// datagrams to a peer that did not restart meanwhile already carry its boot.
    pub fn remember_boots(&mut self, boots: &std::collections::BTreeMap<String, u64>) {
        for (peer, &boot) in boots {
            if self.peers.contains(peer) {
                self.seen.insert(peer.clone(), (boot, 0));
                self.learn(peer, boot);
            }
        }
    }

    /// The highest boot heard from `peer`.
    pub fn boot_of(&self, peer: &str) -> Option<u64> {
        self.heard().get(peer).copied()
    }

    fn learn(&self, peer: &str, boot: u64) {
        let mut heard = self.heard();
        let known = heard.entry(peer.to_owned()).or_insert(boot);
        *known = (*known).max(boot);
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
        // Learnt even from a datagram refused below: only an authentic datagram carries a boot
        // above every earlier one, and a peer must learn ours while we learn its, or two
        // controllers that restarted together would refuse each other for ever.
        self.learn(&env.from, env.boot);
        if let Some(to_boot) = env.to_boot
            && to_boot != self.boot
        {
            return Err(Refused::NotForThisBoot {
                from: env.from,
                to_boot,
                boot: self.boot,
            });
        }
        self.seen.insert(env.from.clone(), (env.boot, env.seq));
        Ok((ControllerId(env.from), env.service, env.msg.into()))
    }
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length")
}

/// The datagram carrying `body`: its MAC under `secret`, then the body. The fuzz target
/// seals arbitrary bodies with it so that they reach the decoder behind the MAC check.
pub(crate) fn authenticated(secret: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = mac(secret);
    mac.update(body);
    let mut out = mac.finalize().into_bytes().to_vec();
    out.extend_from_slice(body);
    out
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

    /// c1 and c2 in their first boot, each knowing the other's.
    fn pair() -> (PeerCodec, PeerCodec) {
        let (c1, c2) = (
            PeerCodec::new("c1", SECRET, vec!["c2".into()], 1),
            PeerCodec::new("c2", SECRET, vec!["c1".into()], 1),
        );
        c1.learn("c2", 1);
        c2.learn("c1", 1);
        (c1, c2)
    }

    /// A codec signing as `me` in boot `boot` that knows c2's first boot.
    fn sender(me: &str, secret: &str, boot: u64) -> PeerCodec {
        let codec = PeerCodec::new(me, secret, vec![], boot);
        codec.learn("c2", 1);
        codec
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
            let d = a.seal("c2", "mymaster", &msg);
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
        let d = a.seal_ha("c2", &claim);
        assert_eq!(
            b.open(&d).unwrap(),
            (ControllerId("c1".into()), String::new(), Payload::Ha(claim))
        );
    }

    #[test]
    fn wrong_secret_tampering_and_strangers_are_refused() {
        let (mut a, mut b) = pair();
        let mut intruder = sender("c1", "another-secret-entirely", 1);
        assert_eq!(
            b.open(&intruder.seal("c2", "m", &hello())),
            Err(Refused::BadMac)
        );
        let mut d = a.seal("c2", "m", &hello());
        let last = d.len() - 2;
        d[last] ^= 1;
        assert_eq!(b.open(&d), Err(Refused::BadMac));
        let mut stranger = sender("c9", SECRET, 1);
        assert_eq!(
            b.open(&stranger.seal("c2", "m", &hello())),
            Err(Refused::UnknownPeer("c9".into()))
        );
        assert_eq!(b.open(&[1, 2, 3]), Err(Refused::Short));
    }

    #[test]
    fn replays_are_refused_but_a_restarted_peer_is_heard() {
        let (mut a, mut b) = pair();
        let d1 = a.seal("c2", "m", &hello());
        let d2 = a.seal("c2", "m", &hello());
        b.open(&d2).unwrap();
        assert_eq!(b.open(&d1), Err(Refused::Replay("c1".into())));
        assert_eq!(b.open(&d2), Err(Refused::Replay("c1".into())));
        let mut restarted = sender("c1", SECRET, 2);
        assert!(b.open(&restarted.seal("c2", "m", &hello())).is_ok());
    }

    /// A receiver restarted with the boots it had heard refuses a datagram captured from an
    /// earlier boot of a peer, and hears the peer's current and next boots.
    #[test]
    fn a_restarted_receiver_refuses_datagrams_of_earlier_boots_it_remembers() {
        let mut old_boot = sender("c1", SECRET, 1);
        let captured = old_boot.seal("c2", "m", &hello());
        let mut current = sender("c1", SECRET, 2);
        let remembered = std::collections::BTreeMap::from([("c1".to_owned(), 2)]);
        let mut restarted = PeerCodec::new("c2", SECRET, vec!["c1".into()], 1);
        restarted.remember_boots(&remembered);
        assert_eq!(restarted.open(&captured), Err(Refused::Replay("c1".into())));
        assert!(restarted.open(&current.seal("c2", "m", &hello())).is_ok());
        let mut next = sender("c1", SECRET, 3);
        assert!(restarted.open(&next.seal("c2", "m", &hello())).is_ok());
    }

    /// The hole the receiver's boot in every datagram closes: a datagram of the sender's
    /// *current* boot, captured before the receiver restarted, was accepted once by the
    /// restarted receiver (it keeps sequence numbers in memory only). It is addressed to the
    /// receiver's earlier boot, so it is refused, before and after the peers resume.
    #[test]
    fn a_datagram_replayed_after_the_receiver_restarts_is_refused() {
        let (mut c1, mut c2) = pair();
        c2.open(&c1.seal("c2", "m", &hello())).unwrap();
        let captured = c1.seal("c2", "m", &hello());
        assert!(c2.open(&captured).is_ok(), "delivered once, and recorded");

        // c2 restarts in boot 2, remembering c1's boot.
        let mut c2 = PeerCodec::new("c2", SECRET, vec!["c1".into()], 2);
        c2.remember_boots(&std::collections::BTreeMap::from([("c1".to_owned(), 1)]));
        let stale = Err(Refused::NotForThisBoot {
            from: "c1".into(),
            to_boot: 1,
            boot: 2,
        });
        assert_eq!(c2.open(&captured), stale);
        // c1's own datagrams are refused too until it hears c2's new boot...
        assert_eq!(
            c2.open(&c1.seal("c2", "m", &hello())).unwrap_err().reason(),
            "not-for-this-boot"
        );
        // ...which c2's first datagram teaches it (c1 accepts: the boot is newer).
        let (id, _, _) = c1.open(&c2.seal("c1", "m", &hello())).unwrap();
        assert_eq!(id, ControllerId("c2".into()));
        assert_eq!(c1.boot_of("c2"), Some(2));
        assert!(c2.open(&c1.seal("c2", "m", &hello())).is_ok());
        // The capture stays refused.
        assert!(c2.open(&captured).is_err());
    }

    /// Two controllers that restarted together address each other's old boots at first; each
    /// learns the other's new boot from the datagram it refuses, so they hear each other from
    /// the second exchange on.
    #[test]
    fn peers_that_restarted_together_hear_each_other_after_one_exchange() {
        let (mut c1, mut c2) = (
            PeerCodec::new("c1", SECRET, vec!["c2".into()], 2),
            PeerCodec::new("c2", SECRET, vec!["c1".into()], 2),
        );
        let old = std::collections::BTreeMap::from([("c1".to_owned(), 1), ("c2".to_owned(), 1)]);
        c1.remember_boots(&old);
        c2.remember_boots(&old);
        assert!(c2.open(&c1.seal("c2", "m", &hello())).is_err());
        assert!(c1.open(&c2.seal("c1", "m", &hello())).is_ok());
        assert!(c2.open(&c1.seal("c2", "m", &hello())).is_ok());
    }

    /// The sending twin addresses what the receiving one heard.
    #[test]
    fn the_sending_twin_addresses_the_boot_its_receiving_twin_heard() {
        let rx = PeerCodec::new("c2", SECRET, vec!["c1".into()], 1);
        let mut tx = rx.twin();
        let mut c1 = PeerCodec::new("c1", SECRET, vec!["c2".into()], 1);
        c1.learn("c2", 1);
        assert!(
            c1.open(&tx.seal("c1", "m", &hello())).is_err(),
            "c1 unknown"
        );
        let mut rx = rx;
        rx.open(&c1.seal("c2", "m", &hello())).unwrap();
        assert!(c1.open(&tx.seal("c1", "m", &hello())).is_ok());
    }

    /// A controller of the version before `to_boot` is judged by `(boot, seq)` alone, as it
    /// was: a rolling upgrade keeps the peers talking.
    #[test]
    fn datagrams_without_the_receivers_boot_are_judged_as_before() {
        let (mut c1, mut c2) = pair();
        let legacy = |c1: &mut PeerCodec| {
            let d = c1.seal("c2", "m", &hello());
            let mut env: serde_json::Value = serde_json::from_slice(&d[MAC_LEN..]).unwrap();
            env.as_object_mut().unwrap().remove("to_boot");
            let body = serde_json::to_vec(&env).unwrap();
            let mut mac = c1.mac();
            mac.update(&body);
            let mut out = mac.finalize().into_bytes().to_vec();
            out.extend_from_slice(&body);
            out
        };
        let d = legacy(&mut c1);
        assert!(c2.open(&d).is_ok());
        assert_eq!(c2.open(&d), Err(Refused::Replay("c1".into())));
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
        let Err(Refused::Malformed(why)) = b.open(&a.seal("c2", "m", &hello)) else {
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
            b.open(&a.seal("c2", "m", &vote)),
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
                matches!(b.open(&a.seal_ha("c2", &claim)), Err(Refused::Malformed(_))),
                "{claim:?}"
            );
        }
        // The largest allowed values pass.
        let release = HaMsg::Release {
            epoch: MAX_WIRE_NUMBER,
        };
        assert!(b.open(&a.seal_ha("c2", &release)).is_ok());
    }
}
