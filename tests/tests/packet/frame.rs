//! Frames built by hand, a parser that turns them back into fields, and an independent
//! checksum implementation.
//!
//! Nothing here shares code with redis-ha-ebpf's `packet.rs`: the program updates checksums
//! incrementally (RFC 1624) on native-endian words, while this module always recomputes them
//! from scratch on big-endian words, so a mistake on one side cannot hide in the other.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

pub type Mac = [u8; 6];

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const TCP_LEN: usize = 20;

/// Byte offsets in a frame whose IPv4 header carries no options.
pub mod off {
    use super::{ETH_LEN, IPV4_LEN};
    pub const VER_IHL: usize = ETH_LEN;
    pub const TOT_LEN: usize = ETH_LEN + 2;
    pub const TCP: usize = ETH_LEN + IPV4_LEN;
    pub const TCP_DOFF: usize = TCP + 12;
}

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

/// Options of a Linux SYN (MSS 1460, SACK permitted, timestamps, window scale 7): real
/// handshakes carry them, so the NAT must leave a 40-byte TCP header intact.
pub const SYN_OPTIONS: [u8; 20] = [
    0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x01, 0xe2, 0x40, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x03, 0x03, 0x07,
];
/// NOP, NOP, timestamps: what an established Linux connection puts on every segment.
pub const TS_OPTIONS: [u8; 12] = [
    0x01, 0x01, 0x08, 0x0a, 0x00, 0x01, 0xe2, 0x41, 0x7a, 0x3b, 0x11, 0x02,
];

/// Sum of big-endian 16-bit words (an odd trailing byte is padded with zero), carries kept.
fn sum_words(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

/// Folds a sum to 16 bits with end-around carry and complements it.
fn finish(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Internet checksum of an IPv4 header of any length; its own checksum field counts as zero.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut h = header.to_vec();
    h[10..12].fill(0);
    finish(sum_words(&h))
}

/// Checksum of a TCP or UDP segment over IPv4; the field at `check_at` counts as zero.
pub fn l4_checksum_v4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    segment: &[u8],
    check_at: usize,
) -> u16 {
    let mut seg = segment.to_vec();
    seg[check_at..check_at + 2].fill(0);
    let pseudo = sum_words(&src.octets())
        + sum_words(&dst.octets())
        + u64::from(proto)
        + segment.len() as u64;
    finish(pseudo + sum_words(&seg))
}

/// Whether an IPv4 header of any length carries a valid checksum. Summed with the field in
/// place, so both encodings of zero (0x0000 and 0xffff) pass, as they do for a receiver.
pub fn ipv4_header_verifies(header: &[u8]) -> bool {
    finish(sum_words(header)) == 0
}

/// Whether a TCP or UDP segment over IPv4 carries a valid checksum (field in place, as above).
pub fn l4_verifies_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> bool {
    let pseudo = sum_words(&src.octets())
        + sum_words(&dst.octets())
        + u64::from(proto)
        + segment.len() as u64;
    finish(pseudo + sum_words(segment)) == 0
}

/// Checksum of a TCP segment over IPv6; its checksum field counts as zero.
pub fn tcp_checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, segment: &[u8]) -> u16 {
    let mut seg = segment.to_vec();
    seg[16..18].fill(0);
    let pseudo = sum_words(&src.octets())
        + sum_words(&dst.octets())
        + u64::from(IPPROTO_TCP)
        + segment.len() as u64;
    finish(pseudo + sum_words(&seg))
}

