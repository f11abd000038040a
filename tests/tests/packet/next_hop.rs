//! The next hop cached in each connection entry: established packets skip the FIB lookup,
//! yet a changed neighbour or route reaches them within `NEXT_HOP_TTL_NS`, and a packet the
//! cached answer does not cover (larger, or from another device) asks the FIB at once.

use std::{
    net::SocketAddrV4,
    thread::sleep,
    time::{Duration, Instant},
};

use redis_ha_common::{NEXT_HOP_TTL_NS, counter};

use crate::{
    BE_11, SLOT_11, WRITE, at_every_hook, client,
    dataplane::{
        Case, Dataplane, Expect, Gso, Hook, Ingress, XDP_DROP, XDP_PASS, XDP_REDIRECT, action_name,
    },
    frame::{ETH_LEN, Mac, diff, refresh_ipv4_checksum},
    netns::{CLI_DEV, CLIENT, SRV_DEV, Testbed, neighbour_mac},
    standard, syn_to_master, tcp,
};

const TTL: Duration = Duration::from_nanos(NEXT_HOP_TTL_NS);
/// Past the TTL, with room for the coarse clock the program reads (one jiffy, up to 10 ms).
const PAST_TTL: Duration = Duration::from_nanos(NEXT_HOP_TTL_NS + 30_000_000);

fn mac_str(m: Mac) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Runs `frame`: it must be forwarded as `expect` says, but to the MAC `dst_mac`.
#[track_caller]
fn forwarded_to_mac(dp: &Dataplane, frame: &[u8], expect: Expect, dst_mac: Mac) {
    let mut want = expect.outputs(frame).expect("expectation").remove(0);
    want[..6].copy_from_slice(&dst_mac);
    let run = dp.run(frame);
    assert_eq!(run.action, XDP_REDIRECT, "got {}", action_name(run.action));
    assert!(run.out == want, "{}", diff(&want, &run.out));
}

/// Opens a write-port connection from `c`; returns its client → VIP data segment and the
/// backend's reply.
fn open(dp: &Dataplane, c: SocketAddrV4) -> (Vec<u8>, Vec<u8>) {
    dp.step(syn_to_master("SYN to the write port", c));
    (
        tcp(c, WRITE).data(b"*1\r\n$4\r\nPING\r\n").build(),
        tcp(BE_11, c).data(b"+PONG\r\n").build(),
    )
}

#[test]
fn a_changed_neighbour_reaches_established_connections_within_the_ttl() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let c = client(49000);
        let (request, reply) = open(&dp, c);
        let (old_backend, old_client) = (neighbour_mac(*BE_11.ip()), neighbour_mac(CLIENT));
        let new_backend: Mac = [0x02, 0, 0, 0, 0x01, 0x99];
        let new_client: Mac = [0x02, 0, 0, 0, 0x00, 0x99];

        let cached_at = Instant::now();
        forwarded_to_mac(&dp, &request, Expect::ToBackend(BE_11), old_backend);
        forwarded_to_mac(&dp, &reply, Expect::ToClient(WRITE), old_client);
        tb.ip(&format!(
            "neigh replace {} lladdr {} dev {SRV_DEV} nud permanent",
            BE_11.ip(),
            mac_str(new_backend)
        ));
        tb.ip(&format!(
            "neigh replace {CLIENT} lladdr {} dev {CLI_DEV} nud permanent",
            mac_str(new_client)
        ));

        // Proof that the cache is in use (else the rest proves nothing); skipped when this
        // machine was too slow to get here well inside the TTL.
        if cached_at.elapsed() < TTL / 2 {
            forwarded_to_mac(&dp, &request, Expect::ToBackend(BE_11), old_backend);
            forwarded_to_mac(&dp, &reply, Expect::ToClient(WRITE), old_client);
        }
        // A new connection always asks the FIB.
        let syn = tcp(client(49001), WRITE).syn().build();
        forwarded_to_mac(&dp, &syn, Expect::ToBackend(BE_11), new_backend);

        sleep(PAST_TTL);
        forwarded_to_mac(&dp, &request, Expect::ToBackend(BE_11), new_backend);
        forwarded_to_mac(&dp, &reply, Expect::ToClient(WRITE), new_client);
    });
}

