//! One machine, driven by hand: the failover itself (sequence, retries, selection), then
//! the switches and what the data plane is told.

use super::sim::Sim;
use super::{
    M, R1, R2, R3, SERVICE, config, count_notices, first_notice, master_reply, params,
    replica_reply,
};
use crate::failover::{
    Action, Command, Event, FailoverPhase, Hello, NodeInfo, NoticeKind, Params, PeerMsg,
    ProbeResult, ReadFromMaster, Role, ServiceMachine, SetupError,
};

/// One machine and a world whose probe replies the test sets.
use super::unit::{MASTER, One, emit, hello, promoted};

// ------------------------------------------------------------------------------------------------
// The failover itself.

#[test]
fn a_lone_controller_fails_over_with_sentinels_sequence_of_events() {
    let mut sim = Sim::new(
        &["a"],
        Params {
            quorum: 1,
            ..params()
        },
    );
    sim.run_for(1_000);
    sim.kill(M);
    sim.run_for(3_000);
    let a = sim.ctl("a");
    let texts: Vec<String> = a
        .log
        .iter()
        .filter_map(|(_, act)| match act {
            Action::Emit(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    let slave = |ip: &str, master_ip: &str| {
        format!("slave {ip}:6379 {ip} 6379 @ mymaster {master_ip} 6379")
    };
    let expected = vec![
        format!("+monitor {MASTER} quorum 1"),
        format!("+slave {}", slave("10.0.0.2", "10.0.0.1")),
        format!("+slave {}", slave("10.0.0.3", "10.0.0.1")),
        format!("+slave {}", slave("10.0.0.4", "10.0.0.1")),
        format!("+sdown {MASTER}"),
        format!("+odown {MASTER} #quorum 1/1"),
        "+new-epoch 1".to_owned(),
        format!("+try-failover {MASTER}"),
        "+vote-for-leader a 1".to_owned(),
        format!("+elected-leader {MASTER}"),
        format!("+failover-state-select-slave {MASTER}"),
        format!("+selected-slave {}", slave("10.0.0.3", "10.0.0.1")),
        format!(
            "+failover-state-send-slaveof-noone {}",
            slave("10.0.0.3", "10.0.0.1")
        ),
        format!(
            "+failover-state-wait-promotion {}",
            slave("10.0.0.3", "10.0.0.1")
        ),
        format!(
            "-role-change {} new reported role is master",
            slave("10.0.0.3", "10.0.0.1")
        ),
        format!("+promoted-slave {}", slave("10.0.0.3", "10.0.0.1")),
        format!("+failover-state-reconf-slaves {MASTER}"),
        format!("+slave-reconf-sent {}", slave("10.0.0.2", "10.0.0.1")),
        format!("+slave-reconf-inprog {}", slave("10.0.0.2", "10.0.0.1")),
        format!("+slave-reconf-done {}", slave("10.0.0.2", "10.0.0.1")),
        format!("+slave-reconf-sent {}", slave("10.0.0.4", "10.0.0.1")),
        format!("+slave-reconf-inprog {}", slave("10.0.0.4", "10.0.0.1")),
        format!("+slave-reconf-done {}", slave("10.0.0.4", "10.0.0.1")),
        format!("+failover-end {MASTER}"),
        "+switch-master mymaster 10.0.0.1 6379 10.0.0.3 6379".to_owned(),
        // Every other node, listed again as a replica of the new master.
        format!("+slave {}", slave("10.0.0.1", "10.0.0.3")),
        format!("+slave {}", slave("10.0.0.2", "10.0.0.3")),
        format!("+slave {}", slave("10.0.0.4", "10.0.0.3")),
    ];
    assert_eq!(texts, expected);

    // The write port moved when R2 confirmed role:master, not before, and in epoch 1.
    let confirmed = a
        .log
        .iter()
        .position(|(_, act)| matches!(act, Action::Emit(n) if n.kind == NoticeKind::PromotedSlave))
        .unwrap();
    let switched = a
        .log
        .iter()
        .position(|(_, act)| matches!(act, Action::SetMaster { epoch: 1, node } if *node == R2))
        .unwrap();
    assert!(confirmed < switched);
    // parallel-syncs 1: never two replicas being reconfigured at once.
    let sent: Vec<_> = a
        .log
        .iter()
        .filter(|(_, act)| matches!(act, Action::ReplicaOf { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(sent.len(), 2);
    assert!(sent[0] < sent[1]);
}

#[test]
fn the_promotion_is_resent_after_a_failed_command_and_times_out() {
    let mut t = One::alone();
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    assert_eq!(
        t.m.phase(),
        FailoverPhase::Promotion {
            epoch: 1,
            promoted: R2
        }
    );
    let promotes = |t: &One| {
        t.log
            .iter()
            .filter(|(_, a)| matches!(a, Action::PromoteReplica { node } if *node == R2))
            .count()
    };
    assert_eq!(promotes(&t), 1);
    t.step(Event::CommandDone {
        node: R2,
        command: Command::PromoteReplica,
        ok: false,
    });
    t.run(100);
    assert_eq!(promotes(&t), 2, "resent on the next tick");
    // R2 never reports role:master: abort after failover-timeout, no write switch.
    let since = t.first(NoticeKind::SelectedSlave).unwrap().0;
    t.run(6_000);
    let (aborted, text) = t.first(NoticeKind::FailoverAbortSlaveTimeout).unwrap();
    assert_eq!(aborted, since + 5_000 + 100);
    assert_eq!(text, format!("-failover-abort-slave-timeout {MASTER}"));
    assert!(
        !t.log
            .iter()
            .any(|(_, a)| matches!(a, Action::SetMaster { node, .. } if *node == R2))
    );
    assert_eq!(t.m.master(), M);
}

#[test]
fn priority_zero_is_never_promoted() {
    let mut t = One::alone();
    t.set(R1, None);
    t.set(R2, None);
    t.run(2_000);
    t.set(M, None);
    t.run(2_000);
    // R3 is up with the best offset, but priority 0.
    assert!(!t.m.is_sdown(R3));
    let (_, text) = t.first(NoticeKind::FailoverAbortNoGoodSlave).unwrap();
    assert_eq!(text, format!("-failover-abort-no-good-slave {MASTER}"));
    assert!(
        !t.log
            .iter()
            .any(|(_, a)| matches!(a, Action::PromoteReplica { .. }))
    );
}

#[test]
fn selection_skips_stale_and_long_disconnected_replicas() {
    // R2 (best offset) went quiet 600 ms before the election: not SDOWN yet, but stale.
    let mut t = One::alone();
    t.run(1_000);
    t.set(M, None);
    t.run(500);
    t.set(R2, None);
    t.run(600);
    assert!(!t.m.is_sdown(R2));
    let (_, text) = t.first(NoticeKind::SelectedSlave).unwrap();
    assert!(text.contains("10.0.0.2:6379"), "{text}");

    // A replica whose link has been down for more than 10 × down-after (+ the master's SDOWN
    // time) is not trusted either; with R2 quiet, nobody is left.
    let mut t = One::alone();
    let mut long_gone = replica_reply(M, false, 100, 100);
    if let ProbeResult::Ok(NodeInfo {
        role: Role::Replica(r),
        ..
    }) = &mut long_gone
    {
        r.link_down_ms = 60_000;
    }
    t.set(R1, Some(long_gone));
    t.set(R2, None);
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    assert!(t.first(NoticeKind::FailoverAbortNoGoodSlave).is_some());
}

// ------------------------------------------------------------------------------------------------
// Switches and the data plane.

#[test]
fn set_master_epochs_only_grow_and_failed_writes_are_retried() {
    let mut t = One::new("a", &["b", "c"], params());
    assert!(
        t.log
            .iter()
            .any(|(_, a)| *a == Action::SetMaster { epoch: 0, node: M })
    );
    let newer = Hello {
        current_epoch: 3,
        master: R2,
        config_epoch: 3,
        sdown: vec![M],
        failover_epoch: None,
    };
    let actions = t.from("b", PeerMsg::Hello(newer));
    assert!(actions.contains(&emit(
        NoticeKind::ConfigUpdateFrom,
        "sentinel b @ mymaster 10.0.0.1 6379"
    )));
    assert!(actions.contains(&emit(
        NoticeKind::SwitchMaster,
        "mymaster 10.0.0.1 6379 10.0.0.3 6379"
    )));
    assert!(actions.contains(&Action::SetMaster { epoch: 3, node: R2 }));
    assert_eq!((t.m.master(), t.m.config_epoch()), (R2, 3));

    // An older configuration changes nothing.
    let older = Hello {
        current_epoch: 3,
        master: R1,
        config_epoch: 2,
        sdown: vec![],
        failover_epoch: None,
    };
    let actions = t.from("c", PeerMsg::Hello(older));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SetMaster { .. }))
    );
    assert_eq!(t.m.master(), R2);

    // The data plane failed to apply it: asked again on the next tick, until it works.
    t.step(Event::MasterApplied {
        epoch: 3,
        node: R2,
        ok: false,
    });
    let again = t.step(Event::Tick);
    assert!(again.contains(&Action::SetMaster { epoch: 3, node: R2 }));
    t.step(Event::MasterApplied {
        epoch: 3,
        node: R2,
        ok: true,
    });
    let quiet = t.step(Event::Tick);
    assert!(!quiet.iter().any(|a| matches!(a, Action::SetMaster { .. })));
}

#[test]
fn a_switch_forgets_the_old_masters_down_state_and_peer_reports() {
    let mut t = One::new("a", &["b", "c"], params());
    t.standing_hellos.push(("b".into(), hello(M, &[M])));
    t.standing_hellos.push(("c".into(), hello(M, &[M])));
    t.run(1_000);
    t.set(M, None);
    t.run(1_200);
    assert!(t.m.is_odown());

    // c announces the new master (it must be from the leader's failover in epoch 1).
    t.standing_hellos.clear();
    t.from("c", promoted(R2, &[M]));
    assert_eq!(t.m.master(), R2);
    assert!(!t.m.is_odown());
    assert!(!t.m.is_sdown(R2));
    assert_eq!(t.m.phase(), FailoverPhase::Idle);

    // Stale reports keep arriving, and we lose R2 ourselves: still no ODOWN, no failover.
    t.standing_hellos.push(("b".into(), hello(M, &[M, R2])));
    t.set(R2, None);
    let epoch = t.m.current_epoch();
    t.run(3_000);
    assert!(t.m.is_sdown(R2));
    assert!(!t.m.is_odown());
    assert_eq!(t.m.current_epoch(), epoch);
}

#[test]
fn a_switch_away_from_a_master_our_probes_fail_marks_it_down_at_once() {
    // Our probes of M fail, but down-after has not passed yet when the leader's new
    // configuration arrives: the old master, now listed as a replica, is SDOWN right away.
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    t.set(M, None);
    t.run(300);
    assert!(!t.m.is_sdown(M));
    t.from("c", promoted(R2, &[M]));
    assert_eq!(t.m.master(), R2);
    assert!(t.m.is_sdown(M));
    assert_eq!(count_notices(&t.log, NoticeKind::Sdown), 1);
    assert_eq!(
        first_notice(&t.log, NoticeKind::Sdown).map(|(_, text)| text),
        Some(format!(
            "+sdown slave {M} {} {} @ {SERVICE} {} {}",
            M.ip(),
            M.port(),
            R2.ip(),
            R2.port()
        ))
    );

    // A planned switch away from a master that answers leaves it up.
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    t.from("c", promoted(R2, &[]));
    assert_eq!(t.m.master(), R2);
    assert!(!t.m.is_sdown(M));
}

#[test]
fn the_read_pool_follows_lag_links_and_read_from_master() {
    let pool_with = |mode, tweak: &dyn Fn(&mut One)| {
        let mut t = One::new(
            "a",
            &["b", "c"],
            Params {
                read_from_master: mode,
                ..params()
            },
        );
        tweak(&mut t);
        t.run(300);
        t.m.read_pool().to_vec()
    };
    let healthy = |_: &mut One| {};
    let no_replicas = |t: &mut One| {
        for r in [R1, R2, R3] {
            t.set(r, Some(replica_reply(R1, true, 1, 1))); // follow another master
        }
    };
    assert_eq!(
        pool_with(ReadFromMaster::Fallback, &healthy),
        vec![R1, R2, R3]
    );
    assert_eq!(
        pool_with(ReadFromMaster::Always, &healthy),
        vec![M, R1, R2, R3]
    );
    assert_eq!(pool_with(ReadFromMaster::Fallback, &no_replicas), vec![M]);
    assert_eq!(pool_with(ReadFromMaster::Never, &no_replicas), vec![]);
    let degraded = |t: &mut One| {
        let mut lagging = replica_reply(M, true, 100, 100);
        if let ProbeResult::Ok(NodeInfo {
            role: Role::Replica(r),
            ..
        }) = &mut lagging
        {
            r.lag_ms = 1_001;
        }
        t.set(R1, Some(lagging));
        let mut long_down = replica_reply(M, false, 200, 100);
        if let ProbeResult::Ok(NodeInfo {
            role: Role::Replica(r),
            ..
        }) = &mut long_down
        {
            r.link_down_ms = 1_001;
        }
        t.set(R2, Some(long_down));
    };
    assert_eq!(pool_with(ReadFromMaster::Never, &degraded), vec![R3]);
    // A link down for less than the allowed lag (the master just died, say) still serves:
    // its data is no staler than a lagging replica's.
    let briefly_down = |t: &mut One| {
        let mut down = replica_reply(M, false, 200, 100);
        if let ProbeResult::Ok(NodeInfo {
            role: Role::Replica(r),
            ..
        }) = &mut down
        {
            r.link_down_ms = 400;
        }
        t.set(R2, Some(down));
    };
    assert_eq!(
        pool_with(ReadFromMaster::Never, &briefly_down),
        vec![R1, R2, R3]
    );
    // An idle master pings its replicas only every repl-ping-replica-period (10 s by default):
    // a replica that has everything the master wrote is not stale, however long ago that was.
    let idle_master = |t: &mut One| {
        for (r, offset) in [(R1, 1_000), (R2, 999)] {
            let mut quiet = replica_reply(M, true, offset, 100);
            if let ProbeResult::Ok(NodeInfo {
                role: Role::Replica(info),
                ..
            }) = &mut quiet
            {
                info.lag_ms = 9_000;
            }
            t.set(r, Some(quiet));
        }
    };
    assert_eq!(pool_with(ReadFromMaster::Never, &idle_master), vec![R1, R3]);

    // Only changes are sent.
    let mut t = One::new("a", &["b", "c"], params());
    let first = t.run(300);
    let pools = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::SetReadPool(_)))
            .count()
    };
    assert_eq!(pools(&first), 1);
    assert_eq!(pools(&t.run(1_000)), 0);
}

