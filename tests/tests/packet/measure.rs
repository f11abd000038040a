//! ns/packet of the main paths, as BPF_PROG_TEST_RUN measures them. Prints; asserts only that
//! the path measured is the path named.
//!
//! The kernel runs every repeat on the same buffer, and the program rewrites it in place. So
//! the service here maps the VIP ports onto themselves (backend = VIP:port, with a neighbour
//! entry for the VIP): the rewritten frame is again a frame to the VIP port. That fixes the
//! addresses, but every forwarded pass also decrements the TTL, and at TTL 1 the program
//! hands the frame to the kernel instead (a different, shorter path). A frame can therefore
//! take the forwarding path at most 254 times in a row: forwarding paths are measured as
//! 4000 runs × repeat 250 (starting at TTL 255), 1,000,000 packets in all, each run starting
//! from the original frame. The non-VIP path leaves the frame alone and runs once with repeat
//! 1,000,000. For comparison the forwarding paths are also run once with repeat 1,000,000,
//! with the counters showing what that really measures. The program is also attached to an
//! idle device meanwhile (see `Dataplane::attach_idle`): that keeps 16,000 test runs from
//! taking five minutes of RCU grace periods.
//!
//! Every path is measured at both hooks: the TC rows, prefixed `TC:`, run the same program
//! through the skb test run, whose own harness costs more than XDP's (compare the non-VIP
//! pass rows, where the program does least).
//!
//! A repeated SYN finds the entry its previous repeat made, which it follows (a SYN never
//! replaces a live connection's entry): the SYN rows measure a retransmitted SYN, a flow hit
//! plus the service lookup. A new connection's pick without its insert is the "no entry" rows:
//! a segment that is not a SYN, of a connection this node has no entry for, is forwarded
//! where the live state maps it and stores nothing (the read port's row includes the keyed
//! SipHash of the replica choice).

use std::time::Duration;

use redis_ha_common::{BackendStats, counter, port_kind};

use crate::{
    READ, SID, WRITE, addr, client,
    dataplane::{Dataplane, Hook, Ingress, XDP_PASS, XDP_REDIRECT, action_name},
    netns::{IDLE_DEV, Testbed},
    tcp,
};

const PACKETS: u32 = 1_000_000;
const BATCH: u32 = 250;
const SLOT_W: u32 = 1;
const SLOT_R: u32 = 2;

type Counters = [u64; counter::COUNT as usize];

struct Path {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    /// Repeat per run; PACKETS / repeat runs.
    repeat: u32,
    /// Which of the program's counters prove the intended path, and how many packets they
    /// show took it.
    proof: &'static str,
    took_path: fn(&Counters, &BackendStats, &BackendStats) -> u64,
}

struct Sample {
    ns_per_packet: f64,
    packets: u64,
    on_path: u64,
    moved: String,
}

fn delta(a: &Counters, b: &Counters) -> Counters {
    let mut d = [0; counter::COUNT as usize];
    for i in 0..d.len() {
        d[i] = b[i] - a[i];
    }
    d
}

fn stats_delta(a: &BackendStats, b: &BackendStats) -> BackendStats {
    BackendStats {
        packets_in: b.packets_in - a.packets_in,
        bytes_in: b.bytes_in - a.bytes_in,
        packets_out: b.packets_out - a.packets_out,
        bytes_out: b.bytes_out - a.bytes_out,
        new_flows: b.new_flows - a.new_flows,
        flows_reset: b.flows_reset - a.flows_reset,
        flows_closed: b.flows_closed - a.flows_closed,
    }
}

