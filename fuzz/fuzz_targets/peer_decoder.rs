//! The peer datagram verifier and decoder, on arbitrary datagrams. The input is opened twice:
//! as a whole datagram (almost always refused at the MAC), and as the body of a datagram sealed
//! with the receiver's secret, so that the JSON decoding and the checks behind the MAC are
//! reached. Checks, besides never panicking, that what is accepted
//! round-trips: sealed again by the sender's encoder and opened by a fresh receiver, it is the
//! same message from the same sender.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use redis_ha_ctl::{
    fuzzing::peer_datagram,
    peer::{Payload, PeerCodec},
};

const SECRET: &str = "redis-ha-fuzz-shared-secret";
/// The receiver, and the boot it runs.
const ME: &str = "c1";
const BOOT: u64 = 1_700_000_000_000_000_000;
const PEERS: [&str; 2] = ["c2", "c3"];

fn receiver() -> PeerCodec {
    PeerCodec::new(ME, SECRET, PEERS.map(String::from).to_vec(), BOOT)
}

fn open(datagram: &[u8]) {
    let Ok((from, service, payload)) = receiver().open(datagram) else {
        return;
    };
    // The sender's own encoder, knowing our boot as it would after hearing us.
    let mut sender = PeerCodec::new(&from.0, SECRET, vec![ME.to_owned()], 1);
    sender.remember_boots(&BTreeMap::from([(ME.to_owned(), BOOT)]));
    let again = match &payload {
        Payload::Service(msg) => sender.seal(ME, &service, msg),
        Payload::Ha(msg) => sender.seal_ha(ME, msg),
    };
    let reopened = receiver()
        .open(&again)
        .expect("a re-sealed message is accepted");
    assert_eq!(reopened.0, from);
    assert_eq!(reopened.2, payload);
    // A message about the floating addresses is sealed without a service (the name an
    // accepted one carried is ignored by the receiver).
    if matches!(payload, Payload::Service(_)) {
        assert_eq!(reopened.1, service);
    }
}

fuzz_target!(|input: &[u8]| {
    open(input);
    open(&peer_datagram(SECRET, input));
});
