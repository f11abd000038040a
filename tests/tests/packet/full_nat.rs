//! Full NAT (`nat = "full"`): a connection to a remote backend leaves from this node's address
//! and a port of its range, unique per backend, and the backend's replies find their client
//! again by that port; a backend on this node is delivered to locally, its replies mapped back
//! at TC egress. What must never happen: a wrong translation, a port given twice toward one
//! backend, or a reply let through to a client it is not for.

use std::net::{Ipv4Addr, SocketAddrV4};

use redis_ha_common::{FlowKey, counter};

use crate::{
    BE_11, BE_12, SID, SLOT_11, SLOT_12, WRITE, at_every_hook, client,
    dataplane::{Case, Dataplane, Expect, NO_COUNTER, RESET_ACTION, XDP_PASS, XDP_REDIRECT},
    flow_key,
    frame::{
        Tcp4,
        tcp_flags::{ACK, FIN, SYN},
    },
    netns::Testbed,
    standard, tcp,
};

/// This node's address toward the backends (the testbed router's, a local address).
const NAT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const FIRST: u16 = 50000;
const LAST: u16 = 50999;

fn nat_at(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(NAT_IP, port)
}

fn full_nat(tb: &Testbed, hook: crate::dataplane::Hook, first: u16, last: u16) -> Dataplane {
    let mut dp = standard(tb, hook);
    dp.set_full_nat(NAT_IP, first, last);
    dp
}

/// Sends the SYN of `c` → write port (master .11) and returns the source port it left with,
/// checking everything else about the packet and that the port is `c`'s toward .11.
fn open(dp: &Dataplane, c: SocketAddrV4, backend: SocketAddrV4) -> u16 {
    let syn = tcp(c, WRITE).syn().build();
    let out = dp.run(&syn).out;
    let port = Tcp4::parse(&out).expect("a TCP frame").src.port();
    assert!(
        (FIRST..=LAST).contains(&port),
        "source port {port} out of range"
    );
    // Now that the port is known, the whole frame is checked as a case would be; the run
    // repeats the SYN, which must keep its port (a retransmission).
    dp.step(Case {
        name: "SYN (again)",
        frame: syn,
        action: XDP_REDIRECT,
        expect: Expect::Translated {
            src: nat_at(port),
            dst: backend,
        },
        counter: counter::FWD_TO_BACKEND,
    });
    assert_eq!(dp.nat_port_owner(backend, port), Some(flow_key(c, WRITE)));
    port
}

fn to_backend(name: &'static str, frame: Vec<u8>, port: u16, backend: SocketAddrV4) -> Case {
    Case {
        name,
        frame,
        action: XDP_REDIRECT,
        expect: Expect::Translated {
            src: nat_at(port),
            dst: backend,
        },
        counter: counter::FWD_TO_BACKEND,
    }
}

fn to_client(name: &'static str, frame: Vec<u8>, c: SocketAddrV4) -> Case {
    Case {
        name,
        frame,
        action: XDP_REDIRECT,
        expect: Expect::Translated { src: WRITE, dst: c },
        counter: counter::FWD_TO_CLIENT,
    }
}

fn untouched(name: &'static str, frame: Vec<u8>, counter: u32) -> Case {
    Case {
        name,
        frame,
        action: XDP_PASS,
        expect: Expect::Unchanged,
        counter,
    }
}

#[test]
fn a_connection_is_translated_both_ways_and_its_port_freed_when_it_closes() {
    at_every_hook(|tb, hook| {
        let dp = full_nat(tb, hook, FIRST, LAST);
        let c = client(40001);
        let port = open(&dp, c, BE_11);
        let from_backend = tcp(BE_11, nat_at(port));
        dp.table(&[
            to_client("SYN-ACK", from_backend.clone().flags(SYN | ACK).build(), c),
            to_backend(
                "request",
                tcp(c, WRITE).data(b"*1\r\n$4\r\nPING\r\n").build(),
                port,
                BE_11,
            ),
            to_client("reply", from_backend.clone().data(b"+PONG\r\n").build(), c),
        ]);
        // An orderly close removes the entry and gives the port back.
        dp.step(to_backend(
            "client FIN",
            tcp(c, WRITE).flags(FIN | ACK).build(),
            port,
            BE_11,
        ));
        dp.step(to_client(
            "backend FIN",
            from_backend.clone().flags(FIN | ACK).build(),
            c,
        ));
        dp.step(to_backend("last ACK", tcp(c, WRITE).build(), port, BE_11));
        assert_eq!(dp.flow(&flow_key(c, WRITE)), None);
        assert_eq!(
            dp.nat_port_owner(BE_11, port),
            None,
            "the port is free again"
        );
        // A reply arriving now for that port is the kernel's business (it resets it).
        dp.step(untouched(
            "late reply",
            from_backend.data(b"+late\r\n").build(),
            counter::PASS_NOT_SERVICE,
        ));
    });
}

