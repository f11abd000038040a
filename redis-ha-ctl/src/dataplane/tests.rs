//! The planner: what each change writes, in which order, and what it refuses.

use super::*;

fn svc() -> ServiceConfig {
    ServiceConfig {
        name: "mymaster".into(),
        vip: Ipv4Addr::new(198, 18, 0, 100),
        write_port: 6380,
        read_port: 6381,
        backends: ["198.18.1.11:6379", "198.18.1.12:6379", "198.18.1.13:6379"]
            .map(|s| s.parse().unwrap())
            .to_vec(),
        backend_specs: ["198.18.1.11:6379", "198.18.1.12:6379", "198.18.1.13:6379"]
            .map(|s| crate::config::BackendSpec::parse(s).unwrap())
            .to_vec(),
        resolve_hostnames: false,
        announce_hostnames: false,
        failover: Default::default(),
        tls: None,
    }
}

fn addr(last: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, last), 6379)
}

/// Applies `targets` one write at a time, checking after each that everything packets
/// can reach is a filled slot of the right service.
fn apply_checked(dp: &mut MemDataplane, targets: &[ServiceTarget]) -> Vec<MapOp> {
    let ops = plan(&dp.maps, targets).unwrap();
    for op in &ops {
        dp.apply(op).unwrap();
        for (id, st) in &dp.maps.states {
            if st.master != 0 {
                let b = dp.maps.backends.get(&st.master).expect("master slot unset");
                assert_eq!(b.service_id, *id);
            }
            for slot in dp.live_ring_slots(*id) {
                let b = dp.maps.backends.get(&slot).expect("ring slot unset");
                assert!(
                    b.flags & backend_flags::READABLE != 0,
                    "live table points at slot {slot}, which is not READABLE, after {op:?}"
                );
            }
        }
    }
    ops
}

#[test]
fn initial_load_fills_everything_and_second_sync_is_a_no_op() {
    let mut dp = MemDataplane::default();
    let t = vec![ServiceTarget::initial(0, &svc())];
    apply_checked(&mut dp, &t);
    assert_eq!(dp.master_of(0).unwrap().ip, [198, 18, 1, 11]);
    assert_eq!(
        dp.live_ring_slots(0),
        [backend_slot(0, 1), backend_slot(0, 2)].into()
    );
    assert_eq!(dp.maps.ports.len(), 2);
    assert!(plan(&dp.maps, &t).unwrap().is_empty());
}

#[test]
fn failover_is_one_state_write_after_the_table() {
    let mut dp = MemDataplane::default();
    let mut t = ServiceTarget::initial(0, &svc());
    apply_checked(&mut dp, std::slice::from_ref(&t));
    t.master = Some(addr(12));
    t.read_pool = vec![addr(13)];
    t.epoch = 1;
    let ops = apply_checked(&mut dp, std::slice::from_ref(&t));
    let states: Vec<_> = ops
        .iter()
        .filter(|o| matches!(o, MapOp::SetState { .. }))
        .collect();
    assert_eq!(states.len(), 1);
    let flip = ops
        .iter()
        .position(|o| matches!(o, MapOp::SetState { .. }))
        .unwrap();
    let ring = ops
        .iter()
        .position(|o| matches!(o, MapOp::SetRing { .. }))
        .unwrap();
    let clear = ops
        .iter()
        .position(|o| matches!(o, MapOp::SetBackend { backend, .. } if backend.flags == 0))
        .unwrap();
    assert!(ring < flip && flip < clear, "{ops:?}");
    assert_eq!(dp.master_of(0).unwrap().ip, [198, 18, 1, 12]);
    assert_eq!(dp.live_ring_slots(0), [backend_slot(0, 2)].into());
    assert_eq!(dp.maps.states[&0].ring_active, 1);
}

#[test]
fn an_older_epoch_is_refused() {
    let mut dp = MemDataplane::default();
    let mut t = ServiceTarget::initial(0, &svc());
    t.epoch = 5;
    apply_checked(&mut dp, std::slice::from_ref(&t));
    t.epoch = 4;
    t.master = Some(addr(13));
    assert!(matches!(
        plan(&dp.maps, &[t]),
        Err(PlanError::StaleEpoch {
            current: 5,
            offered: 4,
            ..
        })
    ));
}

#[test]
fn resume_keeps_a_failover_that_already_happened() {
    let mut dp = MemDataplane::default();
    let mut t = ServiceTarget::initial(0, &svc());
    apply_checked(&mut dp, std::slice::from_ref(&t));
    t.master = Some(addr(13));
    t.read_pool = vec![addr(11)];
    t.epoch = 3;
    apply_checked(&mut dp, std::slice::from_ref(&t));
    assert_eq!(ServiceTarget::resume(0, &svc(), &dp.maps), t);
    assert_eq!(
        ServiceTarget::resume(0, &svc(), &Snapshot::default()),
        ServiceTarget::initial(0, &svc())
    );
}

#[test]
fn empty_read_pool_and_removed_service() {
    let mut dp = MemDataplane::default();
    let mut t = ServiceTarget::initial(0, &svc());
    apply_checked(&mut dp, std::slice::from_ref(&t));
    t.read_pool.clear();
    apply_checked(&mut dp, std::slice::from_ref(&t));
    assert!(dp.live_ring_slots(0).is_empty());
    apply_checked(&mut dp, &[]);
    assert_eq!(dp.maps, Snapshot::default());
}

#[test]
fn unknown_master_is_refused() {
    let mut t = ServiceTarget::initial(0, &svc());
    t.master = Some(addr(99));
    assert!(matches!(
        plan(&Snapshot::default(), &[t]),
        Err(PlanError::UnknownBackend { .. })
    ));
}
