//! The fast path: client → VIP rewritten toward a backend, backend → client rewritten back to
//! the VIP, and the per-backend counters both move.

use std::collections::BTreeMap;

use redis_ha_common::{BackendStats, counter};

use crate::{
    BE_11, BE_12, BE_13, READ, READ_POOL, SID, SLOT_11, SLOT_12, SLOT_13, SLOT_14, WRITE, addr,
    at_every_hook, client,
    dataplane::{Case, Expect, XDP_PASS, XDP_REDIRECT},
    frame::{Tcp4, tcp_flags},
    standard, tcp,
};

#[test]
fn write_port_forwards_to_master() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let c = client(40000);
        let syn = tcp(c, WRITE).syn();
        let data = tcp(c, WRITE)
            .data(b"*1\r\n$4\r\nPING\r\n")
            .seq(syn.seq.wrapping_add(1))
            .ack(0x51c2_77e0);
        dp.step(Case {
            name: "SYN to the write port goes to the master",
            frame: syn.build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_11),
            counter: counter::FWD_TO_BACKEND,
        });
        dp.step(Case {
            name: "data segment of the same connection follows it",
            frame: data.build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_11),
            counter: counter::FWD_TO_BACKEND,
        });
        dp.step(Case {
            name: "bare ACK, padded to 60 bytes, keeps its padding",
            frame: data
                .clone()
                .data(b"")
                .flags(tcp_flags::ACK)
                .padded()
                .build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_11),
            counter: counter::FWD_TO_BACKEND,
        });
    });
}

#[test]
fn read_port_spreads_flows_and_keeps_each_on_one_backend() {
    at_every_hook(|tb, hook| {
        const FLOWS: u16 = 360;
        let dp = standard(tb, hook);
        let mut per_backend: BTreeMap<std::net::SocketAddrV4, usize> = BTreeMap::new();
        let mut failures = Vec::new();
        for i in 0..FLOWS {
            // Distinct 4-tuples: 60 client addresses, each with its own ports.
            let c = addr([198, 18, 0, 2 + (i % 60) as u8], 20000 + i * 13);
            let syn = tcp(c, READ).syn();
            let first = dp.check(&Case {
                name: "SYN to the read port",
                frame: syn.build(),
                action: XDP_REDIRECT,
                expect: Expect::ToOneOf(READ_POOL),
                counter: counter::FWD_TO_BACKEND,
            });
            let picked = match first {
                Ok(Some(run)) => Tcp4::parse(&run.out).expect("checked output parses").dst,
                Ok(None) => unreachable!("full-size frames always run"),
                Err(e) => {
                    failures.push(format!("flow {c}: {e}"));
                    continue;
                }
            };
            *per_backend.entry(picked).or_default() += 1;
            let data = tcp(c, READ)
                .data(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
                .seq(syn.seq + 1);
            let same = [
                ("data segment after the SYN", data.build()),
                ("repeated SYN of the same 4-tuple", syn.build()),
                ("data segment after the repeated SYN", data.build()),
            ];
            for (name, frame) in same {
                let res = dp.check(&Case {
                    name,
                    frame,
                    action: XDP_REDIRECT,
                    expect: Expect::ToBackend(picked),
                    counter: counter::FWD_TO_BACKEND,
                });
                if let Err(e) = res {
                    failures.push(format!("flow {c} (first sent to {picked}): {e}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
        println!("read-port share over {FLOWS} flows: {per_backend:?}");
        for be in READ_POOL {
            let n = per_backend.get(be).copied().unwrap_or(0);
            assert!(
                n * 100 >= usize::from(FLOWS) * 15,
                "{be} got {n} of {FLOWS} flows (< 15 %): {per_backend:?}"
            );
        }
    });
}

#[test]
fn reply_source_is_rewritten_to_the_vip_port() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let c = client(40000);
        let syn = tcp(c, WRITE).syn();
        dp.step(Case {
            name: "SYN to the write port",
            frame: syn.build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_11),
            counter: counter::FWD_TO_BACKEND,
        });
        let syn_ack = tcp(BE_11, c)
            .syn()
            .flags(tcp_flags::SYN | tcp_flags::ACK)
            .ack(syn.seq + 1);
        dp.step(Case {
            name: "SYN-ACK from the master",
            frame: syn_ack.build(),
            action: XDP_REDIRECT,
            expect: Expect::ToClient(WRITE),
            counter: counter::FWD_TO_CLIENT,
        });
        dp.step(Case {
            name: "data reply from the master",
            frame: tcp(BE_11, c)
                .data(b"+PONG\r\n")
                .seq(syn_ack.seq + 1)
                .build(),
            action: XDP_REDIRECT,
            expect: Expect::ToClient(WRITE),
            counter: counter::FWD_TO_CLIENT,
        });

        // The read port's replies come back as the read port, whichever replica answers.
        let rc = client(40001);
        let run = dp.step(Case {
            name: "SYN to the read port",
            frame: tcp(rc, READ).syn().build(),
            action: XDP_REDIRECT,
            expect: Expect::ToOneOf(READ_POOL),
            counter: counter::FWD_TO_BACKEND,
        });
        let replica = Tcp4::parse(&run.out).expect("parses").dst;
        dp.step(Case {
            name: "reply from the chosen replica",
            frame: tcp(replica, rc).data(b"$1\r\nv\r\n").build(),
            action: XDP_REDIRECT,
            expect: Expect::ToClient(READ),
            counter: counter::FWD_TO_CLIENT,
        });
    });
}

/// A reply finds its connection through the backend's address and the client's: one client
/// port may hold a connection through each VIP port (to two backends), and each backend's
/// replies must come from the port its own connection went to, also after a switch makes the
/// read backend the master and the old master a replica.
#[test]
fn replies_come_from_the_vip_port_of_their_own_connection() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        dp.fill_ring(SID, 1, &[SLOT_12]);
        let c = client(40200);
        let reply = |name, from, vip| Case {
            name,
            frame: tcp(from, c).data(b"+OK\r\n").build(),
            action: XDP_REDIRECT,
            expect: Expect::ToClient(vip),
            counter: counter::FWD_TO_CLIENT,
        };
        dp.table(&[
            Case {
                name: "write connection to the master .11",
                frame: tcp(c, WRITE).syn().build(),
                action: XDP_REDIRECT,
                expect: Expect::ToBackend(BE_11),
                counter: counter::FWD_TO_BACKEND,
            },
            Case {
                name: "read connection from the same port to .12",
                frame: tcp(c, READ).syn().build(),
                action: XDP_REDIRECT,
                expect: Expect::ToBackend(BE_12),
                counter: counter::FWD_TO_BACKEND,
            },
            reply("the replica's reply", BE_12, READ),
            reply("the master's reply", BE_11, WRITE),
        ]);
        dp.set_state(SID, SLOT_12, 1);
        dp.table(&[
            reply(
                "the old master's late reply, after the switch",
                BE_11,
                WRITE,
            ),
            reply("the new master's reply on its read connection", BE_12, READ),
            Case {
                name: "a backend with no connection from this client",
                frame: tcp(BE_13, c).data(b"+OK\r\n").build(),
                action: XDP_PASS,
                expect: Expect::Unchanged,
                counter: counter::PASS_NOT_SERVICE,
            },
        ]);
    });
}

