//! Segments a client (or anyone who can reach the VIP) may send to change state that is not
//! theirs: only a connection's SYN takes a place in the connection table; a SYN never moves a
//! live connection; a backend's address counts only where the backends are; a FIN or RST
//! counts only inside its connection's window; the replica a connection lands on depends on a
//! key the client does not know.

use redis_ha_common::{FlowHashKey, FlowKey, RING_SIZE, counter, flow_end, flow_hash, if_role};

use crate::{
    BE_11, BE_12, READ, READ_POOL, SID, SLOT_11, SLOT_12, SLOT_13, WRITE, at_every_hook, client,
    dataplane::{Case, Expect, XDP_DROP, XDP_PASS, XDP_REDIRECT},
    flow_key,
    frame::tcp_flags::{ACK, FIN, PSH, RST},
    open_via_master, standard, tcp, to_backend, to_client_from,
};

/// The read-pool backend the program picks for `key` under `secret`: the standard service's
/// live ring is a round robin over `READ_POOL`.
fn predicted(key: &FlowKey, secret: &FlowHashKey) -> std::net::SocketAddrV4 {
    let i = flow_hash(key, secret) % RING_SIZE;
    READ_POOL[i as usize % READ_POOL.len()]
}

const SECRET_A: FlowHashKey = FlowHashKey::from_bytes(*b"cluster-a-secret");
const SECRET_B: FlowHashKey = FlowHashKey::from_bytes(*b"cluster-b-secret");

#[test]
fn segments_that_are_not_syns_are_forwarded_without_an_entry() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        dp.set_flow_hash_key(SECRET_A);
        let kinds: [(&str, u8); 5] = [
            ("bare ACK", ACK),
            ("data", ACK | PSH),
            ("FIN", FIN | ACK),
            ("RST+ACK", RST | ACK),
            ("RST", RST),
        ];
        for (i, (name, flags)) in kinds.into_iter().enumerate() {
            for (j, vip) in [WRITE, READ].into_iter().enumerate() {
                let c = client(45000 + (i * 2 + j) as u16);
                let key = flow_key(c, vip);
                let to = if vip == WRITE {
                    BE_11
                } else {
                    predicted(&key, &SECRET_A)
                };
                let mut frame = tcp(c, vip).flags(flags);
                if flags & PSH != 0 {
                    frame = frame.data(b"*1\r\n$4\r\nPING\r\n");
                }
                dp.step(Case {
                    name,
                    frame: frame.build(),
                    action: XDP_REDIRECT,
                    expect: Expect::ToBackend(to),
                    counter: counter::FWD_TO_BACKEND_NO_FLOW,
                });
                assert_eq!(dp.flow(&key), None, "{name} to {vip}: no entry");
            }
        }
        let c = dp.counters();
        assert_eq!(c[counter::FWD_TO_BACKEND_NO_FLOW as usize], 10);
        assert_eq!(c[counter::FWD_TO_BACKEND as usize], 0);
        assert_eq!(dp.stats(SLOT_11).new_flows, 0, "no connection was counted");
    });
}

#[test]
fn a_syn_follows_a_live_entry_and_replaces_only_one_that_ended_or_went_stale() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        dp.set_flow_hash_key(SECRET_A);
        let c = client(45100);
        let key = flow_key(c, READ);
        let first = predicted(&key, &SECRET_A);
        let syn = |expect| Case {
            name: "SYN from the same client port",
            frame: tcp(c, READ).syn().build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(expect),
            counter: counter::FWD_TO_BACKEND,
        };
        dp.step(syn(first));
        let slot = dp.flow(&key).expect("the SYN's entry").backend;
        // Every new pick would now land elsewhere: only the entry can send the SYN to `first`.
        let (other_slot, other) = if first == BE_12 {
            (SLOT_13, crate::BE_13)
        } else {
            (SLOT_12, BE_12)
        };
        dp.fill_ring(SID, 1, &[other_slot]);
        dp.step(syn(first));
        assert_eq!(
            dp.flow(&key).map(|f| f.backend),
            Some(slot),
            "not re-picked"
        );

        // A connection that ended (an RST noted on its entry) no longer holds it.
        dp.step(Case {
            name: "client RST",
            frame: tcp(c, READ).flags(RST | ACK).build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(first),
            counter: counter::FWD_TO_BACKEND,
        });
        assert_eq!(dp.flow(&key).map(|f| f.end), Some(flow_end::RST));
        dp.step(syn(other));
        assert_eq!(dp.flow(&key).map(|f| f.backend), Some(other_slot));

        // Nor does one whose backend left the read pool.
        dp.fill_ring(SID, 1, &[SLOT_11]);
        dp.set_readable(other_slot, false);
        dp.step(syn(BE_11));
        assert_eq!(dp.flow(&key).map(|f| f.backend), Some(SLOT_11));
    });
}

