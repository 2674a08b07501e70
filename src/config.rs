//! The configuration of a plastic layer: which rule, which shapes, which
//! options. It fixes every tensor's shape (see [`crate::Params`]).

use crate::error::{Error, Result};

/// How the plastic trace `H` is updated after each step (`docs/design.md` §2).
///
/// `P_ji = y_j · x_i` is the Hebbian outer product of the same step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Decaying average (Miconi 2018): `H' = (1-η) H + η P`.
    Hebb,
    /// Oja's rule (Miconi 2018): `H'_ji = H_ji + η · y_j · (x_i − y_j · H_ji)`.
    Oja,
    /// Backpropamine, simple: `m = μ(V y + c)`, `M_j = Σ_k m_k F_kj + g_j`,
    /// `H' = clip(H + M_j · P_ji, −c_max, c_max)`.
    Modulated,
    /// Backpropamine with an eligibility trace `E`:
    /// `H' = clip(H + M_j · E_ji, −c_max, c_max)`, then `E' = (1-η_e) E + η_e P`.
    Retroactive,
}

impl Rule {
    /// Whether the rule has a neuromodulator (`V`, `c`, `F`, `g`).
    pub fn is_modulated(self) -> bool {
        matches!(self, Rule::Modulated | Rule::Retroactive)
    }
    /// Whether the state carries an eligibility trace `E`.
    pub fn has_eligibility(self) -> bool {
        matches!(self, Rule::Retroactive)
    }
    /// Whether the trace update is clipped to `±c_max`.
    pub fn is_clipped(self) -> bool {
        self.is_modulated()
    }
    /// The lower-case name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Hebb => "hebb",
            Rule::Oja => "oja",
            Rule::Modulated => "modulated",
            Rule::Retroactive => "retroactive",
        }
    }
    /// Parses [`Rule::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hebb" => Rule::Hebb,
            "oja" => Rule::Oja,
            "modulated" => Rule::Modulated,
            "retroactive" => Rule::Retroactive,
            _ => return None,
        })
    }
    /// Every rule, in a fixed order.
    pub const ALL: [Rule; 4] = [Rule::Hebb, Rule::Oja, Rule::Modulated, Rule::Retroactive];
}

/// Granularity of the plasticity coefficients `α`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlphaShape {
    /// One coefficient per connection: `α` is `(N, I)`.
    Connection,
    /// One per post-synaptic neuron: `α` is `(N,)`, `α_ji = α_j`.
    Neuron,
    /// One for the whole layer ("yoked"): `α` is `(1,)`.
    Scalar,
}

impl AlphaShape {
    /// The lower-case name used in files.
    pub fn name(self) -> &'static str {
        match self {
            AlphaShape::Connection => "connection",
            AlphaShape::Neuron => "neuron",
            AlphaShape::Scalar => "scalar",
        }
    }
    /// Parses [`AlphaShape::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "connection" => AlphaShape::Connection,
            "neuron" => AlphaShape::Neuron,
            "scalar" => AlphaShape::Scalar,
            _ => return None,
        })
    }
    /// Every granularity, in a fixed order.
    pub const ALL: [AlphaShape; 3] = [AlphaShape::Connection, AlphaShape::Neuron, AlphaShape::Scalar];
}

/// The layer's non-linearity `σ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `σ = tanh`.
    Tanh,
    /// `σ(a) = a`.
    Identity,
}

impl Activation {
    /// The lower-case name used in files.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Identity => "identity",
        }
    }
    /// Parses [`Activation::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tanh" => Activation::Tanh,
            "identity" => Activation::Identity,
            _ => return None,
        })
    }
    /// Both activations.
    pub const ALL: [Activation; 2] = [Activation::Tanh, Activation::Identity];
}

/// The neuromodulator's non-linearity `μ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModActivation {
    /// `μ = tanh`.
    Tanh,
    /// `μ(s) = 1 / (1 + e^{−s})`.
    Sigmoid,
    /// `μ(s) = s`.
    Identity,
}

impl ModActivation {
    /// The lower-case name used in files.
    pub fn name(self) -> &'static str {
        match self {
            ModActivation::Tanh => "tanh",
            ModActivation::Sigmoid => "sigmoid",
            ModActivation::Identity => "identity",
        }
    }
    /// Parses [`ModActivation::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tanh" => ModActivation::Tanh,
            "sigmoid" => ModActivation::Sigmoid,
            "identity" => ModActivation::Identity,
            _ => return None,
        })
    }
    /// Every modulator activation.
    pub const ALL: [ModActivation; 3] = [ModActivation::Tanh, ModActivation::Sigmoid, ModActivation::Identity];
}

/// Where the pre-synaptic vector `x` of step t comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topology {
    /// `x = h_{t−1}` (so `I = N`) and the step's input enters through the
    /// drive `u_t` (see [`InputMap`]).
    Recurrent,
    /// `x` = the step's input features (`I` = the input size); there is no
    /// separate drive (`u = 0`) and no recurrent state `h`.
    FeedForward,
}

/// How a recurrent layer's external input enters the pre-activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputMap {
    /// `u_t = x_t^ext`: added directly (needs input size = N). No `u` tensor.
    Direct,
    /// `u_t = U · x_t^ext` with learned `U` of shape `(N, X)`.
    Linear,
}

/// Whether a rate (η for Hebb/Oja, η_e for Retroactive) is learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EtaMode {
    /// The rate is a parameter and gets a gradient.
    Learned,
    /// The rate is a constant: its reported gradient is zero.
    Fixed,
}

