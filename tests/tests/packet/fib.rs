//! What happens after the rewrite, when the FIB lookup decides: forward (XDP_REDIRECT), leave
//! it to the kernel (XDP_PASS, rewritten), or drop.

use std::net::SocketAddrV4;

use redis_ha_common::counter;

use crate::{
    BE_11, BE_14, SID, SLOT_14, WRITE, at_every_hook, client,
    dataplane::{
        Case, Dataplane, Expect, Hook, Ingress, XDP_DROP, XDP_PASS, XDP_REDIRECT, action_name,
    },
    frame::diff,
    netns::{CLI_DEV, NO_ROUTE, Testbed, UNREACHABLE},
    standard, tcp,
};

const SLOT_FAR: u32 = 5;

fn with_master(tb: &Testbed, hook: Hook, slot: u32, be: SocketAddrV4) -> Dataplane {
    let mut dp = standard(tb, hook);
    dp.set_backend(slot, be, SID, false);
    dp.set_state(SID, slot, 1);
    dp
}

#[test]
fn fib_outcomes() {
    at_every_hook(|tb, hook| {
        standard(tb, hook).step(Case {
            name: "TTL 1: rewritten, left to the kernel to send time-exceeded",
            frame: tcp(client(46000), WRITE).syn().ttl(1).build(),
            action: XDP_PASS,
            expect: Expect::RewrittenOnly(BE_11),
            counter: counter::PASS_REWRITTEN,
        });
        with_master(tb, hook, SLOT_14, BE_14).step(Case {
            name: "no neighbour entry yet: rewritten, the kernel resolves ARP",
            frame: tcp(client(46001), WRITE).syn().build(),
            action: XDP_PASS,
            expect: Expect::RewrittenOnly(BE_14),
            counter: counter::PASS_REWRITTEN,
        });
        with_master(tb, hook, SLOT_FAR, SocketAddrV4::new(UNREACHABLE, 6379)).step(Case {
            name: "unreachable route: dropped",
            frame: tcp(client(46002), WRITE).syn().build(),
            action: XDP_DROP,
            expect: Expect::Dropped,
            counter: counter::DROP_NO_ROUTE,
        });
    });
}

// With no route at all the FIB answers "not forwarded", exactly as for a local destination
// (where passing is right), so the program leaves such packets to the kernel; forwarding
// disabled on the ingress device is told apart and dropped.

#[test]
fn no_route_to_the_backend_is_left_to_the_kernel() {
    at_every_hook(|tb, hook| {
        let far = SocketAddrV4::new(NO_ROUTE, 6379);
        with_master(tb, hook, SLOT_FAR, far).step(Case {
            name: "no route to the backend",
            frame: tcp(client(46003), WRITE).syn().build(),
            action: XDP_PASS,
            expect: Expect::RewrittenOnly(far),
            counter: counter::PASS_REWRITTEN,
        });
    });
}

#[test]
fn forwarding_disabled_is_dropped_as_documented() {
    at_every_hook(|tb, hook| {
        tb.sysctl(&format!("net.ipv4.conf.{CLI_DEV}.forwarding"), "0");
        standard(tb, hook).step(Case {
            name: "forwarding disabled on the ingress device",
            frame: tcp(client(46004), WRITE).syn().build(),
            action: XDP_DROP,
            expect: Expect::Dropped,
            counter: counter::DROP_NO_ROUTE,
        });
    });
}

/// Without `ctx_in` the kernel runs the program as if the frame came in on the namespace's
/// loopback; forwarding is on there too, so the FIB answers the same.
#[test]
fn default_ingress_loopback_also_forwards() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        // Addressed to the loopback's MAC (all zero), which the kernel takes the frame for.
        let mut syn = tcp(client(46005), WRITE).syn();
        syn.eth_dst = [0; 6];
        let frame = syn.build();
        let expected = Expect::ToBackend(BE_11)
            .outputs(&frame)
            .expect("expectation")
            .remove(0);
        let run = dp.run_with(&frame, Ingress::KernelDefault, 1);
        assert_eq!(run.action, XDP_REDIRECT, "got {}", action_name(run.action));
        assert!(run.out == expected, "{}", diff(&expected, &run.out));
    });
}
