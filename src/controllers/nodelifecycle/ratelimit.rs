//! The rate-limited taint queue of one zone (kube's `RateLimitedTimedQueue`): nodes waiting for
//! their `NoExecute` taint leave the queue one token at a time, from a token bucket of burst 1
//! refilled at the zone's rate (`--node-eviction-rate`, 0.1/s: one node every 10 s). A rate of
//! 0 stops tainting. Pure: every call takes the current instant.
//!
//! A hand-written bucket rather than a rate-limiting crate: burst 1, a "never" limiter at rate 0
//! and kube's drain-on-swap are all there is to it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A token bucket of burst 1 (client-go's token bucket limiter with `EvictionRateLimiterBurst`).
/// With one token at most, the bucket is simply full from `full_at` on, and taking the token
/// makes it full again one period later.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    qps: f64,
    /// `1/qps`; `None` for a limiter that never accepts.
    period: Option<Duration>,
    full_at: Instant,
}

impl TokenBucket {
    /// A full bucket refilled at `qps`; `qps <= 0` never accepts.
    pub fn new(qps: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            qps,
            period: (qps > 0.0).then(|| Duration::from_secs_f64(1.0 / qps)),
            full_at: now,
        }
    }

    pub fn qps(&self) -> f64 {
        self.qps
    }

    /// Take the token if it is there.
    pub fn try_accept(&mut self, now: Instant) -> bool {
        match self.period {
            Some(period) if now >= self.full_at => {
                self.full_at = now + period;
                true
            }
            _ => false,
        }
    }

    /// When the token is there (`None`: never).
    pub fn next_token(&self, now: Instant) -> Option<Instant> {
        self.period.map(|_| self.full_at.max(now))
    }
}

#[derive(Debug, Clone)]
struct Waiting {
    node: String,
    at: Instant,
}

/// The nodes of one zone waiting for their `NoExecute` taint, in the order they may be tainted.
#[derive(Debug, Clone)]
pub struct TaintQueue {
    limiter: TokenBucket,
    waiting: VecDeque<Waiting>,
}

impl TaintQueue {
    pub fn new(qps: f64, now: Instant) -> TaintQueue {
        TaintQueue {
            limiter: TokenBucket::new(qps, now),
            waiting: VecDeque::new(),
        }
    }

    /// Queue `node` now (false if it waits already).
    pub fn add(&mut self, node: &str, now: Instant) -> bool {
        if self.contains(node) {
            return false;
        }
        self.insert(node, now);
        true
    }

    /// Queue `node` again at `at` (after a failed attempt).
    pub fn retry(&mut self, node: &str, at: Instant) {
        self.remove(node);
        self.insert(node, at);
    }

    fn insert(&mut self, node: &str, at: Instant) {
        let i = self.waiting.partition_point(|w| w.at <= at);
        self.waiting.insert(
            i,
            Waiting {
                node: node.to_string(),
                at,
            },
        );
    }

    pub fn contains(&self, node: &str) -> bool {
        self.waiting.iter().any(|w| w.node == node)
    }

    pub fn remove(&mut self, node: &str) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.node != node);
        self.waiting.len() != before
    }

    pub fn clear(&mut self) {
        self.waiting.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn qps(&self) -> f64 {
        self.limiter.qps()
    }

    /// Change the rate (kube's `SwapLimiter`): a new full bucket, drained at once if the old one
    /// had no token left, so that a rate change does not hand out an extra token.
    pub fn swap_limiter(&mut self, qps: f64, now: Instant) {
        if self.limiter.qps() == qps {
            return;
        }
        let mut new = TokenBucket::new(qps, now);
        if !self.limiter.try_accept(now) {
            new.try_accept(now);
        }
        self.limiter = new;
    }

    /// The nodes whose turn has come, each spending one token (kube's `Try`; a node not yet due
    /// spends none).
    pub fn take(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(head) = self.waiting.front() {
            if head.at > now || !self.limiter.try_accept(now) {
                break;
            }
            out.extend(self.waiting.pop_front().map(|w| w.node));
        }
        out
    }

    /// When [`TaintQueue::take`] may next hand out a node (`None`: empty or stopped).
    pub fn next_turn(&self, now: Instant) -> Option<Instant> {
        let head = self.waiting.front()?;
        Some(self.limiter.next_token(now)?.max(head.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What happens at one instant (ms from the start).
    enum Op {
        Nothing,
        Add(&'static str),
        Remove(&'static str),
        /// Queue again, so many ms later.
        Retry(&'static str, u64),
        Swap(f64),
    }
    use Op::*;

    /// Each step: at `t` ms do `op`, then `take` must hand out `taken` and the next turn be at
    /// `next` ms.
    fn run(qps: f64, steps: &[(u64, Op, &[&str], Option<u64>)]) {
        let t0 = Instant::now();
        let mut q = TaintQueue::new(qps, t0);
        for (t, op, taken, next) in steps {
            let now = t0 + Duration::from_millis(*t);
            match op {
                Nothing => {}
                Add(n) => {
                    q.add(n, now);
                }
                Remove(n) => {
                    q.remove(n);
                }
                Retry(n, after) => q.retry(n, now + Duration::from_millis(*after)),
                Swap(qps) => q.swap_limiter(*qps, now),
            }
            assert_eq!(&q.take(now), taken, "taken at {t} ms");
            let turn = q
                .next_turn(now)
                .map(|n| n.duration_since(t0).as_millis() as u64);
            assert_eq!(turn, *next, "next turn after {t} ms");
        }
    }

    #[test]
    fn one_node_per_token_at_the_eviction_rate() {
        // 0.1/s, burst 1: the first node at once, then one every 10 s.
        run(
            0.1,
            &[
                (0, Add("a"), &["a"], None),
                (0, Add("b"), &[], Some(10_000)),
                (1, Add("c"), &[], Some(10_000)),
                (1, Add("b"), &[], Some(10_000)),
                (9_999, Nothing, &[], Some(10_000)),
                (10_000, Nothing, &["b"], Some(20_000)),
                (15_000, Remove("c"), &[], None),
                (20_000, Add("d"), &["d"], None),
                // The bucket holds one token at most, however long it waited.
                (60_000, Add("e"), &["e"], None),
                (60_001, Add("f"), &[], Some(70_000)),
            ],
        );
    }

    #[test]
    fn a_failed_node_waits_its_turn_again() {
        run(
            1.0,
            &[
                (0, Add("a"), &["a"], None),
                (0, Retry("a", 1_500), &[], Some(1_500)),
                (1_000, Nothing, &[], Some(1_500)),
                (1_500, Nothing, &["a"], None),
            ],
        );
    }

    #[test]
    fn rate_zero_stops_tainting_and_a_new_rate_drains_once() {
        run(
            0.1,
            &[
                (0, Add("a"), &["a"], None),
                (0, Add("b"), &[], Some(10_000)),
                // Stopped (master disruption, or a small zone in partial disruption).
                (1_000, Swap(0.0), &[], None),
                (50_000, Nothing, &[], None),
                // Going again: the stopped limiter had no token, so the new one starts drained
                // and the next node waits a whole period.
                (60_000, Swap(0.1), &[], Some(70_000)),
                (69_999, Nothing, &[], Some(70_000)),
                (70_000, Nothing, &["b"], None),
                // The old bucket had refilled: the new one starts full.
                (95_000, Swap(0.01), &[], None),
                (95_000, Add("c"), &["c"], None),
                (95_000, Add("d"), &[], Some(195_000)),
                (195_000, Nothing, &["d"], None),
            ],
        );
    }
}
