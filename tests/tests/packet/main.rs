//! Packet tests: the XDP program, run through BPF_PROG_TEST_RUN on hand-built frames, inside
//! a network namespace of its own (see [`netns`]). Needs root; run with
//! `cargo test -p redis-ha-tests --test packet -- --test-threads=1 --nocapture`.
//!
//! - [`frame`]: frame builders, a parser and an independent checksum implementation;
//! - [`netns`]: the namespace guard and the addresses/MACs the FIB will answer with;
//! - [`dataplane`]: a loaded program and its maps; `dataplane::run`, the table runner ([`dataplane::Case`]);
//! - the test groups: [`forward`], [`passthrough`], [`reset`], [`fib`], [`next_hop`],
//!   [`arp_guard`], [`close`], [`port_reuse`], [`untrusted`], [`measure`];
//! - [`fuzz`]: random and damaged frames at every hook, judged by invariants (`cargo xtask fuzz`).
//!
//! Every test loads its own copy of the program, so flows and counters never leak between
//! tests.

mod arp_guard;
mod close;
mod dataplane;
mod fib;
mod forward;
mod frame;
mod full_nat;
mod fuzz;
mod measure;
mod netns;
mod next_hop;
mod passthrough;
mod port_reuse;
mod reset;
mod spill;
mod stateless;
mod untrusted;

use std::net::{Ipv4Addr, SocketAddrV4};

use dataplane::{Case, Dataplane, Expect, HOOKS, Hook, XDP_REDIRECT};
use frame::Tcp4;
use frame::tcp_flags::{ACK, SYN};
use netns::{
    BACKEND_11, BACKEND_12, BACKEND_13, BACKEND_NO_NEIGH, Testbed, VIP, device_mac, host_mac,
};
use redis_ha_common::port_kind;
use redis_ha_common::{FlowKey, counter};

/// A service id other than 0, so an index mix-up between services shows.
pub const SID: u32 = 3;
pub const WRITE: SocketAddrV4 = SocketAddrV4::new(VIP, 6380);
pub const READ: SocketAddrV4 = SocketAddrV4::new(VIP, 6381);

pub const BE_11: SocketAddrV4 = SocketAddrV4::new(BACKEND_11, 6379);
pub const BE_12: SocketAddrV4 = SocketAddrV4::new(BACKEND_12, 6379);
pub const BE_13: SocketAddrV4 = SocketAddrV4::new(BACKEND_13, 6379);
pub const BE_14: SocketAddrV4 = SocketAddrV4::new(BACKEND_NO_NEIGH, 6379);
pub const SLOT_11: u32 = 1;
pub const SLOT_12: u32 = 2;
pub const SLOT_13: u32 = 3;
/// Not readable, no neighbour entry: only reachable through a bug (or on purpose).
pub const SLOT_14: u32 = 4;
pub const READ_POOL: &[SocketAddrV4] = &[BE_11, BE_12, BE_13];

/// The service most tests use: write port → master .11; read port over .11, .12, .13 through
/// ring half 1, while half 0 points at the unreadable .14, so a program that reads the
/// inactive half sends flows where no test expects them.
pub fn standard(tb: &Testbed, hook: Hook) -> Dataplane {
    standard_sized(tb, hook, None)
}

/// [`standard`] with a connection table of `flow_table_size` entries.
pub fn standard_sized(tb: &Testbed, hook: Hook, flow_table_size: Option<u32>) -> Dataplane {
    let mut dp = Dataplane::load_sized(tb, hook, flow_table_size);
    dp.add_port(WRITE, SID, port_kind::WRITE);
    dp.add_port(READ, SID, port_kind::READ);
    dp.set_backend(SLOT_11, BE_11, SID, true);
    dp.set_backend(SLOT_12, BE_12, SID, true);
    dp.set_backend(SLOT_13, BE_13, SID, true);
    dp.set_backend(SLOT_14, BE_14, SID, false);
    dp.fill_ring(SID, 1, &[SLOT_11, SLOT_12, SLOT_13]);
    dp.fill_ring(SID, 0, &[SLOT_14]);
    dp.set_state(SID, SLOT_11, 1);
    dp
}

