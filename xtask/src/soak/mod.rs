//! `cargo xtask soak --minutes N`: a verifying workload through the VIP while faults are
//! injected on a repeating schedule, then every acknowledged write checked against the final
//! master, and a report per fault.
//!
//! Layout:
//! - [`faults`]: the faults, their schedule, injecting and undoing each;
//! - [`monitor`]: the write port's master over time, the controllers' RSS and fds, the flow
//!   tables' size;
//! - [`analysis`]: the per-occurrence figures and verdicts (pure, unit-tested);
//! - [`report`]: `bench-results/soak/summary.md` and `samples.csv`.
//!
//! The workload (tests/src/trial): a [`VerifiedWriter`] (SET, every second one followed by
//! `WAIT 1 50`, each acknowledgement recorded with the backend behind the connection); a
//! reader keeping its connection on the read port; a churning reader opening a connection per
//! GET; a publisher on the write port and subscribers on both ports.

mod analysis;
mod faults;
mod monitor;
mod report;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::trial::{
    LoopOptions, LoopRecord, Request, Subscriber, TrafficLoop, VerifiedWriter, WriterOptions,
    WriterRecord, missing_keys, ms_since,
};
use redis_ha_tests::{Cluster, ClusterOptions, is_root};

use crate::bench::{catch_interrupts, check_interrupted};

/// What `cargo xtask soak` was asked to do.
pub struct Options {
    pub minutes: u64,
    pub seed: bool,
    pub out: Option<PathBuf>,
    pub command: String,
}

const PREFIX: &str = "soak";
const CHANNEL: &str = "soak-events";
/// Keys checked per `EXISTS` round trip series, so the final check's strings stay bounded.
const VERIFY_CHUNK: usize = 100_000;
/// No fault starts later than this before the end: one takes about this long.
const FAULT_BUDGET: Duration = Duration::from_secs(30);

pub fn soak(options: Options) -> Result<()> {
    if !is_root() {
        bail!("the soak creates network namespaces and loads XDP programs: run it as root");
    }
    if options.seed {
        bail!(
            "--topology seed: the soak does not run on the seed topology yet; use --topology default"
        );
    }
    if options.minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    catch_interrupts();
    let ctl = crate::bench::ctl()?;
    // SAFETY: no other thread exists yet in this process.
    unsafe { std::env::set_var("REDIS_HA_CTL", &ctl.path) };
    let machine = crate::bench::report::Machine::probe();
    println!(
        "==> soak for {} min on {}",
        options.minutes,
        machine.one_line()
    );
    let cluster = Cluster::up(ClusterOptions {
        down_after_ms: 1000,
        ..ClusterOptions::default()
    })?;
    println!(
        "    testbed {} up: one LB node, three controllers, three redis-servers",
        cluster.testbed().tag()
    );
    let header = format!(
        "Machine: {}. Command: `{}`. redis-ha-ctl: {}. Topology: default (one LB node, c1 beside the data \
         plane, c2 and c3 on their own nodes), down_after_ms 1000.",
        machine.one_line(),
        options.command,
        ctl.note
    );
    let result = run(&cluster, &options, header);
    if result.is_err() {
        eprintln!("{}", cluster.log_tails(20));
    }
    result
}

/// The workload's loops, started together and finished together.
struct Workload {
    writer: VerifiedWriter,
    reader: TrafficLoop,
    churn: TrafficLoop,
    publisher: TrafficLoop,
    subscribers: Vec<(String, Subscriber)>,
}

struct WorkloadRecords {
    writer: WriterRecord,
    reader: LoopRecord,
    churn: LoopRecord,
    publisher: LoopRecord,
    subscribers: Vec<(String, redis_ha_tests::trial::PubSubRecord)>,
}