#[test]
fn ports_are_unique_per_backend_and_a_full_range_resets_new_connections() {
    at_every_hook(|tb, hook| {
        let mut dp = full_nat(tb, hook, FIRST, FIRST + 1);
        let (a, b) = (client(40001), client(40002));
        let pa = open(&dp, a, BE_11);
        let pb = open(&dp, b, BE_11);
        assert_ne!(pa, pb, "two connections to one backend share a port");

        // Both ports are taken toward .11: a third connection is refused with a reset, and
        // nothing is recorded for it.
        let third = client(40003);
        dp.step(Case {
            name: "SYN, no port left",
            frame: tcp(third, WRITE).syn().build(),
            action: RESET_ACTION,
            expect: Expect::Reset,
            counter: counter::RESET_NAT_EXHAUSTED,
        });
        assert_eq!(dp.flow(&flow_key(third, WRITE)), None);
        assert_eq!(dp.nat_port_owner(BE_11, pa), Some(flow_key(a, WRITE)));
        assert_eq!(dp.nat_port_owner(BE_11, pb), Some(flow_key(b, WRITE)));

        // Toward another backend the same ports are free.
        dp.set_state(SID, SLOT_12, 1);
        let p12 = open(&dp, third, BE_12);
        assert!(p12 == pa || p12 == pb);

        // Replies find their own connection: .12's reply to the shared port goes to `third`,
        // .11's to its own client, never crossed.
        dp.table(&[
            to_client(
                ".12 to the shared port",
                tcp(BE_12, nat_at(p12)).flags(SYN | ACK).build(),
                third,
            ),
            to_client(
                ".11 to the same port",
                tcp(BE_11, nat_at(p12)).flags(SYN | ACK).build(),
                if p12 == pa { a } else { b },
            ),
        ]);
    });
}

/// A connection pool opened at once holds a run of consecutive ports for as long as it lives.
/// A CPU whose cursor comes into that run (another CPU's, or its own after wrapping round the
/// range) must still find one of the many free ports, not refuse the connection as if the
/// range were full.
#[test]
fn a_run_of_busy_ports_ahead_of_the_cursor_does_not_refuse_a_connection() {
    at_every_hook(|tb, hook| {
        let mut dp = full_nat(tb, hook, FIRST, LAST);
        let pool = 100;
        for i in 0..pool {
            let owner = flow_key(client(30000 + i), WRITE);
            dp.occupy_nat_port(BE_11, FIRST + 1 + i, owner);
        }
        dp.set_nat_cursor(1);
        for i in 0..3 {
            let c = client(40001 + i);
            let port = open(&dp, c, BE_11);
            assert!(
                !(FIRST + 1..FIRST + 1 + pool).contains(&port),
                "port {port} was already taken"
            );
        }
        assert_eq!(dp.counters()[counter::RESET_NAT_EXHAUSTED as usize], 0);
    });
}

#[test]
fn replies_that_are_no_translation_pass_untouched() {
    at_every_hook(|tb, hook| {
        let dp = full_nat(tb, hook, FIRST, LAST);
        let c = client(40001);
        let port = open(&dp, c, BE_11);
        let other = if port == LAST { FIRST } else { port + 1 };
        dp.table(&[
            // A port no connection holds toward .11.
            untouched(
                "free port",
                tcp(BE_11, nat_at(other)).data(b"x").build(),
                counter::PASS_NOT_SERVICE,
            ),
            // The node's own connection to a backend (replication), from an ephemeral port.
            untouched(
                "port outside the range",
                tcp(BE_11, nat_at(40000)).data(b"x").build(),
                counter::PASS_NOT_SERVICE,
            ),
            // Another backend to the port .11's connection holds.
            untouched(
                "wrong backend",
                tcp(BE_12, nat_at(port)).data(b"x").build(),
                counter::PASS_NOT_SERVICE,
            ),
            // The right port and backend but to another of the host's addresses.
            untouched(
                "another address of the node",
                tcp(BE_11, SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), port))
                    .data(b"x")
                    .build(),
                counter::PASS_NOT_SERVICE,
            ),
        ]);
    });
}

