//! `redis-ha-ctl run`: the executor around the pure failover machines. It probes every
//! backend, carries peer messages, performs the machines' actions in order (persisting votes
//! before they leave the host) and, on data-plane nodes, writes the result into the maps.
//!
//! One task owns all machines and the data plane, so decisions and map writes are strictly
//! ordered; probes, commands, the planned switchover's Redis I/O, the peer socket, the
//! data plane's counters and the Sentinel-compatible API run in their own tasks and talk to it
//! over channels. After each burst of steps it publishes a [`Status`] snapshot (a `watch`
//! channel read by the API and the HTTP endpoint), and every event it performs goes to the
//! [`EventHub`] (log, pub/sub).
//!
//! This file only wires the parts together; one job per module:
//! - [`control`]: the contract with the API and the CLI (requests, answers, events);
//! - `resume`: the machines a controller starts with, from the state file and the maps;
//! - `executor`: the event loop (accept inputs, step the machines, perform the actions), and
//!   its child `reload`: applying a reloaded config (`SIGHUP`);
//! - `floating`: the floating addresses' side of it (ownership actions, the ARP lease);
//! - `hostnames`: backend names looked up again while running, and what a change does;
//! - `warmup`: the pure rule holding back read-pool changes just after a start;
//! - `operator`: an operator's planned switchover, from the request to its answer;
//! - `redis_io`: probes, commands and the switchover's Redis calls;
//! - `peers`: the UDP peer socket, both ways;
//! - `boot`: the boot counter that tells a peer which start of ours a datagram comes from;
//! - `peer_boots`: the boot last heard from each peer, kept across our restarts;
//! - `snapshot`: building the [`Status`] from what the executor saw;
//! - `traffic`: the data plane's counters and the connection-table sweep, on their own task;
//! - [`privileges`]: the capabilities the config needs, all others given up at the start;
//! - `watchdog`: systemd's readiness and watchdog notifications.

mod boot;
pub mod control;
mod executor;
mod failpoint;
mod floating;
mod hostnames;
mod operator;
mod peer_boots;
mod peers;
pub mod privileges;
mod redis_io;
mod resume;
mod snapshot;
mod traffic;
mod warmup;
mod watchdog;

#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, future::Future, path::Path, sync::Arc, time::SystemTime};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{error, info, warn};

use self::{
    control::{ControlRequest, EventHub},
    executor::{Executor, Input, Parts},
    peers::PeerSender,
    resume::Machines,
    snapshot::Attached,
    traffic::TrafficReader,
};
use crate::{
    config::Config,
    dataplane::{
        Dataplane as _,
        bpf::{BpfDataplane, local_addresses},
    },
    ha::net::{AddressWorker, Addresses},
    http,
    metrics::Metrics,
    peer::PeerCodec,
    persist::StateStore,
    sentinel_api::{self, Api},
    status::Status,
};

/// `redis-ha-ctl run --config FILE`: runs the daemon with `cfg`, loaded from `config_path`,
/// until SIGINT or SIGTERM; SIGHUP reloads `config_path`.
pub async fn run_with_signals(cfg: Config, config_path: &Path) -> anyhow::Result<()> {
    if cfg.controller.is_none() {
        anyhow::bail!(
            "{}: no [controller] section: `run` needs one (id, listen, peers, secret)",
            config_path.display()
        );
    }
    // Caught from the start (its default action ends the process): a reload asked for while
    // the daemon starts waits for it, then applies.
    let (reload_tx, requests) = mpsc::channel(1);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP (reload) handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // Several signals before the executor takes the first are one reload: it reads the
            // file as it is then.
            if let Err(mpsc::error::TrySendError::Closed(())) = reload_tx.try_send(()) {
                return;
            }
        }
    });
    let reload = ReloadRequests {
        path: config_path.to_owned(),
        requests,
    };
    // The handlers are installed when the daemon first waits for its inputs, so a signal during
    // the start still ends the process at once (the default action). Installing one can only
    // fail for a signal the process may not catch; the daemon then stops at once, and says why.
    let failed = std::sync::OnceLock::new();
    let signals = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = sigterm.recv() => {}
                }
            }
            Err(e) => {
                let _ = failed.set(e);
            }
        }
    };
    run(cfg, Some(reload), signals).await?;
    match failed.into_inner() {
        Some(e) => Err(anyhow::Error::new(e).context("installing the SIGTERM handler")),
        None => Ok(()),
    }
}

/// Where a reload reads the config, and the requests for one (one `()` per request).
pub struct ReloadRequests {
    pub path: std::path::PathBuf,
    pub requests: mpsc::Receiver<()>,
}

