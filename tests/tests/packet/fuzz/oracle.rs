//! What must hold for every frame, whatever it is: the judgement of one run from the input,
//! the output, the action and the counters that moved. Deliberately coarse: it knows which
//! frames the program may act on (their addresses), not what it should do with them, so it
//! holds before and after any change to the program's policy.

use std::net::{Ipv4Addr, SocketAddrV4};

use redis_ha_common::counter;

use crate::{
    dataplane::{Run, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, action_name},
    frame::{
        ETH_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_TCP, IPV4_LEN, TCP_LEN,
        ipv4_header_verifies, l4_verifies_v4, tcp_flags,
    },
};

/// Drops that are decisions, each with its own counter. `DROP_INTERNAL` is not one: it is the
/// error path (a map or helper call failed), which no frame may reach.
const DECIDED_DROPS: [u32; 4] = [
    counter::DROP_NO_ROUTE,
    counter::DROP_RST_NO_BACKEND,
    counter::DROP_ARP_NOT_HOLDER,
    counter::DROP_OUT_OF_WINDOW,
];

/// Passes whose counters say "untouched".
const UNTOUCHED: [u32; 8] = [
    counter::PASS_NOT_IPV4,
    counter::PASS_NOT_BACKEND_SIDE,
    counter::PASS_NOT_TCP,
    counter::PASS_NOT_SERVICE,
    counter::PASS_MALFORMED,
    counter::PASS_FRAGMENT,
    counter::PASS_IP_OPTIONS,
    counter::PASS_NOT_FOR_HOST,
];

const RESETS: [u32; 5] = [
    counter::RESET_STALE_FLOW,
    counter::RESET_NO_BACKEND,
    counter::RESET_PORT_IN_USE,
    counter::RESET_NAT_EXHAUSTED,
    counter::RESET_NO_FLOW,
];

/// Rewritten and sent on (redirect), or rewritten and handed to the kernel (pass).
const REWRITES: [u32; 6] = [
    counter::FWD_TO_BACKEND,
    counter::FWD_TO_BACKEND_NO_FLOW,
    counter::FWD_TO_CLIENT,
    counter::FWD_TO_CLIENT_NO_FLOW,
    counter::PASS_REWRITTEN,
    counter::FWD_LOCAL,
];

/// The addresses that make a frame the program's business: VIP ports (as destination),
/// backends (as source), floating addresses (as an ARP request's target). Any other frame is
/// "non-VIP" and must leave as it came.
pub struct Scope {
    pub services: Vec<SocketAddrV4>,
    pub backends: Vec<SocketAddrV4>,
    pub floating: Vec<Ipv4Addr>,
}

impl Scope {
    /// Read at the fixed offsets where the program reads them (IPv4 without options, then
    /// TCP), whatever the rest of the frame says: a frame that names none of these addresses
    /// there is left alone on every path.
    pub fn non_vip(&self, f: &[u8]) -> bool {
        let be16 = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
        let ip4 = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
        if f.len() < ETH_LEN {
            return true;
        }
        match be16(12) {
            ETHERTYPE_ARP => f.len() < ETH_LEN + 28 || !self.floating.contains(&ip4(ETH_LEN + 24)),
            ETHERTYPE_IPV4 if f.len() >= ETH_LEN + IPV4_LEN + 4 => {
                let t = ETH_LEN + IPV4_LEN;
                let src = SocketAddrV4::new(ip4(ETH_LEN + 12), be16(t));
                let dst = SocketAddrV4::new(ip4(ETH_LEN + 16), be16(t + 2));
                !self.services.contains(&dst) && !self.backends.contains(&src)
            }
            _ => true,
        }
    }
}

/// Whether the frame's IPv4 header checksum verifies; `None` if it has no whole header.
fn ip_verifies(f: &[u8]) -> Option<bool> {
    if f.len() < ETH_LEN + IPV4_LEN || f[12..14] != ETHERTYPE_IPV4.to_be_bytes() {
        return None;
    }
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    if ihl < IPV4_LEN || ETH_LEN + ihl > f.len() {
        return None;
    }
    Some(ipv4_header_verifies(&f[ETH_LEN..ETH_LEN + ihl]))
}

