//! A tiny seedable pseudo-random generator (SplitMix64) for the parts of the proxy that the
//! 2015 code randomised: the proxy-port choice and the endpoint shuffle. Same seed, same
//! sequence, on every platform and crate version, which keeps labs and snapshots reproducible.

/// SplitMix64: fast, small state, good enough for picking ports and shuffling endpoints.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SeededRng::below(0)");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Go's `slice.ShuffleStrings` (inside-out Fisher–Yates): a shuffled copy of `items`.
    pub fn shuffled<T: Clone>(&mut self, items: &[T]) -> Vec<T> {
        let mut out: Vec<T> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let j = self.below(i as u64 + 1) as usize;
            if j == i {
                out.push(item.clone());
            } else {
                let moved = out[j].clone();
                out.push(moved);
                out[j] = item.clone();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(SeededRng::new(8).next_u64(), xs[0]);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let items: Vec<u32> = (0..50).collect();
        let mut rng = SeededRng::new(1);
        let mut shuffled = rng.shuffled(&items);
        assert_ne!(
            shuffled, items,
            "50 items are practically never left in order"
        );
        shuffled.sort_unstable();
        assert_eq!(shuffled, items);
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SeededRng::new(3);
        assert!((0..1000).all(|_| rng.below(6) < 6));
    }
}
