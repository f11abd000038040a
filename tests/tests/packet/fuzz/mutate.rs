//! Damage to a valid frame: bit flips, truncations and extensions, and the fields a parser
//! trusts (IHL, total length, data offset, fragment bits), flags, protocols and addresses set
//! to values chosen to meet the program's branches. Half the damaged frames get their
//! checksums recomputed afterwards, so that a frame with an absurd field still looks valid to
//! anything that checks only the sum.

use fastrand::Rng;

use crate::{
    BE_11, BE_14, READ, WRITE,
    frame::{
        ETH_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPPROTO_ICMP, IPPROTO_TCP,
        IPPROTO_UDP, IPV4_LEN, ipv4_header_checksum, l4_checksum_v4,
    },
    netns::{CLI_DEV_MAC, CLIENT, NO_ROUTE, SRV_DEV_MAC, UNREACHABLE, VIP},
};

use super::seeds::{NAT_FIRST, NAT_IP, NAT_LAST};

/// The longest frame made: an Ethernet MTU's worth and a little more, well inside what a
/// test run takes at either hook.
const MAX_LEN: usize = 1600;

/// Applies 0 to 3 mutations (a quarter of the frames stay valid) and returns what was done,
/// for the report of a failure.
pub fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) -> Vec<&'static str> {
    let n = rng.usize(0..4);
    let mut done = Vec::with_capacity(n + 1);
    for _ in 0..n {
        done.push(one(rng, frame));
    }
    if n > 0 && rng.bool() {
        refresh_checksums(frame);
        done.push("checksums recomputed");
    }
    done
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn set16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

fn set8(f: &mut [u8], at: usize, v: u8) {
    if let Some(b) = f.get_mut(at) {
        *b = v;
    }
}

/// Where the TCP header starts by the frame's own IHL (20 bytes in when the IHL is absurd).
fn l4_at(f: &[u8]) -> usize {
    let ihl = f.get(ETH_LEN).map_or(5, |b| usize::from(b & 0x0f));
    ETH_LEN + if ihl >= 5 { ihl * 4 } else { IPV4_LEN }
}

fn interesting_addr(rng: &mut Rng) -> [u8; 4] {
    [
        VIP,
        CLIENT,
        *BE_11.ip(),
        *BE_14.ip(),
        NAT_IP,
        UNREACHABLE,
        NO_ROUTE,
        std::net::Ipv4Addr::BROADCAST,
        std::net::Ipv4Addr::UNSPECIFIED,
        std::net::Ipv4Addr::new(198, 18, 0, rng.u8(..)),
    ][rng.usize(0..10)]
    .octets()
}

fn interesting_port(rng: &mut Rng) -> u16 {
    [
        WRITE.port(),
        READ.port(),
        BE_11.port(),
        NAT_FIRST,
        NAT_LAST,
        rng.u16(NAT_FIRST..=NAT_LAST),
        0,
        u16::MAX,
        rng.u16(..),
    ][rng.usize(0..9)]
}