#[test]
fn backend_stats_count_packets_bytes_and_flows() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let c = client(40100);
        let syn = tcp(c, WRITE).syn().build();
        let data = tcp(c, WRITE)
            .data(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
            .build();
        let reply = tcp(BE_11, c).data(b"+OK\r\n").build();
        // Bytes are IP bytes (header + payload), what the program reads from tot_len.
        let ip_len = |f: &[u8]| (f.len() - 14) as u64;
        assert_eq!(
            ip_len(&syn),
            u64::from(u16::from_be_bytes([syn[16], syn[17]]))
        );

        let run = |name, frame: &Vec<u8>, expect, counter| {
            dp.step(Case {
                name,
                frame: frame.clone(),
                action: XDP_REDIRECT,
                expect,
                counter,
            });
        };
        run(
            "SYN",
            &syn,
            Expect::ToBackend(BE_11),
            counter::FWD_TO_BACKEND,
        );
        assert_eq!(
            dp.stats(SLOT_11),
            BackendStats {
                packets_in: 1,
                bytes_in: ip_len(&syn),
                new_flows: 1,
                ..Default::default()
            },
            "after the SYN"
        );
        run(
            "data",
            &data,
            Expect::ToBackend(BE_11),
            counter::FWD_TO_BACKEND,
        );
        run(
            "reply",
            &reply,
            Expect::ToClient(WRITE),
            counter::FWD_TO_CLIENT,
        );
        run(
            "data again",
            &data,
            Expect::ToBackend(BE_11),
            counter::FWD_TO_BACKEND,
        );
        assert_eq!(
            dp.stats(SLOT_11),
            BackendStats {
                packets_in: 3,
                bytes_in: ip_len(&syn) + 2 * ip_len(&data),
                packets_out: 1,
                bytes_out: ip_len(&reply),
                new_flows: 1,
                flows_reset: 0,
                flows_closed: 0,
            },
            "after SYN, data, reply, data"
        );
        // A second connection is a second flow on the same master.
        run(
            "second connection's SYN",
            &tcp(client(40101), WRITE).syn().build(),
            Expect::ToBackend(BE_11),
            counter::FWD_TO_BACKEND,
        );
        assert_eq!(dp.stats(SLOT_11).new_flows, 2, "two connections");
        for slot in [SLOT_12, SLOT_13, SLOT_14] {
            assert_eq!(
                dp.stats(slot),
                BackendStats::default(),
                "slot {slot} carried nothing"
            );
        }
    });
}
