//! A connection's subscriptions: the channels (`SUBSCRIBE`) and patterns (`PSUBSCRIBE`) it
//! listens to, and how an event reaches it, in the shapes Redis uses for `PUBLISH` (push
//! frames in RESP3, arrays in RESP2). A channel is
//! an event's name (`+switch-master`, `+sdown`, ...) carrying Sentinel's payload; the channel
//! [`JSON_EVENTS_CHANNEL`] carries every event as JSON instead.

use std::collections::BTreeSet;

use tokio::sync::broadcast;

use super::{EventHub, JSON_EVENTS_CHANNEL};
use crate::{
    resp::{self, Protocol, Reply},
    status::EventRecord,
};

#[derive(Default)]
pub(super) struct Subscriptions {
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
    /// Set while subscribed to anything: what puts the connection in subscribe mode.
    events: Option<broadcast::Receiver<EventRecord>>,
}

impl Subscriptions {
    /// In subscribe mode: only the pub/sub commands, `PING`, `QUIT` and `RESET` run.
    pub(super) fn is_active(&self) -> bool {
        self.events.is_some()
    }

    /// `(P)SUBSCRIBE`: one confirmation per name; a name that would take the client past
    /// `max` subscriptions gets an error instead. Returns how many were refused.
    pub(super) fn subscribe(
        &mut self,
        hub: &EventHub,
        names: &[String],
        pattern: bool,
        max: u64,
        proto: Protocol,
        out: &mut Vec<u8>,
    ) -> u64 {
        let mut refused = 0;
        for name in names {
            let set = if pattern {
                &mut self.patterns
            } else {
                &mut self.channels
            };
            if !set.contains(name) && u64::try_from(self.count()).unwrap_or(u64::MAX) >= max {
                refused += 1;
                Reply::err(format!(
                    "max number of subscriptions reached (client_max_subscriptions is {max})"
                ))
                .encode(proto, out);
                continue;
            }
            if self.events.is_none() {
                self.events = Some(hub.subscribe());
            }
            if pattern {
                self.patterns.insert(name.clone());
            } else {
                self.channels.insert(name.clone());
            }
            let kind = if pattern { "psubscribe" } else { "subscribe" };
            Reply::Push(vec![
                Reply::bulk(kind),
                Reply::bulk(name),
                Reply::Integer(self.count()),
            ])
            .encode(proto, out);
        }
        refused
    }

    /// `(P)UNSUBSCRIBE [name ...]`: one confirmation per name, all of them when none is given.
    pub(super) fn unsubscribe(
        &mut self,
        names: &[String],
        pattern: bool,
        proto: Protocol,
        out: &mut Vec<u8>,
    ) {
        let kind = if pattern {
            "punsubscribe"
        } else {
            "unsubscribe"
        };
        let set = if pattern {
            &mut self.patterns
        } else {
            &mut self.channels
        };
        let names: Vec<String> = if names.is_empty() {
            std::mem::take(set).into_iter().collect()
        } else {
            names
                .iter()
                .inspect(|n| _ = set.remove(*n))
                .cloned()
                .collect()
        };
        if self.count() == 0 {
            self.events = None;
        }
        if names.is_empty() {
            Reply::Push(vec![Reply::bulk(kind), Reply::Null, Reply::Integer(0)]).encode(proto, out);
        }
        for name in names {
            Reply::Push(vec![
                Reply::bulk(kind),
                Reply::bulk(name),
                Reply::Integer(self.count()),
            ])
            .encode(proto, out);
        }
    }

    /// `RESET`: out of subscribe mode.
    pub(super) fn clear(&mut self) {
        self.channels.clear();
        self.patterns.clear();
        self.events = None;
    }

    fn count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    /// The next event; never resolves while not subscribed.
    pub(super) async fn next_event(&mut self) -> Result<EventRecord, broadcast::error::RecvError> {
        match &mut self.events {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Publishes one event to this subscriber, as Redis delivers a PUBLISH.
    pub(super) fn deliver(&self, record: &EventRecord, proto: Protocol, out: &mut Vec<u8>) {
        if self.channels.contains(&record.name) {
            Reply::Push(vec![
                Reply::bulk("message"),
                Reply::bulk(&record.name),
                Reply::bulk(&record.payload),
            ])
            .encode(proto, out);
        }
        for pattern in &self.patterns {
            if resp::glob_match(pattern.as_bytes(), record.name.as_bytes()) {
                Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    Reply::bulk(pattern),
                    Reply::bulk(&record.name),
                    Reply::bulk(&record.payload),
                ])
                .encode(proto, out);
            }
        }
        if self.channels.contains(JSON_EVENTS_CHANNEL)
            && let Ok(json) = serde_json::to_string(record)
        {
            Reply::Push(vec![
                Reply::bulk("message"),
                Reply::bulk(JSON_EVENTS_CHANNEL),
                Reply::bulk(json),
            ])
            .encode(proto, out);
        }
    }
}