/// One mutation; returns its name.
fn one(rng: &mut Rng, f: &mut Vec<u8>) -> &'static str {
    let len = f.len();
    let l4 = l4_at(f);
    match rng.u8(0..18) {
        0..=2 => {
            // Mostly in the headers, where a flipped bit changes a decision.
            let within = if rng.u8(0..4) == 0 {
                len
            } else {
                len.min(l4 + 20)
            };
            if within > 0 {
                let at = rng.usize(0..within);
                f[at] ^= 1 << rng.u8(0..8);
            }
            "bit flip"
        }
        3 => {
            if len > 0 {
                let at = rng.usize(0..len);
                f[at] = rng.u8(..);
            }
            "random byte"
        }
        4 => {
            // Short frames matter most: cut inside a header more often than in the payload.
            let to = if rng.bool() {
                rng.usize(0..=len.min(l4 + 24))
            } else {
                rng.usize(0..=len)
            };
            f.truncate(to);
            "truncated"
        }
        5 => {
            let extra = rng.usize(1..=64).min(MAX_LEN.saturating_sub(len));
            f.extend((0..extra).map(|_| rng.u8(..)));
            "extended"
        }
        6 => {
            let version = f.get(ETH_LEN).copied().unwrap_or(0x45) & 0xf0;
            set8(f, ETH_LEN, version | rng.u8(0..16));
            "IHL"
        }
        7 => {
            let ip_len = len.saturating_sub(ETH_LEN) as u16;
            let v = [
                0,
                1,
                19,
                20,
                39,
                40,
                ip_len.wrapping_sub(1),
                ip_len.wrapping_add(1),
                ip_len.wrapping_add(rng.u16(2..200)),
                u16::MAX,
                rng.u16(..),
            ][rng.usize(0..11)];
            set16(f, ETH_LEN + 2, v);
            "tot_len"
        }
        8 => {
            if let Some(b) = f.get_mut(l4 + 12) {
                *b = (rng.u8(0..16) << 4) | (*b & 0x0f);
            }
            "TCP data offset"
        }
        9 => {
            // More-fragments, an offset, DF, or all of them.
            let v = [0x2000, 0x0001, 0x2001, 0x4000, 0x1fff, 0x8000, rng.u16(..)][rng.usize(0..7)];
            set16(f, ETH_LEN + 6, v);
            "fragment bits"
        }
        10 => {
            let flags = [
                0x02, 0x12, 0x10, 0x18, 0x01, 0x11, 0x04, 0x14, 0x03, 0x06, 0x07, 0x00, 0xff, 0x29,
            ];
            let v = if rng.u8(0..4) == 0 {
                rng.u8(..)
            } else {
                flags[rng.usize(0..flags.len())]
            };
            set8(f, l4 + 13, v);
            "TCP flags"
        }
        11 => {
            let v = [
                ETHERTYPE_IPV4,
                ETHERTYPE_ARP,
                ETHERTYPE_IPV6,
                0x8100,
                0x88a8,
                rng.u16(..),
            ][rng.usize(0..6)];
            set16(f, 12, v);
            "EtherType"
        }
        12 => {
            let vihl = f.get(ETH_LEN).copied().unwrap_or(0x45);
            set8(f, ETH_LEN, (rng.u8(0..16) << 4) | (vihl & 0x0f));
            "IP version"
        }
        13 => {
            let v = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, 0, 255, rng.u8(..)][rng.usize(0..6)];
            set8(f, ETH_LEN + 9, v);
            "IP protocol"
        }
        14 => {
            let at = ETH_LEN + if rng.bool() { 12 } else { 16 };
            let a = interesting_addr(rng);
            if at + 4 <= f.len() {
                f[at..at + 4].copy_from_slice(&a);
            }
            "IP address"
        }
        15 => {
            let at = l4 + if rng.bool() { 0 } else { 2 };
            let p = interesting_port(rng);
            set16(f, at, p);
            "port"
        }
        16 => {
            set8(f, ETH_LEN + 8, [0, 1, 2, 255][rng.usize(0..4)]);
            "TTL"
        }
        _ => {
            let mac = [
                CLI_DEV_MAC,
                SRV_DEV_MAC,
                [0xff; 6],
                [0x01, 0, 0x5e, 0, 0, 1],
                [0x02, 0x99, 0, 0, 0, 1],
            ][rng.usize(0..5)];
            let n = 6.min(f.len());
            f[..n].copy_from_slice(&mac[..n]);
            "Ethernet destination"
        }
    }
}

/// Recomputes the IPv4 header checksum and the TCP/UDP checksum as far as the frame's own
/// (possibly absurd) IHL and total length allow.
pub fn refresh_checksums(f: &mut [u8]) {
    if f.len() < ETH_LEN + IPV4_LEN || be16(f, 12) != ETHERTYPE_IPV4 {
        return;
    }
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    if ihl < IPV4_LEN || ETH_LEN + ihl > f.len() {
        return;
    }
    let check = ipv4_header_checksum(&f[ETH_LEN..ETH_LEN + ihl]);
    set16(f, ETH_LEN + 10, check);
    let tot = usize::from(be16(f, ETH_LEN + 2));
    let (start, end) = (ETH_LEN + ihl, ETH_LEN + tot);
    let check_at = match f[ETH_LEN + 9] {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => return,
    };
    if end > f.len() || end < start + check_at + 2 {
        return;
    }
    let addr = |at: usize| std::net::Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    let (src, dst) = (addr(ETH_LEN + 12), addr(ETH_LEN + 16));
    let check = l4_checksum_v4(src, dst, f[ETH_LEN + 9], &f[start..end], check_at);
    set16(f, start + check_at, check);
}