#[test]
fn replicas_of_the_replaced_master_keep_serving_reads_for_a_bounded_time() {
    let link_down = |master, ms| {
        let mut reply = replica_reply(master, false, 900, 100);
        if let ProbeResult::Ok(NodeInfo {
            role: Role::Replica(r),
            ..
        }) = &mut reply
        {
            r.link_down_ms = ms;
        }
        reply
    };
    // M dies; 300 ms later (before our own down-after) c's failover promoted R2. R1 and R3
    // still follow M until they are repointed: they serve what M had rather than leave the
    // read port with no replica at all.
    let switched = || {
        let mut t = One::new("a", &["b", "c"], params());
        t.run(1_000);
        assert_eq!(t.m.read_pool(), [R1, R2, R3]);
        t.set(M, None);
        for r in [R1, R2, R3] {
            t.set(r, Some(link_down(M, 300)));
        }
        t.run(300);
        t.set(R2, Some(master_reply(1_000)));
        t.from("c", promoted(R2, &[M]));
        assert_eq!(t.m.master(), R2);
        t.run(100);
        assert_eq!(t.m.read_pool(), [R1, R3]);
        // Repointed, R1 stays on the usual terms.
        t.set(R1, Some(replica_reply(R2, true, 1_000, 100)));
        t
    };
    // R3 may be behind the new master by its own lag plus the time since the switch: with
    // its link down 300 ms, until 700 ms after the switch (max_replica_lag_ms 1000 here).
    let mut t = switched();
    t.run(500);
    assert_eq!(t.m.read_pool(), [R1, R3]);
    t.run(200);
    assert_eq!(t.m.read_pool(), [R1]);
    // Once the old master answers again as a master it may be taking writes R2 never sees:
    // a replica still following it is out at once.
    let mut t = switched();
    t.set(M, Some(master_reply(1_200)));
    t.run(100);
    assert_eq!(t.m.read_pool(), [R1]);
}

