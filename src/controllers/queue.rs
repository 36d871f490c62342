//! A work queue of object keys, as client-go's rate-limited work queue: a key is queued at most
//! once, a key being processed is not handed out again until it is done (a change meanwhile
//! queues it once more), failures are retried with exponential back-off, and a reconcile can ask
//! to run again after a delay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::hash::Hash;

use super::informer::Key;

struct State<T> {
    queue: VecDeque<T>,
    queued: HashSet<T>,
    processing: HashSet<T>,
    dirty: HashSet<T>,
    failures: HashMap<T, u32>,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            queue: VecDeque::new(),
            queued: HashSet::new(),
            processing: HashSet::new(),
            dirty: HashSet::new(),
            failures: HashMap::new(),
        }
    }
}

/// A shared queue of keys (object keys by default). Cheap to clone.
pub struct WorkQueue<T = Key> {
    state: Arc<Mutex<State<T>>>,
    wake: Arc<tokio::sync::Notify>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue {
            state: Arc::default(),
            wake: Arc::default(),
        }
    }
}

/// First retry delay after a failure; doubled per failure up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl<T: Clone + Eq + Hash + Send + std::fmt::Display + 'static> WorkQueue<T> {
    pub fn new() -> WorkQueue<T> {
        WorkQueue::default()
    }

    /// Queue `key` (no-op if already queued).
    pub fn add(&self, key: T) {
        let mut s = self.state.lock().expect("queue lock");
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.queue.push_back(key);
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Queue `key` after `delay`.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            this.add(key);
        });
    }

    /// Queue `key` again after a failure, with exponential back-off.
    pub fn retry(&self, key: T) {
        let n = {
            let mut s = self.state.lock().expect("queue lock");
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = BASE_BACKOFF
            .saturating_mul(1u32 << n.min(20).saturating_sub(1))
            .min(MAX_BACKOFF);
        self.add_after(key, delay);
    }

    /// Forget the failures of `key` (it synced).
    pub fn forget(&self, key: &T) {
        self.state.lock().expect("queue lock").failures.remove(key);
    }

    /// The next key to process; call [`WorkQueue::done`] after.
    pub async fn next(&self) -> T {
        loop {
            let notified = self.wake.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(key) = s.queue.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    return key;
                }
            }
            notified.await;
        }
    }

    /// `key` is processed; queue it again if it changed meanwhile.
    pub fn done(&self, key: &T) {
        let again = {
            let mut s = self.state.lock().expect("queue lock");
            s.processing.remove(key);
            s.dirty.remove(key)
        };
        if again {
            self.add(key.clone());
        }
    }

    /// Number of keys waiting.
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Process keys from `queue` forever with `reconcile`, which answers `Some(delay)` to be run again
/// after `delay`. Errors are logged and retried with back-off.
pub async fn run_worker<T, F, Fut>(name: &'static str, queue: WorkQueue<T>, reconcile: F)
where
    T: Clone + Eq + Hash + Send + std::fmt::Display + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = anyhow::Result<Option<Duration>>>,
{
    loop {
        let key = queue.next().await;
        match reconcile(key.clone()).await {
            Ok(again) => {
                queue.forget(&key);
                if let Some(delay) = again {
                    queue.add_after(key.clone(), delay);
                }
            }
            Err(e) => {
                tracing::warn!(controller = name, %key, "sync failed: {e:#}");
                queue.retry(key.clone());
            }
        }
        queue.done(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_requeues_changes_during_processing() {
        let q: WorkQueue = WorkQueue::new();
        q.add(Key::new("ns", "a"));
        q.add(Key::new("ns", "a"));
        q.add(Key::new("ns", "b"));
        assert_eq!(q.len(), 2);
        let a = q.next().await;
        assert_eq!(a, Key::new("ns", "a"));
        // Changed while processing: not handed out twice at once, queued again when done.
        q.add(a.clone());
        assert_eq!(q.len(), 1);
        q.done(&a);
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Key::new("ns", "b"));
    }
}
