//! What the nodes show of addresses: their interfaces' addresses, neighbour tables, and ARP captures
//! (who answered for the floating addresses, and when).
use super::*;

/// The MAC address of `interface` in `ns` (`ip -br link`: `NAME@ifN STATE MAC FLAGS`).
pub fn mac_of(ns: &Netns, interface: &str) -> Result<String> {
    let out = ns.ip(&["-br", "link", "show", "dev", interface])?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .with_context(|| format!("no MAC in `ip -br link show dev {interface}`: {out:?}"))
}

/// The MAC `ns`'s neighbour table has for `ip`, `None` without a usable entry (none yet,
/// INCOMPLETE or FAILED).
pub fn neighbour(ns: &Netns, ip: Ipv4Addr) -> Result<Option<String>> {
    let out = ns.ip(&["neigh", "show", &ip.to_string()])?;
    Ok(parse_neighbour(&out))
}

fn parse_neighbour(out: &str) -> Option<String> {
    out.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "lladdr")?;
        if words.last().is_some_and(|state| *state == "FAILED") {
            return None;
        }
        words.get(at + 1).map(|mac| (*mac).to_owned())
    })
}

/// `(interface, address/len)` of every line of `ip -4 -o addr show`
/// (`5: rha-x-1c    inet 198.18.0.11/24 brd ... scope global rha-x-1c ...`).
pub(super) fn address_lines(out: &str) -> impl Iterator<Item = (&str, &str)> {
    out.lines().filter_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "inet")?;
        Some((*words.get(1)?, *words.get(at + 1)?))
    })
}

pub(super) fn cidr_addr(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

pub(crate) fn parse_inet(out: &str) -> Vec<Ipv4Addr> {
    address_lines(out)
        .filter_map(|(_, cidr)| cidr_addr(cidr))
        .collect()
}

/// Someone on the segment saying "`ip` is at `mac`".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpClaim {
    /// When the capture saw it (tcpdump's timestamp).
    pub time: SystemTime,
    pub ip: Ipv4Addr,
    /// The sender's Ethernet source address, lower case.
    pub mac: String,
    pub kind: ArpKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpKind {
    /// `Reply ip is-at mac`: an answer to a request.
    Reply,
    /// A request whose sender and target address are the same: an announcement (gratuitous ARP,
    /// `arping -U`), which updates every neighbour holding an entry.
    Gratuitous,
    /// An ordinary request `who-has X tell ip`: it claims `ip` too, since whoever receives it
    /// may update its entry for the sender.
    Request,
}

/// A running tcpdump of ARP frames on one interface of a namespace; killed when dropped.
#[derive(Debug)]
pub struct ArpCapture {
    child: ChildGuard,
    output: PathBuf,
}

impl ArpCapture {
    /// Starts `tcpdump -e -n -l -tt arp` on `interface` in `ns`, its output in
    /// `<file_stem>.txt` (and its messages in `<file_stem>.err`), and waits until it listens.
    pub fn start(ns: &Netns, interface: &str, file_stem: &Path) -> Result<ArpCapture> {
        if crate::find_program("tcpdump").is_none() {
            bail!(
                "`tcpdump` is not installed: run `cargo xtask build` (it installs the prerequisites)"
            );
        }
        let output = file_stem.with_extension("txt");
        let messages = file_stem.with_extension("err");
        let open = |path: &Path| {
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
        };
        let mut cmd = ns.command("tcpdump");
        cmd.args([
            "-i",
            interface,
            "-e",
            "-n",
            "-l",
            "-tt",
            "--immediate-mode",
            "arp",
        ])
        .stdin(Stdio::null())
        .stdout(open(&output)?)
        .stderr(open(&messages)?);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        wait_until(
            &format!("tcpdump to listen on {interface}"),
            CAPTURE_START_TIMEOUT,
            Duration::from_millis(20),
            || {
                let said = std::fs::read_to_string(&messages).unwrap_or_default();
                if let Some(status) = child.try_wait()? {
                    bail!("tcpdump exited ({status}): {said}");
                }
                Ok(said.contains("listening on").then_some(()))
            },
        )?;
        Ok(ArpCapture { child, output })
    }

    /// The claims captured so far (tcpdump writes line by line).
    pub fn claims(&self) -> Result<Vec<ArpClaim>> {
        let text = std::fs::read_to_string(&self.output)
            .with_context(|| format!("reading {}", self.output.display()))?;
        Ok(parse_arp_claims(&text))
    }

    /// Everything tcpdump printed so far, for messages.
    pub fn raw(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Stops tcpdump (SIGINT, so it flushes; SIGKILL after 2 s) and returns every claim.
    pub fn stop(mut self) -> Result<Vec<ArpClaim>> {
        if self.child.signal(libc::SIGINT).is_ok() {
            let _ = wait_until(
                "tcpdump to exit",
                Duration::from_secs(2),
                Duration::from_millis(20),
                || Ok(self.child.try_wait()?.map(drop)),
            );
        }
        self.child.kill()?;
        self.claims()
    }
}

/// Parses `tcpdump -e -n -tt arp` lines, e.g.
/// `1764111111.123456 aa:bb:cc:dd:ee:ff > 11:22:33:44:55:66, ethertype ARP (0x0806), length 42: Reply 198.18.0.100 is-at aa:bb:cc:dd:ee:ff, length 28`
/// or `... Request who-has 198.18.0.100 (ff:ff:ff:ff:ff:ff) tell 198.18.0.100, length 28`.
pub fn parse_arp_claims(text: &str) -> Vec<ArpClaim> {
    text.lines().filter_map(parse_arp_line).collect()
}

fn parse_arp_line(line: &str) -> Option<ArpClaim> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let time = parse_unix_time(words.first()?)?;
    let mac = words.get(1)?.to_ascii_lowercase();
    let after = |key: &str| -> Option<&str> {
        let at = words.iter().position(|w| *w == key)?;
        words.get(at + 1).copied()
    };
    let (ip, kind) = if words.contains(&"Reply") {
        (after("Reply")?, ArpKind::Reply)
    } else if words.contains(&"Request") {
        let sender = after("tell")?;
        let kind = if after("who-has") == Some(sender) {
            ArpKind::Gratuitous
        } else {
            ArpKind::Request
        };
        (sender, kind)
    } else {
        return None;
    };
    let ip: Ipv4Addr = ip.parse().ok()?;
    // A probe (sender 0.0.0.0) claims nothing.
    (!ip.is_unspecified()).then_some(ArpClaim {
        time,
        ip,
        mac,
        kind,
    })
}

fn parse_unix_time(word: &str) -> Option<SystemTime> {
    let (secs, frac) = word.split_once('.').unwrap_or((word, "0"));
    let secs: u64 = secs.parse().ok()?;
    let micros: u32 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000))
}