#[test]
fn impossible_setups_are_rejected() {
    let build = |me: &str, peers: &[&str], p: Params| {
        ServiceMachine::new(config(me, peers, p), None, 0).err()
    };
    assert_eq!(build("a", &["b", "c"], params()), None);
    assert_eq!(
        build(
            "a",
            &["b"],
            Params {
                quorum: 3,
                ..params()
            }
        ),
        Some(SetupError::QuorumTooLarge {
            quorum: 3,
            controllers: 2
        })
    );
    assert_eq!(
        build(
            "a",
            &[],
            Params {
                quorum: 0,
                ..params()
            }
        ),
        Some(SetupError::ZeroQuorum)
    );
    assert_eq!(
        build(
            "a",
            &["a"],
            Params {
                quorum: 1,
                ..params()
            }
        ),
        Some(SetupError::SelfInPeers { id: "a".into() })
    );
    assert_eq!(
        build("a", &["b", "b"], params()),
        Some(SetupError::DuplicatePeer { id: "b".into() })
    );
    assert_eq!(
        build(
            "a",
            &["b"],
            Params {
                fall: 0,
                ..params()
            }
        ),
        Some(SetupError::Zero { field: "fall" })
    );
    assert_eq!(
        build(
            "a",
            &["b"],
            Params {
                hello_interval_ms: 1_000,
                ..params()
            }
        ),
        Some(SetupError::HelloTooRare {
            hello_interval_ms: 1_000,
            peer_report_validity_ms: 1_000
        })
    );
    let message = SetupError::QuorumTooLarge {
        quorum: 3,
        controllers: 2,
    }
    .to_string();
    assert!(message.contains("lower the quorum"), "{message}");
}
