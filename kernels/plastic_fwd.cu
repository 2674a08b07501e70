// Forward kernels of the plastic layer (cuda::forward; the reference is
// reference::forward, the CPU twin cpu::forward).
#ifndef NP_COMMON_CUH
#include "common.cuh"
#endif

// drive: (B, T, N) = b + U·in_t (InputMap::Linear), b + in_t (Direct), b (feed-forward).
// One thread per (b, t, j), grid-stride; the sum over q runs in order.
extern "C" __global__ void plastic_drive_f32(const NpArgs a) {
  const long total = (long)a.B * a.T * a.N;
  for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)gridDim.x * blockDim.x) {
    const int j = (int)(o % a.N);
    const long bt = o / a.N;
    float acc = a.has_bias ? a.bias[j] : 0.0f;
    const float* in = a.in + bt * a.X;
    if (a.input_map == NP_IN_LINEAR) {
      const float* u = a.u + (long)j * a.X;
      for (int q = 0; q < a.X; ++q) acc += u[q] * in[q];
    } else if (a.input_map == NP_IN_DIRECT) {
      acc += in[j];
    }
    a.drive[o] = acc;
  }
}

// The row loop of a forward pass: warp-lane `lane` of the warp that owns row j
// of episode b. Reads H_{t-1} (E_{t-1}) once, applies the pending update of
// step t-1 when there is one, writes H_t (E_t) once, and accumulates
// Σ_i (W_ji + α_ji H_t,ji) x_t,i with the fresh value.
template <int RULE>
__device__ __forceinline__ float np_fwd_row(const NpArgs& a, int b, int j, int lane, bool pend, bool step, float mj) {
  const long row = ((long)b * a.N + j) * a.I;
  const float* hs = a.h_src + row;
  float* hd = a.h_dst + row;
  const float* es = RULE == NP_RETRO ? a.e_src + row : 0;
  float* ed = RULE == NP_RETRO ? a.e_dst + row : 0;
  const float* xo = pend ? np_x(a, b, a.t - 1) : 0;
  const float yo = pend ? a.y[((long)b * a.T + a.t - 1) * a.N + j] : 0.0f;
  const float* xn = step ? np_x(a, b, a.t) : 0;
  const float* w = a.w + (long)j * a.I;
  const bool conn = a.alpha_shape == NP_ALPHA_CONN;
  const float* al = a.alpha + (conn ? (long)j * a.I : 0);
  const float alj = conn ? 0.0f : np_alpha(a, j, 0);
  float acc = 0.0f;
  for (int i = lane; i < a.I; i += 32) {
    float h = hs[i];
    float e = RULE == NP_RETRO ? es[i] : 0.0f;
    if (pend) np_update<RULE>(a, h, e, yo, xo[i], mj);
    hd[i] = h;
    if (RULE == NP_RETRO) ed[i] = e;
    if (step) acc += (w[i] + (conn ? al[i] : alj) * h) * xn[i];
  }
  return acc;
}