/// The claims for `ip` whose MAC differs from the claim before (the first claim counts): who
/// owned `ip`, in order. One LB failover without ping-pong shows as two entries; two MACs
/// taking turns at the same time show as many.
pub fn owner_changes(claims: &[ArpClaim], ip: Ipv4Addr) -> Vec<ArpClaim> {
    let mut changes: Vec<ArpClaim> = Vec::new();
    for claim in claims.iter().filter(|c| c.ip == ip) {
        if changes.last().is_none_or(|last| last.mac != claim.mac) {
            changes.push(claim.clone());
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arp_lines() {
        let text = "\
1764111111.500000 02:aa:aa:aa:aa:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.18.0.100 tell 198.18.0.2, length 28
1764111111.500100 02:AA:AA:AA:AA:02 > 02:aa:aa:aa:aa:01, ethertype ARP (0x0806), length 42: Reply 198.18.0.100 is-at 02:aa:aa:aa:aa:02, length 28
1764111112.25 02:aa:aa:aa:aa:03 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.18.0.100 (ff:ff:ff:ff:ff:ff) tell 198.18.0.100, length 28
1764111113.000000 02:aa:aa:aa:aa:03 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.18.0.5 tell 0.0.0.0, length 28
tcpdump noise
";
        let claims = parse_arp_claims(text);
        assert_eq!(claims.len(), 3, "{claims:?}");
        assert_eq!(
            (claims[0].ip, claims[0].kind),
            (CLIENT_IP, ArpKind::Request)
        );
        assert_eq!(
            (claims[1].ip, claims[1].mac.as_str(), claims[1].kind),
            (VIP, "02:aa:aa:aa:aa:02", ArpKind::Reply)
        );
        assert_eq!(
            claims[1].time,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_111_111_500_100)
        );
        assert_eq!((claims[2].ip, claims[2].kind), (VIP, ArpKind::Gratuitous));
        assert_eq!(
            claims[2].time,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_111_112_250)
        );
        let owners: Vec<String> = owner_changes(&claims, VIP)
            .into_iter()
            .map(|c| c.mac)
            .collect();
        assert_eq!(owners, ["02:aa:aa:aa:aa:02", "02:aa:aa:aa:aa:03"]);
    }

    #[test]
    fn parses_addresses_and_neighbours() {
        let addrs = "\
5: rha-x-1c    inet 198.18.0.11/24 brd 198.18.0.255 scope global rha-x-1c\\       valid_lft forever preferred_lft forever
5: rha-x-1c    inet 198.18.0.100/24 scope global secondary rha-x-1c\\       valid_lft forever preferred_lft forever
";
        assert_eq!(parse_inet(addrs), [Ipv4Addr::new(198, 18, 0, 11), VIP]);
        assert_eq!(
            address_lines(addrs).nth(1),
            Some(("rha-x-1c", "198.18.0.100/24"))
        );
        assert_eq!(
            parse_neighbour("198.18.0.100 dev rha-x-c lladdr 02:aa:aa:aa:aa:02 REACHABLE\n"),
            Some("02:aa:aa:aa:aa:02".to_owned())
        );
        assert_eq!(parse_neighbour("198.18.0.100 dev rha-x-c FAILED\n"), None);
        assert_eq!(
            parse_neighbour("198.18.0.100 dev rha-x-c lladdr 02:aa:aa:aa:aa:02 FAILED\n"),
            None
        );
        assert_eq!(parse_neighbour(""), None);
    }
}