#[test]
fn a_lost_route_stops_established_connections_within_the_ttl() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let (request, _) = open(&dp, client(49010));
        let forwarded = |name| Case {
            name,
            frame: request.clone(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_11),
            counter: counter::FWD_TO_BACKEND,
        };
        dp.step(forwarded("established, next hop cached"));
        tb.ip(&format!("route add unreachable {}/32", BE_11.ip()));
        sleep(PAST_TTL);
        dp.step(Case {
            name: "the route became unreachable: dropped once the cached answer expired",
            frame: request.clone(),
            action: XDP_DROP,
            expect: Expect::Dropped,
            counter: counter::DROP_NO_ROUTE,
        });
        tb.ip(&format!("route del unreachable {}/32", BE_11.ip()));
        dp.step(forwarded(
            "route back: forwarded at once, a failed lookup is not cached",
        ));
    });
}

/// The FIB is asked about a full 1500-byte frame, so the cached answer covers every segment
/// of a standard MTU, and a lowered MTU reaches them within the TTL, like any other change.
/// Where the MTU is below 1500, a packet larger than the ones the FIB passed asks at once.
#[test]
fn a_packet_larger_than_the_cached_ones_is_checked_against_the_mtu() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let c = client(49020);
        let (small, _) = open(&dp, c);
        let medium = tcp(c, WRITE).data(&[b'x'; 900]).build();
        let big = tcp(c, WRITE).data(&[b'x'; 1200]).build();
        let forwarded = |name, frame: &Vec<u8>| Case {
            name,
            frame: frame.clone(),
            action: XDP_REDIRECT,
            expect: Expect::ToBackend(BE_11),
            counter: counter::FWD_TO_BACKEND,
        };
        let refused = |name, frame: &Vec<u8>| Case {
            name,
            frame: frame.clone(),
            action: XDP_PASS,
            expect: Expect::RewrittenOnly(BE_11),
            counter: counter::PASS_REWRITTEN,
        };
        let cached_at = Instant::now();
        dp.step(forwarded("small segment, next hop cached", &small));
        tb.ip(&format!("link set dev {SRV_DEV} mtu 1000"));
        if cached_at.elapsed() < TTL / 2 {
            dp.step(forwarded(
                "MTU now 1000: a 1240-byte segment still rides on the answer for 1500 bytes",
                &big,
            ));
        }
        sleep(PAST_TTL);
        dp.step(refused(
            "past the TTL: the 1240-byte segment goes to the kernel (ICMP fragmentation needed)",
            &big,
        ));
        dp.step(forwarded(
            "small segments still take the fast path (the FIB passes their own size)",
            &small,
        ));
        dp.step(forwarded(
            "a 940-byte segment asks at once, and fits",
            &medium,
        ));
        dp.step(refused(
            "and a 1240-byte one asks at once, and does not",
            &big,
        ));
    });
}

/// At the TC hook one skb may stand for many wire segments (a local sender's TSO/GSO, GRO on
/// a NIC; 64 KB by default on veth): the egress MTU applies to each segment, as the kernel's
/// own forwarding checks it, not to the whole skb, which would send every such packet to the
/// kernel. Backend statistics count the segments.
#[test]
fn a_segmentation_offload_packet_is_checked_by_its_segments() {
    let tb = Testbed::new();
    let dp = standard(&tb, Hook::Tc);
    let c = client(49040);
    open(&dp, c);
    // 2 × 1448 payload bytes after a 32-byte TCP header (timestamps): two 1500-byte IP
    // packets on the wire, 2948 bytes in the skb.
    let payload = [b'x'; 2 * 1448];
    let request = tcp(c, WRITE).data(&payload).build();
    let reply = tcp(BE_11, c).data(&payload).build();
    let fits = Some(Gso {
        size: 1448,
        segs: 2,
    });
    let too_big = Some(Gso {
        size: 1449,
        segs: 2,
    });
    let before = dp.stats(SLOT_11);
    let case = |name, frame: &Vec<u8>, action, expect, counter| Case {
        name,
        frame: frame.clone(),
        action,
        expect,
        counter,
    };
    dp.step_gso(
        case(
            "client → VIP, 1448-byte segments: forwarded",
            &request,
            XDP_REDIRECT,
            Expect::ToBackend(BE_11),
            counter::FWD_TO_BACKEND,
        ),
        fits,
    );
    dp.step_gso(
        case(
            "backend → client, 1448-byte segments: forwarded",
            &reply,
            XDP_REDIRECT,
            Expect::ToClient(WRITE),
            counter::FWD_TO_CLIENT,
        ),
        fits,
    );
    let after = dp.stats(SLOT_11);
    assert_eq!(
        after.packets_in - before.packets_in,
        2,
        "segments counted in"
    );
    assert_eq!(
        after.packets_out - before.packets_out,
        2,
        "segments counted out"
    );
    assert_eq!(after.bytes_in - before.bytes_in, 2948);
    dp.step_gso(
        case(
            "1449-byte segments make 1501-byte packets: the kernel's (ICMP fragmentation needed)",
            &request,
            XDP_PASS,
            Expect::RewrittenOnly(BE_11),
            counter::PASS_REWRITTEN,
        ),
        too_big,
    );
    dp.step(case(
        "the same 2948 bytes as one packet do not fit either",
        &request,
        XDP_PASS,
        Expect::RewrittenOnly(BE_11),
        counter::PASS_REWRITTEN,
    ));
}

