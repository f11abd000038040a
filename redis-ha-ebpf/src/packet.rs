//! Header layouts (Ethernet, ARP, IPv4, TCP), the flag and protocol constants the program
//! reads, and the offsets of the headers it handles. Layouts and constants only: every other
//! module builds on these, and this one depends on none of them.

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
