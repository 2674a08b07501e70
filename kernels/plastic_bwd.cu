// Backward kernels of the plastic layer (cuda::backward; the reference is
// reference::backward, the equations docs/backward.md §3–§4).
//
// One step t of the reverse sweep is two launches:
//
// 1. plastic_bwd_f32 (the pass), over the traces. Per entry (b, j, i) it
//    - completes the pending adjoint of step p = t+1: δH_{t+1} = adj_h +
//      α_ji·ga_{p,j}·x_{p,i} (the plastic map of step p reads H_{t+1}), with
//      H_{t+1} recomputed from H_t in registers; adds ga·x·H_{t+1} to δα and
//      (W + α∘H_{t+1})ᵀ ga_p to the column sums of δx_p;
//    - runs the trace-update adjoint of step t (docs §3.1) and writes δH_t,
//      δE_t back over adj_h, adj_e (pending their own α·ga_t·x_t term);
//      δy_t and δM_t get row sums, δx_t column sums.
//    The last launch of a sweep (flags without NP_STEP) only completes the
//    pending step: adj_h then holds the gradient of the trace it read.
// 2. plastic_bwd_finish_f32, per episode: adds up the column partials in
//    block order, then the modulator adjoint (§3.2) and σ' (§3.3) of step t,
//    giving ga_t for the next pass.
//
// The batch is summed without atomics: a block owns NP_ROWS rows for a chunk
// of bchunk episodes and walks them in order, so δα (per connection: a lane's
// register per column) and the row sums of δα, δη, δη_e have one fixed order
// within a chunk; each chunk accumulates into its own slice, and the slices
// are added in chunk order after the sweep. (One chunk per block row keeps
// nblk·⌈B/bchunk⌉ blocks in flight instead of nblk.)