/// Runs the daemon for `config` until `shutdown` completes, then releases the floating
/// addresses and returns; the data plane keeps forwarding (its program and maps are pinned).
/// The caller owns the shutdown signal and the reload requests, so a test can start, reload
/// and stop a daemon in-process.
pub async fn run(
    config: Config,
    reload: Option<ReloadRequests>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let ctl = config
        .controller
        .clone()
        .context("no [controller] section: `run` needs one (id, listen, peers, secret)")?;
    let start = Instant::now();
    let failpoint = failpoint::Failpoint::from_env()?;
    let (store, unreadable) = open_state(&ctl.state_file)?;
    // Counted (and durable) before the peer socket exists, so no datagram of this start leaves
    // with an id a peer may have seen.
    let boot = boot::next_boot(&ctl.state_file)?;
    info!(boot, "peer datagrams of this start carry boot id {boot}");
    // The election jitter must differ between controllers, not only between starts: the boot
    // counters of controllers installed together are close.
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ boot;
    let mut attached = None;
    // Only a node with a data plane delivers to its own redis-server.
    let local = match &config.dataplane {
        Some(_) => local_addresses(),
        None => BTreeSet::new(),
    };
    let mut dataplane = match &config.dataplane {
        Some(dpc) => {
            let (dp, attachments) =
                BpfDataplane::load_and_attach(dpc, config.has_local_backend(&local))?;
            let mut interfaces = Vec::new();
            for a in &attachments {
                info!(
                    interface = %a.interface,
                    mode = a.mode,
                    new = a.newly_attached,
                    peer_redirect = a.peer_redirect,
                    "data plane attached"
                );
                interfaces.push((a.interface.clone(), a.mode.to_owned()));
            }
            attached = Some(Attached {
                pin_dir: dp.pin_dir().to_owned(),
                interfaces,
            });
            Some(dp)
        }
        None => None,
    };
    let snapshot = match &dataplane {
        Some(dp) => Some(dp.snapshot()?),
        None => None,
    };
    let machines = Machines::start(
        &config,
        &ctl,
        &store,
        snapshot.as_ref(),
        &local,
        start,
        unreadable,
    )?;

    if let Some(dp) = dataplane.as_mut() {
        // Until elected, the program drops ARP requests for the floating addresses; without
        // [ha], no entry: ARP is left alone.
        let floating: Vec<std::net::Ipv4Addr> = config
            .ha
            .iter()
            .flat_map(|h| h.addresses.iter().map(|a| a.address))
            .collect();
        dp.set_floating_leases(&floating, 0)
            .context("clearing the floating addresses' ARP lease")?;
    }
    let ha_addresses = match (&config.ha, &config.dataplane) {
        (Some(h), Some(_)) => {
            let addresses = Addresses::new(h.addresses.clone())
                .context("managing the floating addresses (route netlink)")?;
            // Whatever a previous run left behind is not ours until the peers agree again:
            // answering ARP for it now could make two owners.
            addresses
                .release()
                .await
                .context("removing the floating addresses at start")?;
            info!(addresses = ?h.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(), priority = h.priority, "floating addresses released until this node is elected");
            Some(AddressWorker::spawn(addresses))
        }
        _ => None,
    };

    // Every background task: stopped once the executor returns, or (dropped) when the start
    // fails half-way.
    let mut tasks = JoinSet::new();
    let (tx, rx) = mpsc::channel::<Input>(1024);
    let socket = Arc::new(
        UdpSocket::bind(ctl.listen)
            .await
            .with_context(|| format!("binding the peer socket (UDP) {}", ctl.listen))?,
    );
    let api_listener = TcpListener::bind(ctl.listen).await.with_context(|| {
        format!(
            "binding the Sentinel-compatible API (TCP) {}: is another controller running?",
            ctl.listen
        )
    })?;
    let api_tls = match &ctl.tls {
        None => None,
        Some(t) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(
                t.server_config()
                    .map_err(|e| anyhow::anyhow!("controller.tls: {e}"))?,
            );
            let listener = TcpListener::bind(t.listen)
                .await
                .with_context(|| format!("binding the API's TLS port {}", t.listen))?;
            Some((listener, acceptor))
        }
    };
    let peer_ids: Vec<String> = ctl.peers.iter().map(|p| p.id.clone()).collect();
    let codec = PeerCodec::new(&ctl.id, &ctl.secret, peer_ids, boot);
    // Receiving needs its own codec state (replay windows); sealing stays in the executor.
    // They share the peers' boots: what one hears, the other addresses.
    let rx_codec = codec.twin();
    let names: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
    let (names_tx, names_rx) = watch::channel(names.clone());
    let metrics = Arc::new(Metrics::new());
    peers::spawn_receiver(
        &mut tasks,
        socket.clone(),
        rx_codec,
        names_rx,
        tx.clone(),
        metrics.clone(),
        peer_boots::path(&ctl.state_file),
    );
    // The executor owns the probes: a reload replaces them.
    let mut probes = JoinSet::new();
    redis_io::spawn_probes(&mut probes, &config.services, &ctl, &tx, &metrics)?;
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(executor::reload::catalog(&config)));
    let mut reload_path = None;
    if let Some(ReloadRequests { path, mut requests }) = reload {
        reload_path = Some(path);
        let tx = tx.clone();
        tasks.spawn(async move {
            while requests.recv().await.is_some() {
                if tx.send(Input::Reload).await.is_err() {
                    return;
                }
            }
        });
    }
    let watched = hostnames::Watched::of(&config.services);
    watched.announce();
    let (resolving, resolve_rx) = watch::channel(watched.names());
    hostnames::spawn_resolver(&mut tasks, resolve_rx, tx.clone());

    let (status_tx, status_rx) = watch::channel(Status::default());
    let events = Arc::new(EventHub::new());
    let api = Arc::new(Api {
        catalog: catalog_rx,
        status: status_rx.clone(),
        events: events.clone(),
        auth: ctl.api.clone(),
        control: {
            // The API's requests join the executor's input as `Input::Control`.
            let (control_tx, mut control_rx) = mpsc::channel::<ControlRequest>(16);
            let tx = tx.clone();
            tasks.spawn(async move {
                while let Some(request) = control_rx.recv().await {
                    if tx.send(Input::Control(request)).await.is_err() {
                        return;
                    }
                }
            });
            control_tx
        },
        listen: ctl.listen,
        started: start.into_std(),
        limits: ctl.api_limits.clone(),
        metrics: metrics.clone(),
        limit_log: Default::default(),
    });
    if !ctl.api.required() {
        warn!(
            listen = %ctl.listen,
            "the API has no password (controller.requirepass): anyone who can connect may fail over"
        );
    }
    if let Some((listener, acceptor)) = api_tls {
        tasks.spawn(sentinel_api::serve_tls(listener, api.clone(), acceptor));
    }
    tasks.spawn(sentinel_api::serve(api_listener, api));
    if let Some(addr) = ctl.metrics_listen {
        let (status_rx, metrics) = (status_rx.clone(), metrics.clone());
        tasks.spawn(async move {
            if let Err(e) = http::serve(addr, status_rx, metrics).await {
                error!(%addr, "the HTTP endpoint (/metrics, status page) stopped: {e:#}");
            }
        });
    }

    // The counters and the connection-table sweep get map handles of their own, so a sweep of
    // a full table never delays a failover decision.
    let (traffic_tx, traffic) = watch::channel(None);
    if let Some(a) = &attached {
        match TrafficReader::open(&a.pin_dir, traffic_tx) {
            Ok(reader) => {
                tasks.spawn(reader.run());
            }
            Err(e) => warn!("reading the data plane's counters: {e}"),
        }
    }

    let ex = Executor::new(Parts {
        services: config.services.clone(),
        ctl: ctl.clone(),
        start,
        store,
        machines,
        dataplane,
        attached,
        traffic,
        peers: PeerSender::new(socket, codec, &ctl.peers),
        ha_addresses,
        tx,
        status: status_tx,
        events,
        metrics,
        seed,
        failpoint,
        reloading: Some(executor::reload::Reloading {
            path: reload_path,
            running: config.clone(),
            local,
            probes,
            names: names_tx,
            catalog: catalog_tx,
        }),
        resolving: Some(resolving),
    });
    info!(id = %ctl.id, listen = %ctl.listen, services = names.len(), "controller started");
    watchdog::Watchdog::ready();
    ex.run(rx, shutdown).await;
    tasks.shutdown().await;
    info!("controller stopping; the data plane keeps forwarding (pinned)");
    Ok(())
}

/// Opens the state file and checks that its directory is writable: a controller that cannot
/// persist a vote must not vote, so a directory it can never write is an error at start. A
/// full file system only warns (room may come back; meanwhile the controller follows the
/// others and abstains). A file that cannot be read is not an error: the controller starts in
/// safe mode (returned: `true`), rather than failing on every restart.
fn open_state(path: &Path) -> anyhow::Result<(StateStore, bool)> {
    let (store, unreadable) = StateStore::open_or_recover(path);
    if let Err(e) = store.check_writable() {
        if !e.is_full() {
            return Err(anyhow::Error::new(e).context(format!(
                "the state file's directory is not writable: the controller must persist its \
                 votes there; make {} writable by this user (or set [controller] state_file to \
                 a writable place)",
                path.parent().unwrap_or(Path::new(".")).display()
            )));
        }
        warn!(
            "{e}: the file system is full; no vote leaves this controller until it can write its state again"
        );
    }
    if let Some(e) = &unreadable {
        error!(
            "{e}; starting in safe mode: no vote and no failover until a majority of the other controllers told the current epoch (a copy of the file is kept as {})",
            path.with_extension("unreadable").display()
        );
    }
    Ok((store, unreadable.is_some()))
}
