//! Turning the raw sections into typed values: every rule a config must follow, each
//! refusal naming the key and pointing at the value (or, for a value left out, its section).

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
};

use redis_ha_common::MAX_SERVICES;
use toml::Spanned;

use super::{
    Config, ControllerConfig, DataplaneConfig, FailoverConfig, HaAddress, HaConfig,
    MAX_BACKENDS_PER_SERVICE, NatMode, PeerConfig, ServiceConfig,
    api_auth::{RawApiAuth, validate_api_auth},
    api_limits,
    hosts::{BackendSpec, Resolver},
    load::{RawConfig, RawController, RawHa, RawService},
    nat,
};

/// A validation failure before it is given a file and line.
pub(super) struct Problem {
    pub span: Range<usize>,
    pub key: String,
    pub message: String,
}

pub(super) fn problem<T>(
    spanned: &Spanned<T>,
    key: impl Into<String>,
    message: impl Into<String>,
) -> Problem {
    let key = key.into();
    Problem {
        span: spanned.span(),
        message: format!("{key}: {}", message.into()),
        key,
    }
}

/// A key's value as written or, when the file leaves it out, its default, placed at the whole
/// section: that is where an operator adds the key to fix a problem with it.
fn or_default<T>(value: &Option<Spanned<T>>, default: T, section: &Range<usize>) -> Spanned<T>
where
    T: Clone,
{
    value
        .clone()
        .unwrap_or_else(|| Spanned::new(section.clone(), default))
}

/// What validation does with a `secret_file` it cannot read.
pub(super) enum SecretFiles<'a> {
    /// The daemon needs the secret: an unreadable file is the config's problem.
    Read,
    /// `check-config` on another host than the one deployed: the problem is noted here and
    /// the rest of the config is still checked and shown.
    Defer(&'a mut Vec<Problem>),
}

/// The config, or the first problem in it.
pub(super) fn validate(
    raw: RawConfig,
    mut secret_files: SecretFiles,
    resolver: &dyn Resolver,
) -> Result<Config, Problem> {
    let mut dataplane = raw
        .dataplane
        .as_ref()
        .map(super::dataplane::validate_dataplane)
        .transpose()?;
    let controller = raw
        .controller
        .as_ref()
        .map(|c| validate_controller(c, &mut secret_files))
        .transpose()?;
    if let (Some(dp), Some(ctl)) = (&mut dataplane, &controller) {
        dp.flow_hash_key = super::secret::flow_hash_key(&ctl.secret);
    }
    let ha = raw
        .ha
        .as_ref()
        .map(|ha| validate_ha(ha, dataplane.as_ref(), controller.as_ref()))
        .transpose()?;
    if raw.services.is_empty() {
        return Err(Problem {
            span: 0..0,
            key: "service".into(),
            message: "service: no [[service]] section: at least one service is required".into(),
        });
    }
    if raw.services.len() > MAX_SERVICES as usize {
        return Err(problem(
            &raw.services[MAX_SERVICES as usize],
            "service",
            format!("at most {MAX_SERVICES} services are supported"),
        ));
    }
    // Without a [controller] section (a data-plane-only node) the quorum is not used.
    let controllers = controller
        .as_ref()
        .map_or(usize::MAX, |c| c.peers.len() + 1);
    let mut seen = Taken::default();
    let services = raw
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| validate_service(i, s, controllers, &mut seen, resolver, &mut secret_files))
        .collect::<Result<Vec<_>, _>>()?;
    if let (Some(dp), Some(raw_dp)) = (&dataplane, &raw.dataplane)
        && dp.nat == NatMode::Full
    {
        let at = raw_dp
            .get_ref()
            .nat_ports
            .as_ref()
            .map_or(raw_dp.span(), Spanned::span);
        nat::check_ports_clear(dp.nat_ports, &services, at)?;
    }
    Ok(Config {
        dataplane,
        controller,
        ha,
        services,
    })
}

/// What the services so far have taken, which the next may not take again.
#[derive(Default)]
struct Taken {
    names: HashSet<String>,
    ports: HashSet<(Ipv4Addr, u16)>,
    backends: HashSet<SocketAddrV4>,
}