/// Runs `path.frame` PACKETS times in runs of `repeat`. `strict`: every run must end with the
/// path's action (false for the comparison runs, which are expected to leave the path).
fn measure(dp: &Dataplane, path: &Path, repeat: u32, strict: bool) -> Sample {
    let runs = PACKETS / repeat;
    let (c0, w0, r0) = (dp.counters(), dp.stats(SLOT_W), dp.stats(SLOT_R));
    let mut total = Duration::ZERO;
    for _ in 0..runs {
        let run = dp.run_with(&path.frame, Ingress::Wire, repeat);
        assert!(
            !strict || run.action == path.action,
            "{}: {} instead of {}",
            path.name,
            action_name(run.action),
            action_name(path.action)
        );
        // duration is the kernel's average per repeat.
        total += run.duration * repeat;
    }
    let c = delta(&c0, &dp.counters());
    let (w, r) = (
        stats_delta(&w0, &dp.stats(SLOT_W)),
        stats_delta(&r0, &dp.stats(SLOT_R)),
    );
    let packets = u64::from(runs) * u64::from(repeat);
    let moved = (0..c.len())
        .filter(|&i| c[i] != 0)
        .map(|i| format!("{} {}", counter::NAMES[i], c[i]))
        .collect::<Vec<_>>()
        .join(", ");
    Sample {
        ns_per_packet: total.as_nanos() as f64 / packets as f64,
        packets,
        on_path: (path.took_path)(&c, &w, &r),
        moved,
    }
}

#[test]
fn measure_ns_per_packet() {
    println!();
    println!(
        "BPF_PROG_TEST_RUN, {PACKETS} packets per path (TestRunResult.duration, kernel average per repeat)"
    );
    println!(
        "{:<40} {:>8} {:>8} {:>10}  {:<32} on path",
        "path", "ns/pkt", "repeat", "packets", "proof (program counters)"
    );
    let xdp = Testbed::new();
    let xdp = measure_at(&xdp, Hook::Xdp, Part::Table);
    // The TC rows come second, prefixed: the skb test run's own harness costs more than
    // XDP's (compare the two non-VIP pass rows, where the program does least).
    let tc = Testbed::new();
    let tc = measure_at(&tc, Hook::Tc, Part::Table);
    println!();
    let again = Testbed::new();
    measure_at(&again, Hook::Xdp, Part::LongRuns);
    let off_path: Vec<String> = xdp.iter().chain(&tc).cloned().collect();
    assert!(
        off_path.is_empty(),
        "measured the wrong path:\n{}",
        off_path.join("\n")
    );
}

#[derive(PartialEq)]
enum Part {
    /// The table's rows, in runs of [`BATCH`].
    Table,
    /// One run of [`PACKETS`] per forwarding path, for comparison.
    LongRuns,
}