impl Workload {
    fn start(cluster: &Cluster, origin: Instant, bound: Duration) -> Result<Self> {
        let tb = cluster.testbed();
        let ns = tb.client().path();
        let backends: Vec<Ipv4Addr> = tb.backends().iter().map(|b| *b.addr().ip()).collect();
        let writer = VerifiedWriter::start(
            ns.clone(),
            WriterOptions {
                max_duration: bound,
                ..WriterOptions::new(tb.vip_write(), PREFIX, backends)
            },
            origin,
        )?;
        let read = |reconnect_every, pause| LoopOptions {
            request: Request::Get {
                key: format!("{PREFIX}:1"),
            },
            reconnect_every,
            pause,
            max_duration: bound,
            max_requests: u64::MAX,
            ..LoopOptions::writer(tb.vip_read(), PREFIX)
        };
        let reader = TrafficLoop::start(ns.clone(), read(None, Duration::from_millis(10)))?;
        let churn = TrafficLoop::start(ns.clone(), read(Some(1), Duration::from_millis(20)))?;
        let publisher = TrafficLoop::start(
            ns.clone(),
            LoopOptions {
                request: Request::Publish {
                    channel: CHANNEL.to_owned(),
                },
                pause: Duration::from_millis(20),
                max_duration: bound,
                max_requests: u64::MAX,
                ..LoopOptions::writer(tb.vip_write(), PREFIX)
            },
        )?;
        let mut subscribers = Vec::new();
        for (name, addr) in [("write port", tb.vip_write()), ("read port", tb.vip_read())] {
            let s = Subscriber::start(ns.clone(), addr, CHANNEL, Duration::from_secs(1), bound)?;
            subscribers.push((name.to_owned(), s));
        }
        Ok(Self {
            writer,
            reader,
            churn,
            publisher,
            subscribers,
        })
    }

