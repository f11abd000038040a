use std::{net::SocketAddrV4, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use redis_ha_ctl::commands;

/// redis-ha: a highly available front door for Redis in the kernel (XDP).
#[derive(Parser)]
#[command(version, about, long_about = None)]
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
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Detach the program from every interface and remove its pins.
    Unload {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Point a service's write port at another backend (new connections go there, old ones
    /// are reset). Example: redis-ha-ctl set-master -c FILE mymaster 198.18.1.12:6379
    SetMaster {
        #[arg(long, short)]
        config: PathBuf,
        service: String,
        addr: SocketAddrV4,
        /// Epoch to record (default: the current one + 1); older epochs are refused.
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Replace a service's read pool. Example: redis-ha-ctl set-read-pool -c FILE mymaster
    /// 198.18.1.12:6379 198.18.1.13:6379
    SetReadPool {
        #[arg(long, short)]
        config: PathBuf,
        service: String,
        addrs: Vec<SocketAddrV4>,
    },
    /// Show services, backends with their counters, packet counters and flows.
    Maps {
        #[arg(long, short)]
        config: PathBuf,
        /// How many flow-table entries to list.
        #[arg(long, default_value_t = 20)]
        flows: usize,
    },
    /// Validate a config and print it as it will be used.
    CheckConfig { config: PathBuf },
    /// Run the controller: probe the backends, agree with the peer controllers, fail over and
    /// (on data-plane nodes) keep the XDP maps up to date. Stops on SIGINT/SIGTERM; the data
    /// plane keeps forwarding. Example: redis-ha-ctl run --config /etc/redis-ha/redis-ha.toml
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn run_daemon(config: &std::path::Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(redis_ha_ctl::daemon::run(config))
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