/// `service[i]`; `controllers` bounds its quorum. A backend name that does not resolve is
/// deferred like an unreadable secret file (check-config on another host).
fn validate_service(
    i: usize,
    spanned: &Spanned<RawService>,
    controllers: usize,
    seen: &mut Taken,
    resolver: &dyn Resolver,
    deferred: &mut SecretFiles,
) -> Result<ServiceConfig, Problem> {
    let section = spanned.span();
    let s = spanned.get_ref();
    let d = FailoverConfig::default();
    let key = |field: &str| format!("service[{i}].{field}");
    let name = s.name.get_ref();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(problem(
            &s.name,
            key("name"),
            format!("{name:?} is not a valid name (letters, digits, '-', '_', '.')"),
        ));
    }
    if !seen.names.insert(name.clone()) {
        return Err(problem(
            &s.name,
            key("name"),
            format!("{name:?} is used twice"),
        ));
    }
    let vip: Ipv4Addr = s.vip.get_ref().parse().map_err(|_| {
        problem(
            &s.vip,
            key("vip"),
            format!("{:?} is not an IPv4 address", s.vip.get_ref()),
        )
    })?;
    if vip.is_unspecified() || vip.is_broadcast() || vip.is_multicast() {
        return Err(problem(
            &s.vip,
            key("vip"),
            format!("{vip} cannot be a VIP"),
        ));
    }
    for (field, port) in [("write_port", &s.write_port), ("read_port", &s.read_port)] {
        if *port.get_ref() == 0 {
            return Err(problem(port, key(field), "port 0 is not a valid port"));
        }
        if !seen.ports.insert((vip, *port.get_ref())) {
            return Err(problem(
                port,
                key(field),
                format!("{vip}:{} is already used by another port", port.get_ref()),
            ));
        }
    }
    let list = s.backends.get_ref();
    if list.is_empty() {
        return Err(problem(
            &s.backends,
            key("backends"),
            "needs at least one backend",
        ));
    }
    if list.len() > MAX_BACKENDS_PER_SERVICE {
        return Err(problem(
            &s.backends,
            key("backends"),
            format!("at most {MAX_BACKENDS_PER_SERVICE} backends per service"),
        ));
    }
    let resolve_hostnames = s.resolve_hostnames.unwrap_or(false);
    let announce_hostnames = s.announce_hostnames.as_ref().is_some_and(|a| *a.get_ref());
    if announce_hostnames && !resolve_hostnames {
        let at = s.announce_hostnames.as_ref().expect("set: it is true");
        return Err(problem(
            at,
            key("announce_hostnames"),
            "needs resolve_hostnames = true (names can only be announced for backends given by name)",
        ));
    }
    let mut addrs = Vec::new();
    let mut specs = Vec::new();
    for (j, b) in list.iter().enumerate() {
        let bkey = format!("service[{i}].backends[{j}]");
        let spec = BackendSpec::parse(b.get_ref()).map_err(|e| problem(b, bkey.clone(), e))?;
        let addr = match &spec {
            BackendSpec::Addr(addr) => *addr,
            BackendSpec::Host { name, .. } if !resolve_hostnames => {
                return Err(problem(
                    b,
                    bkey,
                    format!(
                        "{name:?} is a host name: set resolve_hostnames = true in this \
                         [[service]] to give backends by name"
                    ),
                ));
            }
            BackendSpec::Host { name, port } => match resolver.resolve(name) {
                Ok(ip) => SocketAddrV4::new(ip, *port),
                Err(e) => {
                    let unresolved = problem(
                        b,
                        bkey,
                        format!(
                            "{e}: the controller does not start until every backend name \
                             resolves (check /etc/hosts or DNS)"
                        ),
                    );
                    match deferred {
                        SecretFiles::Read => return Err(unresolved),
                        SecretFiles::Defer(problems) => {
                            problems.push(unresolved);
                            addrs.push(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, *port));
                            specs.push(spec);
                            continue;
                        }
                    }
                }
            },
        };
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(problem(b, bkey, format!("{addr} is not a usable backend")));
        }
        if !seen.backends.insert(addr) {
            let named = match &spec {
                BackendSpec::Host { name, .. } => format!(" ({name} resolves to it)"),
                BackendSpec::Addr(_) => String::new(),
            };
            return Err(problem(
                b,
                bkey,
                format!("{addr} is listed twice{named} (a backend serves one service)"),
            ));
        }
        addrs.push(addr);
        specs.push(spec);
    }
    let quorum = or_default(&s.quorum, d.quorum, &section);
    let down_after_ms = or_default(&s.down_after_ms, d.down_after_ms, &section);
    let failover_timeout_ms = or_default(&s.failover_timeout_ms, d.failover_timeout_ms, &section);
    let parallel_syncs = or_default(&s.parallel_syncs, d.parallel_syncs, &section);
    let quorum_value = *quorum.get_ref();
    if quorum_value == 0 || quorum_value > controllers {
        return Err(problem(
            &quorum,
            key("quorum"),
            format!(
                "{quorum_value} must be between 1 and the number of controllers ({controllers})"
            ),
        ));
    }
    let down_after = *down_after_ms.get_ref();
    if down_after < 50 {
        return Err(problem(
            &down_after_ms,
            key("down_after_ms"),
            format!(
                "{down_after} ms is too short to tell a slow reply from a failure (minimum 50)"
            ),
        ));
    }
    if *failover_timeout_ms.get_ref() < down_after {
        return Err(problem(
            &failover_timeout_ms,
            key("failover_timeout_ms"),
            "must be at least down_after_ms",
        ));
    }
    if *parallel_syncs.get_ref() == 0 {
        return Err(problem(
            &parallel_syncs,
            key("parallel_syncs"),
            "must be at least 1",
        ));
    }
    let tls = s
        .tls
        .as_ref()
        .map(|t| super::tls::validate_tls(t, &format!("service[{i}].tls"), deferred))
        .transpose()?;
    Ok(ServiceConfig {
        name: name.clone(),
        vip,
        write_port: *s.write_port.get_ref(),
        read_port: *s.read_port.get_ref(),
        backends: addrs,
        backend_specs: specs,
        resolve_hostnames,
        announce_hostnames,
        failover: FailoverConfig {
            quorum: quorum_value,
            down_after_ms: down_after,
            failover_timeout_ms: failover_timeout_ms.into_inner(),
            parallel_syncs: parallel_syncs.into_inner(),
            max_replica_lag_ms: s.max_replica_lag_ms.unwrap_or(d.max_replica_lag_ms),
            read_from_master: s.read_from_master.unwrap_or(d.read_from_master),
            auth: s.auth.clone(),
        },
        tls,
    })
}

