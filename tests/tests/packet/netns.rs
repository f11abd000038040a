//! The network namespace every packet test runs in, so `bpf_fib_lookup` answers from routes
//! and neighbours the test chose instead of from whatever the host has.
//!
//! Layout (addresses only from 198.18.0.0/15):
//! ```text
//!   rha-cli (veth, 02:00:00:00:00:01) 198.18.0.1/24   client 198.18.0.2, VIP neighbour .100
//!   rha-srv (veth, 02:00:00:00:01:01) 198.18.1.1/24   backends .11 .12 .13 (.14 has no neighbour)
//!   rha-idle (veth, down)                             only for attaching the program idle
//!   198.19.255.0/24 unreachable;  net.ipv4.ip_forward = 1
//! ```
//!
//! Ingress device: BPF_PROG_TEST_RUN for XDP runs the program as if the frame arrived on the
//! namespace's loopback unless `ctx_in` names another `ingress_ifindex`. We pass `ctx_in`
//! with the device the frame would really arrive on (rha-cli for clients, rha-srv for
//! backends) so the FIB sees a realistic input interface. The loopback default works too:
//! `ip_forward=1` is set after `lo` exists and so enables forwarding on every device, lo
//! included (`default_ingress_loopback_also_forwards` checks that).

use std::{
    ffi::CString,
    fs::File,
    marker::PhantomData,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::frame::Mac;

/// Every namespace these tests create starts with this, then `-<pid>-<n>`.
const NS_PREFIX: &str = "rha-pkt";

pub const CLI_DEV: &str = "rha-cli";
pub const SRV_DEV: &str = "rha-srv";
/// Down, no addresses: somewhere to attach the program without it seeing a packet.
pub const IDLE_DEV: &str = "rha-idle";
pub const CLI_DEV_MAC: Mac = [0x02, 0, 0, 0, 0x00, 0x01];
pub const SRV_DEV_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x00, 0x02];
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// A neighbour entry for the VIP itself lets the measurement map frames onto themselves.
pub const VIP_MAC: Mac = [0x02, 0, 0, 0, 0x00, 0x64];

pub const BACKEND_11: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
pub const BACKEND_12: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 12);
pub const BACKEND_13: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 13);
/// Routed (connected on rha-srv) but without a neighbour entry: FIB answers NO_NEIGH.
pub const BACKEND_NO_NEIGH: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 14);
/// Inside an `unreachable` route: FIB answers UNREACHABLE.
pub const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
/// Outside every route (the namespace has no default route): FIB answers NOT_FWDED.
pub const NO_ROUTE: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 1);

/// The MAC the namespace's neighbour table holds for `ip` (what the FIB will return).
pub fn neighbour_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    match o {
        [198, 18, 1, 11..=13] => [0x02, 0, 0, 0, 0x01, o[3]],
        [198, 18, 0, 2] => CLIENT_MAC,
        [198, 18, 0, 100] => VIP_MAC,
        _ => panic!("{ip} has no neighbour entry in the testbed"),
    }
}

/// The MAC of the testbed device whose subnet holds `ip` (the FIB's source MAC toward it).
pub fn device_mac(ip: Ipv4Addr) -> Mac {
    match ip.octets() {
        [198, 18, 0, _] => CLI_DEV_MAC,
        [198, 18, 1, _] => SRV_DEV_MAC,
        _ => panic!("{ip} is not on a testbed device"),
    }
}