#[test]
fn the_replica_follows_the_flow_hash_key() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        let mut moved = 0;
        for (k, secret) in [SECRET_A, SECRET_B].into_iter().enumerate() {
            dp.set_flow_hash_key(secret);
            for i in 0..32u16 {
                // Another client port per key: the first key's entries must not be followed.
                let c = client(45200 + k as u16 * 100 + i);
                let key = flow_key(c, READ);
                let to = predicted(&key, &secret);
                dp.step(Case {
                    name: "SYN to the read port",
                    frame: tcp(c, READ).syn().build(),
                    action: XDP_REDIRECT,
                    expect: Expect::ToBackend(to),
                    counter: counter::FWD_TO_BACKEND,
                });
                let other = if k == 0 { SECRET_B } else { SECRET_A };
                if predicted(&key, &other) != to {
                    moved += 1;
                }
            }
        }
        // With three replicas about two thirds of the connections land elsewhere under the
        // other key: the program placed them by the key, not by the addresses alone.
        assert!(
            moved > 20,
            "only {moved} of 64 connections depend on the key"
        );
    });
}

#[test]
fn a_backends_address_on_a_client_facing_interface_is_not_a_reply() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        dp.set_interface_role(tb.cli_ifindex, if_role::CLIENTS);
        dp.set_interface_role(tb.srv_ifindex, if_role::BACKENDS);
        let c = client(45300);
        // The backend's replies arrive on the backend side and work as before.
        let key = open_via_master(&dp, c, WRITE);
        // Someone on the client side forges the backend's address.
        dp.arrive_on(Some(tb.cli_ifindex));
        for (name, flags) in [("forged FIN", FIN | ACK), ("forged RST", RST | ACK)] {
            dp.step(Case {
                name,
                frame: tcp(BE_11, c).flags(flags).build(),
                action: XDP_PASS,
                expect: Expect::Unchanged,
                counter: counter::PASS_NOT_BACKEND_SIDE,
            });
        }
        dp.arrive_on(None);
        assert_eq!(
            dp.flow(&key).map(|f| f.end),
            Some(0),
            "the entry is untouched"
        );
        dp.table(&[
            to_client_from("the real backend's next reply", reply(c), WRITE),
            to_backend(
                "the client's next request",
                tcp(c, WRITE).data(b"*1\r\n$4\r\nPING\r\n").build(),
            ),
        ]);
    });
}

fn reply(c: std::net::SocketAddrV4) -> Vec<u8> {
    tcp(BE_11, c).data(b"+OK\r\n").build()
}

#[test]
fn a_fin_or_rst_outside_the_window_ends_nothing_and_the_window_follows_the_connection() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let c = client(45400);
        let key = open_via_master(&dp, c, WRITE);
        let far = 0x4000_0000;
        let forged = |name, mut frame: crate::frame::Tcp4| {
            frame.seq = frame.seq.wrapping_add(far);
            Case {
                name,
                frame: frame.build(),
                action: XDP_DROP,
                expect: Expect::Dropped,
                counter: counter::DROP_OUT_OF_WINDOW,
            }
        };
        dp.table(&[
            forged("client FIN, wrong seq", tcp(c, WRITE).flags(FIN | ACK)),
            forged("client RST, wrong seq", tcp(c, WRITE).flags(RST)),
            forged("backend FIN, wrong seq", tcp(BE_11, c).flags(FIN | ACK)),
            forged("backend RST, wrong seq", tcp(BE_11, c).flags(RST | ACK)),
        ]);
        assert_eq!(dp.flow(&key).map(|f| f.end), Some(0), "nothing noted");

        // The backend sends 10 MiB; the client's ACK of them moves the window, so the
        // backend's FIN after 20 MiB is in it (it would not be, measured from the start).
        let mut ack = tcp(c, WRITE);
        ack.ack = ack.ack.wrapping_add(10 << 20);
        dp.step(to_backend("the client acknowledges 10 MiB", ack.build()));
        let mut fin = tcp(BE_11, c).flags(FIN | ACK);
        fin.seq = fin.seq.wrapping_add(20 << 20);
        dp.step(to_client_from(
            "the backend's FIN after 20 MiB",
            fin.build(),
            WRITE,
        ));
        assert_eq!(dp.flow(&key).map(|f| f.end), Some(flow_end::BACKEND_FIN));
    });
}
