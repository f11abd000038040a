//! Building a testbed: its namespaces, veths, routes and backends, per topology.

use super::backend::redis_args;
use super::*;

impl Testbed {
    /// Builds the namespaces, veths, addresses and routes, starts the redis-servers and waits
    /// until the replicas are in sync with the master. Needs root.
    pub fn up(options: TestbedOptions) -> Result<Testbed> {
        let TestbedOptions {
            tag,
            backends,
            xdp_mode,
            bridged_backends,
        } = options;
        validate_tag(&tag)?;
        if !(1..=MAX_BACKENDS).contains(&backends) {
            bail!("a testbed has 1 to {MAX_BACKENDS} backends, not {backends}");
        }
        if !crate::is_root() {
            bail!("building a testbed needs root (network namespaces, veths): run as root");
        }
        for program in ["ip", "nsenter", "ethtool", "redis-server", "redis-cli"] {
            if crate::find_program(program).is_none() {
                bail!(
                    "`{program}` is not installed: run `cargo xtask build` (it installs the prerequisites)"
                );
            }
        }
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
        std::fs::create_dir_all(&dir.path)
            .with_context(|| format!("creating {}", dir.path.display()))?;

        let name = |role: &str| format!("{prefix}{role}");
        let client = Netns::create(&name("client"))?;
        let lb = Netns::create(&name("lb"))?;
        let client_interface = name("c");
        let lb_client_interface = name("lc");

        // Routing on the LB. rp_filter off because XDP-rewritten replies arrive from
        // addresses the reverse path check would reject.
        lb.set_sysctl("net.ipv4.ip_forward", "1")?;
        for scope in ["all", "default"] {
            lb.set_sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
        }
        lb.set_sysctl("net.ipv4.conf.lo.rp_filter", "0")?;
        lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;

        // Client side.
        lb.add_veth(&lb_client_interface, &client_interface, &client)?;
        lb.ip(&[
            "addr",
            "add",
            &format!("{LB_CLIENT_IP}/24"),
            "dev",
            &lb_client_interface,
        ])?;
        lb.set_sysctl(
            &format!("net.ipv4.conf.{lb_client_interface}.rp_filter"),
            "0",
        )?;
        lb.ip(&["link", "set", &lb_client_interface, "up"])?;
        setup_endpoint(
            &client,
            &client_interface,
            &format!("{CLIENT_IP}/24"),
            LB_CLIENT_IP,
            xdp_mode,
        )?;

        let backend_bridge = bridged_backends.then(|| name("br"));
        if let Some(bridge) = &backend_bridge {
            lb.ip(&["link", "add", bridge, "type", "bridge"])?;
            lb.ip(&["addr", "add", &format!("{LB_BACKEND_IP}/24"), "dev", bridge])?;
            lb.set_sysctl(&format!("net.ipv4.conf.{bridge}.rp_filter"), "0")?;
            lb.ip(&["link", "set", bridge, "up"])?;
        }

        // Backends: their namespaces and veths, all before any server starts, so replicas
        // find their master reachable.
        let mut planned = Vec::new();
        for n in 1..=backends {
            let ns = Netns::create(&name(&format!("r{n}")))?;
            let interface = name(&format!("r{n}"));
            let lb_interface = name(&format!("l{n}"));
            let ip = backend_ip(n);
            lb.add_veth(&lb_interface, &interface, &ns)?;
            if let Some(bridge) = &backend_bridge {
                // A bridge port: the backends share the segment, and the bridge holds the
                // LB's address on it.
                lb.ip(&["link", "set", &lb_interface, "master", bridge])?;
                lb.ip(&["link", "set", &lb_interface, "up"])?;
            } else {
                lb.ip(&[
                    "addr",
                    "add",
                    &format!("{LB_BACKEND_IP}/32"),
                    "dev",
                    &lb_interface,
                ])?;
                lb.set_sysctl(&format!("net.ipv4.conf.{lb_interface}.rp_filter"), "0")?;
                // Backends believe they share 198.18.1.0/24: the LB answers their ARP for
                // each other and routes replication traffic between the veths.
                lb.set_sysctl(&format!("net.ipv4.conf.{lb_interface}.proxy_arp"), "1")?;
                lb.ip(&["link", "set", &lb_interface, "up"])?;
                lb.ip(&["route", "add", &format!("{ip}/32"), "dev", &lb_interface])?;
            }
            setup_endpoint(
                &ns,
                &interface,
                &format!("{ip}/24"),
                LB_BACKEND_IP,
                xdp_mode,
            )?;

            let backend_dir = dir.path.join(format!("r{n}"));
            std::fs::create_dir_all(&backend_dir)
                .with_context(|| format!("creating {}", backend_dir.display()))?;
            planned.push(Backend {
                index: n,
                ip,
                ns,
                interface,
                lb_interface,
                args: redis_args(ip, &backend_dir, (n > 1).then(|| backend_ip(1))),
                cli_args: Vec::new(),
                dir: backend_dir,
                server: ProcessSlot::default(),
            });
        }

        let testbed = Testbed {
            config_path: dir.path.join("redis-ha.toml"),
            tag,
            xdp_mode,
            client,
            client_interface,
            lb,
            lb_client_interface,
            backend_bridge,
            backends: planned,
            redis_tls: None,
            dir,
            armed: true,
        };
        for backend in &testbed.backends {
            *backend.server() = Some(backend.spawn_server()?);
        }
        for backend in &testbed.backends {
            backend.wait_ready()?;
        }
        testbed.wait_replication()?;
        testbed.write_config(&testbed.config_path)?;
        Ok(testbed)
    }
}
