//! Forged TCP/IPv4 segments sent from inside a test's own namespace: what an attacker on the
//! client network or on the backends' segment can put on the wire without a connection of
//! its own (bare ACK, FIN or RST floods, closes and SYNs with someone else's addresses).
//!
//! Sent through a raw IPv4 socket (`IPPROTO_RAW`, which implies `IP_HDRINCL`): the test writes
//! the whole IP header, so the source address may be anyone's, and the namespace's own routes
//! and neighbours deliver the frame as they would a real one. Every send is bounded in count
//! and time.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::netns::in_netns;

/// TCP flag bits, as in the header's 13th byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The most segments one [`RawSender::send_all`] call sends, whatever its caller asks.
pub const MAX_SEGMENTS: usize = 100_000;
/// Sent back to back before a short pause: a veth whose peer runs an XDP program queues at
/// most a few hundred frames, and an unpaced burst would be dropped there rather than reach
/// the program under test.
const BURST: usize = 64;
const PAUSE: Duration = Duration::from_millis(1);

/// One TCP segment without payload, with the addresses, numbers and flags the test chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    /// [`flags`] bits.
    pub flags: u8,
}

impl Segment {
    const IP_LEN: usize = 20;
    const TCP_LEN: usize = 20;

    /// The IPv4 packet (header and TCP header, no options, no payload) with both checksums.
    pub fn to_bytes(&self) -> [u8; Self::IP_LEN + Self::TCP_LEN] {
        let mut p = [0u8; Self::IP_LEN + Self::TCP_LEN];
        let total = (Self::IP_LEN + Self::TCP_LEN) as u16;
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        // Don't fragment, as Linux sends TCP.
        p[6] = 0x40;
        p[8] = 64;
        p[9] = libc::IPPROTO_TCP as u8;
        p[12..16].copy_from_slice(&self.src.ip().octets());
        p[16..20].copy_from_slice(&self.dst.ip().octets());
        let ip_sum = checksum(&p[..Self::IP_LEN], 0);
        p[10..12].copy_from_slice(&ip_sum.to_be_bytes());

        let t = &mut p[Self::IP_LEN..];
        t[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        t[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = ((Self::TCP_LEN / 4) as u8) << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&64_240u16.to_be_bytes());
        // The pseudo-header: addresses, protocol, TCP length.
        let mut pseudo = 0u32;
        for half in [self.src.ip().octets(), self.dst.ip().octets()] {
            pseudo += u32::from(u16::from_be_bytes([half[0], half[1]]));
            pseudo += u32::from(u16::from_be_bytes([half[2], half[3]]));
        }
        pseudo += libc::IPPROTO_TCP as u32 + Self::TCP_LEN as u32;
        let tcp_sum = checksum(t, pseudo);
        t[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
        p
    }
}

/// The Internet checksum (RFC 1071) of `data`, starting from the partial sum `initial`.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    for pair in data.chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u64::from);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw IPv4 socket that lives in one network namespace (a socket keeps the namespace it was
/// created in), for sending [`Segment`]s with any source address.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
}

impl RawSender {
    /// Opens the socket inside the namespace at `ns_path` (e.g. [`crate::Netns::path`]).
    pub fn open(ns_path: &Path) -> Result<Self> {
        let fd = in_netns(ns_path, || {
            // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })?
        .context("opening a raw IPv4 socket (needs root)")?;
        Ok(Self { fd })
    }

    /// Sends one segment.
    pub fn send(&self, segment: &Segment) -> Result<()> {
        let packet = segment.to_bytes();
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(segment.dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and the address outlive the call, their lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending a forged segment {segment:?}"));
        }
        Ok(())
    }

    /// Sends the segments in order, paced in small bursts, stopping at [`MAX_SEGMENTS`]; an
    /// error if they are not all sent within `within`. Returns how many were sent.
    pub fn send_all(
        &self,
        segments: impl IntoIterator<Item = Segment>,
        within: Duration,
    ) -> Result<usize> {
        let deadline = Instant::now() + within;
        let mut sent = 0;
        for segment in segments.into_iter().take(MAX_SEGMENTS) {
            if Instant::now() > deadline {
                bail!("sent only {sent} forged segments in {within:?}");
            }
            match self.send(&segment) {
                Ok(()) => {}
                // The namespace's own queue is full: let it drain, and move on rather than
                // retry, as a flood would.
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .and_then(|e| e.raw_os_error())
                        == Some(libc::ENOBUFS) =>
                {
                    std::thread::sleep(PAUSE);
                    continue;
                }
                Err(e) => return Err(e),
            }
            sent += 1;
            if sent % BURST == 0 {
                std::thread::sleep(PAUSE);
            }
        }
        Ok(sent)
    }
}

/// `count` segments with `flags` from `src_ip` to `dst`, from source ports cycling through
/// `ports`, with sequence and acknowledgement numbers that vary from one segment to the next:
/// what a flood of bare ACKs, FINs or RSTs from one host looks like.
pub fn flood(
    src_ip: Ipv4Addr,
    ports: std::ops::Range<u16>,
    dst: SocketAddrV4,
    flags: u8,
    count: usize,
) -> impl Iterator<Item = Segment> {
    let span = usize::from(ports.end.saturating_sub(ports.start)).max(1);
    (0..count).map(move |i| {
        let n = i as u32;
        Segment {
            src: SocketAddrV4::new(src_ip, ports.start + (i % span) as u16),
            dst,
            seq: n.wrapping_mul(2_654_435_761),
            ack: n.wrapping_mul(40_503).wrapping_add(1),
            flags,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet whose checksum fields hold their checksums sums to 0xffff, whose complement
    /// is 0: how a receiver checks them.
    #[test]
    fn both_checksums_verify() {
        let s = Segment {
            src: "198.18.0.2:40000".parse().unwrap(),
            dst: "198.18.0.100:6380".parse().unwrap(),
            seq: 0xdead_beef,
            ack: 7,
            flags: flags::FIN | flags::ACK,
        };
        let p = s.to_bytes();
        assert_eq!(checksum(&p[..20], 0), 0);
        let mut pseudo = 0u32;
        for w in p[12..20].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        pseudo += 6 + 20;
        assert_eq!(checksum(&p[20..], pseudo), 0);
        assert_eq!(p[20 + 13], flags::FIN | flags::ACK);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 6380);
    }

    #[test]
    fn a_flood_cycles_its_ports_and_stops_at_its_count() {
        let dst = "198.18.0.100:6380".parse().unwrap();
        let all: Vec<Segment> =
            flood(Ipv4Addr::new(198, 18, 0, 2), 1000..1003, dst, flags::ACK, 7).collect();
        assert_eq!(all.len(), 7);
        let ports: Vec<u16> = all.iter().map(|s| s.src.port()).collect();
        assert_eq!(ports, [1000, 1001, 1002, 1000, 1001, 1002, 1000]);
    }
}
