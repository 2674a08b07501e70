//! The argument block every kernel takes, mirroring `struct NpArgs` in
//! `kernels/common.cuh` field for field.

use crate::config::{Activation, AlphaShape, InputMap, LayerConfig, ModActivation, Rule, Topology};

/// Launch flags (`NP_PEND` … in `common.cuh`).
pub(crate) const PEND: i32 = 1;
pub(crate) const STEP: i32 = 2;
pub(crate) const CUT: i32 = 4;
pub(crate) const USE_DY: i32 = 8;

/// Operands of `plastic_grad_outer_f32` and `plastic_grad_sum_f32`.
pub(crate) const OUTER_W: i32 = 0;
pub(crate) const OUTER_U: i32 = 1;
pub(crate) const OUTER_V: i32 = 2;
pub(crate) const OUTER_F: i32 = 3;
pub(crate) const SUM_B: i32 = 0;
pub(crate) const SUM_C: i32 = 1;
pub(crate) const SUM_G: i32 = 2;

/// Rows (warps) per block of a trace pass (`NP_ROWS`) and threads per block.
pub const ROWS: usize = 8;
/// Episodes per block of a backward pass (`NpArgs::bchunk`): the pass runs
/// `⌈N/ROWS⌉ × ⌈B/CHUNK⌉` blocks, each summing its episodes' `δα`, `δη` in
/// order into its own slice. A function of the shapes only, so results do
/// not depend on the GPU.
pub const CHUNK: usize = 8;
/// Threads per block of every kernel (`NP_THREADS`).
pub const THREADS: u32 = 256;

/// The argument block of every kernel launch: device addresses (0 where
/// unused), shapes, the step and flags of the launch, and the layer's
/// configuration. `#[repr(C)]` with the pointers first, so that it has the
/// same layout as the C struct on every 64-bit target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct NpArgs {
    pub w: u64,
    pub alpha: u64,
    pub u: u64,
    pub bias: u64,
    pub mod_v: u64,
    pub mod_c: u64,
    pub fanout: u64,
    pub fanout_bias: u64,
    pub input: u64,
    pub h0: u64,
    pub dy: u64,
    pub drive: u64,
    pub y: u64,
    pub mm: u64,
    pub m: u64,
    pub h_src: u64,
    pub e_src: u64,
    pub h_dst: u64,
    pub e_dst: u64,
    pub adj_h: u64,
    pub adj_e: u64,
    pub part_a: u64,
    pub part_b: u64,
    pub row_y: u64,
    pub row_m: u64,
    pub gh: u64,
    pub gxb: u64,
    pub ga: u64,
    pub gmm: u64,
    pub gs: u64,
    pub gin: u64,
    pub g_alpha: u64,
    pub g_eta: u64,
    pub g_eta_e: u64,
    pub out: u64,
    pub b: i32,
    pub t_len: i32,
    pub n: i32,
    pub i: i32,
    pub x: i32,
    pub k: i32,
    pub t: i32,
    pub nblk: i32,
    pub flags: i32,
    pub mode: i32,
    pub rule: i32,
    pub alpha_shape: i32,
    pub act: i32,
    pub modact: i32,
    pub input_map: i32,
    pub recurrent: i32,
    pub has_bias: i32,
    pub mod_bias: i32,
    pub has_fanout: i32,
    pub has_fanout_bias: i32,
    pub eta: f32,
    pub eta_e: f32,
    pub clip: f32,
    pub bchunk: i32,
}

// The C struct is 35 pointers and 24 four-byte fields.
const _: () = assert!(std::mem::size_of::<NpArgs>() == 35 * 8 + 24 * 4);

impl NpArgs {
    /// The shape and configuration fields for `cfg` and a batch of `batch`
    /// episodes of `steps` steps; every pointer 0.
    pub(crate) fn layer(cfg: &LayerConfig, batch: usize, steps: usize, eta: f32, eta_e: f32) -> NpArgs {
        let (n, i) = (cfg.n, cfg.pre());
        NpArgs {
            b: batch as i32,
            t_len: steps as i32,
            n: n as i32,
            i: i as i32,
            x: cfg.inputs as i32,
            k: cfg.k() as i32,
            nblk: n.div_ceil(ROWS) as i32,
            rule: match cfg.rule {
                Rule::Hebb => 0,
                Rule::Oja => 1,
                Rule::Modulated => 2,
                Rule::Retroactive => 3,
            },
            alpha_shape: match cfg.alpha {
                AlphaShape::Connection => 0,
                AlphaShape::Neuron => 1,
                AlphaShape::Scalar => 2,
            },
            act: match cfg.activation {
                Activation::Tanh => 0,
                Activation::Identity => 1,
            },
            modact: match cfg.modulator.activation {
                ModActivation::Tanh => 0,
                ModActivation::Sigmoid => 1,
                ModActivation::Identity => 2,
            },
            input_map: match (cfg.topology, cfg.input_map) {
                (Topology::FeedForward, _) => 0,
                (Topology::Recurrent, InputMap::Direct) => 1,
                (Topology::Recurrent, InputMap::Linear) => 2,
            },
            recurrent: (cfg.topology == Topology::Recurrent) as i32,
            has_bias: cfg.bias as i32,
            mod_bias: cfg.modulator.bias as i32,
            has_fanout: cfg.modulator.fanout as i32,
            has_fanout_bias: cfg.modulator.fanout_bias as i32,
            eta,
            eta_e,
            clip: cfg.clip as f32,
            ..NpArgs::default()
        }
    }
}