fn validate_controller(
    c: &Spanned<RawController>,
    secret_files: &mut SecretFiles,
) -> Result<ControllerConfig, Problem> {
    let raw = c.get_ref();
    let valid_id = |id: &str| {
        !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !valid_id(raw.id.get_ref()) {
        return Err(problem(
            &raw.id,
            "controller.id",
            format!(
                "{:?} is not a valid id (letters, digits, '-', '_', '.')",
                raw.id.get_ref()
            ),
        ));
    }
    let addr = |v: &Spanned<String>, key: String| {
        v.get_ref()
            .parse::<std::net::SocketAddr>()
            .map_err(|_| problem(v, key, format!("{:?} is not an address:port", v.get_ref())))
    };
    let listen = addr(&raw.listen, "controller.listen".into())?;
    let mut ids = HashSet::from([raw.id.get_ref().clone()]);
    let mut peers = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let p = p.get_ref();
        if !valid_id(p.id.get_ref()) || !ids.insert(p.id.get_ref().clone()) {
            return Err(problem(
                &p.id,
                format!("controller.peers[{i}].id"),
                format!(
                    "{:?} is invalid or not unique among the controllers",
                    p.id.get_ref()
                ),
            ));
        }
        peers.push(PeerConfig {
            id: p.id.get_ref().clone(),
            addr: addr(&p.addr, format!("controller.peers[{i}].addr"))?,
        });
    }
    let secret = match (&raw.secret, &raw.secret_file) {
        (Some(s), None) => Some(s.get_ref().clone()),
        (None, Some(f)) => read_secret_file(f, "controller.secret_file", secret_files)?,
        _ => {
            return Err(Problem {
                span: c.span(),
                key: "controller.secret".into(),
                message: "controller.secret: set exactly one of `secret` and `secret_file`".into(),
            });
        }
    };
    if secret.as_ref().is_some_and(|s| s.len() < 16) {
        let at = raw
            .secret
            .as_ref()
            .or(raw.secret_file.as_ref())
            .map_or(c.span(), |s| s.span());
        return Err(Problem {
            span: at,
            key: "controller.secret".into(),
            message: "controller.secret: use at least 16 characters".into(),
        });
    }
    let probe_interval_ms = or_default(
        &raw.probe_interval_ms,
        ControllerConfig::DEFAULT_PROBE_INTERVAL_MS,
        &c.span(),
    );
    let interval = *probe_interval_ms.get_ref();
    if !(10..=10_000).contains(&interval) {
        return Err(problem(
            &probe_interval_ms,
            "controller.probe_interval_ms",
            "must be between 10 and 10000",
        ));
    }
    let api = validate_api_auth(
        RawApiAuth {
            section: &c.span(),
            requirepass: raw.requirepass.as_ref(),
            requirepass_file: raw.requirepass_file.as_ref(),
            users: &raw.users,
            allow_unauthenticated_reads: raw.allow_unauthenticated_reads,
        },
        secret_files,
    )?;
    let tls = raw
        .tls
        .as_ref()
        .map(|t| super::api_tls::validate_api_tls(t, listen, secret_files))
        .transpose()?;
    Ok(ControllerConfig {
        id: raw.id.get_ref().clone(),
        listen,
        peers,
        secret: secret.unwrap_or_default(),
        secret_file: raw.secret_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
        state_file: raw.state_file.as_ref().map_or_else(
            || ControllerConfig::default_state_file(raw.id.get_ref()),
            |p| PathBuf::from(p.get_ref()),
        ),
        probe_interval_ms: interval,
        api_limits: api_limits::validate(c)?,
        metrics_listen: raw
            .metrics_listen
            .as_ref()
            .map(|m| addr(m, "controller.metrics_listen".into()))
            .transpose()?,
        api,
        tls,
    })
}

