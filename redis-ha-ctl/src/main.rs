use std::{net::SocketAddrV4, path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use redis_ha_ctl::{assets, client, commands};

/// redis-ha: a highly available front door for Redis in the kernel (XDP).
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  \
        redis-ha-ctl check-config /etc/redis-ha/redis-ha.toml\n  \
        redis-ha-ctl run --config /etc/redis-ha/redis-ha.toml\n  \
        redis-ha-ctl status --config /etc/redis-ha/redis-ha.toml\n  \
        redis-ha-ctl events --config /etc/redis-ha/redis-ha.toml --follow\n  \
        redis-ha-ctl failover --config /etc/redis-ha/redis-ha.toml mymaster\n  \
        redis-cli -p 26379 SENTINEL get-master-addr-by-name mymaster\n\n\
        `redis-ha-ctl help COMMAND` shows a command's options and more examples."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it to the configured interfaces, pin it and fill the maps.
    ///
    /// Reuses what an earlier run pinned, keeping the current master and read pool of every
    /// service already known. Example: redis-ha-ctl load --config /etc/redis-ha/redis-ha.toml
    Load {
        /// The redis-ha config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Replace the running XDP program with the one this binary embeds, on every interface at
    /// once (BPF_LINK_UPDATE), keeping the maps: connections, state and counters carry over.
    ///
    /// For an upgrade of redis-ha-ctl whose map layouts are unchanged; one that changes them
    /// needs unload + load. Example: redis-ha-ctl upgrade --config /etc/redis-ha/redis-ha.toml
    Upgrade {
        /// The redis-ha config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Detach the program from every interface and remove its pins (forwarding stops).
    ///
    /// Example: redis-ha-ctl unload --config /etc/redis-ha/redis-ha.toml
    Unload {
        /// The redis-ha config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Point a service's write port at another backend, by hand.
    ///
    /// New connections go there, old ones are reset. A running controller follows only a newer
    /// epoch; prefer `failover`, which also promotes and demotes. Example:
    /// redis-ha-ctl set-master -c FILE mymaster 198.18.1.12:6379
    SetMaster {
        /// The redis-ha config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        service: String,
        addr: SocketAddrV4,
        /// Epoch to record (default: the current one + 1); older epochs are refused.
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Replace a service's read pool, by hand.
    ///
    /// Example: redis-ha-ctl set-read-pool -c FILE mymaster 198.18.1.12:6379 198.18.1.13:6379
    SetReadPool {
        /// The redis-ha config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        service: String,
        addrs: Vec<SocketAddrV4>,
    },
    /// Show the pinned maps: services, backends and their counters, packet counters, flows.
    ///
    /// Read straight from the maps (no controller needed).
    ///
    /// Examples: redis-ha-ctl maps -c FILE; redis-ha-ctl maps -c FILE --flows 100
    Maps {
        /// The redis-ha config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// How many flow-table entries to list.
        #[arg(long, default_value_t = 20)]
        flows: usize,
    },
    /// Validate a config and print it as it will be used.
    ///
    /// Prints every key with its effective value (defaults filled in; secrets not shown), as
    /// TOML, then, as comments, what the file leaves out and what follows from it (absent
    /// sections with their defaults, the starting state, the votes a failover needs). An
    /// error names the file, line, column and key, e.g.
    /// `redis-ha.toml:9:13: service[0].read_port: ...`; the exit status is then 1.
    ///
    /// Example: redis-ha-ctl check-config /etc/redis-ha/redis-ha.toml
    CheckConfig {
        /// The redis-ha config file (TOML).
        config: PathBuf,
    },
    /// Run the controller daemon (one of three, like Sentinels).
    ///
    /// Probes the backends, agrees with the peer controllers, fails over and (on data-plane
    /// nodes) keeps the XDP maps up to date; serves the Sentinel-compatible API on its `listen`
    /// port. Stops on SIGINT/SIGTERM; the data plane keeps forwarding. Example:
    /// redis-ha-ctl run --config /etc/redis-ha/redis-ha.toml
    Run {
        /// The redis-ha config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show what the running controller sees: masters, replicas, controllers, traffic.
    ///
    /// Per service: the VIP and ports, the master, every replica (up or down, role, lag, in the
    /// read pool or not), the epochs, the controllers and whether they agree; on a data-plane
    /// node also the attached interfaces (and their XDP mode) and per-backend traffic.
    ///
    /// Asks the controller named by the config's `[controller] listen` (its Sentinel-compatible
    /// port). Examples: redis-ha-ctl status --config /etc/redis-ha/redis-ha.toml;
    /// redis-ha-ctl status -c FILE --json | jq '.services[0].master'
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// The whole snapshot as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print the controller's recent events; with --follow, keep printing them.
    ///
    /// Events carry Sentinel's names and payloads (+sdown, +odown, +switch-master, ...), as
    /// Sentinel clients also receive them by SUBSCRIBE on the controller's port.
    ///
    /// Examples: redis-ha-ctl events -c FILE; redis-ha-ctl events -c FILE --follow;
    /// redis-ha-ctl events -c FILE --follow --json
    Events {
        #[command(flatten)]
        api: ApiArgs,
        /// Keep printing new events until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: move SERVICE's master without losing an acknowledged write.
    ///
    /// The controller pauses writes on the master (CLIENT PAUSE WRITE), waits until the new
    /// master's replication offset equals the old one's, promotes it, moves the write port,
    /// demotes the old master and resumes writes; it reports how long writes were paused. If
    /// the target does not catch up within --timeout, nothing is switched and writes resume.
    /// With the master down it is Sentinel's forced failover (no agreement needed).
    ///
    /// Examples: redis-ha-ctl failover -c FILE mymaster;
    /// redis-ha-ctl failover -c FILE mymaster --to 198.18.1.12:6379 --timeout 5000
    Failover {
        #[command(flatten)]
        api: ApiArgs,
        /// The service (Sentinel's master name), e.g. mymaster.
        service: String,
        /// The replica to promote (default: the best one, as Sentinel selects).
        #[arg(long)]
        to: Option<SocketAddrV4>,
        /// How long (ms) the new master may take to catch up, and again to be promoted, while
        /// writes are paused (default 2000, at most 10000).
        #[arg(long)]
        timeout: Option<u64>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the man pages and the bash, zsh and fish completions into DIR (`cargo xtask
    /// package` runs it on the binary it packages). Hidden: it is for packagers.
    #[command(hide = true)]
    GenerateAssets {
        /// Where to write: DIR/man/*.1 and DIR/completions/.
        dir: PathBuf,
    },
}

/// How `status`, `events` and `failover` reach a controller's API.
#[derive(Args)]
struct ApiArgs {
    /// The redis-ha config file (TOML): the controller's `listen` address, and the API
    /// password (`requirepass`/`requirepass_file`, `[[controller.users]]`) to AUTH with.
    #[arg(long, short)]
    config: PathBuf,
    /// AUTH as this user of the config's [[controller.users]] (default: requirepass's
    /// default user, else the first user with access "all").
    #[arg(long)]
    user: Option<String>,
}

impl ApiArgs {
    fn target(&self) -> anyhow::Result<client::ApiTarget> {
        client::api_target(&self.config, self.user.as_deref())
    }
}

fn run_daemon(config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = redis_ha_ctl::config::Config::load(config)?;
    // Before the runtime starts its threads: they inherit this thread's capabilities.
    let kept = redis_ha_ctl::daemon::privileges::keep_only_needed(&cfg)
        .map_err(|e| anyhow::anyhow!("giving up the capabilities the config does not need: {e}"))?;
    tracing::info!(capabilities = ?kept, "capabilities kept");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(redis_ha_ctl::daemon::run_with_signals(cfg, config))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load { config } => commands::load(&config),
        Command::Unload { config } => commands::unload(&config),
        Command::Upgrade { config } => commands::upgrade(&config),
        Command::SetMaster {
            config,
            service,
            addr,
            epoch,
        } => commands::set_master(&config, &service, addr, epoch),
        Command::SetReadPool {
            config,
            service,
            addrs,
        } => commands::set_read_pool(&config, &service, &addrs),
        Command::Maps { config, flows } => commands::maps(&config, flows),
        Command::CheckConfig { config } => commands::check_config(&config),
        Command::Run { config } => run_daemon(&config).map(|()| String::new()),
        Command::Status { api, json } => api.target().and_then(|t| client::status(&t, json)),
        Command::Events { api, follow, json } => {
            api.target().and_then(|t| client::events(&t, follow, json))
        }
        Command::Failover {
            api,
            service,
            to,
            timeout,
            json,
        } => api
            .target()
            .and_then(|t| client::failover(&t, &service, to, timeout, json)),
        Command::GenerateAssets { dir } => assets::write(Cli::command(), &dir),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redis-ha-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
