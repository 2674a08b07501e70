//! Memory budgets, checked before anything is allocated.
//!
//! Every size a user controls (a layer's `N` and `I`, a batch `B`, an
//! episode's `T`, the tensors a file declares) multiplies into buffers of
//! `B·N·I·…` floats. An allocation that the machine cannot serve aborts the
//! process (Rust's allocator does not return an error), so the entry points
//! compute what a model, an episode batch or a forward + backward pass will
//! hold from the sizes alone ([`Estimate`]), compare it with the memory the
//! machine has ([`available`]) and return [`Error::Memory`] naming the
//! argument, the total, its largest parts and what to change.
//!
//! The machine's memory is `MemAvailable` of `/proc/meminfo` on Linux. The
//! environment variable [`ENV_LIMIT`] (`NEUROPLASTIC_MEMORY_LIMIT`, bytes with
//! an optional `K`, `M`, `G` or `T` binary suffix) overrides it, e.g. to share
//! a machine, or to test the refusals on any machine. Where neither is known,
//! only sizes no machine could hold (over `isize::MAX` bytes) are refused.
//!
//! The estimates are upper bounds of the large buffers (traces, per-step
//! vectors, parameters), not exact peaks: a run that passes may still be
//! refused memory by other processes, but one that is refused could not have
//! fit.

use crate::config::LayerConfig;
use crate::engine::Device;
use crate::error::{Error, Result};
use crate::options::{Checkpoint, Options};
use crate::params::param_shapes;

/// The environment variable that sets the memory available to neuroplastic,
/// in bytes (suffixes `K`, `M`, `G`, `T` are powers of 1024), overriding
/// `MemAvailable`.
pub const ENV_LIMIT: &str = "NEUROPLASTIC_MEMORY_LIMIT";

/// How much memory a computation may use, and where that figure comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Bytes.
    pub bytes: u128,
    /// Where the figure comes from, for messages.
    pub source: String,
}

/// Parses `1234`, `512M`, `2G`, `1.5T` (binary suffixes; case-insensitive; an optional trailing `B`/`iB`).
pub fn parse_bytes(s: &str) -> Option<u128> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix("ib")).unwrap_or(t);
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let (num, mult) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 1u128 << 10),
        'M' => (&t[..t.len() - 1], 1 << 20),
        'G' => (&t[..t.len() - 1], 1 << 30),
        'T' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult as f64) as u128)
}

/// The memory available to a computation now: [`ENV_LIMIT`] when set, else
/// `MemAvailable` from `/proc/meminfo`, else `None` (unknown).
pub fn available() -> Result<Option<Limit>> {
    available_within(std::time::Duration::ZERO)
}

/// How long a reading of `MemAvailable` serves [`Estimate::check`] before it
/// is read again. Reading `/proc/meminfo` costs about 30 µs, more than a
/// small forward pass (a step-at-a-time agent calls one per step); memory
/// rarely changes much within this time, and a refusal is always re-checked
/// against a fresh reading.
const REUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// [`available`], where a `MemAvailable` read at most `max_age` ago may serve.
fn available_within(max_age: std::time::Duration) -> Result<Option<Limit>> {
    if let Ok(v) = std::env::var(ENV_LIMIT) {
        return match parse_bytes(&v) {
            Some(bytes) => Ok(Some(Limit { bytes, source: format!("{ENV_LIMIT}={v}") })),
            None => Err(Error::Config {
                arg: ENV_LIMIT.into(),
                message: format!("\"{v}\" is not a byte count (e.g. 8000000000, 512M, 16G)"),
            }),
        };
    }
    Ok(mem_available(max_age)
        .map(|bytes| Limit { bytes, source: format!("MemAvailable in /proc/meminfo; set {ENV_LIMIT} to override") }))
}

/// `MemAvailable` of `/proc/meminfo` in bytes (Linux), or `None`; the last
/// reading when it is at most `max_age` old.
fn mem_available(max_age: std::time::Duration) -> Option<u128> {
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<Option<(Instant, Option<u128>)>> = Mutex::new(None);
    let now = Instant::now();
    if let Ok(last) = LAST.lock()
        && let Some((at, bytes)) = *last
        && now.duration_since(at) <= max_age
    {
        return bytes;
    }
    let read = || -> Option<u128> {
        let s = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    let bytes = read();
    if let Ok(mut last) = LAST.lock() {
        *last = Some((now, bytes));
    }
    bytes
}

/// Bytes in words: `512 B`, `3.2 MiB`, `7.3 TiB`.
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The elements of a shape, without overflow.
fn count(shape: &[usize]) -> u128 {
    shape.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128))
}

