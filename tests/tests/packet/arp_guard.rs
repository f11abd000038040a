//! The ARP guard of an `[ha]` node: a floating address is answered for only while the
//! controller keeps its lease in the future, so a node whose controller died stops claiming
//! the VIP by itself. Everything else about ARP passes untouched.

use redis_ha_common::counter;
use redis_ha_ctl::ha::net::monotonic_ns;

use crate::{
    at_every_hook,
    dataplane::{Case, Expect, XDP_DROP, XDP_PASS},
    frame::arp_request,
    netns::{CLIENT, CLIENT_MAC, VIP},
    standard,
};

fn who_has(target: std::net::Ipv4Addr) -> Vec<u8> {
    arp_request(CLIENT_MAC, CLIENT, target)
}

fn case(name: &'static str, frame: Vec<u8>, action: u32, counter: u32) -> Case {
    Case {
        name,
        frame,
        action,
        expect: if action == XDP_DROP {
            Expect::Dropped
        } else {
            Expect::Unchanged
        },
        counter,
    }
}

#[test]
fn arp_for_a_floating_address_is_answered_only_within_the_lease() {
    at_every_hook(|tb, hook| {
        let mut dp = standard(tb, hook);
        dp.table(&[case(
            "who-has VIP, no [ha] (no FLOATING entry)",
            who_has(VIP),
            XDP_PASS,
            counter::PASS_NOT_IPV4,
        )]);

        dp.set_floating(VIP, 0);
        let mut reply = who_has(VIP);
        reply[21] = 2; // operation: reply
        let gateway = std::net::Ipv4Addr::new(198, 18, 1, 1);
        dp.table(&[
            case(
                "who-has VIP while not the holder",
                who_has(VIP),
                XDP_DROP,
                counter::DROP_ARP_NOT_HOLDER,
            ),
            case(
                "who-has another address",
                who_has(gateway),
                XDP_PASS,
                counter::PASS_NOT_IPV4,
            ),
            case(
                "an ARP reply about the VIP (the holder's announcement reaching us)",
                reply,
                XDP_PASS,
                counter::PASS_NOT_IPV4,
            ),
            case(
                "a truncated ARP message",
                who_has(VIP)[..30].to_vec(),
                XDP_PASS,
                counter::PASS_MALFORMED,
            ),
        ]);

        dp.set_floating(VIP, monotonic_ns() + 60_000_000_000);
        dp.table(&[case(
            "who-has VIP while holding the lease",
            who_has(VIP),
            XDP_PASS,
            counter::PASS_NOT_IPV4,
        )]);

        // The controller stopped renewing: the lease ran out.
        dp.set_floating(VIP, monotonic_ns() - 1);
        dp.table(&[case(
            "who-has VIP after the lease ran out",
            who_has(VIP),
            XDP_DROP,
            counter::DROP_ARP_NOT_HOLDER,
        )]);
    });
}
