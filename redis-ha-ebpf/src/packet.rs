//! Header layouts, the one bounds-checked accessor, and checksum arithmetic.

use crate::frame::Frame;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}
impl EthHdr {
    pub const LEN: usize = size_of::<Self>();
}
pub const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
pub const ETH_P_ARP: [u8; 2] = [0x08, 0x06];

/// An Ethernet/IPv4 ARP message (RFC 826).
#[repr(C)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}
pub const ARP_REQUEST: [u8; 2] = [0, 1];

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}
impl Ipv4Hdr {
    pub const LEN: usize = size_of::<Self>();
}
pub const IPPROTO_TCP: u8 = 6;
/// "More fragments" flag and fragment offset bits of `frag` (host order).
pub const IP_MF_OFFSET_MASK: u16 = 0x3fff;
pub const IP_DF: u16 = 0x4000;

#[repr(C)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    /// Data offset in the high nibble.
    pub doff_res: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}
impl TcpHdr {
    pub const LEN: usize = size_of::<Self>();
}
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offsets of the headers this program handles: IPv4 without options, then TCP.
pub const IP_OFF: usize = EthHdr::LEN;
pub const TCP_OFF: usize = EthHdr::LEN + Ipv4Hdr::LEN;
/// A bare TCP segment (no options, no payload): the size of the resets we send.
pub const RST_FRAME_LEN: usize = TCP_OFF + TcpHdr::LEN;

/// The only way this program reaches into a packet: `None` unless all of `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T, C: Frame>(ctx: &C, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

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
