//! Tasks that generate episodes procedurally from a seeded generator, for the
//! trainer ([`crate::train::Trainer`]).
//!
//! - [`PatternTask`]: binary pattern memorization and completion (Miconi,
//!   Clune & Stanley 2018, §4.1).

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::{Value, json};

use crate::config::{EtaMode, InputMap, LayerConfig, Rule};
use crate::error::{Error, Result};
use crate::io::json_get;
use crate::model::{Episode, HEAD_NAMES, Head, Model};
use crate::params::Params;

/// The generator tasks draw episodes from (the streams of a run are listed
/// in [`crate::train`]).
pub type TaskRng = ChaCha8Rng;

fn stream(seed: u64, s: u64) -> TaskRng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(s);
    r
}

/// The generator of training episodes of a run with this seed (stream 0).
pub fn episode_rng(seed: u64) -> TaskRng {
    stream(seed, 0)
}

/// The generator of the evaluation episodes drawn after `step` updates
/// (stream 1, starting at word `step · 2³²`): fresh episodes at every
/// evaluation, the same ones in a resumed run.
pub fn eval_rng(seed: u64, step: u64) -> TaskRng {
    let mut r = stream(seed, 1);
    r.set_word_pos((step as u128) << 32);
    r
}

/// The generator of initial parameters (stream 2).
pub fn init_rng(seed: u64) -> TaskRng {
    stream(seed, 2)
}

/// A source of training episodes and the score that goes with them.
pub trait Task {
    /// The task's name, as on the command line (`pattern`); stored in checkpoints.
    fn name(&self) -> &'static str;
    /// `T`, the steps of one episode.
    fn steps(&self) -> usize;
    /// Draws `batch` fresh, independent episodes as one [`Episode`] of `B = batch`.
    fn sample(&self, rng: &mut TaskRng, batch: usize) -> Episode;
    /// The task's error rate of the output `yhat` `(B, T, O)` on `ep`, in `[0, 1]`.
    fn error(&self, ep: &Episode, yhat: &[f32]) -> f64;
    /// The task's settings, stored in checkpoints so that a run resumes on the same task.
    fn to_json(&self) -> Value;
}

/// Which network [`PatternTask::model`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// Plastic recurrent layer: `w` and `α` learned, Hebbian trace.
    Plastic,
    /// The same layer with `α` fixed at zero and frozen: an ordinary RNN.
    NonPlastic,
}

impl Net {
    /// The name used on the command line (`plastic`, `nonplastic`).
    pub fn name(self) -> &'static str {
        match self {
            Net::Plastic => "plastic",
            Net::NonPlastic => "nonplastic",
        }
    }
}

/// Binary pattern memorization and completion (Miconi et al. 2018, §4.1).
///
/// Each episode draws `patterns` random patterns of `bits` values ±1. They are
/// shown `cycles` times, in a new random order each cycle; each pattern for
/// `show` steps followed by `blank` steps of zero input. Then one of them, with
/// each bit zeroed with probability `degrade`, is shown for `test` steps. The
/// input is the pattern times `scale`; the loss is the squared error between
/// the network's final state and the full pattern (mask 1 on the last step
/// only), and the error rate is the fraction of its bits whose sign is wrong.
///
/// `T = cycles · patterns · (show + blank) + test` (106 for the defaults).
///
/// With `extra > 0` the layer has `bits + extra` neurons: the input is padded
/// with zeros (the extra neurons get no input) and a frozen read-out
/// `[I_bits | 0]` (`head.out`, `O = bits`) passes only the pattern neurons to
/// the loss, so the extra neurons' final values are ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct PatternTask {
    /// Bits per pattern (default 1000).
    pub bits: usize,
    /// Patterns per episode (default 5).
    pub patterns: usize,
    /// Presentations of the whole set (default 2).
    pub cycles: usize,
    /// Steps each pattern is shown (default 6).
    pub show: usize,
    /// Steps of zero input after each pattern (default 4).
    pub blank: usize,
    /// Steps the degraded test pattern is shown (default 6).
    pub test: usize,
    /// Probability that a bit of the test pattern is zeroed (default 0.5).
    pub degrade: f64,
    /// Input scale (default 20).
    pub scale: f64,
    /// Neurons beyond `bits` (default 0), see the type's docs.
    pub extra: usize,
}