// grid (nblk, ceil(B / bchunk)), block NP_THREADS. Warp w owns row
// j = blockIdx.x·NP_ROWS + w of episodes [blockIdx.y·bchunk, …); lane l owns
// columns i0 + l + 32v (v < NP_COLS/32) of each column tile.
//   reads  h_src/e_src = H_t/E_t (or H_p/E_p alone without NP_STEP), adj_h,
//          adj_e, ga of step p, y, x, mm of steps t and p
//   writes adj_h, adj_e, part_a, part_b, row_y, row_m; adds to g_alpha,
//          g_eta, g_eta_e.
template <int RULE>
__device__ __forceinline__ void np_bwd_pass(const NpArgs& a, float (*sa)[NP_COLS], float (*sb)[NP_COLS]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x * NP_ROWS + warp;
  const bool valid = j < a.N;
  const bool pend = (a.flags & NP_PEND) != 0, step = (a.flags & NP_STEP) != 0, cut = (a.flags & NP_CUT) != 0;
  const int t = a.t, p = a.t + 1;
  // Without NP_STEP, the trace read is that of step p itself.
  const int tp = step ? p : t;
  const bool conn = a.alpha_shape == NP_ALPHA_CONN;
  const float alj = (!valid || conn) ? 0.0f : np_alpha(a, j, 0);
  const float keep = 1.0f - a.eta, keep_e = 1.0f - a.eta_e;
  float row_alpha = 0.0f, row_eta = 0.0f, row_eta_e = 0.0f;
  const int V = NP_COLS / 32;
  const int chunk = blockIdx.y, b0 = chunk * a.bchunk;
  const int b1 = b0 + a.bchunk < a.B ? b0 + a.bchunk : a.B;
  for (int i0 = 0; i0 < a.I; i0 += NP_COLS) {
    float gal[NP_COLS / 32];
    for (int v = 0; v < V; ++v) gal[v] = 0.0f;
    for (int b = b0; b < b1; ++b) {
      const long row = ((long)b * a.N + j) * a.I;
      // Step t's vectors and the pending step's.
      float yt = 0.0f, mt = 0.0f, gap = 0.0f;
      const float* xt = 0;
      const float* xp = 0;
      if (valid && step) {
        const long bt = (long)b * a.T + t;
        yt = a.y[bt * a.N + j];
        if (RULE == NP_MODU || RULE == NP_RETRO) mt = a.mm[bt * a.N + j];
        xt = np_x(a, b, t);
      }
      if (valid && pend) {
        gap = a.ga[((long)b * a.T + tp) * a.N + j];
        xp = np_x(a, b, tp);
      }
      float ry = 0.0f, rm = 0.0f;
      for (int v = 0; v < V; ++v) {
        const int i = i0 + lane + 32 * v;
        float ca = 0.0f, cb = 0.0f;
        if (valid && i < a.I) {
          const float h = a.h_src[row + i];
          const float e = RULE == NP_RETRO ? a.e_src[row + i] : 0.0f;
          float g = a.adj_h[row + i];
          const float ge = RULE == NP_RETRO ? a.adj_e[row + i] : 0.0f;
          if (pend) {
            // H_p: recomputed from H_t, or the trace read (tail launch).
            float hp = h, ep = e;
            if (step) np_update<RULE>(a, hp, ep, yt, xt[i], mt);
            const float al = conn ? a.alpha[(long)j * a.I + i] : alj;
            const float gx = gap * xp[i];
            g += al * gx;
            if (conn) gal[v] += gx * hp;
            else row_alpha += gx * hp;
            ca = (a.w[(long)j * a.I + i] + al * hp) * gap;
          }
          if (step) {
            const float gu = cut ? 0.0f : g, geu = cut ? 0.0f : ge;
            const float xi = xt[i];
            if (RULE == NP_HEBB) {
              a.adj_h[row + i] = keep * gu;
              ry += a.eta * gu * xi;
              cb = a.eta * gu * yt;
              row_eta += gu * (yt * xi - h);
            } else if (RULE == NP_OJA) {
              a.adj_h[row + i] = gu * (1.0f - a.eta * yt * yt);
              ry += a.eta * gu * (xi - 2.0f * yt * h);
              cb = a.eta * gu * yt;
              row_eta += gu * yt * (xi - yt * h);
            } else if (RULE == NP_MODU) {
              const float gz = gu * np_clip_grad(h + mt * yt * xi, a.clip);
              a.adj_h[row + i] = gz;
              rm += gz * yt * xi;
              ry += gz * mt * xi;
              cb = gz * mt * yt;
            } else {
              const float gz = gu * np_clip_grad(h + mt * e, a.clip);
              a.adj_h[row + i] = gz;
              rm += gz * e;
              a.adj_e[row + i] = gz * mt + keep_e * geu;
              ry += a.eta_e * geu * xi;
              cb = a.eta_e * geu * yt;
              row_eta_e += geu * (yt * xi - e);
            }
          } else {
            a.adj_h[row + i] = g;
          }
        }
        sa[warp][lane + 32 * v] = ca;
        sb[warp][lane + 32 * v] = cb;
      }
      if (step) {
        ry = np_warp_sum(ry);
        rm = np_warp_sum(rm);
        if (valid && lane == 0) {
          const long o = (long)b * a.N + j;
          a.row_y[o] = (i0 == 0 ? 0.0f : a.row_y[o]) + ry;
          if (RULE == NP_MODU || RULE == NP_RETRO) a.row_m[o] = (i0 == 0 ? 0.0f : a.row_m[o]) + rm;
        }
      }
      __syncthreads();
      // Column sums over the block's rows, in row order: threads [0, NP_COLS)
      // for the pending step's δx, [NP_COLS, 2·NP_COLS) for step t's.
      {
        const int c = threadIdx.x % NP_COLS, which = threadIdx.x / NP_COLS;
        const int i = i0 + c;
        if (which < 2 && i < a.I) {
          float s = 0.0f;
          for (int w = 0; w < NP_ROWS; ++w) s += which == 0 ? sa[w][c] : sb[w][c];
          float* part = which == 0 ? a.part_a : a.part_b;
          if ((which == 0 && pend) || (which == 1 && step)) part[((long)blockIdx.x * a.B + b) * a.I + i] = s;
        }
      }
      __syncthreads();
    }
    if (valid && conn && pend) {
      for (int v = 0; v < V; ++v) {
        const int i = i0 + lane + 32 * v;
        if (i < a.I) a.g_alpha[((long)chunk * a.N + j) * a.I + i] += gal[v];
      }
    }
  }
  row_alpha = np_warp_sum(row_alpha);
  row_eta = np_warp_sum(row_eta);
  row_eta_e = np_warp_sum(row_eta_e);
  if (valid && lane == 0) {
    const long r = (long)chunk * a.N + j;
    if (!conn && pend) a.g_alpha[r] += row_alpha;
    if (RULE == NP_HEBB || RULE == NP_OJA) a.g_eta[r] += row_eta;
    if (RULE == NP_RETRO) a.g_eta_e[r] += row_eta_e;
  }
}

