//! Packet fuzzing: random and damaged frames through the program at every hook (XDP, TC
//! ingress, TC egress), each judged by invariants that hold whatever the program's policy
//! (see [`oracle`]): it never aborts or takes an error path, exactly one counter counts each
//! frame, a non-VIP frame passes byte for byte, a rewritten frame keeps valid checksums
//! valid, a generated reset is well-formed.
//!
//! Frames come from [`seeds`] (valid frames of every kind a node sees) through [`mutate`],
//! driven by one seeded generator per hook and setup, so a run replays exactly from its seed.
//! Every 4,096 frames the control plane changes something (a failover, a replica leaving
//! the pool), which turns existing connections stale.
//!
//! `cargo xtask fuzz [--seed S] [--frames N] [--hook H]` runs it at length (1,000,000 frames
//! per hook by default); as an ordinary test it runs 50,000 per hook with a new seed each
//! time. Both take their settings from the environment: `RHA_FUZZ_SEED`, `RHA_FUZZ_FRAMES`,
//! `RHA_FUZZ_HOOKS` (comma-separated: xdp, tc, egress).

mod mutate;
mod oracle;
mod seeds;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use aya::programs::ProgramError;
use fastrand::Rng;
use redis_ha_common::counter;

use crate::{
    dataplane::{Hook, action_name},
    frame::hex,
    netns::{Testbed, VIP},
};
use oracle::{Checked, Moved, Scope};
use seeds::{SETUPS, Setup};

const DEFAULT_FRAMES: u64 = 50_000;
/// Frames between two control-plane changes.
const BATCH: u64 = 4096;
/// Failures reported per hook before it stops: enough to see a pattern, few enough to read.
const MAX_FAILURES: usize = 10;

/// Which program the frames go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Xdp,
    Tc,
    /// The TC egress program, on a node whose master is local.
    Egress,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::Xdp => "xdp",
            Prog::Tc => "tc",
            Prog::Egress => "egress",
        }
    }
}

struct Options {
    seed: u64,
    frames: u64,
    progs: Vec<Prog>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn options() -> Options {
    let seed = env("RHA_FUZZ_SEED").map_or_else(
        || {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_secs() ^ (u64::from(t.subsec_nanos()) << 20)
        },
        |s| {
            s.parse()
                .unwrap_or_else(|_| panic!("RHA_FUZZ_SEED={s}: not an unsigned 64-bit number"))
        },
    );
    let frames = env("RHA_FUZZ_FRAMES").map_or(DEFAULT_FRAMES, |s| {
        s.parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("RHA_FUZZ_FRAMES={s}: not a positive number"))
    });
    let progs = env("RHA_FUZZ_HOOKS").map_or(vec![Prog::Xdp, Prog::Tc, Prog::Egress], |s| {
        s.split(',')
            .map(|h| match h.trim() {
                "xdp" => Prog::Xdp,
                "tc" => Prog::Tc,
                "egress" => Prog::Egress,
                other => panic!("RHA_FUZZ_HOOKS: unknown hook `{other}` (xdp, tc, egress)"),
            })
            .collect()
    });
    Options {
        seed,
        frames,
        progs,
    }
}

/// What one hook's run did, for the figures at the end.
#[derive(Default)]
struct Figures {
    frames: u64,
    /// Frames the kernel would not test-run (shorter than it takes at this hook).
    refused: u64,
    busy: Duration,
    actions: BTreeMap<String, u64>,
    counters: BTreeMap<&'static str, u64>,
    non_vip: u64,
    sums_kept: u64,
    sums_bad_in: u64,
    resets: u64,
}

impl Figures {
    fn add(&mut self, action: u32, moved: &Moved, checked: &Checked) {
        self.frames += 1;
        *self.actions.entry(action_name(action)).or_default() += 1;
        for &(i, n) in moved {
            *self.counters.entry(counter::NAMES[i]).or_default() += n;
        }
        self.non_vip += u64::from(checked.non_vip);
        self.sums_kept += u64::from(checked.sums_kept);
        self.sums_bad_in += u64::from(checked.sums_bad_in);
        self.resets += u64::from(checked.reset);
    }

    fn print(&self, prog: Prog) {
        let rate = self.frames as f64 / self.busy.as_secs_f64().max(1e-9);
        println!(
            "fuzz {}: {} frames in {:.1} s ({rate:.0} frames/s, checks included); {} more \
             refused by the kernel as too short to run",
            prog.name(),
            self.frames,
            self.busy.as_secs_f64(),
            self.refused
        );
        let list = |m: Vec<(String, u64)>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  actions: {}",
            list(self.actions.iter().map(|(k, v)| (k.clone(), *v)).collect())
        );
        println!(
            "  counters: {}",
            list(
                self.counters
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect()
            )
        );
        println!(
            "  checked: {} non-VIP frames passed unchanged; {} rewritten frames kept valid \
             checksums ({} more came in with a bad one and were not checked); {} resets \
             well-formed",
            self.non_vip, self.sums_kept, self.sums_bad_in, self.resets
        );
    }
}

