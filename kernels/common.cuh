// Shared by every kernel of the CUDA backend: the argument block that every
// launch receives, the layer's equations in f32, and warp/block reductions.
//
// The same text is compiled three ways: by NVRTC for the GPU (the Rust side
// concatenates this header and the .cu files into one program), by NVRTC in
// the compile test, and as C++ by the CPU emulation (emu/), whose own header
// defines __global__, threadIdx, __syncthreads, __shfl_xor_sync and friends
// before including these files.
#ifndef NP_COMMON_CUH
#define NP_COMMON_CUH

// Rows (warps) per block of the trace passes: a warp owns one row j of the
// traces, so a block of NP_ROWS warps owns NP_ROWS rows (256 threads).
#define NP_ROWS 8
#define NP_THREADS (NP_ROWS * 32)
// Columns a block's warps walk together in the backward pass: each lane takes
// NP_COLS / 32 of them, so the column partial sums fit one shared tile.
#define NP_COLS 128

// Rule codes (config::Rule), α shapes (config::AlphaShape), σ and μ.
#define NP_HEBB 0
#define NP_OJA 1
#define NP_MODU 2
#define NP_RETRO 3
#define NP_ALPHA_CONN 0
#define NP_ALPHA_NEURON 1
#define NP_ALPHA_SCALAR 2
#define NP_TANH 0
#define NP_IDENTITY 1
#define NP_MOD_TANH 0
#define NP_MOD_SIGMOID 1
#define NP_MOD_IDENTITY 2
// How a recurrent layer's input enters (config::InputMap); feed-forward: none.
#define NP_IN_NONE 0
#define NP_IN_DIRECT 1
#define NP_IN_LINEAR 2

// Launch flags.
#define NP_PEND 1    // a pending step (fwd: the update of step t-1; bwd: the a-adjoint of step t+1)
#define NP_STEP 2    // step t itself runs (fwd: its dot product; bwd: its trace-update adjoint)
#define NP_CUT 4     // bwd: the state adjoint before step t+1 is dropped (truncation)
#define NP_USE_DY 8  // bwd: dy of step t enters

// Operands of plastic_grad_outer_f32 / plastic_grad_sum_f32.
#define NP_OUTER_W 0  // dW = Σ ga xᵀ
#define NP_OUTER_U 1  // dU = Σ ga inᵀ
#define NP_OUTER_V 2  // dV = Σ gs yᵀ
#define NP_OUTER_F 3  // dF = Σ m gmmᵀ
#define NP_SUM_B 0    // db = Σ ga
#define NP_SUM_C 1    // dc = Σ gs
#define NP_SUM_G 2    // dg = Σ gmm

// Every launch takes this block by value (src/cuda/args.rs mirrors it field
// for field, #[repr(C)]): pointers first, then 32-bit scalars, so the layout
// has no padding on any 64-bit target. Unused pointers are 0.
struct NpArgs {
  // Parameters.
  const float* w;            // (N, I)
  const float* alpha;        // (N, I), (N) or (1)
  const float* u;            // (N, X)
  const float* bias;         // (N)
  const float* mod_v;        // (K, N)
  const float* mod_c;        // (K)
  const float* fanout;       // (K, N)
  const float* fanout_bias;  // (N)
  // The episode batch.
  const float* in;  // (B, T, X)
  const float* h0;  // (B, N) recurrent
  const float* dy;  // (B, T, N)
  float* drive;     // (B, T, N): b + U·in (or b + in, or b)
  float* y;         // (B, T, N)
  float* mm;        // (B, T, N): M of every step
  float* m;         // (B, T, K): μ(s) of every step
  // The traces a pass reads and writes (dst may alias src).
  const float* h_src;  // (B, N, I)
  const float* e_src;
  float* h_dst;
  float* e_dst;
  // Backward.
  float* adj_h;    // (B, N, I): δH of the pass's step, pending the α·ga·x term
  float* adj_e;    // (B, N, I): δE
  float* part_a;   // (nblk, B, I): per-block column sums for δx of the pending step
  float* part_b;   // (nblk, B, I): per-block column sums for δx of step t
  float* row_y;    // (B, N): the trace update's δy_j of step t
  float* row_m;    // (B, N): δM_j of step t
  float* gh;       // (B, N): δh carried between steps (recurrent)
  float* gxb;      // (B, I): the part of a pending step's δx known before its pass
  float* ga;       // (B, T, N): δa of every step
  float* gmm;      // (B, T, N): δM of every step
  float* gs;       // (B, T, K): δs of every step
  float* gin;      // (B, T, X): δin
  float* g_alpha;  // (nchunk, N, I) per connection, else (nchunk, N) row sums
  float* g_eta;    // (nchunk, N) row sums of δη
  float* g_eta_e;  // (nchunk, N) row sums of δη_e
  float* out;      // output of the gradient kernels
  // Shapes.
  int B, T, N, I, X, K;
  int t;     // the step of this launch
  int nblk;  // blocks of a backward pass: ceil(N / NP_ROWS)
  int flags;
  int mode;  // operand of a gradient kernel
  // The layer.
  int rule, alpha_shape, act, modact, input_map, recurrent;
  int has_bias, mod_bias, has_fanout, has_fanout_bias;
  float eta, eta_e, clip;
  int bchunk;  // bwd: episodes per block row of a pass (grid.y = ceil(B / bchunk))
};

