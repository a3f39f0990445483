//! A small seeded RNG (SplitMix64) and the shuffle it drives. Pure integer
//! arithmetic, so every process on every platform computes the same order from
//! the same (seed, epoch), with no state to broadcast between ranks.

/// SplitMix64 (Steele, Lea and Flood, 2014): one u64 of state, full period.
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A generator for one epoch of one seed: both are mixed, so that nearby
    /// seeds and nearby epochs give unrelated streams.
    pub fn for_epoch(seed: u64, epoch: u64) -> SplitMix64 {
        let mixed_seed = SplitMix64::new(seed).next_u64();
        let mixed_epoch = SplitMix64::new(epoch ^ GOLDEN_GAMMA).next_u64();
        SplitMix64::new(mixed_seed ^ mixed_epoch.rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `[0, bound)` without modulo bias (Lemire's
    /// multiply-and-reject). `bound` must be positive.
    pub fn next_below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

/// `0..len` in a random order fixed by `(seed, epoch)` (Fisher-Yates).
pub fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<i64> {
    let mut order: Vec<i64> = (0..len as i64).collect();
    let mut rng = SplitMix64::for_epoch(seed, epoch);
    for i in (1..len).rev() {
        let j = rng.next_below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_stream() {
        // First outputs for seed 1234567 of Vigna's splitmix64.c, computed by a
        // Python transcription of it (s += 0x9E3779B97F4A7C15; z = s; z = (z ^ z >> 30)
        // * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB; z ^ z >> 31, mod 2^64).
        let mut rng = SplitMix64::new(1_234_567);
        let expected = [
            6_457_827_717_110_365_317u64,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423,
            4_593_380_528_125_082_431,
            16_408_922_859_458_223_821,
        ];
        for value in expected {
            assert_eq!(rng.next_u64(), value);
        }
    }

    #[test]
    fn permutation_is_a_permutation_and_depends_on_seed_and_epoch() {
        let a = permutation(1000, 7, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<i64>>());
        assert_eq!(a, permutation(1000, 7, 0));
        assert_ne!(a, permutation(1000, 7, 1));
        assert_ne!(a, permutation(1000, 8, 0));
        assert_ne!(a, sorted);
    }

    #[test]
    fn next_below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(3);
        let mut seen = [0usize; 5];
        for _ in 0..5000 {
            seen[rng.next_below(5) as usize] += 1;
        }
        // Each bucket expects 1000; a fair generator stays well inside 800..1200.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn permutation_matches_an_independent_transcription() {
        // From a Python transcription of `for_epoch`, `next_below` and the
        // Fisher-Yates loop (the same one quoted in __test__/data.spec.ts).
        assert_eq!(permutation(10, 42, 0), vec![3, 1, 6, 7, 0, 2, 4, 9, 5, 8]);
        assert_eq!(permutation(10, 42, 1), vec![1, 5, 4, 3, 6, 9, 2, 0, 7, 8]);
        assert_eq!(permutation(10, 7, 0), vec![3, 6, 2, 8, 1, 4, 0, 5, 7, 9]);
    }

    #[test]
    fn tiny_lengths() {
        assert!(permutation(0, 1, 0).is_empty());
        assert_eq!(permutation(1, 1, 0), vec![0]);
    }
}
