//! Checksum arithmetic: RFC 1624 incremental updates for a rewritten field, full sums for
//! the headers of a reset the program builds, and [`TcpFix`], the rewrite's change that the
//! TCP checksum still has to take in (which the hook applies, see `Frame::fix_tcp_checksum`).

use crate::packet::{IPPROTO_TCP, Ipv4Hdr, TcpHdr};

#[inline(always)]
fn word(b: [u8; 2]) -> u32 {
    u16::from_ne_bytes(b) as u32
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    // Two folds absorb every carry of the few dozen 16-bit words we ever add.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 incremental update of `check` for a 4-byte field changing from `old` to `new`.
#[inline(always)]
pub fn csum_replace4(check: &mut [u8; 2], old: [u8; 4], new: [u8; 4]) {
    let mut sum = !u16::from_ne_bytes(*check) as u32;
    sum += (!u16::from_ne_bytes([old[0], old[1]])) as u32;
    sum += (!u16::from_ne_bytes([old[2], old[3]])) as u32;
    sum += word([new[0], new[1]]) + word([new[2], new[3]]);
    *check = (!fold(sum)).to_ne_bytes();
}

/// RFC 1624 incremental update of `check` for a 2-byte field changing from `old` to `new`.
#[inline(always)]
pub fn csum_replace2(check: &mut [u8; 2], old: [u8; 2], new: [u8; 2]) {
    let mut sum = !u16::from_ne_bytes(*check) as u32;
    sum += (!u16::from_ne_bytes(old)) as u32;
    sum += word(new);
    *check = (!fold(sum)).to_ne_bytes();
}

/// Full IPv4 header checksum (header without options, `check` must be zero).
#[inline(always)]
pub fn ipv4_csum(ip: &Ipv4Hdr) -> [u8; 2] {
    let sum = word([ip.ver_ihl, ip.tos])
        + word(ip.tot_len)
        + word(ip.id)
        + word(ip.frag)
        + word([ip.ttl, ip.proto])
        + word([ip.src[0], ip.src[1]])
        + word([ip.src[2], ip.src[3]])
        + word([ip.dst[0], ip.dst[1]])
        + word([ip.dst[2], ip.dst[3]]);
    (!fold(sum)).to_ne_bytes()
}

/// Full TCP checksum of a bare 20-byte segment (`check` must be zero).
#[inline(always)]
pub fn tcp_bare_csum(ip: &Ipv4Hdr, tcp: &TcpHdr) -> [u8; 2] {
    let pseudo = word([ip.src[0], ip.src[1]])
        + word([ip.src[2], ip.src[3]])
        + word([ip.dst[0], ip.dst[1]])
        + word([ip.dst[2], ip.dst[3]])
        + word([0, IPPROTO_TCP])
        + word((TcpHdr::LEN as u16).to_be_bytes());
    let hdr = word(tcp.sport)
        + word(tcp.dport)
        + word([tcp.seq[0], tcp.seq[1]])
        + word([tcp.seq[2], tcp.seq[3]])
        + word([tcp.ack_seq[0], tcp.ack_seq[1]])
        + word([tcp.ack_seq[2], tcp.ack_seq[3]])
        + word([tcp.doff_res, tcp.flags])
        + word(tcp.window)
        + word(tcp.urg_ptr);
    (!fold(pseudo + hdr)).to_ne_bytes()
}

/// The change a rewrite made to the TCP header and pseudo-header, for the TCP checksum.
pub struct TcpFix {
    pub from_addr: [u8; 4],
    pub to_addr: [u8; 4],
    pub from_port: [u8; 2],
    pub to_port: [u8; 2],
}