#[test]
fn a_connection_this_node_did_not_translate_is_reset_at_its_next_packet() {
    at_every_hook(|tb, hook| {
        let dp = full_nat(tb, hook, FIRST, LAST);
        // As after the VIP moved here: the client carries on a connection another node made.
        let c = client(40009);
        dp.step(Case {
            name: "data without an entry",
            frame: tcp(c, WRITE).data(b"*1\r\n$4\r\nPING\r\n").build(),
            action: RESET_ACTION,
            expect: Expect::Reset,
            counter: counter::RESET_NO_FLOW,
        });
        assert_eq!(dp.flow(&flow_key(c, WRITE)), None);
        // A SYN starts a new connection as usual.
        open(&dp, c, BE_11);
    });
}

#[test]
fn a_local_backend_is_delivered_to_the_host_and_its_replies_mapped_back_at_egress() {
    at_every_hook(|tb, hook| {
        let mut dp = full_nat(tb, hook, FIRST, LAST);
        dp.set_local(SLOT_11);
        let c = client(40001);
        let key: FlowKey = flow_key(c, WRITE);
        let local = |name, frame| Case {
            name,
            frame,
            action: XDP_PASS,
            expect: Expect::RewrittenOnly(BE_11),
            counter: counter::FWD_LOCAL,
        };
        dp.step(local("SYN", tcp(c, WRITE).syn().build()));
        let flow = dp.flow(&key).expect("the connection's entry");
        assert_eq!((flow.backend, flow.nat_port), (SLOT_11, 0));

        let reply = |name, frame| Case {
            name,
            frame,
            action: XDP_PASS,
            expect: Expect::SourceOnly(WRITE),
            counter: counter::FWD_LOCAL_REPLY,
        };
        dp.step_egress(reply("SYN-ACK", tcp(BE_11, c).flags(SYN | ACK).build()));
        // Both directions note their activity, as cached next hops would: the controller's
        // sweep would otherwise take the connection for one that never got an answer.
        let flow = dp.flow(&key).expect("the connection's entry");
        assert!(flow.to_backend.resolved_ns != 0 && flow.to_client.resolved_ns != 0);
        assert_eq!(
            flow.to_backend.ifindex, 0,
            "no route is cached for local delivery"
        );
        dp.step(local("request", tcp(c, WRITE).data(b"PING\r\n").build()));
        dp.step_egress(reply("reply", tcp(BE_11, c).data(b"+PONG\r\n").build()));

        // What the host sends otherwise leaves untouched and uncounted: the server's reply to
        // a client that connected to it directly, another host's traffic, non-TCP.
        for (name, frame) in [
            (
                "direct client",
                tcp(BE_11, client(40002)).data(b"x").build(),
            ),
            ("remote backend", tcp(BE_12, c).data(b"x").build()),
            ("truncated", tcp(BE_11, c).build()[..40].to_vec()),
        ] {
            dp.step_egress(Case {
                name,
                frame,
                action: XDP_PASS,
                expect: Expect::Unchanged,
                counter: NO_COUNTER,
            });
        }
        // The close removes the entry, whichever side ends it.
        dp.step_egress(reply("server FIN", tcp(BE_11, c).flags(FIN | ACK).build()));
        dp.step(local("client FIN", tcp(c, WRITE).flags(FIN | ACK).build()));
        dp.step_egress(reply("last ACK", tcp(BE_11, c).build()));
        assert_eq!(dp.flow(&key), None);
    });
}

#[test]
fn a_frame_flooded_here_for_another_host_starts_nothing() {
    // A switch floods a frame for a MAC it has not learnt (or just forgot, as when a node's
    // port goes down) to every port: the VIP holder's client traffic then reaches the other
    // nodes too, whose programs must leave it alone, or two nodes would translate one SYN.
    at_every_hook(|tb, hook| {
        let dp = full_nat(tb, hook, FIRST, LAST);
        let elsewhere = [0x02, 0x55, 0, 0, 0, 0x99];
        let c = client(40001);
        let for_another = |frame: Tcp4| {
            let mut frame = frame;
            frame.eth_dst = elsewhere;
            frame.build()
        };
        dp.table(&[
            untouched(
                "SYN for another host",
                for_another(tcp(c, WRITE).syn()),
                counter::PASS_NOT_FOR_HOST,
            ),
            untouched(
                "data for another host, no entry",
                for_another(tcp(c, WRITE).data(b"x")),
                counter::PASS_NOT_FOR_HOST,
            ),
        ]);
        assert_eq!(dp.flow(&flow_key(c, WRITE)), None);
        // The same SYN addressed to this host starts the connection.
        open(&dp, c, BE_11);
    });
}