extern "C" __global__ void plastic_bwd_f32(const NpArgs a) {
  __shared__ float sa[NP_ROWS][NP_COLS];
  __shared__ float sb[NP_ROWS][NP_COLS];
  switch (a.rule) {
    case NP_HEBB: np_bwd_pass<NP_HEBB>(a, sa, sb); break;
    case NP_OJA: np_bwd_pass<NP_OJA>(a, sa, sb); break;
    case NP_MODU: np_bwd_pass<NP_MODU>(a, sa, sb); break;
    default: np_bwd_pass<NP_RETRO>(a, sa, sb); break;
  }
}

// Per episode b: completes δx of the pending step p = t+1 (the column
// partials of the pass in block order, plus the part gxb saved from step p's
// own pass) and sends it on (feed-forward: δin_p; recurrent: δh_t, unless the
// truncation cuts at p); then, when step t runs (NP_STEP), forms
//   δy_t = dy_t + δh_t + (trace-update row sums),
//   δM_t, δs_t = μ'·Fᵀ δM, δy_t += Vᵀ δs (modulated rules),
//   ga_t = δy_t σ'(y_t),
// and keeps the column sums of step t's own trace update in gxb.
//   grid (B), block NP_THREADS. Each thread keeps the same j (and i) in every
//   loop, so gh and gxb are read and written by one thread each.
extern "C" __global__ void plastic_bwd_finish_f32(const NpArgs a) {
  __shared__ float sh[32];
  const int b = blockIdx.x, t = a.t, p = a.t + 1;
  const bool pend = (a.flags & NP_PEND) != 0, step = (a.flags & NP_STEP) != 0, cut = (a.flags & NP_CUT) != 0;
  const int tp = step ? p : t;
  if (pend) {
    for (int i = threadIdx.x; i < a.I; i += blockDim.x) {
      float g = a.gxb[(long)b * a.I + i];
      for (int k = 0; k < a.nblk; ++k) g += a.part_a[((long)k * a.B + b) * a.I + i];
      if (!a.recurrent) a.gin[((long)b * a.T + tp) * a.X + i] = g;
      else a.gh[(long)b * a.N + i] = cut ? 0.0f : g;
    }
  }
  if (!step) return;
  for (int i = threadIdx.x; i < a.I; i += blockDim.x) {
    float g = 0.0f;
    for (int k = 0; k < a.nblk; ++k) g += a.part_b[((long)k * a.B + b) * a.I + i];
    a.gxb[(long)b * a.I + i] = g;
  }
  const long bt = (long)b * a.T + t;
  const bool use_dy = (a.flags & NP_USE_DY) != 0;
  for (int j = threadIdx.x; j < a.N; j += blockDim.x) {
    float gy = (use_dy ? a.dy[bt * a.N + j] : 0.0f) + a.row_y[(long)b * a.N + j];
    if (a.recurrent) gy += a.gh[(long)b * a.N + j];
    a.ga[bt * a.N + j] = gy;
  }
  if (a.rule == NP_MODU || a.rule == NP_RETRO) {
    for (int j = threadIdx.x; j < a.N; j += blockDim.x) a.gmm[bt * a.N + j] = a.row_m[(long)b * a.N + j];
    for (int k = 0; k < a.K; ++k) {
      float part = 0.0f;
      for (int j = threadIdx.x; j < a.N; j += blockDim.x)
        part += (a.has_fanout ? a.fanout[(long)k * a.N + j] : 1.0f) * a.row_m[(long)b * a.N + j];
      const float gs = np_block_sum(part, sh) * np_modact_grad(a.modact, a.m[bt * a.K + k]);
      if (threadIdx.x == 0) a.gs[bt * a.K + k] = gs;
      for (int j = threadIdx.x; j < a.N; j += blockDim.x) a.ga[bt * a.N + j] += gs * a.mod_v[(long)k * a.N + j];
    }
  }
  for (int j = threadIdx.x; j < a.N; j += blockDim.x) {
    const long o = bt * a.N + j;
    a.ga[o] *= np_act_grad(a.act, a.y[o]);
  }
}
