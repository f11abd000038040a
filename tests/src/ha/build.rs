//! Building the HA testbed: namespaces, links, backends and the controllers' configs.

use super::*;

impl HaCluster {
    /// Builds the switch, the client, both LB nodes, the backends (waiting for replication) and
    /// k3; writes the three controller configs; starts the controllers and waits until both data
    /// planes serve backend 1 as master with both replicas readable (and, with
    /// [`HaOptions::ha_section`], until exactly one LB holds the floating addresses). Needs
    /// root.
    pub fn up(options: HaOptions) -> Result<HaCluster> {
        crate::testbed::check_can_build(&options.tag, &options.secret)?;
        let tag = options.tag.clone();
        let prefix = namespace_prefix(&tag);
        let stale = leftovers(&prefix)?;
        if !stale.is_empty() {
            let hint = if tag == "tb" {
                "`cargo xtask testbed down`".to_owned()
            } else {
                format!("`redis_ha_tests::cleanup_prefix(\"{prefix}\")`")
            };
            bail!("testbed {tag} already exists ({stale}): remove it with {hint}");
        }
        let dir = DirGuard {
            path: temp_dir(&tag),
            armed: true,
        };
        std::fs::create_dir_all(dir.path.join("controllers"))
            .with_context(|| format!("creating {}", dir.path.display()))?;
        let name = |role: &str| format!("{prefix}{role}");

        let sw = Netns::create(&name("sw"))?;
        let client_bridge = name("bc");
        let backend_bridge = name("bb");
        for bridge in [&client_bridge, &backend_bridge] {
            sw.ip(&["link", "add", bridge, "type", "bridge"])?;
            sw.ip(&["link", "set", bridge, "up"])?;
        }
        let client = Netns::create(&name("client"))?;
        let client_interface = name("c");
        plug(&sw, &client, &client_interface, &name("pc"), &client_bridge)?;
        setup_on_link_endpoint(&client, &client_interface, CLIENT_IP, options.xdp_mode)?;

        let mut lbs = Vec::new();
        for n in 1..=LB_NODES {
            let ns = Netns::create(&name(&format!("lb{n}")))?;
            let node = LbNode {
                n,
                client_interface: name(&format!("{n}c")),
                backend_interface: name(&format!("{n}b")),
                switch_ports: [name(&format!("c{n}")), name(&format!("b{n}"))],
                pin_dir: pin_dir(&tag).join(format!("lb{n}")),
                ns,
            };
            plug(
                &sw,
                &node.ns,
                &node.client_interface,
                &node.switch_ports[0],
                &client_bridge,
            )?;
            plug(
                &sw,
                &node.ns,
                &node.backend_interface,
                &node.switch_ports[1],
                &backend_bridge,
            )?;
            setup_lb(&node)?;
            // The switch ports receive what the LB's XDP program redirects (docs/building.md, "XDP redirects between veths").
            for port in &node.switch_ports {
                sw.run("ethtool", &["-K", port, "gro", "on"])?;
            }
            lbs.push(node);
        }

        let mut backends = Vec::new();
        for n in 1..=BACKENDS {
            let ns = Netns::create(&name(&format!("r{n}")))?;
            let interface = name(&format!("r{n}"));
            let port = name(&format!("s{n}"));
            plug(&sw, &ns, &interface, &port, &backend_bridge)?;
            setup_endpoint(
                &ns,
                &interface,
                &format!("{}/{PREFIX_LEN}", backend_ip(n)),
                GATEWAY,
                options.xdp_mode,
            )?;
            backends.push(Backend::new(
                n,
                ns,
                interface,
                port,
                dir.path.join(format!("r{n}")),
                // Redis defaults (repl-ping-replica-period 10 s included): the read pool
                // must not flap with an idle master, and both data planes must agree on it.
                &[],
            )?);
        }

        let k3 = Netns::create(&name("k3"))?;
        plug(&sw, &k3, &name("k3"), &name("pk"), &backend_bridge)?;
        k3.ip(&[
            "addr",
            "add",
            &format!("{K3_IP}/{PREFIX_LEN}"),
            "dev",
            &name("k3"),
        ])?;
        k3.ip(&["link", "set", &name("k3"), "up"])?;

        let mut cluster = HaCluster {
            controllers: Vec::new(),
            backends,
            lbs,
            client,
            client_interface,
            k3,
            sw,
            client_bridge,
            backend_bridge,
            options,
            dir,
            armed: true,
        };
        for b in &cluster.backends {
            b.start()?;
        }
        wait_replication(&cluster.backends)?;

        for ctl in 1..=3 {
            let id = controller_id(ctl);
            let (config_path, log_path, state_path) =
                cluster::controller_files(&cluster.dir.path, &id);
            std::fs::write(&config_path, cluster.config_toml(ctl, &state_path))
                .with_context(|| format!("writing {}", config_path.display()))?;
            let ns_name = cluster.controller_netns(ctl).name().to_owned();
            cluster.controllers.push(Controller::new(
                &id,
                &ns_name,
                controller_listen(ctl),
                config_path,
                log_path,
                state_path,
            ));
        }
        // redis-ha-ctl checks that the parent of its pin directory is on bpffs, so the
        // testbed's own directory must exist before the per-node ones.
        let pins = cluster.pin_dir();
        std::fs::create_dir_all(&pins).with_context(|| format!("creating {}", pins.display()))?;
        for c in &cluster.controllers {
            c.start()?;
        }
        cluster.wait_dataplanes(HEALTHY_TIMEOUT)?;
        if cluster.options.ha_section {
            let timeout = Duration::from_secs(10)
                + Duration::from_millis(4 * cluster.options.ha_down_after_ms);
            cluster.wait_single_holder(timeout)?;
        }
        for c in &cluster.controllers {
            if let Some(started) = c.started_at() {
                std::thread::sleep(PEER_WARMUP.saturating_sub(started.elapsed()));
            }
        }
        Ok(cluster)
    }