// One launch per step t = 0 … T: applies the pending trace update of step t-1
// (NP_PEND), then step t's plastic map (NP_STEP; absent in the last launch,
// t = T, which only produces the final trace).
//   grid (nblk, B), block NP_THREADS; warp w owns row j = blockIdx.x·NP_ROWS + w
//   of episode b = blockIdx.y.
//   reads  h_src/e_src (B, N, I), y (B, T, N) of step t-1, x_t, drive
//   writes h_dst/e_dst, y of step t; modulated rules also m, M of step t-1.
// Every rule updates lazily: H_t = f(H_{t-1}) is formed in the pass that reads
// it for step t, so each step reads and writes each trace exactly once. The
// modulated rules need all of y_{t-1} for m_{t-1}: every block recomputes the
// K dot products of length N itself (O(K·N), small next to its rows' N_rows·I)
// instead of a separate launch.
extern "C" __global__ void plastic_fwd_f32(const NpArgs a) {
  __shared__ float sh[32];
  const int b = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x * NP_ROWS + warp;
  const bool pend = (a.flags & NP_PEND) != 0, step = (a.flags & NP_STEP) != 0;
  const bool modulated = a.rule == NP_MODU || a.rule == NP_RETRO;
  float mj = 0.0f;
  if (modulated && pend) {
    const long bt = (long)b * a.T + a.t - 1;
    const float* yo = a.y + bt * a.N;
    if (j < a.N) mj = a.has_fanout_bias ? a.fanout_bias[j] : 0.0f;
    for (int k = 0; k < a.K; ++k) {
      float part = 0.0f;
      for (int q = threadIdx.x; q < a.N; q += blockDim.x) part += a.mod_v[(long)k * a.N + q] * yo[q];
      float s = np_block_sum(part, sh) + (a.mod_bias ? a.mod_c[k] : 0.0f);
      const float mk = np_modact(a.modact, s);
      if (blockIdx.x == 0 && threadIdx.x == 0) a.m[bt * a.K + k] = mk;
      if (j < a.N) mj += (a.has_fanout ? a.fanout[(long)k * a.N + j] : 1.0f) * mk;
    }
    if (j < a.N && lane == 0) a.mm[bt * a.N + j] = mj;
  }
  if (j >= a.N) return;
  float acc;
  switch (a.rule) {
    case NP_HEBB: acc = np_fwd_row<NP_HEBB>(a, b, j, lane, pend, step, mj); break;
    case NP_OJA: acc = np_fwd_row<NP_OJA>(a, b, j, lane, pend, step, mj); break;
    case NP_MODU: acc = np_fwd_row<NP_MODU>(a, b, j, lane, pend, step, mj); break;
    default: acc = np_fwd_row<NP_RETRO>(a, b, j, lane, pend, step, mj); break;
  }
  if (step) {
    acc = np_warp_sum(acc);
    const long o = ((long)b * a.T + a.t) * a.N + j;
    if (lane == 0) a.y[o] = np_act(a.act, a.drive[o] + acc);
  }
}

// Replays the trace update of step t (H_{t+1} from H_t with the saved y, x, M):
// the backward pass's recomputation of a checkpoint segment. Same arithmetic
// as plastic_fwd_f32's pending update, so the values are bitwise the forward's.
//   grid (nblk, B), block NP_THREADS; reads h_src/e_src, y, x, mm; writes h_dst/e_dst.
template <int RULE>
__device__ __forceinline__ void np_replay_row(const NpArgs& a, int b, int j, int lane) {
  const long row = ((long)b * a.N + j) * a.I;
  const long bt = (long)b * a.T + a.t;
  const float* x = np_x(a, b, a.t);
  const float yj = a.y[bt * a.N + j];
  const float mj = (RULE == NP_MODU || RULE == NP_RETRO) ? a.mm[bt * a.N + j] : 0.0f;
  for (int i = lane; i < a.I; i += 32) {
    float h = a.h_src[row + i];
    float e = RULE == NP_RETRO ? a.e_src[row + i] : 0.0f;
    np_update<RULE>(a, h, e, yj, x[i], mj);
    a.h_dst[row + i] = h;
    if (RULE == NP_RETRO) a.e_dst[row + i] = e;
  }
}

extern "C" __global__ void plastic_replay_f32(const NpArgs a) {
  const int b = blockIdx.y, lane = threadIdx.x & 31;
  const int j = blockIdx.x * NP_ROWS + (threadIdx.x >> 5);
  if (j >= a.N) return;
  switch (a.rule) {
    case NP_HEBB: np_replay_row<NP_HEBB>(a, b, j, lane); break;
    case NP_OJA: np_replay_row<NP_OJA>(a, b, j, lane); break;
    case NP_MODU: np_replay_row<NP_MODU>(a, b, j, lane); break;
    default: np_replay_row<NP_RETRO>(a, b, j, lane); break;
  }
}
