//! The thread under every client loop of a trial or soak (requests, verified writes,
//! subscriptions): it runs inside a namespace, shares what it records behind a lock, and is
//! stopped and joined on drop, so a failing test never leaves a loop sending traffic.

use super::*;

pub struct Worker<R> {
    /// What the thread is, for its name and errors ("traffic", "subscriber", ...).
    what: &'static str,
    record: Arc<Mutex<R>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl<R: Default + Send + 'static> Worker<R> {
    /// Runs `body(record, stop)` on a new thread with its sockets in the namespace at
    /// `netns_path`; `body` must return soon after `stop` is set.
    pub fn start(
        what: &'static str,
        netns_path: PathBuf,
        body: impl FnOnce(&Mutex<R>, &AtomicBool) -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        let record = Arc::new(Mutex::new(R::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (record, stop) = (record.clone(), stop.clone());
            std::thread::Builder::new()
                .name(what.into())
                .spawn(move || in_netns(&netns_path, move || body(&record, &stop))?)
                .with_context(|| format!("starting the {what} thread"))?
        };
        Ok(Self {
            what,
            record,
            stop,
            handle: Some(handle),
        })
    }

    /// What it recorded so far (a lock; hold it briefly).
    pub fn record(&self) -> MutexGuard<'_, R> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops the thread and returns everything it recorded.
    pub fn finish(mut self) -> Result<R> {
        self.join()?;
        Ok(std::mem::take(&mut *self.record()))
    }

    fn join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the {} thread panicked", self.what))?,
            None => Ok(()),
        }
    }
}

impl<R> Drop for Worker<R> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