/// Whether the TCP checksum verifies over the segment the IPv4 header delimits; `None` if
/// the frame holds no such segment.
fn tcp_verifies(f: &[u8]) -> Option<bool> {
    ip_verifies(f)?;
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([f[ETH_LEN + 2], f[ETH_LEN + 3]]));
    let (start, end) = (ETH_LEN + ihl, ETH_LEN + tot);
    if f[ETH_LEN + 9] != IPPROTO_TCP || end > f.len() || end < start + TCP_LEN {
        return None;
    }
    let addr = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    Some(l4_verifies_v4(
        addr(ETH_LEN + 12),
        addr(ETH_LEN + 16),
        IPPROTO_TCP,
        &f[start..end],
    ))
}

/// What the checks found about one frame, for the run's figures.
#[derive(Default)]
pub struct Checked {
    /// A non-VIP frame, passed byte for byte.
    pub non_vip: bool,
    /// A rewritten frame whose checksums were valid on the way in and are on the way out.
    pub sums_kept: bool,
    /// A rewritten frame that came in with a bad checksum (left bad: the receiver drops it,
    /// as it would have without the load balancer).
    pub sums_bad_in: bool,
    /// A generated reset, well-formed.
    pub reset: bool,
}

/// A rewrite keeps valid checksums valid: the program updates them incrementally, so a frame
/// that arrived with a bad one leaves with one as bad, and is only counted.
fn sums_kept(input: &[u8], out: &[u8], checked: &mut Checked) -> Result<(), String> {
    let (ip_in, tcp_in) = (ip_verifies(input), tcp_verifies(input));
    if ip_in != Some(true) || tcp_in != Some(true) {
        checked.sums_bad_in = true;
    }
    if ip_in == Some(true) && ip_verifies(out) != Some(true) {
        return Err("a valid IPv4 header checksum came out invalid".into());
    }
    if tcp_in == Some(true) && tcp_verifies(out) != Some(true) {
        return Err("a valid TCP checksum came out invalid".into());
    }
    checked.sums_kept = !checked.sums_bad_in;
    Ok(())
}

/// The counters that moved, as (index, by how much).
pub type Moved = Vec<(usize, u64)>;

fn describe(moved: &Moved) -> String {
    let names: Vec<String> = moved
        .iter()
        .map(|&(i, n)| format!("{} +{n}", counter::NAMES[i]))
        .collect();
    format!("[{}]", names.join(", "))
}

/// One frame through an ingress program (XDP or TC, the action read as XDP's).
pub fn judge_ingress(
    scope: &Scope,
    input: &[u8],
    run: &Run,
    moved: &Moved,
) -> Result<Checked, String> {
    let mut checked = Checked::default();
    if ![XDP_PASS, XDP_DROP, XDP_TX, XDP_REDIRECT].contains(&run.action) {
        return Err(format!("aborted: {}", action_name(run.action)));
    }
    let &[(c, 1)] = moved.as_slice() else {
        return Err(format!(
            "one counter must move by one per frame, moved: {}",
            describe(moved)
        ));
    };
    let c = c as u32;
    if c == counter::DROP_INTERNAL {
        return Err("error path: drop_internal (a map or helper call failed)".into());
    }
    let unchanged = run.out == input;
    if scope.non_vip(input) && !(run.action == XDP_PASS && unchanged) {
        return Err(format!(
            "a non-VIP frame must pass unchanged: {}, {}",
            action_name(run.action),
            if unchanged { "unchanged" } else { "changed" }
        ));
    }
    checked.non_vip = scope.non_vip(input);
    if (run.action == XDP_DROP) != DECIDED_DROPS.contains(&c) {
        return Err(format!(
            "{} counted as {}",
            action_name(run.action),
            counter::NAMES[c as usize]
        ));
    }
    if UNTOUCHED.contains(&c) && !(run.action == XDP_PASS && unchanged) {
        return Err(format!(
            "{}: must pass unchanged, got {} ({})",
            counter::NAMES[c as usize],
            action_name(run.action),
            if unchanged { "unchanged" } else { "changed" }
        ));
    }
    if matches!(run.action, XDP_TX | XDP_REDIRECT) {
        if RESETS.contains(&c) {
            let ok = run.out.len() == ETH_LEN + IPV4_LEN + TCP_LEN
                && ip_verifies(&run.out) == Some(true)
                && tcp_verifies(&run.out) == Some(true)
                && run.out[ETH_LEN + IPV4_LEN + 13] == tcp_flags::RST | tcp_flags::ACK;
            if !ok {
                return Err("a reset that is not a bare RST+ACK with valid checksums".into());
            }
            checked.reset = true;
        } else if [
            counter::FWD_TO_BACKEND,
            counter::FWD_TO_BACKEND_NO_FLOW,
            counter::FWD_TO_CLIENT,
            counter::FWD_TO_CLIENT_NO_FLOW,
        ]
        .contains(&c)
        {
            sums_kept(input, &run.out, &mut checked)?;
        } else {
            return Err(format!(
                "{} counted as {}",
                action_name(run.action),
                counter::NAMES[c as usize]
            ));
        }
    } else if REWRITES.contains(&c) && !unchanged {
        sums_kept(input, &run.out, &mut checked)?;
    }
    Ok(checked)
}

