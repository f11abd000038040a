//! Taking and letting go of the floating addresses: route netlink (what `ip addr add/del`
//! sends) and gratuitous ARP, so clients and backends move their neighbour entry to this node
//! at once rather than after their ARP cache expires.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{AddressMessageBuilder, Handle};

use crate::config::HaAddress;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening a route netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error("{what} {address}: {source}")]
    Netlink {
        what: &'static str,
        address: String,
        source: rtnetlink::Error,
    },
    #[error("gratuitous ARP for {address}: {source}")]
    Arp {
        address: String,
        source: std::io::Error,
    },
}

/// The floating addresses of this node and the netlink handle that moves them.
pub struct Addresses {
    handle: Handle,
    addresses: Vec<HaAddress>,
}

/// EADDRNOTAVAIL: deleting an address the interface does not have.
const NOT_THERE: i32 = -libc::EADDRNOTAVAIL;

impl Addresses {
    /// Needs a tokio runtime (the netlink connection runs as a task).
    pub fn new(addresses: Vec<HaAddress>) -> Result<Self, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle, addresses })
    }

    pub fn addresses(&self) -> &[HaAddress] {
        &self.addresses
    }

    async fn link(&self, name: &str) -> Result<(u32, [u8; 6]), NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let link = links
            .try_next()
            .await
            .ok()
            .flatten()
            .ok_or_else(|| NetError::NoInterface(name.to_owned()))?;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            })
            .unwrap_or_default();
        Ok((link.header.index, mac))
    }

    /// Makes `change` to every address, going on past a failing one; reports the first failure.
    async fn each(&self, change: Change) -> Result<(), NetError> {
        let mut first_error = None;
        for a in &self.addresses {
            if let Err(e) = self.change(a, change).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn change(&self, a: &HaAddress, change: Change) -> Result<(), NetError> {
        let netlink = |what| {
            move |source| NetError::Netlink {
                what,
                address: a.to_string(),
                source,
            }
        };
        let (index, mac) = self.link(&a.interface).await?;
        match change {
            Change::Add => {
                self.handle
                    .address()
                    .add(index, IpAddr::V4(a.address), a.prefix_len)
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink("adding"))?;
            }
            Change::Announce => {}
            Change::Remove => {
                let message = AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(index)
                    .address(a.address, a.prefix_len)
                    .build();
                return match self.handle.address().del(message).execute().await {
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == NOT_THERE => Ok(()),
                    other => other.map_err(netlink("removing")),
                };
            }
        }
        gratuitous_arp(index, mac, a.address).map_err(|source| NetError::Arp {
            address: a.to_string(),
            source,
        })
    }

    /// Adds every address (an address already there is kept) and announces each with a
    /// gratuitous ARP.
    pub async fn acquire(&self) -> Result<(), NetError> {
        self.each(Change::Add).await
    }

    /// Announces the addresses again (clients whose first announcement was lost, switches
    /// that had not learnt the port yet).
    pub async fn announce(&self) -> Result<(), NetError> {
        self.each(Change::Announce).await
    }

    /// Removes every address this node may hold; one it does not have is no error.
    pub async fn release(&self) -> Result<(), NetError> {
        self.each(Change::Remove).await
    }
}

/// What [`Addresses::each`] does to one address; adding and announcing end with a gratuitous
/// ARP.
#[derive(Clone, Copy)]
enum Change {
    Add,
    Announce,
    Remove,
}

/// Announcing the addresses again after a takeover, in case the first gratuitous ARP was lost
/// or a switch had not learnt the new port yet.
const REANNOUNCE_AFTER: [Duration; 2] = [Duration::from_millis(100), Duration::from_secs(1)];

enum Op {
    Acquire { epoch: u64 },
    Release { epoch: u64, reason: String },
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Performs address changes in order on a task of its own, so the ownership machine's timing
/// (claims, acknowledgements, the lease) never waits on netlink, which can take hundreds of
/// milliseconds on a busy host.
pub struct AddressWorker {
    tx: tokio::sync::mpsc::UnboundedSender<Op>,
    addresses: Vec<HaAddress>,
}

impl AddressWorker {
    pub fn spawn(addresses: Addresses) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let list = addresses.addresses().to_vec();
        tokio::spawn(run_worker(addresses, rx));
        Self {
            tx,
            addresses: list,
        }
    }

    pub fn addresses(&self) -> &[HaAddress] {
        &self.addresses
    }

    /// Adds and announces the addresses (then again after 100 ms and 1 s).
    pub fn acquire(&self, epoch: u64) {
        let _ = self.tx.send(Op::Acquire { epoch });
    }

    /// Removes them; re-announcements still pending are dropped.
    pub fn release(&self, epoch: u64, reason: String) {
        let _ = self.tx.send(Op::Release { epoch, reason });
    }

    /// Waits (at most `limit`) until every change asked for so far is done: before exiting.
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Op::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }
}

async fn run_worker(addresses: Addresses, mut rx: tokio::sync::mpsc::UnboundedReceiver<Op>) {
    let mut announce_at: Vec<Instant> = Vec::new();
    loop {
        let next = announce_at.first().copied();
        let op = tokio::select! {
            op = rx.recv() => match op {
                Some(op) => op,
                None => return,
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                announce_at.remove(0);
                if let Err(e) = addresses.announce().await {
                    tracing::warn!("announcing the floating addresses again: {e}");
                }
                continue;
            }
        };
        match op {
            Op::Acquire { epoch } => {
                let started = Instant::now();
                match addresses.acquire().await {
                    Ok(()) => tracing::info!(
                        epoch,
                        ms = started.elapsed().as_secs_f64() * 1000.0,
                        "took the floating addresses"
                    ),
                    Err(e) => tracing::error!(epoch, "taking the floating addresses: {e}"),
                }
                announce_at = REANNOUNCE_AFTER.iter().map(|d| started + *d).collect();
            }
            Op::Release { epoch, reason } => {
                announce_at.clear();
                match addresses.release().await {
                    Ok(()) => tracing::warn!(epoch, %reason, "let go of the floating addresses"),
                    Err(e) => tracing::error!(epoch, "removing the floating addresses: {e}"),
                }
            }
            Op::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`, which the data plane compares the
/// floating addresses' lease with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a properly sized out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The ARP request form of a gratuitous ARP (sender = target = the address, from this
/// interface's MAC, to broadcast), the form Linux neighbours accept to update an entry and
/// that `arping -U` and keepalived send.
pub fn garp_frame(mac: [u8; 6], address: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&address.octets());
    // Target hardware address stays zero, as in a request.
    f[38..42].copy_from_slice(&address.octets());
    f
}

fn gratuitous_arp(ifindex: u32, mac: [u8; 6], address: Ipv4Addr) -> std::io::Result<()> {
    let frame = garp_frame(mac, address);
    let protocol = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket syscalls on a descriptor owned by this function; the address
    // struct is fully initialised and its size passed along.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol));
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = protocol;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            return Err(error);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_announces_the_address_from_our_mac_to_everyone() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = garp_frame(mac, Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request form");
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &[198, 18, 0, 100], "sender IP");
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[198, 18, 0, 100], "target IP = sender IP");
    }
}