fn ethernet(dst: Mac, src: Mac, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 header (with `options`) in front of `l4`, checksum computed.
#[expect(clippy::too_many_arguments, reason = "one argument per header field")]
fn ipv4(
    tos: u8,
    id: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    options: &[u8],
    l4: &[u8],
) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4) && options.len() <= 40,
        "IPv4 options must fill 32-bit words"
    );
    let ihl = 5 + options.len() / 4;
    let tot_len = (ihl * 4 + l4.len()) as u16;
    let mut h = vec![(4 << 4) | ihl as u8, tos];
    h.extend_from_slice(&tot_len.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[ttl, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    let check = ipv4_header_checksum(&h);
    h[10..12].copy_from_slice(&check.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// Every field of an Ethernet + IPv4 + TCP frame. `build` and `parse` are exact inverses for
/// well-formed frames, so an expected output is "the input's fields, a few of them changed".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp4 {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset, as on the wire.
    pub frag: u16,
    pub ttl: u8,
    pub ip_options: Vec<u8>,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urg: u16,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Bytes after the IP packet: Ethernet padding of short frames (a bare ACK is 54 bytes
    /// and arrives padded to the 60-byte minimum).
    pub trailer: Vec<u8>,
}

impl Tcp4 {
    /// A bare ACK with plausible Linux defaults (DF, TTL 64).
    pub fn new(eth_src: Mac, eth_dst: Mac, src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Tcp4 {
            eth_dst,
            eth_src,
            tos: 0,
            id: 0x1c46,
            frag: IP_DF,
            ttl: 64,
            ip_options: Vec::new(),
            src,
            dst,
            seq: 0x6d2f_0a11,
            ack: 0x0000_1f40,
            flags: tcp_flags::ACK,
            window: 502,
            urg: 0,
            tcp_options: Vec::new(),
            payload: Vec::new(),
            trailer: Vec::new(),
        }
    }

    /// The first segment of a handshake, options included.
    pub fn syn(mut self) -> Self {
        self.flags = tcp_flags::SYN;
        self.ack = 0;
        self.window = 64240;
        self.tcp_options = SYN_OPTIONS.to_vec();
        self
    }

    /// A data segment of an established connection (PSH+ACK, timestamps, `payload`).
    pub fn data(mut self, payload: &[u8]) -> Self {
        self.flags = tcp_flags::ACK | tcp_flags::PSH;
        self.tcp_options = TS_OPTIONS.to_vec();
        self.payload = payload.to_vec();
        self
    }

    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn frag(mut self, frag: u16) -> Self {
        self.frag = frag;
        self
    }

    pub fn ip_options(mut self, options: &[u8]) -> Self {
        self.ip_options = options.to_vec();
        self
    }

    /// Pads the frame with zeros to the 60-byte Ethernet minimum.
    pub fn padded(mut self) -> Self {
        let len = self.build().len() - self.trailer.len();
        self.trailer = vec![0; 60usize.saturating_sub(len)];
        self
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(
            self.tcp_options.len().is_multiple_of(4),
            "TCP options must fill 32-bit words"
        );
        let doff = (TCP_LEN + self.tcp_options.len()) / 4;
        let mut seg = Vec::with_capacity(TCP_LEN + self.tcp_options.len() + self.payload.len());
        seg.extend_from_slice(&self.src.port().to_be_bytes());
        seg.extend_from_slice(&self.dst.port().to_be_bytes());
        seg.extend_from_slice(&self.seq.to_be_bytes());
        seg.extend_from_slice(&self.ack.to_be_bytes());
        seg.extend_from_slice(&[(doff as u8) << 4, self.flags]);
        seg.extend_from_slice(&self.window.to_be_bytes());
        seg.extend_from_slice(&[0, 0]);
        seg.extend_from_slice(&self.urg.to_be_bytes());
        seg.extend_from_slice(&self.tcp_options);
        seg.extend_from_slice(&self.payload);
        let check = l4_checksum_v4(*self.src.ip(), *self.dst.ip(), IPPROTO_TCP, &seg, 16);
        seg[16..18].copy_from_slice(&check.to_be_bytes());

        let mut f = ethernet(self.eth_dst, self.eth_src, ETHERTYPE_IPV4);
        f.extend(ipv4(
            self.tos,
            self.id,
            self.frag,
            self.ttl,
            IPPROTO_TCP,
            *self.src.ip(),
            *self.dst.ip(),
            &self.ip_options,
            &seg,
        ));
        f.extend_from_slice(&self.trailer);
        f
    }

    /// Fields of a well-formed frame (lengths consistent; bytes past the IP packet become the
    /// trailer); `None` otherwise.
    /// Checksums are not read: `build` recomputes them, so comparing `parse(x).build()` with
    /// `x` verifies them.
    pub fn parse(f: &[u8]) -> Option<Tcp4> {
        let be16 = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
        let be32 = |at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
        let ip4 = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
        if f.len() < ETH_LEN + IPV4_LEN || be16(12) != ETHERTYPE_IPV4 || f[ETH_LEN] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
        let tot_len = usize::from(be16(ETH_LEN + 2));
        if ihl < IPV4_LEN || f[ETH_LEN + 9] != IPPROTO_TCP || ETH_LEN + tot_len > f.len() {
            return None;
        }
        let end = ETH_LEN + tot_len;
        let t = ETH_LEN + ihl;
        if end < t + TCP_LEN {
            return None;
        }
        let doff = usize::from(f[t + 12] >> 4) * 4;
        if doff < TCP_LEN || end < t + doff {
            return None;
        }
        Some(Tcp4 {
            eth_dst: f[0..6].try_into().ok()?,
            eth_src: f[6..12].try_into().ok()?,
            tos: f[ETH_LEN + 1],
            id: be16(ETH_LEN + 4),
            frag: be16(ETH_LEN + 6),
            ttl: f[ETH_LEN + 8],
            ip_options: f[ETH_LEN + IPV4_LEN..t].to_vec(),
            src: SocketAddrV4::new(ip4(ETH_LEN + 12), be16(t)),
            dst: SocketAddrV4::new(ip4(ETH_LEN + 16), be16(t + 2)),
            seq: be32(t + 4),
            ack: be32(t + 8),
            flags: f[t + 13],
            window: be16(t + 14),
            urg: be16(t + 18),
            tcp_options: f[t + TCP_LEN..t + doff].to_vec(),
            payload: f[t + doff..end].to_vec(),
            trailer: f[end..].to_vec(),
        })
    }
}

/// A UDP datagram over IPv4.
pub fn udp4(
    eth_src: Mac,
    eth_dst: Mac,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&src.port().to_be_bytes());
    seg.extend_from_slice(&dst.port().to_be_bytes());
    seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    seg.extend_from_slice(&[0, 0]);
    seg.extend_from_slice(payload);
    let check = l4_checksum_v4(*src.ip(), *dst.ip(), IPPROTO_UDP, &seg, 6);
    seg[6..8].copy_from_slice(&check.to_be_bytes());
    let mut f = ethernet(eth_dst, eth_src, ETHERTYPE_IPV4);
    f.extend(ipv4(
        0,
        1,
        IP_DF,
        64,
        IPPROTO_UDP,
        *src.ip(),
        *dst.ip(),
        &[],
        &seg,
    ));
    f
}

/// An ICMP echo request over IPv4.
pub fn icmp4_echo(eth_src: Mac, eth_dst: Mac, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut msg = vec![8, 0, 0, 0, 0x12, 0x34, 0x00, 0x01];
    msg.extend_from_slice(b"redis-ha ping payload");
    let check = finish(sum_words(&msg));
    msg[2..4].copy_from_slice(&check.to_be_bytes());
    let mut f = ethernet(eth_dst, eth_src, ETHERTYPE_IPV4);
    f.extend(ipv4(0, 2, 0, 64, IPPROTO_ICMP, src, dst, &[], &msg));
    f
}

/// A TCP SYN over IPv6 (no extension headers).
pub fn tcp6_syn(
    eth_src: Mac,
    eth_dst: Mac,
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    seg.extend_from_slice(&0u32.to_be_bytes());
    seg.extend_from_slice(&[5 << 4, tcp_flags::SYN]);
    seg.extend_from_slice(&64800u16.to_be_bytes());
    seg.extend_from_slice(&[0, 0, 0, 0]);
    let check = tcp_checksum_v6(src, dst, &seg);
    seg[16..18].copy_from_slice(&check.to_be_bytes());
    let mut f = ethernet(eth_dst, eth_src, ETHERTYPE_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    f.extend_from_slice(&[IPPROTO_TCP, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend(seg);
    f
}

/// An ARP request "who has `target`? tell `sender`", broadcast.
pub fn arp_request(sender_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet([0xff; 6], sender_mac, ETHERTYPE_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// Recomputes the IPv4 header checksum of a frame in place (for hand-corrupted headers that
/// must still look valid to anything but the field under test).
pub fn refresh_ipv4_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    let end = (ETH_LEN + ihl.max(IPV4_LEN)).min(f.len());
    let mut h = f[ETH_LEN..end].to_vec();
    h.resize(h.len().max(IPV4_LEN), 0);
    let check = ipv4_header_checksum(&h);
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&check.to_be_bytes());
}

/// Name of the header field at byte `at` of an Ethernet + IPv4 (no options) + TCP frame,
/// for readable mismatch reports.
fn field_at(at: usize) -> &'static str {
    const FIELDS: &[(usize, &str)] = &[
        (0, "eth.dst"),
        (6, "eth.src"),
        (12, "eth.type"),
        (14, "ip.ver_ihl"),
        (15, "ip.tos"),
        (16, "ip.tot_len"),
        (18, "ip.id"),
        (20, "ip.frag"),
        (22, "ip.ttl"),
        (23, "ip.proto"),
        (24, "ip.check"),
        (26, "ip.src"),
        (30, "ip.dst"),
        (34, "tcp.sport"),
        (36, "tcp.dport"),
        (38, "tcp.seq"),
        (42, "tcp.ack"),
        (46, "tcp.doff"),
        (47, "tcp.flags"),
        (48, "tcp.window"),
        (50, "tcp.check"),
        (52, "tcp.urg"),
        (54, "tcp options/payload"),
    ];
    FIELDS
        .iter()
        .rev()
        .find(|(start, _)| at >= *start)
        .map_or("?", |(_, name)| name)
}

/// Human-readable differences between two frames.
pub fn diff(expected: &[u8], got: &[u8]) -> String {
    let mut out = String::new();
    if expected.len() != got.len() {
        out += &format!(
            "length: expected {} bytes, got {}\n",
            expected.len(),
            got.len()
        );
    }
    let mut last = "";
    for (at, (e, g)) in expected.iter().zip(got).enumerate() {
        if e != g && field_at(at) != last {
            last = field_at(at);
            out += &format!("byte {at} ({last}): expected {e:#04x}, got {g:#04x}\n");
        }
    }
    out += &format!("expected: {}\n     got: {}", hex(expected), hex(got));
    out
}

pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}
