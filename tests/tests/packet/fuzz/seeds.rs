//! What the fuzzer starts from: the program set up as a node runs it (three ways), and valid
//! frames of every kind such a node sees, which the mutator then damages.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use fastrand::Rng;

use crate::{
    BE_11, BE_12, BE_13, BE_14, READ, SLOT_11, SLOT_12, SLOT_13, WRITE, addr, client,
    dataplane::{Dataplane, Hook},
    frame::{arp_request, icmp4_echo, tcp_flags, tcp6_syn, udp4},
    netns::{CLIENT, Testbed, UNREACHABLE, VIP, device_mac, host_mac},
    standard_sized, tcp,
};

/// This node's address toward the backends under full NAT (the testbed router's own).
pub const NAT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// A short full-NAT port range, so that exhaustion is reached too.
pub const NAT_FIRST: u16 = 50000;
pub const NAT_LAST: u16 = 50063;
/// Client ports are drawn from a short range, so that a mutated segment often meets the entry
/// an earlier SYN made (entry present) and as often finds none (entry absent).
const CLIENT_PORTS: std::ops::Range<u16> = 40000..40048;

/// How the program is set up for one part of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// Destination NAT, the default table; replies without an entry are rewritten for the
    /// client network; this node's lease on the VIP has expired (its ARP requests dropped).
    DestNat,
    /// Full NAT with 64 source ports, a 256-entry table (spill and eviction), lease held.
    FullNat,
    /// Destination NAT with the master on this node (delivered locally, its replies mapped
    /// back at TC egress).
    LocalMaster,
}

pub const SETUPS: [Setup; 3] = [Setup::DestNat, Setup::FullNat, Setup::LocalMaster];

/// The VIP ports and the backend addresses the program is given: what makes a frame one it
/// may act on (see `oracle::Scope`).
pub const SERVICES: [SocketAddrV4; 2] = [WRITE, READ];
pub const BACKENDS: [SocketAddrV4; 4] = [BE_11, BE_12, BE_13, BE_14];

pub fn load(tb: &Testbed, hook: Hook, setup: Setup) -> Dataplane {
    let size = (setup == Setup::FullNat).then_some(256);
    let mut dp = standard_sized(tb, hook, size);
    dp.add_client_net(Ipv4Addr::new(198, 18, 0, 0), 24);
    match setup {
        Setup::DestNat => dp.set_floating(VIP, 0),
        Setup::FullNat => {
            dp.set_full_nat(NAT_IP, NAT_FIRST, NAT_LAST);
            dp.set_floating(VIP, u64::MAX);
        }
        Setup::LocalMaster => dp.set_local(SLOT_11),
    }
    dp
}

/// A control-plane change between batches, as the controller makes them: a failover (or no
/// master at all), a replica leaving or joining the read pool, the other Maglev half made
/// live. Connections made before it turn stale and are reset.
pub fn change_state(dp: &mut Dataplane, rng: &mut Rng) {
    match rng.u8(0..4) {
        0 => {
            let master = [SLOT_11, SLOT_11, SLOT_12, 0][rng.usize(0..4)];
            dp.set_state(crate::SID, master, 1);
        }
        1 => dp.set_readable([SLOT_11, SLOT_12, SLOT_13][rng.usize(0..3)], rng.bool()),
        2 => dp.set_state(crate::SID, SLOT_11, rng.u32(0..2)),
        _ => dp.set_state(crate::SID, SLOT_11, 1),
    }
}