    fn finish(self) -> Result<WorkloadRecords> {
        let publisher = self.publisher.finish()?;
        // The last messages are still on their way to the subscribers.
        std::thread::sleep(Duration::from_millis(500));
        let subscribers = self
            .subscribers
            .into_iter()
            .map(|(name, s)| Ok((name, s.finish()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(WorkloadRecords {
            writer: self.writer.finish()?,
            reader: self.reader.finish()?,
            churn: self.churn.finish()?,
            publisher,
            subscribers,
        })
    }
}

fn run(cluster: &Cluster, options: &Options, header: String) -> Result<()> {
    let timing = faults::Timing::for_cluster(cluster);
    let duration = Duration::from_secs(options.minutes * 60);
    // Every loop ends by itself this long after the start, even if never stopped.
    let bound = duration + Duration::from_secs(600);
    cluster.wait_healthy(timing.healthy_timeout)?;
    let origin = Instant::now();
    let end = origin + duration;
    let stop = AtomicBool::new(false);
    let (runs, monitor, records) = std::thread::scope(|s| -> Result<_> {
        let monitor = s.spawn(|| monitor::run(cluster, origin, &stop, bound));
        let result = (|| -> Result<_> {
            let workload = Workload::start(cluster, origin, bound)?;
            wait_first_write(&workload.writer)?;
            // Warm up: a window without faults, where any failover is spurious.
            std::thread::sleep(timing.settle);
            let mut runs = Vec::new();
            let mut failed_in_a_row = 0;
            for n in 0.. {
                check_interrupted()?;
                if Instant::now() + FAULT_BUDGET > end {
                    break;
                }
                let run = faults::inject(cluster, n, origin, timing);
                println!(
                    "    {:>5} s  {:<21} {:<20} {}",
                    run.injected_ms / 1000,
                    run.fault.name(),
                    run.target,
                    run.error
                        .as_deref()
                        .map_or("ok".to_owned(), |e| format!("ERROR: {e}"))
                );
                failed_in_a_row = if run.error.is_some() {
                    failed_in_a_row + 1
                } else {
                    0
                };
                runs.push(run);
                if failed_in_a_row >= 3 {
                    println!("    three faults in a row could not be carried out: stopping early");
                    break;
                }
            }
            cluster.wait_healthy(timing.healthy_timeout)?;
            // A last stretch of traffic on the final master, as after every fault.
            std::thread::sleep(timing.settle);
            Ok((runs, workload.finish()?))
        })();
        stop.store(true, Ordering::Relaxed);
        let monitor = monitor
            .join()
            .map_err(|_| anyhow::anyhow!("the monitor thread panicked"))?;
        let (runs, records) = result?;
        Ok((runs, monitor, records))
    })?;
    let end_ms = ms_since(origin, Instant::now());

    let final_master = cluster.master()?;
    println!(
        "==> checking {} acknowledged writes on the final master {}",
        records.writer.acks.len(),
        final_master.addr()
    );
    let mut missing = Vec::new();
    for chunk in records.writer.acks.chunks(VERIFY_CHUNK) {
        let keys = chunk
            .iter()
            .map(|a| WriterRecord::key(PREFIX, a.id))
            .collect();
        for key in missing_keys(final_master, keys)? {
            let id = key
                .rsplit(':')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .with_context(|| format!("a key the writer did not write: {key}"))?;
            missing.push(id);
        }
    }
    missing.sort_unstable();

    let ms_of = |r: &LoopRecord| -> Vec<u32> {
        r.failures
            .iter()
            .map(|(t, _)| ms_since(origin, *t))
            .collect()
    };
    let published: Vec<(u64, u32)> = records
        .publisher
        .acks
        .iter()
        .map(|(n, t)| (*n, ms_since(origin, *t)))
        .collect();
    let has: Vec<Box<dyn Fn(u64) -> bool + '_>> = records
        .subscribers
        .iter()
        .map(|(_, r)| Box::new(move |n| r.has(n)) as Box<dyn Fn(u64) -> bool>)
        .collect();
    let received: Vec<&dyn Fn(u64) -> bool> = has.iter().map(|b| b.as_ref()).collect();
    let inputs = analysis::Inputs {
        runs: &runs,
        end_ms,
        acks: &records.writer.acks,
        missing: &missing,
        changes: &monitor.changes,
        published: &published,
        received: &received,
        read_failures: &ms_of(&records.reader),
        churn_failures: &ms_of(&records.churn),
    };
    let (occurrences, before) = analysis::analyse(&inputs);
    let trends = analysis::process_trends(&monitor.resources);
    let lost_before_first = (missing.len() as u64).saturating_sub(
        occurrences
            .iter()
            .map(|o| o.lost_confirmed + o.lost_unconfirmed)
            .sum::<u64>(),
    );
    let unknown_backend = records
        .writer
        .acks
        .iter()
        .filter(|a| a.backend == 0)
        .count();
    let mut notes = vec![
        "a master killed with kill -9 is restarted with the arguments it first had (backend 1 as a \
         master with an empty dataset, the others as replicas of backend 1); the controllers then \
         make it a replica of the current master"
            .to_owned(),
    ];
    if lost_before_first > 0 {
        notes.push(format!(
            "**{lost_before_first} acknowledged write(s) lost before the first fault**"
        ));
    }
    if unknown_backend > 0 {
        notes.push(format!(
            "{unknown_backend} acknowledgement(s) from a connection whose backend CLIENT INFO did not name"
        ));
    }
    let totals = report::Totals {
        header,
        acked: records.writer.acks.len() as u64,
        confirmed: records.writer.acks.iter().filter(|a| a.confirmed).count() as u64,
        write_failures: records.writer.failures,
        writer_connects: records.writer.connects,
        final_master: final_master.addr().to_string(),
        published: published.len() as u64,
        subscribers: records
            .subscribers
            .iter()
            .map(|(name, r)| (name.clone(), r.count, r.connects))
            .collect(),
        reads: (
            records.reader.acks.len() as u64,
            records.reader.failure_count,
        ),
        churn: (records.churn.acks.len() as u64, records.churn.failure_count),
        failovers_before_first_fault: before,
        maps_samples: monitor.maps_samples,
        maps_errors: monitor.maps_errors,
        notes,
    };
    let flows = analysis::flow_trend(&monitor.resources);
    let md = report::markdown(&runs, &occurrences, &trends, flows, &totals)?;
    let out = options.out.clone().unwrap_or_else(|| {
        redis_ha_tests::workspace_root()
            .join("bench-results")
            .join("soak")
    });
    report::write(&out, &md, &monitor.resources)?;
    println!("\n{md}");
    println!("==> wrote {} (summary.md, samples.csv)", out.display());
    let mut failed = report::failures(&runs, &occurrences, &trends, &totals);
    if lost_before_first > 0 {
        failed.push(format!(
            "{lost_before_first} write(s) lost before the first fault"
        ));
    }
    if !failed.is_empty() {
        bail!("the soak failed: {}", failed.join("; "));
    }
    Ok(())
}

fn wait_first_write(writer: &VerifiedWriter) -> Result<()> {
    redis_ha_tests::wait_until(
        "the first write through the VIP",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            if !writer.is_running() {
                bail!("the writer ended");
            }
            Ok((!writer.record().acks.is_empty()).then_some(()))
        },
    )
}
