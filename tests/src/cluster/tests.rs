use super::controller::{parse_event, parse_state, strip_ansi};
use super::*;

#[test]
fn parses_maps_output() {
    let raw = "data plane pinned at /sys/fs/bpf/redis-ha-x\n\
        \n\
        service 0 mymaster: write 198.18.0.100:6380, read 198.18.0.100:6381; epoch 3; master slot 2; live table 1\n\
        \x20 slot  backend               role     readable    pkts_in     bytes_in   pkts_out    bytes_out new_flows    closed  resets\n\
        \x20    1  198.18.1.11:6379      -        yes              10         1000          9          900         2         2       0\n\
        \x20    2  198.18.1.12:6379      master   no               20         2000         19         1900         3         1       1\n\
        \x20    3  198.18.1.13:6379      -        yes               0            0          0            0         0         0       0\n\
        \n\
        counters (packets):\n  fwd_to_backend 30\n";
    let m: MapsView = raw.parse().unwrap();
    assert_eq!((m.epoch, m.master_slot), (3, 2));
    assert_eq!(m.master(), Some("198.18.1.12:6379".parse().unwrap()));
    assert_eq!(m.backends.len(), 3);
    assert_eq!(
        m.readable(),
        ["198.18.1.11:6379", "198.18.1.13:6379"].map(|a| a.parse().unwrap())
    );
    let r = m.row("198.18.1.12:6379".parse().unwrap()).unwrap();
    assert_eq!((r.pkts_in, r.new_flows, r.closed, r.resets), (20, 3, 1, 1));
}

#[test]
fn parses_event_lines_and_state_files() {
    let line = "\u{1b}[2m2026-11-25T21:01:00.250885Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m redis_ha::event: \
                +switch-master mymaster 198.18.1.11 6379 198.18.1.12 6379 service=mymaster event=\"+switch-master\"";
    let e = parse_event(&strip_ansi(line)).unwrap();
    assert_eq!(e.name, "+switch-master");
    assert_eq!(e.payload, "mymaster 198.18.1.11 6379 198.18.1.12 6379");
    assert!(parse_event("INFO redis_ha_ctl::daemon: controller started").is_none());

    let state = r#"{
  "services": {
"mymaster": {
  "current_epoch": 4,
  "vote_epoch": null,
  "vote_leader": "c2",
  "master": "198.18.1.13:6379",
  "config_epoch": 3
}
  }
}"#;
    assert_eq!(
        parse_state(state).unwrap(),
        ControllerState {
            current_epoch: 4,
            vote_epoch: None,
            vote_leader: Some("c2".into()),
            master: "198.18.1.13:6379".parse().unwrap(),
            config_epoch: 3,
        }
    );
}
