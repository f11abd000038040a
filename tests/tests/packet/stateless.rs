//! Replies with no connection-table entry (the connection was accepted by another LB node, or
//! its entry was evicted): rewritten from the live state when the destination is a client
//! network, passed untouched otherwise.

use std::net::Ipv4Addr;

use redis_ha_common::counter;

use crate::{
    BE_11, BE_12, BE_13, BE_14, READ, SLOT_12, WRITE, at_every_hook, client,
    dataplane::{Case, Dataplane, Expect, Hook, XDP_PASS, XDP_REDIRECT},
    netns::Testbed,
    standard, syn_to_master, tcp,
};

fn with_client_net(tb: &Testbed, hook: Hook) -> Dataplane {
    let mut dp = standard(tb, hook);
    dp.add_client_net(Ipv4Addr::new(198, 18, 0, 0), 24);
    dp
}

#[test]
fn replies_without_a_flow_follow_the_live_state() {
    at_every_hook(|tb, hook| {
        let mut dp = with_client_net(tb, hook);
        dp.table(&[
            Case {
                name: "the master's reply: from the write port",
                frame: tcp(BE_11, client(47000)).data(b"+OK\r\n").build(),
                action: XDP_REDIRECT,
                expect: Expect::ToClient(WRITE),
                counter: counter::FWD_TO_CLIENT_NO_FLOW,
            },
            Case {
                name: "a readable replica's reply: from the read port",
                frame: tcp(BE_12, client(47001)).data(b"$1\r\nx\r\n").build(),
                action: XDP_REDIRECT,
                expect: Expect::ToClient(READ),
                counter: counter::FWD_TO_CLIENT_NO_FLOW,
            },
            Case {
                name: "a backend neither master nor readable: untouched",
                frame: tcp(BE_14, client(47002)).data(b"").build(),
                action: XDP_PASS,
                expect: Expect::Unchanged,
                counter: counter::PASS_NOT_SERVICE,
            },
            Case {
                name: "replication between backends (not a client network): untouched",
                frame: tcp(BE_11, BE_13).data(b"*1\r\n").build(),
                action: XDP_PASS,
                expect: Expect::Unchanged,
                counter: counter::PASS_NOT_SERVICE,
            },
        ]);
        // After a switch the same packet follows the new state: .12 is now the master.
        dp.set_state(crate::SID, SLOT_12, 1);
        dp.step(Case {
            name: "the new master's reply: from the write port",
            frame: tcp(BE_12, client(47003)).data(b"").build(),
            action: XDP_REDIRECT,
            expect: Expect::ToClient(WRITE),
            counter: counter::FWD_TO_CLIENT_NO_FLOW,
        });
    });
}

#[test]
fn without_client_networks_replies_need_a_flow() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        dp.step(Case {
            name: "no client network configured: untouched",
            frame: tcp(BE_11, client(47010)).data(b"").build(),
            action: XDP_PASS,
            expect: Expect::Unchanged,
            counter: counter::PASS_NOT_SERVICE,
        });
    });
}

#[test]
fn a_direct_connection_reusing_ports_of_an_old_vip_connection_is_not_rewritten() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let c = client(47020);
        dp.step(syn_to_master(
            "an earlier connection through the VIP leaves its entry behind",
            c,
        ));
        dp.table(&[
            Case {
                name: "the client now connects straight to the backend from the same port",
                frame: tcp(c, BE_11).syn().build(),
                action: XDP_PASS,
                expect: Expect::Unchanged,
                counter: counter::PASS_NOT_SERVICE,
            },
            Case {
                name: "the backend's SYN-ACK must not be rewritten to come from the VIP",
                frame: tcp(BE_11, c)
                    .flags(crate::frame::tcp_flags::SYN | crate::frame::tcp_flags::ACK)
                    .build(),
                action: XDP_PASS,
                expect: Expect::Unchanged,
                counter: counter::PASS_NOT_SERVICE,
            },
        ]);
    });
}
