//! Helpers shared by `gradcheck.rs` and `bad_input.rs`: a small seeded
//! generator (so a proptest case is fully described by its printed seed) and
//! fillers for parameters and states.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use neuroplastic::{LayerConfig, Params, State};

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

    /// `len` values uniform in `[lo, hi)`.
    pub fn vec(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Overwrites `v` with values uniform in `[lo, hi)`.
    pub fn fill(&mut self, v: &mut [f64], lo: f64, hi: f64) {
        v.iter_mut().for_each(|e| *e = self.uniform(lo, hi));
    }
}

/// Parameters of `cfg` with every tensor uniform in `[-scale, scale)` and
/// the rates (η, η_e) in `[0.05, 0.95)`.
pub fn random_params(cfg: &LayerConfig, rng: &mut Rng, scale: f64) -> Params<f64> {
    let mut p = Params::<f64>::zeros(cfg);
    for (name, v) in p.named_mut() {
        match name {
            "eta" | "eta_e" => rng.fill(v, 0.05, 0.95),
            _ => rng.fill(v, -scale, scale),
        }
    }
    p
}

/// A state of `batch` episodes with every element uniform in `[-scale, scale)`.
pub fn random_state(cfg: &LayerConfig, batch: usize, rng: &mut Rng, scale: f64) -> State<f64> {
    let mut s = State::<f64>::zeros(cfg, batch);
    for v in [&mut s.h, &mut s.hebb, &mut s.elig] {
        rng.fill(v, -scale, scale);
    }
    s
}