__device__ __forceinline__ float np_act(int f, float a) { return f == NP_TANH ? tanhf(a) : a; }
__device__ __forceinline__ float np_act_grad(int f, float y) { return f == NP_TANH ? 1.0f - y * y : 1.0f; }
__device__ __forceinline__ float np_modact(int f, float s) {
  return f == NP_MOD_TANH ? tanhf(s) : f == NP_MOD_SIGMOID ? 1.0f / (1.0f + expf(-s)) : s;
}
__device__ __forceinline__ float np_modact_grad(int f, float m) {
  return f == NP_MOD_TANH ? 1.0f - m * m : f == NP_MOD_SIGMOID ? m * (1.0f - m) : 1.0f;
}
__device__ __forceinline__ float np_clip(float z, float c) { return fminf(fmaxf(z, -c), c); }
// The clip's derivative with the bounds inside (reference::clip_grad).
__device__ __forceinline__ float np_clip_grad(float z, float c) { return (z >= -c && z <= c) ? 1.0f : 0.0f; }

// α_ji for row j's coefficient array (per connection: row j of α).
__device__ __forceinline__ float np_alpha(const NpArgs& a, int j, int i) {
  return a.alpha_shape == NP_ALPHA_CONN ? a.alpha[(long)j * a.I + i]
       : a.alpha_shape == NP_ALPHA_NEURON ? a.alpha[j] : a.alpha[0];
}

// x_t of episode b: h_{t-1} (h0 at t = 0) for a recurrent layer, in_t for a
// feed-forward one.
__device__ __forceinline__ const float* np_x(const NpArgs& a, int b, int t) {
  if (a.recurrent) return t == 0 ? a.h0 + (long)b * a.N : a.y + ((long)b * a.T + t - 1) * a.N;
  return a.in + ((long)b * a.T + t) * a.X;
}

// Sum over the 32 lanes of a warp; every lane gets the total. The butterfly
// order is fixed, so the result does not depend on scheduling.
__device__ __forceinline__ float np_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the total. `sh` is 32 floats of shared memory, free on entry
// and on exit.
__device__ __forceinline__ float np_block_sum(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = np_warp_sum(v);
  if (lane == 0) sh[warp] = v;
#ifndef NP_TEST_DROP_BARRIER
  // The emulation test builds one copy of the kernels without this barrier
  // to show that its scheduler turns the race into a wrong answer.
  __syncthreads();
#endif
  float s = 0.0f;
  for (int w = 0; w < warps; ++w) s += sh[w];
  __syncthreads();  // sh is free again: the next call may overwrite it
  return s;
}

// The trace update of one step for one entry (reference::plastic_step_fwd):
// H ← rule(H, E; y_j, x_i, M_j), E ← (1-η_e) E + η_e y_j x_i.
template <int RULE>
__device__ __forceinline__ void np_update(const NpArgs& a, float& h, float& e, float yj, float xi, float mj) {
  const float p = yj * xi;
  if (RULE == NP_HEBB) {
    h = (1.0f - a.eta) * h + a.eta * p;
  } else if (RULE == NP_OJA) {
    h = h + a.eta * yj * (xi - yj * h);
  } else if (RULE == NP_MODU) {
    h = np_clip(h + mj * p, a.clip);
  } else {
    h = np_clip(h + mj * e, a.clip);
    e = (1.0f - a.eta_e) * e + a.eta_e * p;
  }
}

#endif  // NP_COMMON_CUH
