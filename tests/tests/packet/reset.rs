//! Connections whose backend stopped being right (master switched, replica left the read
//! pool) and connections with no backend at all get a TCP RST from the VIP port, so clients
//! reconnect at once instead of hanging on a backend that will never answer correctly.

use redis_ha_common::{FlowKey, counter};

use crate::{
    BE_11, BE_12, READ, READ_POOL, SID, SLOT_11, SLOT_12, SLOT_13, WRITE, at_every_hook, client,
    dataplane::{Case, Expect, RESET_ACTION, XDP_REDIRECT},
    frame::{Tcp4, tcp_flags},
    standard, syn_to_master, tcp,
};

fn slot_of(be: std::net::SocketAddrV4) -> u32 {
    match be.ip().octets()[3] {
        11 => SLOT_11,
        12 => SLOT_12,
        13 => SLOT_13,
        _ => panic!("{be} is not in the read pool"),
    }
}

#[test]
fn master_switch_resets_the_old_masters_connections() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        let c = client(41000);
        let syn = tcp(c, WRITE).syn();
        dp.step(Case {
            name: "SYN to the write port goes to .11",
            frame: syn.build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_11),
            counter: counter::FWD_TO_BACKEND,
        });

        dp.set_state(SID, SLOT_12, 1);

        // Payload and timestamp options, so the RST must drop both and acknowledge the payload.
        let seg = tcp(c, WRITE)
            .data(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            .seq(syn.seq + 1)
            .ack(0x9abc_def0);
        let run = dp.step(Case {
            name: "next segment after the switch gets a RST",
            frame: seg.build(),
            action: RESET_ACTION,
            expect: Expect::Reset,
            counter: counter::RESET_STALE_FLOW,
        });
        assert_eq!(run.out.len(), 54, "a RST is a bare 54-byte frame");
        let rst = Tcp4::parse(&run.out).expect("RST parses");
        assert_eq!(
            (rst.src, rst.dst),
            (WRITE, c),
            "RST comes from the VIP port"
        );
        assert_eq!(rst.flags, tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(rst.seq, seg.ack, "RST seq is the segment's ack");
        assert_eq!(
            rst.ack,
            seg.seq + seg.payload.len() as u32,
            "RST acks the payload"
        );
        assert_eq!(
            dp.stats(SLOT_11).flows_reset,
            1,
            "the old master's reset count"
        );
        assert_eq!(
            dp.stats(SLOT_12).flows_reset,
            0,
            "the new master lost nothing"
        );

        dp.step(Case {
            name: "a new SYN from the same client port goes to the new master",
            frame: syn.build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_12),
            counter: counter::FWD_TO_BACKEND,
        });
        dp.step(Case {
            name: "and its data follows",
            frame: seg.build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_12),
            counter: counter::FWD_TO_BACKEND,
        });
    });
}

/// Stale-flow segments of every shape get the RST RFC 9293 §3.10.7.1 prescribes: seq from
/// their ACK, acknowledging payload and FIN, options and padding dropped.
#[test]
fn stale_flow_resets_acknowledge_what_the_segment_carried() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        type Shape = fn(Tcp4) -> Tcp4;
        let shapes: [(&'static str, Shape); 4] = [
            ("data segment with timestamps", |t| {
                t.data(b"*1\r\n$4\r\nPING\r\n")
            }),
            ("FIN with payload (ack covers the FIN)", |t| {
                t.data(b"QUIT\r\n").flags(tcp_flags::FIN | tcp_flags::ACK)
            }),
            ("bare FIN", |t| t.flags(tcp_flags::FIN | tcp_flags::ACK)),
            ("bare ACK padded to 60 bytes (padding dropped)", |t| {
                t.padded()
            }),
        ];
        for (i, _) in shapes.iter().enumerate() {
            let c = client(41100 + i as u16);
            // The segments below are the connection's next ones: their FINs are in its window.
            dp.step(Case {
                frame: tcp(c, WRITE).seq(0xfff0_0000 - 1).syn().build(),
                ..syn_to_master("SYN to the write port", c)
            });
        }
        dp.set_state(SID, SLOT_12, 1);
        let cases: Vec<Case> = shapes
            .iter()
            .enumerate()
            .map(|(i, (name, shape))| Case {
                name,
                frame: shape(
                    tcp(client(41100 + i as u16), WRITE)
                        .seq(0xfff0_0000)
                        .ack(0x0bad_cafe),
                )
                .build(),
                action: RESET_ACTION,
                expect: Expect::Reset,
                counter: counter::RESET_STALE_FLOW,
            })
            .collect();
        dp.table(&cases);
        assert_eq!(dp.stats(SLOT_11).flows_reset, shapes.len() as u64);
    });
}