/// One frame through the TC egress program: it never drops, counts only the local backend's
/// replies it rewrites, and leaves everything else as it was.
pub fn judge_egress(
    scope: &Scope,
    input: &[u8],
    run: &Run,
    moved: &Moved,
) -> Result<Checked, String> {
    let mut checked = Checked::default();
    if run.action != XDP_PASS {
        return Err(format!(
            "the egress program must always let the packet go (TC_ACT_OK), got {}",
            action_name(run.action)
        ));
    }
    let unchanged = run.out == input;
    match moved.as_slice() {
        [] if unchanged => {
            checked.non_vip = scope.non_vip(input);
            Ok(checked)
        }
        [] => Err("changed without being counted".into()),
        &[(c, 1)] if c as u32 == counter::FWD_LOCAL_REPLY => {
            if scope.non_vip(input) {
                return Err("rewrote a non-VIP frame".into());
            }
            sums_kept(input, &run.out, &mut checked)?;
            Ok(checked)
        }
        _ => Err(format!(
            "counters at egress: only fwd_local_reply +1 may move, moved: {}",
            describe(moved)
        )),
    }
}

/// The oracle itself, on made-up runs: a fuzzer whose checks cannot fail finds nothing.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        BE_11, BE_14, READ, WRITE, addr, client,
        dataplane::{Expect, XDP_ABORTED},
        netns::VIP,
        tcp,
    };

    fn scope() -> Scope {
        Scope {
            services: vec![WRITE, READ],
            backends: vec![BE_11, BE_14],
            floating: vec![VIP],
        }
    }

    fn run(action: u32, out: &[u8]) -> Run {
        Run {
            action,
            out: out.to_vec(),
            duration: Duration::ZERO,
        }
    }

    fn one(c: u32) -> Moved {
        vec![(c as usize, 1)]
    }

    #[test]
    fn oracle_holds_a_non_vip_frame_to_an_unchanged_pass() {
        let f = tcp(client(40000), addr([198, 18, 1, 50], 6380))
            .syn()
            .build();
        let s = scope();
        let not_service = one(counter::PASS_NOT_SERVICE);
        assert!(judge_ingress(&s, &f, &run(XDP_PASS, &f), &not_service).is_ok_and(|c| c.non_vip));
        let mut changed = f.clone();
        changed[30] ^= 1;
        assert!(judge_ingress(&s, &f, &run(XDP_PASS, &changed), &not_service).is_err());
        assert!(
            judge_ingress(
                &s,
                &f,
                &run(XDP_REDIRECT, &f),
                &one(counter::FWD_TO_BACKEND)
            )
            .is_err()
        );
        assert!(judge_ingress(&s, &f, &run(XDP_ABORTED, &f), &not_service).is_err());
        // Counted never, twice, or on the error path.
        assert!(judge_ingress(&s, &f, &run(XDP_PASS, &f), &Vec::new()).is_err());
        assert!(judge_ingress(&s, &f, &run(XDP_PASS, &f), &vec![(5, 2)]).is_err());
        let two = vec![
            (counter::PASS_NOT_SERVICE as usize, 1),
            (counter::PASS_NOT_TCP as usize, 1),
        ];
        assert!(judge_ingress(&s, &f, &run(XDP_PASS, &f), &two).is_err());
        assert!(judge_ingress(&s, &f, &run(XDP_DROP, &f), &one(counter::DROP_INTERNAL)).is_err());
    }

    #[test]
    fn oracle_holds_rewrites_to_valid_checksums_and_resets_to_their_shape() {
        let s = scope();
        let syn = tcp(client(40000), WRITE).syn().build();
        let fwd = Expect::ToBackend(BE_11)
            .outputs(&syn)
            .expect("expected frame")
            .remove(0);
        let counted = one(counter::FWD_TO_BACKEND);
        assert!(
            judge_ingress(&s, &syn, &run(XDP_REDIRECT, &fwd), &counted).is_ok_and(|c| c.sums_kept)
        );
        let mut bad_tcp = fwd.clone();
        bad_tcp[50] ^= 0x10;
        assert!(judge_ingress(&s, &syn, &run(XDP_REDIRECT, &bad_tcp), &counted).is_err());
        let mut bad_ip = fwd.clone();
        bad_ip[24] ^= 0x10;
        assert!(judge_ingress(&s, &syn, &run(XDP_REDIRECT, &bad_ip), &counted).is_err());
        // A frame that came in bad may leave bad.
        let mut syn_bad = syn.clone();
        syn_bad[50] ^= 0x10;
        assert!(judge_ingress(&s, &syn_bad, &run(XDP_REDIRECT, &bad_tcp), &counted).is_ok());
        // A redirect must be a forward or a reset, and a drop a decided one.
        assert!(
            judge_ingress(
                &s,
                &syn,
                &run(XDP_REDIRECT, &fwd),
                &one(counter::PASS_REWRITTEN)
            )
            .is_err()
        );
        assert!(
            judge_ingress(
                &s,
                &syn,
                &run(XDP_DROP, &syn),
                &one(counter::PASS_NOT_SERVICE)
            )
            .is_err()
        );

        let rst = Expect::Reset
            .outputs(&syn)
            .expect("expected reset")
            .remove(0);
        let reset = one(counter::RESET_NO_BACKEND);
        assert!(judge_ingress(&s, &syn, &run(XDP_REDIRECT, &rst), &reset).is_ok_and(|c| c.reset));
        let mut long = rst.clone();
        long.push(0);
        assert!(judge_ingress(&s, &syn, &run(XDP_REDIRECT, &long), &reset).is_err());
    }

    #[test]
    fn oracle_holds_egress_to_pass_and_counted_rewrites() {
        let s = scope();
        let reply = tcp(BE_11, client(40000)).data(b"+OK\r\n").build();
        let back = Expect::SourceOnly(WRITE)
            .outputs(&reply)
            .expect("expected")
            .remove(0);
        let counted = one(counter::FWD_LOCAL_REPLY);
        assert!(judge_egress(&s, &reply, &run(XDP_PASS, &reply), &Vec::new()).is_ok());
        assert!(judge_egress(&s, &reply, &run(XDP_PASS, &back), &counted).is_ok());
        assert!(judge_egress(&s, &reply, &run(XDP_PASS, &back), &Vec::new()).is_err());
        assert!(judge_egress(&s, &reply, &run(XDP_DROP, &reply), &Vec::new()).is_err());
        assert!(
            judge_egress(
                &s,
                &reply,
                &run(XDP_PASS, &reply),
                &one(counter::DROP_INTERNAL)
            )
            .is_err()
        );
        let other = tcp(client(40000), addr([198, 18, 1, 50], 6379)).build();
        let mut changed = other.clone();
        changed[40] ^= 1;
        assert!(judge_egress(&s, &other, &run(XDP_PASS, &changed), &counted).is_err());
    }
}