/// Neuromodulator options (used by [`Rule::Modulated`] and [`Rule::Retroactive`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModulatorConfig {
    /// Number of modulator outputs `K` (≥ 1).
    pub k: usize,
    /// The modulator's non-linearity `μ`.
    pub activation: ModActivation,
    /// Whether `m = μ(V y + c)` has the learned bias `c` (`(K,)`); off: `c = 0`.
    pub bias: bool,
    /// Whether the fan-out `F` (`(K, N)`) is learned; off: `F = ones`.
    pub fanout: bool,
    /// Whether the fan-out has a per-neuron bias `g` (`(N,)`); off: `g = 0`.
    pub fanout_bias: bool,
}

impl Default for ModulatorConfig {
    fn default() -> Self {
        ModulatorConfig { k: 1, activation: ModActivation::Tanh, bias: true, fanout: false, fanout_bias: false }
    }
}

/// Everything that fixes a plastic layer's shapes and equations.
///
/// Build one with [`LayerConfig::recurrent`] or [`LayerConfig::feed_forward`]
/// and adjust the public fields; [`LayerConfig::validate`] checks it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerConfig {
    /// Recurrent or feed-forward.
    pub topology: Topology,
    /// The trace rule.
    pub rule: Rule,
    /// Post-synaptic size `N`.
    pub n: usize,
    /// Input features per step `X`. Recurrent: the external input (equal to
    /// `N` with [`InputMap::Direct`]); feed-forward: the pre-synaptic size `I`.
    pub inputs: usize,
    /// Recurrent only: how the external input enters.
    pub input_map: InputMap,
    /// Granularity of `α`.
    pub alpha: AlphaShape,
    /// `σ`.
    pub activation: Activation,
    /// Whether the layer has the bias `b` (`(N,)`).
    pub bias: bool,
    /// Whether η (Hebb, Oja) or η_e (Retroactive) is learned.
    pub eta: EtaMode,
    /// The neuromodulator (ignored by Hebb and Oja).
    pub modulator: ModulatorConfig,
    /// `c_max` of the clipped rules (ignored by Hebb and Oja).
    pub clip: f64,
}

impl LayerConfig {
    /// A recurrent layer of `n` neurons with `inputs` external inputs entering
    /// through learned weights `U` (use [`InputMap::Direct`] with `inputs = n`
    /// to add the input directly). α per connection, tanh, no bias, learned η,
    /// modulator K = 1 with tanh and a bias, c_max = 1.
    pub fn recurrent(rule: Rule, n: usize, inputs: usize) -> Self {
        LayerConfig {
            topology: Topology::Recurrent,
            rule,
            n,
            inputs,
            input_map: InputMap::Linear,
            alpha: AlphaShape::Connection,
            activation: Activation::Tanh,
            bias: false,
            eta: EtaMode::Learned,
            modulator: ModulatorConfig::default(),
            clip: 1.0,
        }
    }

    /// A feed-forward plastic layer from `inputs` features to `n` outputs, with
    /// the same defaults as [`LayerConfig::recurrent`].
    pub fn feed_forward(rule: Rule, inputs: usize, n: usize) -> Self {
        LayerConfig { topology: Topology::FeedForward, ..Self::recurrent(rule, n, inputs) }
    }

    /// Pre-synaptic size `I`: `N` for a recurrent layer, the input size for a
    /// feed-forward one.
    pub fn pre(&self) -> usize {
        match self.topology {
            Topology::Recurrent => self.n,
            Topology::FeedForward => self.inputs,
        }
    }

    /// Whether the layer has learned input weights `U`.
    pub fn has_u(&self) -> bool {
        self.topology == Topology::Recurrent && self.input_map == InputMap::Linear
    }

    /// The number of modulator outputs `K`, or 0 for an unmodulated rule.
    pub fn k(&self) -> usize {
        if self.rule.is_modulated() { self.modulator.k } else { 0 }
    }

    /// Number of elements of `α`.
    pub fn alpha_len(&self) -> usize {
        match self.alpha {
            AlphaShape::Connection => self.n * self.pre(),
            AlphaShape::Neuron => self.n,
            AlphaShape::Scalar => 1,
        }
    }

    /// Checks sizes and options; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(Error::Empty { arg: "config.n (post-synaptic size N)".into() });
        }
        if self.inputs == 0 && !(self.topology == Topology::Recurrent && self.input_map == InputMap::Linear) {
            return Err(Error::Empty { arg: "config.inputs (input size)".into() });
        }
        if self.topology == Topology::Recurrent && self.input_map == InputMap::Direct && self.inputs != self.n {
            return Err(Error::Config {
                arg: "config.inputs".into(),
                message: format!(
                    "a recurrent layer with InputMap::Direct adds the input to the pre-activation, so the input size must equal N = {}; got {} (use InputMap::Linear for input weights U)",
                    self.n, self.inputs
                ),
            });
        }
        if self.rule.is_modulated() {
            if self.modulator.k == 0 {
                return Err(Error::Empty { arg: "config.modulator.k".into() });
            }
            if !(self.clip.is_finite() && self.clip > 0.0) {
                return Err(Error::Range {
                    arg: "config.clip (c_max)".into(),
                    value: self.clip,
                    expected: "a finite number > 0".into(),
                });
            }
        }
        Ok(())
    }
}
