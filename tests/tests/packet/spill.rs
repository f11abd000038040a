//! A full connection table refuses nothing: a new connection's entry goes to `FLOWS_SPILL`
//! (an LRU table), where it is forwarded, rewritten and closed like any other.

use redis_ha_common::{Flow, FlowKey};

use crate::{
    BE_11, WRITE, at_every_hook, client,
    frame::tcp_flags::{ACK, FIN},
    open_via_master, standard_sized, tcp, to_backend, to_client_from,
};

const SIZE: u32 = 1024;

#[test]
fn a_full_table_spills_new_connections_which_work_and_close_as_usual() {
    at_every_hook(|tb, hook| {
        let mut dp = standard_sized(tb, hook, Some(SIZE));
        // A connection before the table is full stays in FLOWS.
        let early = open_via_master(&dp, client(42000), WRITE);
        assert!(dp.spilled_flow(&early).is_none());
        assert_eq!(dp.spilling_since(), 0, "nothing spilled yet");
        // Fill the rest with entries of other (made-up) connections.
        for i in 0..SIZE - 1 {
            let key = FlowKey {
                src_ip: [198, 19, 200, (i >> 8) as u8],
                dst_ip: [198, 18, 0, 100],
                src_port: 10_000 + (i & 0xff) as u16,
                dst_port: 6380,
            };
            dp.put_flow(key, Flow::default());
        }
        let c = client(42001);
        let key = open_via_master(&dp, c, WRITE);
        assert!(
            dp.spilled_flow(&key).is_some(),
            "the connection that found the table full is in FLOWS_SPILL"
        );
        assert_ne!(dp.spilling_since(), 0, "the program notes that it spilled");
        // The connection made before still works, from FLOWS.
        dp.step(to_backend(
            "early connection's request",
            tcp(client(42000), WRITE)
                .data(b"*1\r\n$4\r\nPING\r\n")
                .build(),
        ));
        // The spilled one closes in order, and its entry goes.
        let to_client = |name, frame| to_client_from(name, frame, WRITE);
        dp.table(&[
            to_backend("client FIN", tcp(c, WRITE).flags(FIN | ACK).build()),
            to_client("backend FIN", tcp(BE_11, c).flags(FIN | ACK).build()),
            to_backend("last ACK", tcp(c, WRITE).flags(ACK).build()),
        ]);
        assert_eq!(dp.flow(&key), None);
    });
}
