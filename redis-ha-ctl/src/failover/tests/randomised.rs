//! The randomised runs of [`chaos`](super::chaos) as tests: many seeds with every rule in
//! place, and the same runs catching each rule broken on purpose.
//!
//! `REDIS_HA_SIM_RUNS=<n>` sets the number of runs (and `REDIS_HA_SIM_FIRST=<seed>` the first
//! seed) for a longer run, best with `--release`; `REDIS_HA_SIM_SEED=<seed>` replays one run
//! with its trace.

use super::chaos::{self, CONVERGE_MS, Flaws, Violation};

/// Runs in `cargo test`: a few seconds on two cores.
const DEFAULT_RUNS: u64 = 1_000;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn explain(seed: u64, v: &Violation) -> String {
    format!(
        "seed {seed}, at {} ms: {}\nreplay with its trace: REDIS_HA_SIM_SEED={seed} cargo test -p \
         redis-ha-ctl randomised -- --nocapture",
        v.at, v.what
    )
}

#[test]
fn random_faults_and_concurrent_switchovers_keep_one_config_per_epoch_and_converge() {
    if let Some(seed) = env("REDIS_HA_SIM_SEED") {
        if let Err(v) = chaos::run(seed, Flaws::default(), true) {
            panic!("{}", explain(seed, &v));
        }
        return;
    }
    let first = env("REDIS_HA_SIM_FIRST").unwrap_or(0);
    let runs = env("REDIS_HA_SIM_RUNS").unwrap_or(DEFAULT_RUNS);
    let mut converge = Vec::new();
    let (mut events, mut forced) = (0, 0);
    for seed in first..first + runs {
        match chaos::run(seed, Flaws::default(), false) {
            Ok(o) => {
                converge.push(o.converged_after);
                events += o.events;
                forced += o.forced;
            }
            Err(v) => panic!("{}", explain(seed, &v)),
        }
    }
    converge.sort_unstable();
    let at = |q: f64| converge[((converge.len() - 1) as f64 * q) as usize];
    println!(
        "{runs} runs (seeds {first}..{}), {events} events, {forced} operator failovers: 0 \
         violations; converged after the faults in median {} ms, p99 {} ms, max {} ms (bound \
         {CONVERGE_MS} ms)",
        first + runs,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// The first of `seeds` whose run breaks an invariant, with what broke.
fn first_violation(flaws: Flaws, seeds: u64) -> Option<(u64, Violation)> {
    (0..seeds).find_map(|seed| chaos::run(seed, flaws, false).err().map(|v| (seed, v)))
}

#[test]
fn the_runs_catch_an_epoch_vote_that_elects_every_candidate() {
    let flaws = Flaws {
        votes_for_anyone: true,
        ..Flaws::default()
    };
    let (seed, v) = first_violation(flaws, 300).expect("no run caught the flaw");
    println!("caught by seed {seed}: {}", v.what);
    assert!(
        v.what.starts_with("two "),
        "caught, but not as two configurations, targets or leaders in one epoch: {}",
        explain(seed, &v)
    );
}

#[test]
fn the_runs_catch_two_masters_in_one_epoch_left_unresolved() {
    let flaws = Flaws {
        ignore_equal_epoch_conflicts: true,
        ..Flaws::default()
    };
    let (seed, v) = first_violation(flaws, 300).expect("no run caught the flaw");
    println!("caught by seed {seed}: {}", v.what);
    assert!(
        v.what.contains("no agreement"),
        "caught, but not as a cluster that never agrees: {}",
        explain(seed, &v)
    );
}
