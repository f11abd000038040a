//! Everything the fast path does not own reaches the kernel exactly as it arrived: other
//! traffic on the same interface, and input the parser must refuse. The program passes
//! malformed frames on purpose (the kernel's own checks drop and count them), so the
//! expected action is XDP_PASS with the reason counted.

use std::net::Ipv6Addr;

use redis_ha_common::counter;

use crate::{
    BE_11, BE_12, WRITE, addr, at_every_hook, client,
    dataplane::{Case, Expect, XDP_PASS},
    frame::{
        ETH_LEN, IP_MF, IPV4_LEN, arp_request, icmp4_echo, off, refresh_ipv4_checksum, tcp6_syn,
        udp4,
    },
    netns::{CLI_DEV_MAC, CLIENT, CLIENT_MAC, VIP},
    standard, syn_to_master, tcp,
};

fn pass(name: &'static str, frame: Vec<u8>, counter: u32) -> Case {
    Case {
        name,
        frame,
        action: XDP_PASS,
        expect: Expect::Unchanged,
        counter,
    }
}

/// A valid SYN to the write port, to be damaged by `f`.
fn damaged(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = tcp(client(45000), WRITE).syn().build();
    f(&mut frame);
    frame
}

#[test]
fn non_vip_traffic_passes_byte_for_byte() {
    at_every_hook(|tb, hook| {
        let dp = standard(tb, hook);
        // A live connection, so the flow table is not empty while the others go by.
        dp.step(syn_to_master("SYN to the write port", client(40000)));
        let vip6: Ipv6Addr = "2001:2::100".parse().expect("IPv6 literal");
        let client6: Ipv6Addr = "2001:2::2".parse().expect("IPv6 literal");
        let repl = addr([198, 18, 1, 12], 51000);
        let mut vlan = tcp(client(40002), WRITE).syn().build();
        vlan.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        dp.table(&[
            pass(
                "TCP to the VIP on port 22",
                tcp(client(40003), addr([198, 18, 0, 100], 22))
                    .syn()
                    .build(),
                counter::PASS_NOT_SERVICE,
            ),
            pass(
                "TCP to another address on 6380",
                tcp(client(40004), addr([198, 18, 0, 101], 6380))
                    .syn()
                    .build(),
                counter::PASS_NOT_SERVICE,
            ),
            pass(
                "client straight to a backend",
                tcp(client(40005), BE_11).syn().build(),
                counter::PASS_NOT_SERVICE,
            ),
            pass(
                "replication SYN .12 → .11:6379",
                tcp(repl, BE_11).syn().build(),
                counter::PASS_NOT_SERVICE,
            ),
            pass(
                "replication data .12 → .11:6379",
                tcp(repl, BE_11).data(b"REPLCONF ACK 1000\r\n").build(),
                counter::PASS_NOT_SERVICE,
            ),
            pass(
                "replication reply .11:6379 → .12 (no flow)",
                tcp(BE_11, repl).data(b"+CONTINUE\r\n").build(),
                counter::PASS_NOT_SERVICE,
            ),
            pass(
                "backend reply to a client port with no flow",
                tcp(BE_11, client(40001)).data(b"+OK\r\n").build(),
                counter::PASS_NOT_SERVICE,
            ),
            pass(
                "reply of the live flow from the wrong backend",
                tcp(BE_12, client(40000)).data(b"+OK\r\n").build(),
                counter::PASS_NOT_SERVICE,
            ),
            pass(
                "ARP request for the VIP",
                arp_request(CLIENT_MAC, CLIENT, VIP),
                counter::PASS_NOT_IPV4,
            ),
            pass(
                "IPv6 TCP SYN to port 6380",
                tcp6_syn(CLIENT_MAC, CLI_DEV_MAC, client6, 40006, vip6, 6380),
                counter::PASS_NOT_IPV4,
            ),
            pass(
                "VLAN-tagged SYN to the write port",
                vlan,
                counter::PASS_NOT_IPV4,
            ),
            pass(
                "UDP to the VIP port 6380",
                udp4(CLIENT_MAC, CLI_DEV_MAC, client(40007), WRITE, b"PING"),
                counter::PASS_NOT_TCP,
            ),
            pass(
                "ICMP echo to the VIP",
                icmp4_echo(CLIENT_MAC, CLI_DEV_MAC, CLIENT, VIP),
                counter::PASS_NOT_TCP,
            ),
        ]);
    });
}

#[test]
fn malformed_input_passes_untouched_and_is_counted() {
    // In either NAT mode: full NAT reads more of the packet (its ports, the node's address).
    at_every_hook(|tb, hook| {
        for full_nat in [false, true] {
            let mut dp = standard(tb, hook);
            if full_nat {
                dp.set_full_nat(std::net::Ipv4Addr::new(198, 18, 1, 1), 50000, 50999);
            }
            let syn = damaged(|_| {});
            dp.table(&[
                pass(
                    "truncated Ethernet (10 bytes)",
                    syn[..10].to_vec(),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "Ethernet header only",
                    syn[..ETH_LEN].to_vec(),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "truncated IPv4 (Ethernet + 10 bytes)",
                    syn[..ETH_LEN + 10].to_vec(),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "IPv4 header one byte short",
                    syn[..ETH_LEN + IPV4_LEN - 1].to_vec(),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "truncated TCP to the VIP port (10 of 20 bytes)",
                    syn[..off::TCP + 10].to_vec(),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "TCP header one byte short",
                    syn[..off::TCP + 19].to_vec(),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "IP options (IHL=6, router alert) to the VIP port",
                    tcp(client(45000), WRITE)
                        .syn()
                        .ip_options(&[0x94, 0x04, 0x00, 0x00])
                        .build(),
                    counter::PASS_IP_OPTIONS,
                ),
                pass(
                    "first fragment (MF) to the VIP port",
                    tcp(client(45000), WRITE).syn().frag(IP_MF).build(),
                    counter::PASS_FRAGMENT,
                ),
                pass(
                    "non-first fragment (offset 185) to the VIP port",
                    tcp(client(45000), WRITE).data(b"x").frag(185).build(),
                    counter::PASS_FRAGMENT,
                ),
                pass(
                    "IHL=3",
                    damaged(|f| {
                        f[off::VER_IHL] = 0x43;
                        refresh_ipv4_checksum(f);
                    }),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "IP version 6 with ethertype IPv4",
                    damaged(|f| {
                        f[off::VER_IHL] = 0x65;
                        refresh_ipv4_checksum(f);
                    }),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "TCP data offset 4",
                    damaged(|f| f[off::TCP_DOFF] = 4 << 4),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "TCP data offset 0",
                    damaged(|f| f[off::TCP_DOFF] = 0),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "tot_len 39 (one byte short of IP + TCP headers)",
                    damaged(|f| {
                        f[off::TOT_LEN..off::TOT_LEN + 2].copy_from_slice(&39u16.to_be_bytes());
                        refresh_ipv4_checksum(f);
                    }),
                    counter::PASS_MALFORMED,
                ),
                pass(
                    "tot_len 20 (IP header only)",
                    damaged(|f| {
                        f[off::TOT_LEN..off::TOT_LEN + 2].copy_from_slice(&20u16.to_be_bytes());
                        refresh_ipv4_checksum(f);
                    }),
                    counter::PASS_MALFORMED,
                ),
            ]);
        }
    });
}