impl Default for PatternTask {
    /// The classic configuration of Miconi et al. (2018): 1000 bits, 5
    /// patterns, 2 cycles, 6 steps shown + 4 blank, 6 test steps, half of the
    /// test pattern zeroed, inputs ×20.
    fn default() -> Self {
        PatternTask {
            bits: 1000,
            patterns: 5,
            cycles: 2,
            show: 6,
            blank: 4,
            test: 6,
            degrade: 0.5,
            scale: 20.0,
            extra: 0,
        }
    }
}

impl PatternTask {
    /// `N`, the neurons of the layer (`bits + extra`).
    pub fn neurons(&self) -> usize {
        self.bits + self.extra
    }

    /// Checks every setting; the error names it.
    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [
            ("bits", self.bits),
            ("patterns", self.patterns),
            ("cycles", self.cycles),
            ("show", self.show),
            ("test", self.test),
        ] {
            if v == 0 {
                return Err(Error::Empty { arg: arg.into() });
            }
        }
        if !(0.0..=1.0).contains(&self.degrade) {
            return Err(Error::Range {
                arg: "degrade".into(),
                value: self.degrade,
                expected: "a probability in [0, 1]".into(),
            });
        }
        if !self.scale.is_finite() {
            return Err(Error::Range { arg: "scale".into(), value: self.scale, expected: "a finite number".into() });
        }
        Ok(())
    }

    /// A fresh model for this task: one recurrent plastic layer of
    /// [`PatternTask::neurons`] neurons, Hebb rule, η fixed at `eta`, tanh, no
    /// bias, the input added directly to the pre-activation
    /// ([`InputMap::Direct`]), `w` and `α` (per connection) drawn from
    /// `init_std · N(0, 1)` with a generator seeded by `seed`.
    ///
    /// Returns the model and the names of the parameters the optimizer must
    /// not touch: `eta` (fixed), `alpha` for [`Net::NonPlastic`] (zero), and
    /// the read-out of the extra neurons (see the type's docs).
    pub fn model(&self, net: Net, eta: f64, init_std: f64, seed: u64) -> Result<(Model, Vec<String>)> {
        self.validate()?;
        crate::error::check_unit("eta", eta)?;
        if !(init_std.is_finite() && init_std >= 0.0) {
            return Err(Error::Range {
                arg: "init_std".into(),
                value: init_std,
                expected: "a finite number ≥ 0".into(),
            });
        }
        let n = self.neurons();
        let mut cfg = LayerConfig::recurrent(Rule::Hebb, n, n);
        cfg.input_map = InputMap::Direct;
        cfg.eta = EtaMode::Fixed;
        let mut params = Params::<f32>::zeros(&cfg);
        let mut rng = init_rng(seed);
        // w first, then α: the plastic and non-plastic nets of one seed share w.
        for x in params.w.iter_mut() {
            *x = (init_std * rng.sample::<f64, _>(StandardNormal)) as f32;
        }
        for x in params.alpha.iter_mut() {
            let z: f64 = rng.sample(StandardNormal);
            if net == Net::Plastic {
                *x = (init_std * z) as f32;
            }
        }
        params.eta[0] = eta as f32;
        let mut frozen = vec!["eta".to_string()];
        if net == Net::NonPlastic {
            frozen.push("alpha".into());
        }
        let head = (self.extra > 0).then(|| {
            let mut weight = vec![0.0f32; self.bits * n];
            for o in 0..self.bits {
                weight[o * n + o] = 1.0;
            }
            frozen.extend(HEAD_NAMES.iter().map(|s| s.to_string()));
            Head { weight, bias: vec![0.0; self.bits] }
        });
        Ok((Model { cfg, params, head }, frozen))
    }

    /// Reads the settings written by [`Task::to_json`]; `path` names the file in errors.
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let u = |k: &str| -> Result<usize> {
            json_get(v, k, path)?.as_u64().map(|x| x as usize).ok_or_else(|| Error::Format {
                path: path.into(),
                message: format!("task setting `{k}` is not an integer"),
            })
        };
        let f = |k: &str| -> Result<f64> {
            json_get(v, k, path)?.as_f64().ok_or_else(|| Error::Format {
                path: path.into(),
                message: format!("task setting `{k}` is not a number"),
            })
        };
        let t = PatternTask {
            bits: u("bits")?,
            patterns: u("patterns")?,
            cycles: u("cycles")?,
            show: u("show")?,
            blank: u("blank")?,
            test: u("test")?,
            degrade: f("degrade")?,
            scale: f("scale")?,
            extra: u("extra")?,
        };
        t.validate()?;
        Ok(t)
    }
}

