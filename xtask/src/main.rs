//! Developer tasks for redis-ha: `cargo xtask <command>` (alias in .cargo/config.toml).
//!
//! Every command first installs what is missing (see [`prerequisites`]), so a fresh machine
//! with only rustup's toolchains needs nothing else.

mod bench;
mod build_load;
mod demo;
mod demo_seed;
mod fuzz;
mod fuzz_parsers;
mod package;
mod prerequisites;
mod soak;
mod test;
mod testbed;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use redis_ha_tests::{FULL_NAT, XdpMode};

#[derive(Parser)]
#[command(about = "redis-ha developer tasks", disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Release build of redis-ha-ctl (its build.rs compiles the XDP program it embeds).
    Build,
    /// Release build, then a .deb of it in target/debian/ (binary with the XDP program, unit,
    /// example config, man pages, completions); docs/deploying.md says how to install it.
    Package,
    /// Build, then `redis-ha-ctl load` the data plane and show what is attached.
    BuildAndLoad {
        /// redis-ha-ctl config (the testbed's: target/testbed/redis-ha.toml).
        #[arg(long)]
        config: PathBuf,
        /// Load inside this network namespace (the testbed's LB: rha-tb-lb).
        #[arg(long)]
        netns: Option<String>,
    },
    /// The namespace testbed (client, LB or LBs, three redis-servers) for manual work.
    Testbed {
        #[command(subcommand)]
        action: TestbedAction,
    },
    /// A failover, end to end. With `--topology default`: the LB-node testbed, its data plane
    /// and three controllers; a write and some reads through the VIP; status and maps; then
    /// `kill -9` of the master, with the controllers' Sentinel events as they happen, how long
    /// writes through the VIP were refused, the promoted replica answering the write port
    /// with the data written before the crash; the maps again.
    ///
    /// With `--topology seed` (the default while the harness asks for full NAT, `FULL_NAT` in
    /// tests/src/seed.rs): the seed's three machines, each with redis-server, controller and
    /// data plane; writes and reads through the VIP from a client on the subnet and one
    /// behind a router, then a kill -9 of the master and the loss of the node holding the
    /// VIP, each with the write gap, who is master, who holds the VIP and the acknowledged
    /// writes lost.
    Demo {
        /// Leave it all running afterwards (testbed, data plane, the three controllers; the
        /// old master stays dead); `cargo xtask testbed down` removes it.
        #[arg(long)]
        keep: bool,
        /// default: an LB node in front of the backends. seed: the seed's own shape.
        #[arg(long, value_enum, default_value_t = if FULL_NAT { Topology::Seed } else { Topology::Default })]
        topology: Topology,
        /// Data-plane hook written into the config: auto, native or skb (XDP), or tc. Default:
        /// native, or auto with --topology seed.
        #[arg(long)]
        xdp_mode: Option<XdpMode>,
    },
    /// Every test of the workspace (as root, one at a time), then a check for leaked
    /// namespaces, then a short run of each parser fuzz target.
    Test,
    /// The libFuzzer targets (cargo fuzz, fuzz/) on the RESP request parser, the config loader
    /// and the peer datagram decoder, each for a bounded time; fails on a crash.
    FuzzParsers {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Random and damaged frames through the data plane at every hook (BPF_PROG_TEST_RUN),
    /// each checked: no abort or error path, one counter per frame, non-VIP frames unchanged,
    /// rewritten frames with valid checksums, resets well-formed (docs/testing.md).
    Fuzz {
        /// The generator's seed; a failure prints it (default: a new one, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Frames per hook.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Only these hooks (repeat the option; default: all three).
        #[arg(long, value_enum)]
        hook: Vec<fuzz::FuzzHook>,
    },
    /// redis-ha vs direct vs the seed's HAProxy + Sentinel in one run; writes bench-results/.
    Bench {
        /// Short run (3 repeats, 1 failover trial per case; about 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Repeats of every path and workload (default 3 with --quick, else 9: with 5, one cell
        /// in ten or so fell outside the bars by this machine's run-to-run noise alone).
        #[arg(long)]
        repeats: Option<usize>,
        /// Failover trials per fault and stack (default 1 with --quick, else 5).
        #[arg(long)]
        trials: Option<usize>,
        /// Leave out the throughput, latency and LB CPU comparison.
        #[arg(long)]
        skip_paths: bool,
        /// Leave out the BPF_PROG_TEST_RUN per-packet cost.
        #[arg(long)]
        skip_packet: bool,
        /// Leave out the failover trials.
        #[arg(long)]
        skip_failover: bool,
        /// Hook of the redis-ha paths: tc, or native or skb (XDP). The testbed is veths, where
        /// both XDP modes copy every packet the local stacks send before the program sees it
        /// (native: into a page; skb: out of a shared or fragmented skb); at the TC hook the
        /// program works on the skb as it is, as the kernel's own forwarding does. Hence tc by
        /// default here; on a NIC with native XDP, native is the one to use.
        #[arg(long, default_value = "tc")]
        xdp_mode: XdpMode,
        /// Output directory (default <workspace>/bench-results, or bench-results/seed with
        /// --topology seed).
        #[arg(long)]
        out: Option<PathBuf>,
        /// default: the LB-node testbed. seed: the seed's three machines, redis-ha against the
        /// seed's own Sentinel + HAProxy + keepalived there (failover: 10 trials per fault by
        /// default, --trials N).
        #[arg(long, value_enum, default_value_t = Topology::Default)]
        topology: Topology,
        /// Only failovers while every controller is attacked (API and peer port), with the
        /// controllers' largest memory; writes bench-results/attack/summary.md.
        #[arg(long)]
        attack: bool,
    },
    /// A soak: writes (SET, and SET + WAIT 1), reads, churning connections and pub/sub through
    /// the VIP while faults repeat on a schedule (master kill -9, SIGSTOP and link cut, a
    /// controller killed or partitioned, a switchover); then every acknowledged write checked on
    /// the final master. Writes bench-results/soak/summary.md and samples.csv; fails when a
    /// WAIT-confirmed write was lost, a demoted master acknowledged a write, a failover had no
    /// fault behind it, or a controller's memory or file descriptors grew.
    Soak {
        /// How long to inject faults (the testbed's setup and the final check come on top).
        #[arg(long, default_value_t = 15)]
        minutes: u64,
        /// default: one LB node in front of the backends (the only one the soak runs on yet).
        #[arg(long, value_enum, default_value_t = Topology::Default)]
        topology: Topology,
        /// Output directory (default <workspace>/bench-results/soak).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TestbedAction {
    /// Build the testbed (tag `tb`) and leave it running.
    Up {
        /// default: LB nodes in front of the backends (their gateway). seed: the stack redis-ha
        /// replaces, three machines on one subnet, each running redis-server, a controller and
        /// the data plane, with the VIP held by one of them.
        #[arg(long, value_enum, default_value_t = Topology::Default)]
        topology: Topology,
        /// Data-plane hook written into the config: auto, native or skb (XDP), or tc. Default:
        /// native, or auto with --topology seed.
        #[arg(long)]
        xdp_mode: Option<XdpMode>,
        /// 1: one LB with routed veths (the data plane is loaded by hand). 2: two LB nodes on
        /// bridged segments with three controllers running, the floating VIP held by one LB.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        lb_nodes: u8,
        /// With --lb-nodes 2: no `[ha]` section in the controllers' configs; the floating
        /// addresses are put on lb1 by hand instead.
        #[arg(long)]
        no_ha: bool,
    },
    /// Remove the testbed: its namespaces, processes, pins and files.
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Topology {
    Default,
    Seed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The error chain says what failed and what to do; a backtrace (RUST_BACKTRACE is often
    // set) would bury it.
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    prerequisites::prerequisites()?;
    match task {
        Task::Build => build_load::build().map(drop),
        Task::Package => package::package(),
        Task::BuildAndLoad { config, netns } => {
            build_load::build_and_load(&config, netns.as_deref())
        }
        Task::Testbed {
            action:
                TestbedAction::Up {
                    topology,
                    xdp_mode,
                    lb_nodes,
                    no_ha,
                },
        } => {
            if topology == Topology::Seed {
                if lb_nodes != 1 || no_ha {
                    bail!("--lb-nodes and --no-ha do not apply to --topology seed");
                }
                let seed = testbed::up_seed(xdp_mode.unwrap_or(XdpMode::Auto))?;
                let usage = testbed::seed_usage(&seed);
                seed.keep();
                println!("{usage}");
                return Ok(());
            }
            let xdp_mode = xdp_mode.unwrap_or(XdpMode::Native);
            if lb_nodes == 2 {
                let ha = testbed::up_ha(xdp_mode, !no_ha)?;
                ha.keep();
                testbed::print_ha_usage(!no_ha);
                return Ok(());
            }
            if no_ha {
                bail!("--no-ha only applies to --lb-nodes 2");
            }
            let tb = testbed::up(xdp_mode)?;
            tb.keep();
            testbed::print_usage();
            Ok(())
        }
        Task::Testbed {
            action: TestbedAction::Down,
        } => testbed::down(),
        Task::Demo {
            keep,
            topology: Topology::Seed,
            xdp_mode,
        } => demo_seed::demo(keep, xdp_mode.unwrap_or(XdpMode::Auto)),
        Task::Demo {
            keep,
            topology: Topology::Default,
            xdp_mode,
        } => demo::demo(keep, xdp_mode.unwrap_or(XdpMode::Native)),
        Task::Test => test::test(),
        Task::Soak {
            minutes,
            topology,
            out,
        } => soak::soak(soak::Options {
            minutes,
            seed: topology == Topology::Seed,
            out,
            command: std::iter::once("cargo xtask".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" "),
        }),
        Task::FuzzParsers { seconds } => fuzz_parsers::fuzz_parsers(seconds),
        Task::Fuzz { seed, frames, hook } => fuzz::fuzz(seed, frames, &hook),
        Task::Bench {
            quick,
            repeats,
            trials,
            skip_paths,
            skip_packet,
            skip_failover,
            xdp_mode,
            out,
            topology,
            attack,
        } => bench::bench(bench::Options {
            seed: topology == Topology::Seed,
            attack,
            xdp_mode,
            quick,
            repeats,
            trials,
            skip_paths,
            skip_packet,
            skip_failover,
            out,
            command: std::iter::once("cargo xtask".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}
