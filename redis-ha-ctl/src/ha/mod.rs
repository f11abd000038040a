//! Load-balancer high availability: which data-plane node holds the floating
//! addresses (the VIP on the client side, the backends' gateway on the other), agreed by a
//! majority of the controllers, and the netlink/ARP work of taking and releasing them.
//!
//! Every data-plane node fills the same maps (same epoch, backend slots, Maglev table), so a
//! connection that moves with the VIP is forwarded as before, without a connection entry:
//! - [`machine`]: the pure ownership machine (lease, votes, priorities, preemption);
//! - [`net`]: adding/removing the addresses and the gratuitous ARP.

pub mod machine;
pub mod net;
#[cfg(test)]
mod stall_tests;

pub use machine::{Candidacy, HaAction, HaEvent, HaMachine, HaMsg, HaParams, HaPersisted, HaRole};