/// IPv4 BIG TCP (`gso_ipv4_max_size` / `gro_ipv4_max_size` above 64 KB): an skb longer than
/// `tot_len` can say carries 0 there, and the skb's length is the packet's. It is forwarded
/// like any segmentation-offload packet, both ways, and counted by its real length. Passed
/// untouched as malformed instead, it reached the LB's own stack, which reset the connection.
#[test]
fn a_big_tcp_packet_without_a_length_is_forwarded() {
    let tb = Testbed::new();
    let dp = standard(&tb, Hook::Tc);
    let c = client(49050);
    open(&dp, c);
    // A real one is over 64 KB; the test run's skb cannot be, and the program reads the
    // length the same way whatever it is.
    let payload = [b'x'; 2 * 1448];
    let gso = Gso {
        size: 1448,
        segs: 2,
    };
    let without_length = |mut f: Vec<u8>| {
        f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&[0, 0]);
        refresh_ipv4_checksum(&mut f);
        f
    };
    let before = dp.stats(SLOT_11);
    let cases = [
        (
            "client → VIP",
            tcp(c, WRITE).data(&payload).build(),
            Expect::ToBackend(BE_11),
            counter::FWD_TO_BACKEND,
        ),
        (
            "backend → client",
            tcp(BE_11, c).data(&payload).build(),
            Expect::ToClient(WRITE),
            counter::FWD_TO_CLIENT,
        ),
    ];
    for (name, frame, expect, counter) in cases {
        let want = without_length(expect.outputs(&frame).expect("expectation").remove(0));
        let counted = dp.counters()[counter as usize];
        let run = dp.run_gso(&without_length(frame), gso);
        assert_eq!(
            run.action,
            XDP_REDIRECT,
            "{name}: got {}",
            action_name(run.action)
        );
        assert!(run.out == want, "{name}: {}", diff(&want, &run.out));
        assert_eq!(dp.counters()[counter as usize], counted + 1, "{name}");
    }
    let after = dp.stats(SLOT_11);
    assert_eq!(
        after.bytes_in - before.bytes_in,
        2948,
        "IP length counted in"
    );
    assert_eq!(
        after.bytes_out - before.bytes_out,
        2948,
        "IP length counted out"
    );
    // Without segmentation offload a `tot_len` of 0 is just malformed.
    let plain = without_length(tcp(c, WRITE).data(&payload).build());
    dp.step(Case {
        name: "tot_len 0 in a plain packet: untouched",
        frame: plain,
        action: XDP_PASS,
        expect: Expect::Unchanged,
        counter: counter::PASS_MALFORMED,
    });
}

#[test]
fn a_packet_from_another_device_asks_the_fib_again() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        let (request, _) = open(&dp, client(49030));
        // Cached for packets arriving on the namespace's loopback (the test run's default).
        let run = dp.run_with(&request, Ingress::KernelDefault, 1);
        assert_eq!(run.action, XDP_REDIRECT, "got {}", action_name(run.action));
        tb.sysctl(&format!("net.ipv4.conf.{CLI_DEV}.forwarding"), "0");
        dp.step(Case {
            name: "the same connection arriving on a device that does not forward",
            frame: request,
            action: XDP_DROP,
            expect: Expect::Dropped,
            counter: counter::DROP_NO_ROUTE,
        });
    });
}