/// The generator of one hook and setup: the run's seed, told apart per part so each replays
/// alone with the same frames.
fn rng_for(seed: u64, prog: Prog, setup: Setup) -> Rng {
    Rng::with_seed(seed ^ ((prog as u64 + 1) << 56) ^ ((setup as u64 + 1) << 48))
}

fn counters_moved(before: &[u64], after: &[u64]) -> Moved {
    (0..before.len())
        .filter(|&i| after[i] != before[i])
        .map(|i| (i, after[i].wrapping_sub(before[i])))
        .collect()
}

#[test]
fn fuzz_frames() {
    let opts = options();
    println!(
        "fuzz: seed {}, {} frames per hook ({}); replay: cargo xtask fuzz --seed {} --frames {}",
        opts.seed,
        opts.frames,
        opts.progs
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", "),
        opts.seed,
        opts.frames
    );
    let mut failures = Vec::new();
    for &prog in &opts.progs {
        let mut figures = Figures::default();
        let setups: &[Setup] = match prog {
            Prog::Egress => &[Setup::LocalMaster],
            Prog::Xdp | Prog::Tc => &SETUPS,
        };
        let mut found = Vec::new();
        for (i, &setup) in setups.iter().enumerate() {
            // The frames split evenly over the setups, the remainder to the last.
            let share = opts.frames / setups.len() as u64
                + if i + 1 == setups.len() {
                    opts.frames % setups.len() as u64
                } else {
                    0
                };
            run_part(&opts, prog, setup, share, &mut figures, &mut found);
            if found.len() >= MAX_FAILURES {
                break;
            }
        }
        figures.print(prog);
        failures.extend(found);
    }
    assert!(
        failures.is_empty(),
        "{} frames broke an invariant (seed {}; replay: cargo xtask fuzz --seed {} --frames {}):\n{}",
        failures.len(),
        opts.seed,
        opts.seed,
        opts.frames,
        failures.join("\n")
    );
}

/// `frames` frames through `prog` set up as `setup`, on a fresh program and namespace.
fn run_part(
    opts: &Options,
    prog: Prog,
    setup: Setup,
    frames: u64,
    figures: &mut Figures,
    failures: &mut Vec<String>,
) {
    let tb = Testbed::new();
    let hook = if prog == Prog::Xdp {
        Hook::Xdp
    } else {
        Hook::Tc
    };
    let mut dp = seeds::load(&tb, hook, setup);
    let scope = Scope {
        services: seeds::SERVICES.to_vec(),
        backends: seeds::BACKENDS.to_vec(),
        floating: vec![VIP],
    };
    let mut rng = rng_for(opts.seed, prog, setup);
    let egress = prog == Prog::Egress;
    let start_counters = dp.counters();
    let mut before = start_counters;
    let (mut ran, mut counted_changes, mut opened) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    // Bounded: refused frames do not count as run, and are a minority.
    for index in 0..frames * 4 {
        if ran == frames || failures.len() >= MAX_FAILURES {
            break;
        }
        if index % BATCH == 0 {
            if index > 0 {
                seeds::change_state(&mut dp, &mut rng);
            }
            if egress {
                opened += seeds::open_connections(&dp);
                before = dp.counters();
            }
        }
        let (kind, mut frame) = seeds::seed(&mut rng, setup);
        let mutations = mutate::mutate(&mut rng, &mut frame);
        let report = |what: &str, out: Option<&[u8]>| {
            format!(
                "- {} hook, setup {setup:?}, frame #{index} ({kind}; {}): {what}\n    in:  {}{}",
                prog.name(),
                if mutations.is_empty() {
                    "not mutated".to_string()
                } else {
                    mutations.join(", ")
                },
                hex(&frame),
                out.map_or(String::new(), |o| format!("\n    out: {}", hex(o)))
            )
        };
        let run = match dp.try_run_once(&frame, egress) {
            Ok(run) => run,
            Err(ProgramError::SyscallError(e))
                if frame.len() < dp.shortest_run_for(&frame)
                    && e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                figures.refused += 1;
                continue;
            }
            Err(e) => {
                failures.push(report(&format!("BPF_PROG_TEST_RUN failed: {e}"), None));
                continue;
            }
        };
        ran += 1;
        let after = dp.counters();
        let moved = counters_moved(&before, &after);
        before = after;
        let verdict = if egress {
            oracle::judge_egress(&scope, &frame, &run, &moved)
        } else {
            oracle::judge_ingress(&scope, &frame, &run, &moved)
        };
        match verdict {
            Ok(checked) => {
                counted_changes += u64::from(egress && !moved.is_empty());
                figures.add(run.action, &moved, &checked);
            }
            Err(what) => failures.push(report(&what, Some(&run.out))),
        }
    }
    figures.busy += started.elapsed();
    // The whole part at once, from the map: every frame run counted exactly once at ingress;
    // at egress only the replies rewritten (besides the connections opened for it).
    let total: u64 = counters_moved(&start_counters, &dp.counters())
        .iter()
        .map(|&(_, n)| n)
        .sum();
    let want = if egress {
        counted_changes + opened
    } else {
        ran
    };
    if failures.is_empty() && total != want {
        failures.push(format!(
            "- {} hook, setup {setup:?}: the counters add up to {total}, {want} frames ran",
            prog.name()
        ));
    }
}
