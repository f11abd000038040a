//! A pub/sub subscriber through the VIP that records which messages of a publisher
//! ([`Request::Publish`], whose payload is the request number) it received: pub/sub is
//! at-most-once, so what a client misses around a fault is a figure to report, not a bug.

use super::*;

/// What a [`Subscriber`] received so far.
#[derive(Clone, Debug, Default)]
pub struct PubSubRecord {
    /// Bit `n` set: message `n` arrived (a bitmap: hours of messages in a few hundred KB).
    received: Vec<u64>,
    pub count: u64,
    /// Messages that arrived twice (must not happen on one channel).
    pub duplicates: u64,
    /// Connections opened (1 if it never had to resubscribe).
    pub connects: u64,
}

impl PubSubRecord {
    pub fn has(&self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        self.received.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn insert(&mut self, n: u64) {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if self.received.len() <= word {
            self.received.resize(word + 1, 0);
        }
        if self.received[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        } else {
            self.received[word] |= 1 << bit;
            self.count += 1;
        }
    }
}

/// A subscriber on its own thread inside a namespace; it resubscribes whenever its
/// connection fails or stays silent longer than `silence` (the publisher is steady, so silence
/// means a dead path). Stopped and joined on drop; bounded by `max_duration`.
pub struct Subscriber(Worker<PubSubRecord>);

impl Subscriber {
    pub fn start(
        netns_path: PathBuf,
        addr: SocketAddrV4,
        channel: &str,
        silence: Duration,
        max_duration: Duration,
    ) -> Result<Self> {
        let channel = channel.to_owned();
        Worker::start("subscriber", netns_path, move |record, stop| {
            subscribe_loop(addr, &channel, silence, max_duration, record, stop);
            Ok(())
        })
        .map(Self)
    }

    pub fn record(&self) -> MutexGuard<'_, PubSubRecord> {
        self.0.record()
    }

    /// Stops the subscriber and returns everything it received.
    pub fn finish(self) -> Result<PubSubRecord> {
        self.0.finish()
    }
}

fn subscribe_loop(
    addr: SocketAddrV4,
    channel: &str,
    silence: Duration,
    max_duration: Duration,
    record: &Mutex<PubSubRecord>,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let lock = || record.lock().unwrap_or_else(|e| e.into_inner());
    while !stop.load(Ordering::Relaxed) && started.elapsed() < max_duration {
        lock().connects += 1;
        let session = (|| -> std::io::Result<()> {
            let mut c = Resp::connect(addr, silence)?;
            c.send(&[b"SUBSCRIBE", channel.as_bytes()])?;
            // The read timeout (`silence`) ends the session; so does `stop`, within one
            // message interval.
            while !stop.load(Ordering::Relaxed) && started.elapsed() < max_duration {
                let Reply::Array(Some(parts)) = c.read_reply()? else {
                    continue;
                };
                if let [Reply::Bulk(Some(kind)), _, Reply::Bulk(Some(payload))] = parts.as_slice()
                    && kind == b"message"
                    && let Some(n) = std::str::from_utf8(payload)
                        .ok()
                        .and_then(|p| p.parse::<u64>().ok())
                {
                    lock().insert(n);
                }
            }
            Ok(())
        })();
        if session.is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_counts_each_message_once() {
        let mut r = PubSubRecord::default();
        for n in [1, 2, 64, 200, 2] {
            r.insert(n);
        }
        assert_eq!((r.count, r.duplicates), (4, 1));
        assert!(r.has(64) && r.has(200) && !r.has(3) && !r.has(10_000));
    }
}
