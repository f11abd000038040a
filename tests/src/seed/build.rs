//! Building the seed topology: the switch, the nodes with their redis-servers, the clients,
//! the router, and the controllers' configs.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};

use super::{
    HEALTHY_TIMEOUT, NAT_PORTS, NODES, PREFIX_LEN, ROUTED_CLIENT_IP, ROUTED_GATEWAY,
    ROUTED_NETWORK, ROUTER_IP, SeedCluster, SeedNode, SeedOptions, controller_id,
    controller_listen, node_ip,
};
use crate::cluster::{self, Controller, ControllerToml, METRICS_PORT};
use crate::ha::{plug, setup_on_link_endpoint};
use crate::netns::{Netns, leftovers};
use crate::testbed::{
    Backend, CLIENT_IP, DirGuard, READ_PORT, SERVICE_NAME, VIP, WRITE_PORT, XdpMode,
    namespace_prefix, pin_dir, temp_dir, toml_string, wait_replication,
};

impl SeedCluster {
    /// Builds the switch, the three nodes (redis-servers replicating r1), the clients and the
    /// router; starts the controllers and waits until the service is healthy with one VIP
    /// holder. Needs root.
    pub fn up(options: SeedOptions) -> Result<SeedCluster> {
        crate::testbed::check_can_build(&options.tag, &options.secret)?;
        let tag = options.tag.clone();
        let prefix = namespace_prefix(&tag);
        let stale = leftovers(&prefix)?;
        if !stale.is_empty() {
            bail!(
                "testbed {tag} already exists ({stale}): remove it with `redis_ha_tests::cleanup_prefix(\"{prefix}\")`{}",
                if tag == "tb" {
                    " or `cargo xtask testbed down`"
                } else {
                    ""
                }
            );
        }
        let dir = DirGuard {
            path: temp_dir(&tag),
            armed: true,
        };
        std::fs::create_dir_all(dir.path.join("controllers"))
            .with_context(|| format!("creating {}", dir.path.display()))?;
        let name = |role: &str| format!("{prefix}{role}");
        let mode = options.xdp_mode;

        let sw = Netns::create(&name("sw"))?;
        let bridge = name("br");
        sw.ip(&["link", "add", &bridge, "type", "bridge"])?;
        sw.ip(&["link", "set", &bridge, "up"])?;

        let client = Netns::create(&name("c"))?;
        let client_interface = name("c");
        plug(&sw, &client, &client_interface, &name("pc"), &bridge)?;
        setup_on_link_endpoint(&client, &client_interface, CLIENT_IP, mode)?;
        route_via_router(&client)?;

        let router = Netns::create(&name("gw"))?;
        plug(&sw, &router, &name("g0"), &name("pg"), &bridge)?;
        setup_on_link_endpoint(&router, &name("g0"), ROUTER_IP, mode)?;
        router.set_sysctl("net.ipv4.ip_forward", "1")?;
        let routed_client = Netns::create(&name("rc"))?;
        router.add_veth(&name("g1"), &name("rc"), &routed_client)?;
        setup_on_link_endpoint(&router, &name("g1"), ROUTED_GATEWAY, mode)?;
        setup_on_link_endpoint(&routed_client, &name("rc"), ROUTED_CLIENT_IP, mode)?;
        routed_client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &ROUTED_GATEWAY.to_string(),
        ])?;

        let mut nodes = Vec::new();
        for n in 1..=NODES {
            let ns = Netns::create(&name(&format!("r{n}")))?;
            let interface = name(&format!("r{n}"));
            let port = name(&format!("s{n}"));
            plug(&sw, &ns, &interface, &port, &bridge)?;
            setup_node(&ns, &interface, node_ip(n), mode)?;
            // The switch port receives what the node's program redirects out of its veth.
            sw.run("ethtool", &["-K", &port, "gro", "on"])?;
            let replica_of = (n > 1).then(|| node_ip(1));
            let redis = Backend::at(
                n,
                node_ip(n),
                replica_of,
                ns,
                interface,
                port,
                dir.path.join(format!("r{n}")),
                &[],
            )?;
            nodes.push(SeedNode {
                redis,
                pin_dir: pin_dir(&tag).join(format!("r{n}")),
            });
        }

        let mut cluster = SeedCluster {
            controllers: Vec::new(),
            nodes,
            failed: Mutex::new([false; NODES]),
            client,
            client_interface,
            router,
            routed_client,
            sw,
            bridge,
            options,
            dir,
            armed: true,
        };
        for node in &cluster.nodes {
            node.redis.start()?;
        }
        let servers: Vec<&Backend> = cluster.nodes.iter().map(|n| &n.redis).collect();
        wait_replication(&servers)?;

        for n in 1..=NODES {
            let id = controller_id(n);
            let (config_path, log_path, state_path) =
                cluster::controller_files(&cluster.dir.path, &id);
            std::fs::write(&config_path, cluster.config_toml(n, &state_path))
                .with_context(|| format!("writing {}", config_path.display()))?;
            let ns_name = cluster.node(n).netns().name().to_owned();
            cluster.controllers.push(Controller::new(
                &id,
                &ns_name,
                controller_listen(n),
                config_path,
                log_path,
                state_path,
            ));
        }
        // redis-ha-ctl checks that the parent of its pin directory is on bpffs.
        let pins = pin_dir(&tag);
        std::fs::create_dir_all(&pins).with_context(|| format!("creating {}", pins.display()))?;
        if !cluster.options.start_controllers {
            return Ok(cluster);
        }
        for c in &cluster.controllers {
            c.start()?;
        }
        cluster.wait_healthy(HEALTHY_TIMEOUT)?;
        Ok(cluster)
    }

    /// The TOML of node `n`'s controller.
    fn config_toml(&self, n: usize, state_file: &Path) -> String {
        let o = &self.options;
        let node = self.node(n);
        let mut toml = format!(
            "[dataplane]\n\
             interfaces = [{interface}]\n\
             xdp_mode = {mode}\n\
             pin_dir = {pin_dir}\n",
            interface = toml_string(node.interface()),
            mode = toml_string(o.xdp_mode.as_str()),
            pin_dir = toml_string(&node.pin_dir.display().to_string()),
        );
        if o.full_nat {
            toml += &format!(
                "nat = \"full\"\n\
                 nat_address = {addr}\n\
                 nat_ports = {ports}\n",
                addr = toml_string(&node.ip().to_string()),
                ports = toml_string(NAT_PORTS),
            );
        }
        toml += &format!(
            "\n[ha]\n\
             priority = {priority}\n\
             preempt = false\n\
             heartbeat_ms = {heartbeat}\n\
             down_after_ms = {down_after}\n\
             addresses = [{address}]\n\n",
            priority = o.priorities[n - 1],
            heartbeat = o.heartbeat_ms,
            down_after = o.ha_down_after_ms,
            address = toml_string(&format!("{VIP}/{PREFIX_LEN} dev {}", node.interface())),
        );
        let backends: Vec<String> = self
            .nodes
            .iter()
            .map(|b| toml_string(&b.redis.addr().to_string()))
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
            backends = backends.join(", "),
        );
        let peers: Vec<(String, SocketAddrV4)> = (1..=NODES)
            .filter(|&p| p != n)
            .map(|p| (controller_id(p), controller_listen(p)))
            .collect();
        toml += &ControllerToml {
            quorum: o.quorum,
            down_after_ms: o.down_after_ms,
            failover_timeout_ms: o.failover_timeout_ms,
            id: &controller_id(n),
            listen: controller_listen(n),
            secret: &o.secret,
            state_file,
            probe_interval_ms: o.probe_interval_ms,
            metrics_listen: SocketAddrV4::new(node_ip(n), METRICS_PORT),
            peers: &peers,
            extra: "",
        }
        .render();
        toml
    }
}

/// A node: its address on the subnet, forwarding (the holder forwards what it rewrites), no
/// reverse-path filtering (rewritten packets arrive from addresses it would reject), and a
/// route to the routed client's network.
fn setup_node(ns: &Netns, interface: &str, ip: Ipv4Addr, mode: XdpMode) -> Result<()> {
    setup_on_link_endpoint(ns, interface, ip, mode)?;
    ns.set_sysctl("net.ipv4.ip_forward", "1")?;
    for scope in ["all", "default", interface] {
        ns.set_sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
    }
    route_via_router(ns)
}

/// The route to [`ROUTED_NETWORK`] through the router.
fn route_via_router(ns: &Netns) -> Result<()> {
    ns.ip(&[
        "route",
        "add",
        ROUTED_NETWORK,
        "via",
        &ROUTER_IP.to_string(),
    ])?;
    Ok(())
}