/// What a computation will allocate, as named parts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Estimate {
    parts: Vec<(String, u128)>,
}

impl Estimate {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` for `what`.
    pub fn add(&mut self, what: impl Into<String>, bytes: u128) -> &mut Self {
        if bytes > 0 {
            self.parts.push((what.into(), bytes));
        }
        self
    }

    /// Adds an `f32` tensor of `shape`, `copies` times.
    pub fn f32(&mut self, what: impl Into<String>, shape: &[usize], copies: usize) -> &mut Self {
        self.add(what, count(shape).saturating_mul(4).saturating_mul(copies as u128))
    }

    /// Adds every part of `other`, each name prefixed with `prefix`.
    pub fn extend(&mut self, prefix: &str, other: &Estimate) -> &mut Self {
        for (w, b) in &other.parts {
            self.add(format!("{prefix}{w}"), *b);
        }
        self
    }

    /// The parts: `(what, bytes)`.
    pub fn parts(&self) -> &[(String, u128)] {
        &self.parts
    }

    /// All bytes.
    pub fn total(&self) -> u128 {
        self.parts.iter().fold(0u128, |a, p| a.saturating_add(p.1))
    }

    /// The three largest parts, in words.
    fn largest(&self) -> String {
        let mut p: Vec<&(String, u128)> = self.parts.iter().collect();
        p.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut s: Vec<String> = p.iter().take(3).map(|(w, b)| format!("{w}: {}", human(*b))).collect();
        if p.len() > 3 {
            s.push("…".into());
        }
        s.join(", ")
    }

    /// Errors with [`Error::Memory`] when the total exceeds what [`available`]
    /// reports (a `MemAvailable` reading up to 250 ms old may let it pass; a
    /// refusal is always made on a fresh one).
    /// `arg` is what the user gave (a flag, a file, an argument), `purpose`
    /// what the memory is for, `fix` what to change.
    pub fn check(&self, arg: &str, purpose: &str, fix: &str) -> Result<()> {
        // A recent reading may pass it; only a fresh one refuses it.
        match self.check_against(available_within(REUSE)?.as_ref(), arg, purpose, fix) {
            Err(Error::Memory { .. }) => self.check_against(available()?.as_ref(), arg, purpose, fix),
            ok => ok,
        }
    }

    /// Like [`Estimate::check`] against an explicit limit (`None`: only sizes
    /// beyond `isize::MAX` bytes, which no allocation can serve, are refused).
    pub fn check_against(&self, limit: Option<&Limit>, arg: &str, purpose: &str, fix: &str) -> Result<()> {
        let total = self.total();
        let (cap, source) = match limit {
            Some(l) => (l.bytes, format!("the {} this machine has available ({})", human(l.bytes), l.source)),
            None => (isize::MAX as u128, "the largest allocation a program can make".into()),
        };
        if total <= cap {
            return Ok(());
        }
        Err(Error::Memory {
            arg: arg.into(),
            needed: total,
            available: limit.map(|l| l.bytes),
            message: format!("{purpose} needs {} ({}), more than {source}; {fix}", human(total), self.largest()),
        })
    }
}

/// The parameters of a layer and its read-out of `outputs` rows
/// (`outputs = 0`: no head).
pub fn model(cfg: &LayerConfig, outputs: usize) -> Estimate {
    let mut e = Estimate::new();
    for (name, shape) in param_shapes(cfg) {
        if shape != [0] {
            e.f32(format!("`{name}` {}", crate::error::Shape(shape.clone())), &shape, 1);
        }
    }
    if outputs > 0 {
        e.f32(format!("`head.out.weight` ({outputs}, {})", cfg.n), &[outputs, cfg.n], 1);
        e.f32("`head.out.bias`", &[outputs], 1);
    }
    e
}

/// An episode batch: `inputs` `(B, T, X)`, `targets` `(B, T, O)`, `mask` `(B, T)`.
pub fn episode(cfg: &LayerConfig, outputs: usize, batch: usize, steps: usize) -> Estimate {
    let o = if outputs == 0 { cfg.n } else { outputs };
    let mut e = Estimate::new();
    e.f32(format!("inputs ({batch}, {steps}, {})", cfg.inputs), &[batch, steps, cfg.inputs], 1);
    e.f32(format!("targets ({batch}, {steps}, {o})"), &[batch, steps, o], 1);
    e.f32(format!("mask ({batch}, {steps})"), &[batch, steps], 1);
    e
}

/// A forward pass followed by a backward pass of `batch` episodes of
/// `steps` steps on `device` (what [`crate::Engine::forward`] and
/// [`crate::Engine::backward`] allocate, besides the caller's tensors).
///
/// CPU: the trace snapshots every `C` steps and one segment's replay buffer
/// (`⌈T/C⌉ + C` traces of `(B, N, I)` per trace kind, `C` from the options'
/// checkpoint interval), the final state, the trace adjoints and `dα` of each
/// episode (`(B, N, I)` each), and six per-step vectors `(B, T, N)`. An upper
/// bound: where the backward reconstructs Hebb/Oja traces instead of
/// replaying them (`docs/backward.md` §6) it keeps fewer traces than this.
/// Reference (f64): every step's state of one episode at a time, `(T + 1, N, I)`
/// per trace kind, plus f64 copies of the inputs and the batch's state.
pub fn run(cfg: &LayerConfig, device: Device, opts: &Options, batch: usize, steps: usize) -> Estimate {
    let (n, i, x, k) = (cfg.n, cfg.pre(), cfg.inputs, cfg.k());
    let kinds: usize = if cfg.rule.has_eligibility() { 2 } else { 1 };
    let mut e = Estimate::new();
    let trace = [batch, n, i];
    match device {
        Device::Reference => {
            e.add(
                format!("every step's trace of one episode, f64 ({}, {n}, {i}) × {kinds}", steps + 1),
                count(&[steps + 1, n, i]).saturating_mul(8 * kinds as u128),
            );
            e.add(
                format!("states, f64 ({batch}, {n}, {i}) × {}", 3 * kinds),
                count(&trace).saturating_mul(24 * kinds as u128),
            );
            e.add(format!("inputs and gradients, f64 ({batch}, {steps}, {x}) × 3"), count(&[batch, steps, x]) * 24);
            e.add(format!("outputs, f64 ({batch}, {steps}, {n}) × 3"), count(&[batch, steps, n]).saturating_mul(24));
        }
        Device::Cpu | Device::Cuda(_) => {
            // Without the parameters, `Auto` is taken at ⌈√T⌉, where ⌈T/C⌉ + C is
            // smallest; the longer reconstructing interval it may choose keeps fewer traces.
            let c = match opts.checkpoint {
                Checkpoint::Auto => (steps as f64).sqrt().ceil().max(1.0) as usize,
                Checkpoint::Every(c) => c.max(1),
                Checkpoint::All => 1,
            };
            let kept = steps.div_ceil(c).saturating_add(c);
            e.add(
                format!("trace snapshots and replay, ({kept}, {batch}, {n}, {i}) × {kinds} (checkpoint interval {c})"),
                count(&[kept, batch, n, i]).saturating_mul(4 * kinds as u128),
            );
            e.f32(
                format!("final state, trace adjoints and dα ({batch}, {n}, {i}) × {}", 2 * kinds + 1),
                &trace,
                2 * kinds + 1,
            );
            e.f32(format!("per-step vectors ({batch}, {steps}, {n}) × 6"), &[batch, steps, n], 6);
            e.f32(format!("modulator per step ({batch}, {steps}, {k}) × 2"), &[batch, steps, k], 2);
            e.f32(format!("input gradients ({batch}, {steps}, {x})"), &[batch, steps, x], 1);
        }
    }
    e
}

/// [`run`] checked against [`available`] memory, in the terms of the
/// engine's API (what [`crate::Engine::forward`] calls before allocating).
pub fn check_run(cfg: &LayerConfig, device: Device, opts: &Options, batch: usize, steps: usize) -> Result<()> {
    run(cfg, device, opts, batch, steps).check(
        &format!("inputs (B = {batch}, T = {steps})"),
        &format!("a forward and backward pass of a layer with N = {}, I = {} on {}", cfg.n, cfg.pre(), device.name()),
        "pass fewer episodes (B) or shorter ones (T) per call, or a shorter checkpoint interval (Options::checkpoint)",
    )
}

/// Training with an optimizer that keeps `moments` buffers per parameter
/// (Adam: 2) on batches of `batch` episodes of `steps` steps: the model, its
/// gradients and the optimizer state, one episode batch, and the forward +
/// backward pass ([`run`]).
pub fn training(
    cfg: &LayerConfig,
    outputs: usize,
    moments: usize,
    device: Device,
    opts: &Options,
    batch: usize,
    steps: usize,
) -> Estimate {
    let m = model(cfg, outputs);
    let mut e = Estimate::new();
    e.extend("", &m);
    let params = m.total();
    e.add("gradients of the parameters", params);
    e.add(format!("optimizer state ({moments} per parameter)"), params.saturating_mul(moments as u128));
    e.extend("episodes: ", &episode(cfg, outputs, batch, steps));
    e.extend("", &run(cfg, device, opts, batch, steps));
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;

    #[test]
    fn byte_counts_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1234"), Some(1234));
        assert_eq!(parse_bytes("2K"), Some(2048));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("16GiB"), Some(16 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1"), None);
    }

    /// A recent `MemAvailable` reading serves small checks, but never lets a
    /// size beyond the memory pass (Linux, without the override).
    #[test]
    fn recent_readings_pass_small_checks_and_refusals_stay() {
        if std::env::var_os(ENV_LIMIT).is_some() {
            return;
        }
        let Some(now) = available().unwrap() else { return };
        let mut small = Estimate::new();
        small.add("a few bytes", 64);
        small.check("x", "a test", "none").unwrap();
        // Back-to-back readings within the reuse time are the same one.
        let seen: Vec<u128> = (0..5).map(|_| available_within(REUSE).unwrap().unwrap().bytes).collect();
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        let mut big = Estimate::new();
        big.add("more than the machine has", now.bytes + (1 << 30));
        let err = big.check("--big", "a test", "less").unwrap_err().to_string();
        assert!(err.contains("--big") && err.contains("MemAvailable"), "{err}");
    }

    #[test]
    fn a_layer_of_a_million_neurons_is_refused_with_its_size() {
        let mut cfg = LayerConfig::recurrent(Rule::Hebb, 1_000_000, 1_000_000);
        cfg.input_map = crate::config::InputMap::Direct;
        let e = model(&cfg, 0);
        // w and alpha, 10^12 floats each.
        assert_eq!(e.total(), 2 * 4_000_000_000_000 + 4);
        let limit = Limit { bytes: 16 << 30, source: "test".into() };
        let err = e.check_against(Some(&limit), "--bits 1000000", "the model", "lower --bits").unwrap_err();
        let msg = err.to_string();
        for needle in ["--bits 1000000", "7.3 TiB", "16.0 GiB", "`w` (1000000, 1000000)", "lower --bits"] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        // Sizes no machine can hold are refused without a limit, too.
        let huge = LayerConfig::recurrent(Rule::Hebb, 1 << 40, 1 << 40);
        assert!(model(&huge, 0).check_against(None, "n", "the model", "").is_err());
        // A small one passes.
        let small = LayerConfig::recurrent(Rule::Hebb, 100, 100);
        assert!(model(&small, 0).check_against(Some(&limit), "n", "the model", "").is_ok());
    }

    #[test]
    fn the_run_estimate_grows_with_the_batch_and_counts_both_traces() {
        let cfg = LayerConfig::recurrent(Rule::Retroactive, 200, 17);
        let opts = Options::default();
        let one = run(&cfg, Device::Cpu, &opts, 1, 200).total();
        let many = run(&cfg, Device::Cpu, &opts, 32, 200).total();
        assert_eq!(many, 32 * one);
        // Retroactive keeps H and E: at least 2 × (⌈200/15⌉ + 15) traces of 200×200 floats per episode.
        assert!(one >= 2 * (14 + 15) * 200 * 200 * 4, "{one}");
        let hebb = LayerConfig::recurrent(Rule::Hebb, 200, 17);
        assert!(run(&hebb, Device::Cpu, &opts, 1, 200).total() < one);
    }
}