/// MAC a frame from `ip` carries as its source: the neighbour's own if it has one.
pub fn host_mac(ip: Ipv4Addr) -> Mac {
    match ip.octets() {
        [198, 18, 1, 11..=13] | [198, 18, 0, 2] | [198, 18, 0, 100] => neighbour_mac(ip),
        [a, b, c, d] => [0x02, 0x77, a, b, c, d],
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace the calling thread has entered; on drop (also while unwinding) the
/// thread returns to its previous namespace and the namespace is deleted.
///
/// `setns` moves only the calling thread, so the guard is `!Send`: every test run must happen
/// on the thread that created it.
pub struct Testbed {
    name: String,
    /// The thread's namespace before `enter`, to return to on drop.
    home: Option<File>,
    pub cli_ifindex: u32,
    pub srv_ifindex: u32,
    _same_thread: PhantomData<*const ()>,
}

impl Testbed {
    pub fn new() -> Testbed {
        require_root();
        raise_memlock();
        remove_orphans();
        let name = format!(
            "{NS_PREFIX}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Our pid is ours alone: a namespace with this name is left over from a process that
        // was killed before its guards ran, and is safe to remove.
        if Path::new("/var/run/netns").join(&name).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
        run("ip", &["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
        let mut tb = Testbed {
            name,
            home: None,
            cli_ifindex: 0,
            srv_ifindex: 0,
            _same_thread: PhantomData,
        };
        tb.configure();
        tb.enter();
        tb.cli_ifindex = ifindex(CLI_DEV);
        tb.srv_ifindex = ifindex(SRV_DEV);
        tb
    }

    /// Runs `ip ARGS` in the namespace (tests change routes, neighbours and MTUs with it).
    pub fn ip(&self, args: &str) {
        let mut full = vec!["-n", &self.name];
        full.extend(args.split_whitespace());
        run("ip", &full).unwrap_or_else(|e| panic!("setting up {}: {e}", self.name));
    }

    fn configure(&self) {
        let mac = |m: Mac| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        self.ip("link set lo up");
        for (dev, dev_mac, addr) in [
            (CLI_DEV, CLI_DEV_MAC, "198.18.0.1/24"),
            (SRV_DEV, SRV_DEV_MAC, "198.18.1.1/24"),
        ] {
            // A veth pair whose peer stays unused in the namespace: the machine has no dummy
            // driver, and with both ends up the device has carrier like a real port.
            self.ip(&format!(
                "link add {dev} address {} type veth peer name {dev}-p",
                mac(dev_mac)
            ));
            self.ip(&format!("link set dev {dev}-p up"));
            self.ip(&format!("link set dev {dev} up"));
            self.ip(&format!("addr add {addr} dev {dev}"));
        }
        self.ip(&format!(
            "link add {IDLE_DEV} type veth peer name {IDLE_DEV}-p"
        ));
        for ip in [CLIENT, VIP] {
            let m = mac(neighbour_mac(ip));
            self.ip(&format!(
                "neigh add {ip} lladdr {m} dev {CLI_DEV} nud permanent"
            ));
        }
        for ip in [BACKEND_11, BACKEND_12, BACKEND_13] {
            let m = mac(neighbour_mac(ip));
            self.ip(&format!(
                "neigh add {ip} lladdr {m} dev {SRV_DEV} nud permanent"
            ));
        }
        self.ip("route add unreachable 198.19.255.0/24");
        self.sysctl("net.ipv4.ip_forward", "1");
    }

    /// Sets a sysctl inside the namespace (`ip netns exec` gives the child the namespace's
    /// /proc/sys/net view).
    pub fn sysctl(&self, key: &str, value: &str) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    fn enter(&mut self) {
        let home = File::open("/proc/thread-self/ns/net").expect("open this thread's netns");
        let target = File::open(Path::new("/var/run/netns").join(&self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        // SAFETY: plain syscall on two valid fds; it changes only this thread's namespace.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns({}): {}", self.name, std::io::Error::last_os_error());
        }
        self.home = Some(home);
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            // SAFETY: as in `enter`.
            if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "returning from {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
        }
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Deletes namespaces of earlier runs that were killed before their guards could run: ours
/// by prefix, and their process is gone.
fn remove_orphans() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the packet tests load an XDP program and create network namespaces, which needs root \
         (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF); this process runs as uid {euid}: run \
         `cargo test -p redis-ha-tests --test packet` as root"
    );
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, and the flow table alone exceeds
/// the usual default there. Newer kernels charge the memory cgroup instead, so a refusal
/// (no CAP_SYS_RESOURCE in a container) only matters on old kernels, where loading then
/// fails with its own EPERM.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: rlim is a valid rlimit for the duration of the call.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

fn ifindex(dev: &str) -> u32 {
    let c = CString::new(dev).expect("device name without NUL");
    // SAFETY: c is a valid C string; the lookup runs in this thread's (new) namespace.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(
        idx != 0,
        "{dev} not found after entering the test namespace"
    );
    idx
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("running {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