/// Prints one part for one hook; returns the paths whose counters say they were not the
/// path named.
fn measure_at(tb: &Testbed, hook: Hook, part: Part) -> Vec<String> {
    let mut dp = Dataplane::load(tb, hook);
    // The dispatcher's RCU grace periods (see the module comment) are XDP's alone.
    if hook == Hook::Xdp {
        dp.attach_idle(IDLE_DEV);
    }
    // A run of `repeat` reuses one buffer, whose MACs the program rewrote the first time: at
    // XDP the later runs would be frames for another host. Without `IF_MACS` every frame is
    // taken, so each run takes the path measured.
    dp.forget_interface_macs();
    let prefix = if hook == Hook::Tc { "TC: " } else { "" };
    dp.add_port(WRITE, SID, port_kind::WRITE);
    dp.add_port(READ, SID, port_kind::READ);
    dp.set_backend(SLOT_W, WRITE, SID, false);
    dp.set_backend(SLOT_R, READ, SID, true);
    dp.fill_ring(SID, 0, &[SLOT_R]);
    dp.set_state(SID, SLOT_W, 0);

    // Connections the flow-hit and reply paths ride on.
    let est = client(47001);
    let replied = client(47003);
    for c in [est, replied] {
        let run = dp.run(&tcp(c, WRITE).syn().build());
        assert_eq!(run.action, XDP_REDIRECT, "opening {c}");
    }

    let paths = [
        Path {
            name: "write-port SYN (follows its entry)",
            frame: tcp(client(47000), WRITE).syn().ttl(255).build(),
            action: XDP_REDIRECT,
            repeat: BATCH,
            proof: "fwd_to_backend",
            took_path: |c, _, _| c[counter::FWD_TO_BACKEND as usize],
        },
        Path {
            name: "write-port, no entry (stateless)",
            frame: tcp(client(47005), WRITE)
                .data(b"*1\r\n$4\r\nPING\r\n")
                .ttl(255)
                .build(),
            action: XDP_REDIRECT,
            repeat: BATCH,
            proof: "fwd_to_backend_no_flow",
            took_path: |c, _, _| c[counter::FWD_TO_BACKEND_NO_FLOW as usize],
        },
        Path {
            name: "read-port, no entry (keyed hash, ring)",
            frame: tcp(client(47006), READ)
                .data(b"*1\r\n$4\r\nPING\r\n")
                .ttl(255)
                .build(),
            action: XDP_REDIRECT,
            repeat: BATCH,
            proof: "fwd_to_backend_no_flow",
            took_path: |c, _, _| c[counter::FWD_TO_BACKEND_NO_FLOW as usize],
        },
        Path {
            name: "write-port established (flow hit)",
            frame: tcp(est, WRITE)
                .data(b"*1\r\n$4\r\nPING\r\n")
                .ttl(255)
                .build(),
            action: XDP_REDIRECT,
            repeat: BATCH,
            proof: "fwd_to_backend, no new_flows",
            took_path: |c, w, _| c[counter::FWD_TO_BACKEND as usize].saturating_sub(w.new_flows),
        },
        Path {
            name: "read-port SYN (follows its entry)",
            frame: tcp(client(47002), READ).syn().ttl(255).build(),
            action: XDP_REDIRECT,
            repeat: BATCH,
            proof: "fwd_to_backend",
            took_path: |c, _, _| c[counter::FWD_TO_BACKEND as usize],
        },
        Path {
            name: "reply rewrite (backend -> client)",
            frame: tcp(WRITE, replied).data(b"+PONG\r\n").ttl(255).build(),
            action: XDP_REDIRECT,
            repeat: BATCH,
            proof: "fwd_to_client & packets_out",
            took_path: |c, w, _| c[counter::FWD_TO_CLIENT as usize].min(w.packets_out),
        },
        Path {
            name: "non-VIP pass",
            frame: tcp(client(47004), addr([198, 18, 1, 50], 6380))
                .syn()
                .build(),
            action: XDP_PASS,
            repeat: PACKETS,
            proof: "pass_not_service",
            took_path: |c, _, _| c[counter::PASS_NOT_SERVICE as usize],
        },
    ];

    let mut off_path = Vec::new();
    if part == Part::LongRuns {
        println!(
            "For comparison, one run with repeat {PACKETS} (same buffer each pass, TTL falls by one per forward):"
        );
        println!("{:<40} {:>8}  counters moved", "path", "ns/pkt");
        for path in paths.iter().filter(|p| p.repeat != PACKETS) {
            let s = measure(&dp, path, PACKETS, false);
            println!("{:<40} {:>8.1}  {}", path.name, s.ns_per_packet, s.moved);
        }
        return off_path;
    }
    for path in &paths {
        let s = measure(&dp, path, path.repeat, true);
        let share = s.on_path as f64 / s.packets as f64;
        println!(
            "{:<40} {:>8.1} {:>8} {:>10}  {:<32} {:.2} %",
            format!("{prefix}{}", path.name),
            s.ns_per_packet,
            path.repeat,
            s.packets,
            path.proof,
            share * 100.0
        );
        if share < 0.99 {
            off_path.push(format!(
                "{prefix}{}: {:.2} % on path; counters: {}",
                path.name,
                share * 100.0,
                s.moved
            ));
        }
    }

    off_path
}
