//! A connection's entry leaves the table when it closes in order (FIN both ways, then the
//! last ACK), whichever side closes first; a half-closed connection and a reset keep theirs.

use std::net::SocketAddrV4;

use redis_ha_common::{FlowKey, counter, flow_end};

use crate::{
    BE_11, SLOT_11, WRITE, at_every_hook, client,
    dataplane::{Case, Dataplane, Expect, XDP_REDIRECT},
    frame::tcp_flags::{ACK, FIN, RST},
    open_via_master, standard, tcp,
};

/// Client `c` → write port, handshake and one request/reply; returns the entry's key.
fn open(dp: &Dataplane, c: SocketAddrV4) -> FlowKey {
    open_via_master(dp, c, WRITE)
}

fn forwarded(dp: &Dataplane, name: &'static str, from_client: bool, frame: Vec<u8>) {
    let (expect, counter) = if from_client {
        (Expect::ToBackend(BE_11), counter::FWD_TO_BACKEND)
    } else {
        (Expect::ToClient(WRITE), counter::FWD_TO_CLIENT)
    };
    dp.step(Case {
        name,
        frame,
        action: XDP_REDIRECT,
        expect,
        counter,
    });
}

#[test]
fn an_orderly_close_removes_the_entry_after_forwarding_the_last_ack() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        for (i, client_first) in [true, false].into_iter().enumerate() {
            let c = client(41000 + i as u16);
            let key = open(&dp, c);
            let from_client = tcp(c, WRITE);
            let from_backend = tcp(BE_11, c);
            let (first, second) = if client_first {
                (from_client.clone(), from_backend.clone())
            } else {
                (from_backend.clone(), from_client.clone())
            };
            forwarded(
                &dp,
                "first FIN",
                client_first,
                first.clone().flags(FIN | ACK).build(),
            );
            forwarded(&dp, "its ACK", !client_first, second.clone().build());
            let first_fin = if client_first {
                flow_end::CLIENT_FIN
            } else {
                flow_end::BACKEND_FIN
            };
            assert_eq!(
                dp.flow(&key).map(|f| f.end),
                Some(first_fin),
                "half closed (client first: {client_first}): the entry stays"
            );
            forwarded(
                &dp,
                "second FIN",
                !client_first,
                second.flags(FIN | ACK).build(),
            );
            // The last ACK is padded to 60 bytes on the wire; the padding is not payload.
            let last = first.flags(ACK).padded().build();
            forwarded(&dp, "last ACK, still forwarded", client_first, last);
            assert_eq!(dp.flow(&key), None, "client closed first: {client_first}");
            assert_eq!(dp.stats(SLOT_11).flows_closed, i as u64 + 1);
        }
    });
}

#[test]
fn a_half_closed_connection_and_a_reset_keep_their_entries() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let c = client(41100);
        let key = open(&dp, c);
        forwarded(
            &dp,
            "client FIN",
            true,
            tcp(c, WRITE).flags(FIN | ACK).build(),
        );
        // The backend may go on sending after the client's FIN; the client acknowledges it.
        forwarded(
            &dp,
            "more reply",
            false,
            tcp(BE_11, c).data(b"+OK\r\n").build(),
        );
        forwarded(&dp, "client's bare ACK", true, tcp(c, WRITE).build());
        assert_eq!(dp.flow(&key).map(|f| f.end), Some(flow_end::CLIENT_FIN));

        // A reset may be one the receiver rejects (out of window): the entry stays, and the
        // controller's sweep removes it once the connection is quiet.
        let c = client(41101);
        let key = open(&dp, c);
        forwarded(
            &dp,
            "backend FIN",
            false,
            tcp(BE_11, c).flags(FIN | ACK).build(),
        );
        forwarded(
            &dp,
            "client RST",
            true,
            tcp(c, WRITE).flags(RST | ACK).build(),
        );
        assert_eq!(
            dp.flow(&key).map(|f| f.end),
            Some(flow_end::BACKEND_FIN | flow_end::RST)
        );
        assert_eq!(dp.stats(SLOT_11).flows_closed, 0);
    });
}
