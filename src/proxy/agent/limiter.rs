//! When the agent syncs: kube-proxy's `BoundedFrequencyRunner`. Syncs are rate-limited by a
//! token bucket that refills one token per `min_interval` and holds at most `burst` of them
//! (kube-proxy: 2). A change after a quiet period syncs at once, and so does the one that
//! usually follows it (a new Service, then its EndpointSlice); a stream of changes is
//! coalesced into one sync per `min_interval`. With nothing to do, a sync runs
//! `max_interval` after the last one (the periodic resync).

use std::time::{Duration, Instant};

/// kube-proxy's `burstSyncs`.
pub const BURST: u32 = 2;

#[derive(Debug, Clone)]
pub struct SyncLimiter {
    min_interval: Duration,
    max_interval: Duration,
    burst: f64,
    /// Tokens at `updated`.
    tokens: f64,
    updated: Instant,
    last_sync: Option<Instant>,
}

impl SyncLimiter {
    /// A limiter with a full bucket, whose first sync is due at once.
    pub fn new(min_interval: Duration, max_interval: Duration, burst: u32, now: Instant) -> Self {
        SyncLimiter {
            min_interval,
            max_interval,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            updated: now,
            last_sync: None,
        }
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        if self.min_interval.is_zero() {
            return self.burst;
        }
        let refilled = now.saturating_duration_since(self.updated).as_secs_f64()
            / self.min_interval.as_secs_f64();
        (self.tokens + refilled).min(self.burst)
    }

    /// When the next sync is due: as soon as a token is there when something is `pending`,
    /// else `max_interval` after the last sync; at once before the first.
    pub fn next(&self, pending: bool, now: Instant) -> Instant {
        let Some(last) = self.last_sync else {
            return now;
        };
        if !pending {
            return last + self.max_interval;
        }
        let tokens = self.tokens_at(now);
        if tokens >= 1.0 {
            now
        } else {
            now + self.min_interval.mul_f64(1.0 - tokens)
        }
    }

    /// A sync ran at `now`: it took a token.
    pub fn took(&mut self, now: Instant) {
        self.tokens = (self.tokens_at(now) - 1.0).max(0.0);
        self.updated = now;
        self.last_sync = Some(now);
    }

    /// Make the next sync due at once (a mode switch), keeping the bucket's level.
    pub fn sync_now(&mut self) {
        self.last_sync = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bursts_then_coalesces_then_resyncs() {
        let t0 = Instant::now();
        let mut l = SyncLimiter::new(100 * MS, 30_000 * MS, BURST, t0);
        assert_eq!(l.next(false, t0), t0, "the first sync is due at once");
        l.took(t0);
        // A change right after: the second token.
        assert_eq!(l.next(true, t0 + 5 * MS), t0 + 5 * MS);
        l.took(t0 + 5 * MS);
        // A third change waits until a token has refilled: one token per 100 ms since the
        // first sync emptied the bucket down to one, so at t0 + 100 ms.
        let at = l.next(true, t0 + 10 * MS);
        let wait = at - t0;
        assert!(wait >= 99 * MS && wait <= 101 * MS, "{wait:?}");
        l.took(at);
        // Nothing pending: the periodic sync, max_interval after the last one.
        assert_eq!(l.next(false, at), at + 30_000 * MS);
        // After a quiet period the bucket is full again.
        let later = at + 1_000 * MS;
        assert_eq!(l.next(true, later), later);
        l.took(later);
        assert_eq!(l.next(true, later + MS), later + MS);
    }

    #[test]
    fn a_mode_switch_syncs_at_once() {
        let t0 = Instant::now();
        let mut l = SyncLimiter::new(100 * MS, 30_000 * MS, BURST, t0);
        l.took(t0);
        l.took(t0);
        l.sync_now();
        assert_eq!(l.next(true, t0 + MS), t0 + MS);
    }
}
