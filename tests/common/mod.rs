//! Helpers for the integration tests: a small seeded generator, so that a
//! proptest case is fully described by its printed seed.

/// SplitMix64: tiny, seedable, good enough to draw test values.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole stream follows from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }

    /// Uniform in `0..n`, up to a modulo bias of at most n / 2^64.
    #[allow(dead_code)] // Drawn by the meta tests only (through tests/meta_support).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `len` values uniform in `[lo, hi)`.
    pub fn vec(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Overwrites `v` with values uniform in `[lo, hi)`.
    pub fn fill(&mut self, v: &mut [f64], lo: f64, hi: f64) {
        v.iter_mut().for_each(|e| *e = self.uniform(lo, hi));
    }
}