impl Task for PatternTask {
    fn name(&self) -> &'static str {
        "pattern"
    }

    fn steps(&self) -> usize {
        self.cycles * self.patterns * (self.show + self.blank) + self.test
    }

    fn sample(&self, rng: &mut TaskRng, batch: usize) -> Episode {
        // inputs: (B, T, N)  targets: (B, T, bits)  mask: (B, T)
        let (n, bits, t_len) = (self.neurons(), self.bits, self.steps());
        let scale = self.scale as f32;
        let mut inputs = vec![0.0f32; batch * t_len * n];
        let mut targets = vec![0.0f32; batch * t_len * bits];
        let mut mask = vec![0.0f32; batch * t_len];
        let mut pats = vec![0.0f32; self.patterns * bits];
        let mut order: Vec<usize> = (0..self.patterns).collect();
        for b in 0..batch {
            for x in pats.iter_mut() {
                *x = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            }
            let row = |t: usize| (b * t_len + t) * n;
            let mut t = 0;
            for _ in 0..self.cycles {
                order.shuffle(rng);
                for &k in &order {
                    let p = &pats[k * bits..(k + 1) * bits];
                    for s in t..t + self.show {
                        for (x, &v) in inputs[row(s)..row(s) + bits].iter_mut().zip(p) {
                            *x = scale * v;
                        }
                    }
                    t += self.show + self.blank;
                }
            }
            let k = rng.random_range(0..self.patterns);
            let p = &pats[k * bits..(k + 1) * bits];
            let test: Vec<f32> =
                p.iter().map(|&v| if rng.random_bool(self.degrade) { 0.0 } else { scale * v }).collect();
            for s in t..t + self.test {
                inputs[row(s)..row(s) + bits].copy_from_slice(&test);
            }
            let last = b * t_len + t_len - 1;
            targets[last * bits..(last + 1) * bits].copy_from_slice(p);
            mask[last] = 1.0;
        }
        Episode { batch, steps: t_len, inputs, targets, mask, init: None }
    }

    fn error(&self, ep: &Episode, yhat: &[f32]) -> f64 {
        // A zero output has no sign: it counts as wrong.
        let o = self.bits;
        let (mut wrong, mut total) = (0usize, 0usize);
        for (r, &m) in ep.mask.iter().enumerate() {
            if m == 0.0 {
                continue;
            }
            let (y, t) = (&yhat[r * o..(r + 1) * o], &ep.targets[r * o..(r + 1) * o]);
            wrong += y.iter().zip(t).filter(|&(&y, &t)| y * t <= 0.0).count();
            total += o;
        }
        if total == 0 { 0.0 } else { wrong as f64 / total as f64 }
    }

    fn to_json(&self) -> Value {
        json!({
            "bits": self.bits,
            "patterns": self.patterns,
            "cycles": self.cycles,
            "show": self.show,
            "blank": self.blank,
            "test": self.test,
            "degrade": self.degrade,
            "scale": self.scale,
            "extra": self.extra,
        })
    }
}