    /// The TOML of controller `ctl` (1: lb1, 2: lb2, 3: c3).
    fn config_toml(&self, ctl: usize, state_file: &Path) -> String {
        let o = &self.options;
        let list = |items: &[String]| {
            items
                .iter()
                .map(|s| toml_string(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut toml = String::new();
        if let Some(lb) = self.lbs.get(ctl - 1) {
            toml += &format!(
                "[dataplane]\n\
                 interfaces = [{interfaces}]\n\
                 backend_interfaces = [{backend_interface}]\n\
                 xdp_mode = {mode}\n\
                 pin_dir = {pin_dir}\n\
                 client_networks = [{networks}]\n\n",
                interfaces = list(&lb.interfaces().map(str::to_owned)),
                backend_interface = toml_string(lb.interfaces()[1]),
                mode = toml_string(o.xdp_mode.as_str()),
                pin_dir = toml_string(&lb.pin_dir.display().to_string()),
                networks = toml_string(CLIENT_NETWORK),
            );
            if o.ha_section {
                let addresses: Vec<String> = lb
                    .floating_addresses()
                    .iter()
                    .map(|(addr, dev)| format!("{addr}/{PREFIX_LEN} dev {dev}"))
                    .collect();
                toml += &format!(
                    "[ha]\n\
                     priority = {priority}\n\
                     preempt = {preempt}\n\
                     heartbeat_ms = {heartbeat}\n\
                     down_after_ms = {down_after}\n\
                     addresses = [{addresses}]\n\n",
                    priority = o.priorities[ctl - 1],
                    preempt = o.preempt,
                    heartbeat = o.heartbeat_ms,
                    down_after = o.ha_down_after_ms,
                    addresses = list(&addresses),
                );
            }
        }
        let backends: Vec<String> = self.backends.iter().map(|b| b.addr().to_string()).collect();
        let peers: Vec<(String, SocketAddrV4)> = (1..=3)
            .filter(|&p| p != ctl)
            .map(|p| (controller_id(p), controller_listen(p)))
            .collect();
        toml += &format!(
            "[[service]]\n\
             name = {name}\n\
             vip = {vip}\n\
             write_port = {WRITE_PORT}\n\
             read_port = {READ_PORT}\n\
             backends = [{backends}]\n",
            name = toml_string(SERVICE_NAME),
            vip = toml_string(&VIP.to_string()),
            backends = list(&backends),
        );
        toml += &ControllerToml {
            quorum: o.quorum,
            down_after_ms: o.down_after_ms,
            failover_timeout_ms: o.failover_timeout_ms,
            id: &controller_id(ctl),
            listen: controller_listen(ctl),
            secret: &o.secret,
            state_file,
            probe_interval_ms: o.probe_interval_ms,
            metrics_listen: SocketAddrV4::new(*controller_listen(ctl).ip(), METRICS_PORT),
            peers: &peers,
            extra: "",
        }
        .render();
        toml
    }
}

/// `lb1`, `lb2`, `c3`.
fn controller_id(ctl: usize) -> String {
    match ctl {
        1..=LB_NODES => format!("lb{ctl}"),
        _ => format!("c{ctl}"),
    }
}

/// Where controller `ctl` listens (peer UDP and the Sentinel API): its node's address on the
/// backend segment.
fn controller_listen(ctl: usize) -> SocketAddrV4 {
    let ip = if ctl <= LB_NODES {
        lb_backend_ip(ctl)
    } else {
        K3_IP
    };
    SocketAddrV4::new(ip, PEER_PORT)
}

/// A veth `inside` in `ns`, its peer `port` on `bridge` in the switch namespace `sw`, the port up.
pub(crate) fn plug(sw: &Netns, ns: &Netns, inside: &str, port: &str, bridge: &str) -> Result<()> {
    sw.add_veth(port, inside, ns)?;
    sw.ip(&["link", "set", port, "master", bridge])?;
    sw.ip(&["link", "set", port, "up"])
        .map(drop)
        .with_context(|| format!("plugging {inside} of {} into {bridge}", ns.name()))
}

/// The client: its address on the client segment, no gateway (the VIP is on-link, and it must
/// reach the backends only through the VIP).
pub(crate) fn setup_on_link_endpoint(
    ns: &Netns,
    interface: &str,
    ip: Ipv4Addr,
    mode: XdpMode,
) -> Result<()> {
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{PREFIX_LEN}"),
        "dev",
        interface,
    ])?;
    ns.ip(&["link", "set", interface, "up"])?;
    // Full checksums and no segmentation offload on what the client sends for the XDP modes,
    // which update checksums incrementally (docs/building.md, "XDP redirects between veths"); the TC hook takes veth's defaults.
    if matches!(mode, XdpMode::Native | XdpMode::Skb) {
        ns.run(
            "ethtool",
            &["-K", interface, "tx", "off", "tso", "off", "gso", "off"],
        )?;
    }
    Ok(())
}

/// Addresses, forwarding and reverse-path filtering of an LB node.
fn setup_lb(lb: &LbNode) -> Result<()> {
    let ns = &lb.ns;
    ns.set_sysctl("net.ipv4.ip_forward", "1")?;
    // rp_filter off because XDP-rewritten replies arrive from addresses the reverse path check
    // would reject.
    for scope in [
        "all",
        "default",
        &lb.client_interface,
        &lb.backend_interface,
    ] {
        ns.set_sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
    }
    for (dev, ip) in [
        (&lb.client_interface, lb.client_ip()),
        (&lb.backend_interface, lb.backend_ip()),
    ] {
        ns.ip(&["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}