/// A valid frame of one of the kinds a node sees, with its name.
pub fn seed(rng: &mut Rng, setup: Setup) -> (&'static str, Vec<u8>) {
    let c = client(rng.u16(CLIENT_PORTS));
    // Another client on the client network: no neighbour entry, so its packets take the
    // kernel's path after the rewrite.
    let other = addr([198, 18, 0, rng.u8(3..9)], rng.u16(CLIENT_PORTS));
    let seq = rng.u32(..);
    let ack = rng.u32(..);
    let vip = if rng.bool() { WRITE } else { READ };
    let backend = [BE_11, BE_12, BE_13][rng.usize(0..3)];
    let nat = SocketAddrV4::new(NAT_IP, rng.u16(NAT_FIRST..=NAT_LAST));
    let reply_to = if setup == Setup::FullNat && rng.u8(0..4) != 0 {
        nat
    } else {
        c
    };
    let request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
    match rng.u8(0..22) {
        0..=2 => ("SYN to a VIP port", tcp(c, vip).syn().seq(seq).build()),
        3 => (
            "SYN from another client",
            tcp(other, vip).syn().seq(seq).build(),
        ),
        4 => (
            "ACK to a VIP port",
            tcp(c, vip).seq(seq).ack(ack).padded().build(),
        ),
        5..=6 => (
            "request to a VIP port",
            tcp(c, vip).data(request).seq(seq).ack(ack).build(),
        ),
        7 => (
            "FIN or RST to a VIP port",
            tcp(c, vip)
                .flags(
                    [
                        tcp_flags::FIN | tcp_flags::ACK,
                        tcp_flags::RST,
                        tcp_flags::RST | tcp_flags::ACK,
                    ][rng.usize(0..3)],
                )
                .seq(seq)
                .ack(ack)
                .build(),
        ),
        8 => (
            "SYN-ACK of a backend",
            tcp(backend, reply_to)
                .syn()
                .flags(tcp_flags::SYN | tcp_flags::ACK)
                .seq(seq)
                .ack(ack)
                .build(),
        ),
        9..=10 => (
            "reply of a backend",
            tcp(backend, reply_to)
                .data(b"+OK\r\n")
                .seq(seq)
                .ack(ack)
                .build(),
        ),
        11 => (
            "FIN of a backend",
            tcp(backend, reply_to)
                .flags(tcp_flags::FIN | tcp_flags::ACK)
                .seq(seq)
                .ack(ack)
                .build(),
        ),
        12 => (
            "backend to backend (replication)",
            tcp(backend, BE_12).data(b"*1\r\n$4\r\nPING\r\n").build(),
        ),
        13 => (
            "client straight to a backend",
            tcp(c, backend).syn().seq(seq).build(),
        ),
        14 => (
            "ARP request for the VIP",
            arp_request(host_mac(CLIENT), CLIENT, VIP),
        ),
        15 => {
            let target = [NAT_IP, *BE_11.ip(), Ipv4Addr::new(198, 18, 0, 1)][rng.usize(0..3)];
            (
                "ARP request for another address",
                arp_request(host_mac(CLIENT), CLIENT, target),
            )
        }
        16 => {
            let mut f = arp_request(host_mac(CLIENT), CLIENT, VIP);
            f[21] = 2;
            ("ARP reply", f)
        }
        17 => (
            "TCP to another host",
            tcp(c, addr([198, 18, 1, 50], vip.port())).syn().build(),
        ),
        18 => (
            "TCP to the VIP, another port",
            tcp(c, SocketAddrV4::new(VIP, 22))
                .data(b"SSH-2.0-x\r\n")
                .build(),
        ),
        19 => (
            "UDP to a VIP port",
            udp4(host_mac(CLIENT), device_mac(CLIENT), c, vip, b"datagram"),
        ),
        20 => {
            let dst = [VIP, UNREACHABLE, *BE_11.ip()][rng.usize(0..3)];
            (
                "ICMP echo",
                icmp4_echo(host_mac(CLIENT), device_mac(CLIENT), CLIENT, dst),
            )
        }
        _ => (
            "IPv6 SYN",
            tcp6_syn(
                host_mac(CLIENT),
                device_mac(CLIENT),
                Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2),
                c.port(),
                Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x100),
                vip.port(),
            ),
        ),
    }
}

/// Opens a connection from every client port to both VIP ports through the ingress program
/// (TC), so that the egress program meets replies of connections it knows; returns how much
/// the counters moved, which the frames fuzzed must not be charged with.
pub fn open_connections(dp: &Dataplane) -> u64 {
    let before: u64 = dp.counters().iter().sum();
    for port in CLIENT_PORTS {
        for vip in SERVICES {
            let syn = tcp(client(port), vip).syn().build();
            dp.try_run_once(&syn, false)
                .unwrap_or_else(|e| panic!("opening {port} -> {vip}: BPF_PROG_TEST_RUN: {e}"));
        }
    }
    dp.counters().iter().sum::<u64>() - before
}