/// Runs `body` at every hook the program has (XDP, TC), each on a testbed of its own.
pub fn at_every_hook(body: impl Fn(&Testbed, Hook)) {
    for hook in HOOKS {
        let tb = Testbed::new();
        body(&tb, hook);
    }
}

/// A TCP frame from `src` to `dst` with the MACs it carries on the wire: the sender's own,
/// and the testbed router's on the sender's subnet. Sequence and acknowledgement numbers are
/// those of one connection seen from both ends (a client's sequence number is what its
/// backend acknowledges, and the other way round), so that FINs and RSTs are in its window.
pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4) -> Tcp4 {
    let mut t = Tcp4::new(host_mac(*src.ip()), device_mac(*src.ip()), src, dst);
    if src.ip().octets()[..3] == [198, 18, 1] {
        (t.seq, t.ack) = (BACKEND_SEQ, CLIENT_SEQ.wrapping_add(1));
    } else {
        (t.seq, t.ack) = (CLIENT_SEQ, BACKEND_SEQ);
    }
    t
}

/// The sequence numbers of [`tcp`]'s frames from a client and from a backend.
pub const CLIENT_SEQ: u32 = 0x6d2f_0a11;
pub const BACKEND_SEQ: u32 = 0x0000_1f40;

/// The `FLOWS` key of a packet from `src` to `dst`.
pub fn flow_key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_ip: src.ip().octets(),
        dst_ip: dst.ip().octets(),
        src_port: src.port(),
        dst_port: dst.port(),
    }
}

/// The SYN of a new write-port connection from `c`, which goes to the master .11.
pub fn syn_to_master(name: &'static str, c: SocketAddrV4) -> Case {
    Case {
        name,
        frame: tcp(c, WRITE).syn().build(),
        action: XDP_REDIRECT,
        expect: Expect::ToBackend(BE_11),
        counter: counter::FWD_TO_BACKEND,
    }
}

/// Client `c` → `vip`, handled by the master .11: handshake and one request/reply, every step
/// checked. Returns the key of the connection's entry, present.
pub fn open_via_master(dp: &Dataplane, c: SocketAddrV4, vip: SocketAddrV4) -> FlowKey {
    let to_client = |name, frame| to_client_from(name, frame, vip);
    dp.table(&[
        to_backend("SYN", tcp(c, vip).syn().build()),
        to_client("SYN-ACK", tcp(BE_11, c).flags(SYN | ACK).build()),
        to_backend("request", tcp(c, vip).data(b"*1\r\n$4\r\nPING\r\n").build()),
        to_client("reply", tcp(BE_11, c).data(b"+PONG\r\n").build()),
    ]);
    let key = flow_key(c, vip);
    let flow = dp.flow(&key).expect("the connection's entry");
    assert_eq!(
        (flow.backend, flow.backend_ip, flow.backend_port),
        (SLOT_11, BE_11.ip().octets(), BE_11.port())
    );
    assert_ne!(
        flow.to_client.resolved_ns, 0,
        "the replies' next hop is cached"
    );
    key
}

/// `frame`, a client's packet on a connection to the master .11, is forwarded there.
pub fn to_backend(name: &'static str, frame: Vec<u8>) -> Case {
    Case {
        name,
        frame,
        action: XDP_REDIRECT,
        expect: Expect::ToBackend(BE_11),
        counter: counter::FWD_TO_BACKEND,
    }
}

/// `frame`, a backend's reply, goes to the client as coming from `vip`.
pub fn to_client_from(name: &'static str, frame: Vec<u8>, vip: SocketAddrV4) -> Case {
    Case {
        name,
        frame,
        action: XDP_REDIRECT,
        expect: Expect::ToClient(vip),
        counter: counter::FWD_TO_CLIENT,
    }
}

pub fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(netns::CLIENT, port)
}

pub fn addr(a: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), port)
}