/// RFC 9293 §3.10.7.1: a segment carrying RST is discarded, never answered with a RST (two
/// resetters would otherwise bounce resets between them). A client aborting a connection
/// whose backend went away sends exactly that.
#[test]
fn a_reset_is_never_answered_with_a_reset() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        let stale = client(41200);
        dp.step(syn_to_master("SYN to the write port", stale));
        let stale_rst = tcp(stale, WRITE)
            .flags(tcp_flags::RST | tcp_flags::ACK)
            .build();
        let mut failures = Vec::new();
        for (name, frame, master) in [
            (
                "client RST on a flow whose master was replaced",
                stale_rst,
                SLOT_12,
            ),
            (
                "client RST to the write port while there is no master",
                tcp(client(41201), WRITE)
                    .flags(tcp_flags::RST | tcp_flags::ACK)
                    .build(),
                0,
            ),
        ] {
            dp.set_state(SID, master, 1);
            let run = dp.run(&frame);
            let answered = Tcp4::parse(&run.out).filter(|t| {
                run.action == RESET_ACTION
                    && t.flags & tcp_flags::RST != 0
                    && t.dst == Tcp4::parse(&frame).expect("parses").src
            });
            if let Some(rst) = answered {
                failures.push(format!(
                    "{name}: the program answered with a RST ({} → {}, seq {:#x}, ack {:#x})",
                    rst.src, rst.dst, rst.seq, rst.ack
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

#[test]
fn replica_leaving_the_read_pool_resets_only_its_connections() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        // Open read connections until two replicas hold one each.
        let mut open: Vec<(Tcp4, std::net::SocketAddrV4)> = Vec::new();
        for port in 42000..42100 {
            let syn = tcp(client(port), READ).syn();
            let run = dp.step(Case {
                name: "SYN to the read port",
                frame: syn.build(),
                action: XDP_REDIRECT,
                expect: Expect::ToOneOf(READ_POOL),
                counter: counter::FWD_TO_BACKEND,
            });
            let be = Tcp4::parse(&run.out).expect("parses").dst;
            if open.iter().all(|(_, b)| *b != be) {
                open.push((syn, be));
            }
            if open.len() == 2 {
                break;
            }
        }
        assert_eq!(
            open.len(),
            2,
            "100 flows all landed on one replica: {open:?}"
        );
        let (removed_syn, removed) = open[0].clone();
        let (kept_syn, kept) = open[1].clone();

        dp.set_readable(slot_of(removed), false);

        let seg = |syn: &Tcp4| {
            tcp(syn.src, READ)
                .data(b"*1\r\n$4\r\nPING\r\n")
                .seq(syn.seq + 1)
                .ack(0x0102_0304)
        };
        dp.step(Case {
            name: "next segment to the removed replica gets a RST",
            frame: seg(&removed_syn).build(),
            action: RESET_ACTION,
            expect: Expect::Reset,
            counter: counter::RESET_STALE_FLOW,
        });
        assert_eq!(
            dp.stats(slot_of(removed)).flows_reset,
            1,
            "removed replica's resets"
        );
        dp.step(Case {
            name: "a connection on a replica still in the pool keeps flowing",
            frame: seg(&kept_syn).build(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(kept),
            counter: counter::FWD_TO_BACKEND,
        });
        assert_eq!(
            dp.stats(slot_of(kept)).flows_reset,
            0,
            "kept replica's resets"
        );
    });
}

#[test]
fn no_master_resets_new_write_connections() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        dp.set_state(SID, 0, 1);
        let c = client(43000);
        let syn = tcp(c, WRITE).syn();
        let run = dp.step(Case {
            name: "SYN to the write port without a master",
            frame: syn.build(),
            action: RESET_ACTION,
            expect: Expect::Reset,
            counter: counter::RESET_NO_BACKEND,
        });
        let rst = Tcp4::parse(&run.out).expect("RST parses");
        assert_eq!(
            (rst.seq, rst.ack),
            (0, syn.seq + 1),
            "RST to a SYN: seq 0, ack ISN + 1"
        );
        let key = FlowKey {
            src_ip: c.ip().octets(),
            dst_ip: WRITE.ip().octets(),
            src_port: c.port(),
            dst_port: WRITE.port(),
        };
        assert_eq!(
            dp.flow(&key),
            None,
            "a refused connection must not be remembered"
        );
    });
}

#[test]
fn empty_read_pool_resets_new_read_connections() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        dp.fill_ring(SID, 1, &[]);
        dp.step(Case {
            name: "SYN to the read port with an empty table",
            frame: tcp(client(43001), READ).syn().build(),
            action: RESET_ACTION,
            expect: Expect::Reset,
            counter: counter::RESET_NO_BACKEND,
        });
    });
}
