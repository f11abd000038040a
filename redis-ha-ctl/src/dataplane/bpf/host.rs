//! What the data plane asks of the host, or sets on it, outside the BPF maps: whether bpffs is
//! mounted, the memlock limit, the kernel release, an interface's driver, which veths have
//! their peer in another namespace (netlink), and the `accept_local` sysctls.
//!
//! Kept apart from the program's lifecycle so that the decisions made from these answers
//! (`hook::auto_hook`, the peer devices, the saved sysctls) stay plain code over plain values.

use std::{
    io,
    path::{Path, PathBuf},
};

use redis_ha_common::if_role;

use super::BpfError;
use crate::config::DataplaneConfig;

/// Whether bpffs is mounted where `pin_dir` would go.
pub(super) fn check_bpffs(pin_dir: &Path) -> Result<(), BpfError> {
    // statfs magic of bpffs; a pin dir elsewhere would silently fail to pin.
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let base = pin_dir.parent().unwrap_or(pin_dir);
    let c =
        std::ffi::CString::new(base.as_os_str().as_encoded_bytes()).map_err(|_| BpfError::Io {
            what: "invalid path",
            path: base.to_owned(),
            source: io::ErrorKind::InvalidInput.into(),
        })?;
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(BpfError::NoBpffs);
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; the ring and flow table exceed
/// the usual 8 MiB default there.
pub(super) fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct; failure only matters on old kernels, where
    // the load error that follows says what went wrong.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// TCX links came with Linux 6.6.
pub(super) fn kernel_has_tcx() -> bool {
    // SAFETY: uname fills the struct it is given; all-zero is a valid utsname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    release_at_least(&release.to_string_lossy(), (6, 6))
}

/// Whether a kernel release string ("6.18.44-fc-v657") is at least `want` (major, minor).
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// The driver behind `iface` in the current network namespace (`ethtool -i`), if it says.
pub(super) fn driver_of(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    /// `struct ethtool_drvinfo`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 4 * 5],
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: a plain datagram socket, closed below; the ioctl reads the interface name and
    // writes at most a `struct ethtool_drvinfo` through `data`, both live for the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Those of `interfaces` (name, ifindex) that are veths whose peer is in another network
/// namespace, which `bpf_redirect_peer` can deliver to. Netlink says so directly: it reports
/// a link's peer namespace (`IFLA_LINK_NETNSID`) only when it differs from the link's own.
/// An interface netlink cannot describe is left out (its packets take the ordinary way), with
/// a warning.
pub(super) fn veth_peers(interfaces: &[String]) -> Vec<(String, u32)> {
    use futures_util::TryStreamExt as _;
    use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

    let ask = async {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let mut found = Vec::new();
        for iface in interfaces {
            let mut links = handle.link().get().match_name(iface.clone()).execute();
            let Some(link) = links.try_next().await? else {
                continue;
            };
            let attrs = &link.attributes;
            let veth = attrs.iter().any(|a| {
                matches!(a, LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
            });
            let elsewhere = attrs
                .iter()
                .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
            if veth && elsewhere {
                found.push((iface.clone(), link.header.index));
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(found)
    };
    // On a thread of its own, which starts in the caller's network namespace: the daemon calls
    // this from inside its runtime, where blocking on another would panic.
    let answer = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(Into::into)
                .and_then(|rt| rt.block_on(ask))
        })
        .join()
    });
    match answer {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::warn!("veth_peer_redirect: asking netlink about the interfaces: {e}");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("veth_peer_redirect: the netlink query panicked");
            Vec::new()
        }
    }
}

fn accept_local_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"))
}

/// `net.ipv4.conf.<iface>.accept_local` now.
pub(super) fn read_accept_local(iface: &str) -> Result<u32, BpfError> {
    let path = accept_local_path(iface);
    let text = std::fs::read_to_string(&path).map_err(|source| BpfError::Io {
        what: "reading",
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| BpfError::Io {
        what: "reading",
        path,
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{text:?} is no number")),
    })
}

/// Writes `net.ipv4.conf.<iface>.accept_local`; `false` when the interface no longer exists
/// (nothing to give back to). Data-plane interfaces get 1:
///
/// The program hands a rewritten reply (its source now the VIP, a local address) to the
/// kernel when the fast path cannot send it: no neighbour entry for the client (a node that
/// just took the VIP, or an entry the kernel aged out while the fast path carried the
/// connection without refreshing it), or an egress MTU to enforce. By default the kernel drops
/// a packet arriving with a local source as a martian, and the connection stalls.
pub(super) fn write_accept_local(iface: &str, value: u32) -> Result<bool, BpfError> {
    let path = accept_local_path(iface);
    if !path.exists() {
        return Ok(false);
    }
    std::fs::write(&path, value.to_string()).map_err(|source| BpfError::Io {
        what: "letting the kernel forward replies from the VIP: writing",
        path,
        source,
    })?;
    Ok(true)
}

/// (ifindex, MAC) of each of `interfaces` in the current network namespace, asked of the
/// kernel (`SIOCGIFHWADDR`; sysfs would show the namespace that mounted it). An interface
/// without an Ethernet address is left out: the program then takes every frame on it.
/// `IF_ROLES` for `cfg`: with `backend_interfaces` set, every data-plane interface with what
/// it faces; without, nothing (the program then takes replies on every interface).
pub(super) fn interface_roles(cfg: &DataplaneConfig) -> Vec<(u32, u32)> {
    if cfg.backend_interfaces.is_empty() {
        return Vec::new();
    }
    cfg.interfaces
        .iter()
        .filter_map(|iface| {
            let name = std::ffi::CString::new(iface.as_str()).ok()?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            let role = if cfg.backend_interfaces.contains(iface) {
                if_role::BACKENDS
            } else {
                if_role::CLIENTS
            };
            (ifindex != 0).then_some((ifindex, role))
        })
        .collect()
}

pub(super) fn interface_macs(interfaces: &[String]) -> Vec<(u32, [u8; 6])> {
    interfaces.iter().filter_map(|i| interface_mac(i)).collect()
}

fn interface_mac(iface: &str) -> Option<(u32, [u8; 6])> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 || iface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid ifreq; the name fits (checked above) and stays
    // NUL-terminated; the ioctl writes the hardware address into the union; the socket is
    // closed below.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
            *d = *s as libc::c_char;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        libc::close(fd);
        let addr = req.ifr_ifru.ifru_hwaddr;
        if rc != 0 || addr.sa_family != libc::ARPHRD_ETHER {
            return None;
        }
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(addr.sa_data.iter()) {
            *d = *s as u8;
        }
        Some((ifindex, mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_at_least("6.18.44-fc-v657", (6, 6)));
        assert!(release_at_least("6.6.0", (6, 6)));
        assert!(!release_at_least("6.5.13-generic", (6, 6)));
        assert!(release_at_least("7.0-rc1", (6, 6)));
        assert!(!release_at_least("5.15.0-91-generic", (6, 6)));
        assert!(!release_at_least("garbage", (6, 6)));
    }

    #[test]
    fn the_driver_of_a_missing_or_misnamed_interface_is_unknown() {
        assert_eq!(driver_of("no-such-if0"), None);
        assert_eq!(driver_of("an-interface-name-too-long"), None);
    }
}
