//! A client may reuse its source port for a connection to the other VIP port (Linux does so
//! freely for a different destination). When both connections land on the master, which
//! serves the write port and, as a fallback, the read port, they would have the same
//! addresses on the backend's side: the new one must be refused, and the live one must keep
//! its replies.

use std::net::SocketAddrV4;

use redis_ha_common::counter;

use crate::{
    BE_11, READ, SID, SLOT_11, SLOT_12, WRITE, at_every_hook, client,
    dataplane::{Case, Dataplane, Expect, Hook, RESET_ACTION, XDP_REDIRECT},
    flow_key,
    frame::tcp_flags::{ACK, RST},
    netns::Testbed,
    open_via_master, standard, tcp,
};

/// The standard service with every read connection going to the master, .11.
fn reads_on_the_master(tb: &Testbed, hook: Hook) -> Dataplane {
    let mut dp = standard(tb, hook);
    dp.fill_ring(SID, 1, &[SLOT_11]);
    dp
}

fn open(dp: &Dataplane, c: SocketAddrV4, vip: SocketAddrV4) {
    open_via_master(dp, c, vip);
}

fn refused(dp: &Dataplane, name: &'static str, c: SocketAddrV4, vip: SocketAddrV4) {
    dp.step(Case {
        name,
        frame: tcp(c, vip).syn().build(),
        action: RESET_ACTION,
        expect: Expect::Reset,
        counter: counter::RESET_PORT_IN_USE,
    });
    assert_eq!(
        dp.flow(&flow_key(c, vip)),
        None,
        "{name}: refused, not remembered"
    );
}

#[test]
fn a_second_connection_from_the_same_port_through_the_other_vip_port_is_refused() {
    at_every_hook(|tb, hook| {
        let dp = reads_on_the_master(tb, hook);
        for (i, (first, second)) in [(WRITE, READ), (READ, WRITE)].into_iter().enumerate() {
            let c = client(44000 + i as u16);
            open(&dp, c, first);
            refused(
                &dp,
                "same client port, other VIP port, same backend",
                c,
                second,
            );
            // The live connection is untouched: its replies still come from its own port.
            dp.step(Case {
                name: "the first connection's reply",
                frame: tcp(BE_11, c).data(b"+OK\r\n").build(),
                action: XDP_REDIRECT,
                expect: Expect::ToClient(first),
                counter: counter::FWD_TO_CLIENT,
            });
            dp.step(Case {
                name: "the first connection's request",
                frame: tcp(c, first).data(b"*1\r\n$4\r\nPING\r\n").build(),
                action: XDP_REDIRECT,
                expect: Expect::ToBackend(BE_11),
                counter: counter::FWD_TO_BACKEND,
            });
        }
        assert_eq!(dp.counters()[counter::RESET_PORT_IN_USE as usize], 2);
    });
}

#[test]
fn the_port_is_free_again_once_the_first_connection_is_reset_or_replaced() {
    at_every_hook(|tb, hook| {
        let mut dp = reads_on_the_master(tb, hook);

        // Either end resets the write connection: the read connection may take the port.
        for (port, from_client) in [(44100, true), (44101, false)] {
            let c = client(port);
            open(&dp, c, WRITE);
            let (frame, expect, counter) = if from_client {
                let f = tcp(c, WRITE);
                (f, Expect::ToBackend(BE_11), counter::FWD_TO_BACKEND)
            } else {
                (
                    tcp(BE_11, c),
                    Expect::ToClient(WRITE),
                    counter::FWD_TO_CLIENT,
                )
            };
            dp.step(Case {
                name: if from_client {
                    "client RST"
                } else {
                    "backend RST"
                },
                frame: frame.flags(RST | ACK).build(),
                action: XDP_REDIRECT,
                expect,
                counter,
            });
            open(&dp, c, READ);
        }

        // A master switch resets the write connection on its next packet, which takes its
        // entry along; when the old master serves reads, the port is free for them.
        let c = client(44102);
        open(&dp, c, WRITE);
        dp.set_state(SID, SLOT_12, 1);
        dp.step(Case {
            name: "the old master's connection, after the switch",
            frame: tcp(c, WRITE).data(b"*1\r\n$4\r\nPING\r\n").build(),
            action: RESET_ACTION,
            expect: Expect::Reset,
            counter: counter::RESET_STALE_FLOW,
        });
        assert_eq!(dp.flow(&flow_key(c, WRITE)), None, "the entry went");
        open(&dp, c, READ);
        assert_eq!(dp.counters()[counter::RESET_PORT_IN_USE as usize], 0);
    });
}