/// A secret kept in a file (`secret_file`, `requirepass_file`, ...), trimmed of the newline
/// `echo` and editors add. `None` when the file cannot be read and `secret_files` defers the
/// problem (`check-config` on another host).
pub(super) fn read_secret_file(
    file: &Spanned<String>,
    key: &str,
    secret_files: &mut SecretFiles,
) -> Result<Option<String>, Problem> {
    match super::secret::read(Path::new(file.get_ref())) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            let unreadable = problem(file, key, e);
            match secret_files {
                SecretFiles::Read => Err(unreadable),
                SecretFiles::Defer(deferred) => {
                    deferred.push(unreadable);
                    Ok(None)
                }
            }
        }
    }
}

fn validate_ha(
    ha: &Spanned<RawHa>,
    dataplane: Option<&DataplaneConfig>,
    controller: Option<&ControllerConfig>,
) -> Result<HaConfig, Problem> {
    let raw = ha.get_ref();
    let whole = |message: &str| Problem {
        span: ha.span(),
        key: "ha".into(),
        message: format!("ha: {message}"),
    };
    let Some(dataplane) = dataplane else {
        return Err(whole(
            "needs a [dataplane] section: only a data-plane node can hold the floating addresses",
        ));
    };
    let Some(controller) = controller else {
        return Err(whole(
            "needs a [controller] section: the controllers agree which node holds the addresses",
        ));
    };
    if controller.peers.len() == 1 {
        return Err(whole(
            "two controllers cannot take over from each other (the holder needs a majority of \
             all controllers): add a third, vote-only controller to controller.peers",
        ));
    }
    let d = HaConfig::default();
    let section = ha.span();
    let priority = or_default(&raw.priority, d.priority.into(), &section);
    let heartbeat_ms = or_default(&raw.heartbeat_ms, d.heartbeat_ms, &section);
    let down_after_ms = or_default(&raw.down_after_ms, d.down_after_ms, &section);
    let priority_value = *priority.get_ref();
    if !(1..=255).contains(&priority_value) {
        return Err(problem(
            &priority,
            "ha.priority",
            format!("{priority_value} must be between 1 and 255"),
        ));
    }
    let heartbeat = *heartbeat_ms.get_ref();
    if !(10..=10_000).contains(&heartbeat) {
        return Err(problem(
            &heartbeat_ms,
            "ha.heartbeat_ms",
            format!("{heartbeat} must be between 10 and 10000"),
        ));
    }
    let down_after = *down_after_ms.get_ref();
    if down_after < 3 * heartbeat {
        return Err(problem(
            &down_after_ms,
            "ha.down_after_ms",
            format!(
                "{down_after} ms must be at least 3 heartbeats ({} ms): one lost datagram must not move the VIP",
                3 * heartbeat
            ),
        ));
    }
    if raw.addresses.get_ref().is_empty() {
        return Err(problem(
            &raw.addresses,
            "ha.addresses",
            "lists no address: name the VIP (and the backends' gateway) as \"198.18.0.100/24 dev eth0\"",
        ));
    }
    let mut addresses: Vec<HaAddress> = Vec::new();
    for (i, entry) in raw.addresses.get_ref().iter().enumerate() {
        let key = format!("ha.addresses[{i}]");
        let text = entry.get_ref();
        let bad = || {
            problem(
                entry,
                key.clone(),
                format!("{text:?} is not like \"198.18.0.100/24 dev eth0\""),
            )
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let [net, "dev", interface] = words[..] else {
            return Err(bad());
        };
        let (address, len) = net.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if prefix_len > 32 || address.is_unspecified() || address.is_multicast() {
            return Err(bad());
        }
        if !dataplane.interfaces.iter().any(|i| i == interface) {
            return Err(problem(
                entry,
                key,
                format!(
                    "{interface:?} is not in dataplane.interfaces: traffic to a floating address must arrive where the XDP program runs"
                ),
            ));
        }
        if addresses.iter().any(|a| a.address == address) {
            return Err(problem(entry, key, format!("{address} is listed twice")));
        }
        addresses.push(HaAddress {
            address,
            prefix_len,
            interface: interface.to_owned(),
        });
    }
    Ok(HaConfig {
        priority: priority_value as u8,
        preempt: raw.preempt.unwrap_or(d.preempt),
        heartbeat_ms: heartbeat,
        down_after_ms: down_after,
        addresses,
    })
}
