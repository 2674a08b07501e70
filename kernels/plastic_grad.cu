// Parameter and input gradients that follow from the per-step vectors the
// backward sweep stores (ga, gs, gmm; docs/backward.md §3.2–§3.3), run once
// after the sweep. One thread per output element sums over (b, t) in order:
// deterministic, no atomics.

// out (R, C) = Σ_{b,t} L[b,t,r] · R[b,t,c]:
//   NP_OUTER_W: dW (N, I) = Σ ga_t x_tᵀ     NP_OUTER_U: dU (N, X) = Σ ga_t in_tᵀ
//   NP_OUTER_V: dV (K, N) = Σ gs_t y_tᵀ     NP_OUTER_F: dF (K, N) = Σ m_t gmm_tᵀ
// grid-stride over R·C.
extern "C" __global__ void plastic_grad_outer_f32(const NpArgs a) {
  int rows, cols;
  switch (a.mode) {
    case NP_OUTER_W: rows = a.N; cols = a.I; break;
    case NP_OUTER_U: rows = a.N; cols = a.X; break;
    default: rows = a.K; cols = a.N; break;
  }
  const long total = (long)rows * cols;
  for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)gridDim.x * blockDim.x) {
    const int r = (int)(o / cols), c = (int)(o % cols);
    float acc = 0.0f;
    for (int b = 0; b < a.B; ++b) {
      for (int t = 0; t < a.T; ++t) {
        const long bt = (long)b * a.T + t;
        float l, rv;
        switch (a.mode) {
          case NP_OUTER_W: l = a.ga[bt * a.N + r]; rv = np_x(a, b, t)[c]; break;
          case NP_OUTER_U: l = a.ga[bt * a.N + r]; rv = a.in[bt * a.X + c]; break;
          case NP_OUTER_V: l = a.gs[bt * a.K + r]; rv = a.y[bt * a.N + c]; break;
          default: l = a.m[bt * a.K + r]; rv = a.gmm[bt * a.N + c]; break;
        }
        acc += l * rv;
      }
    }
    a.out[o] = acc;
  }
}

// out (C) = Σ_{b,t} R[b,t,c]: NP_SUM_B db = Σ ga (N), NP_SUM_C dc = Σ gs (K),
// NP_SUM_G dg = Σ gmm (N). Grid-stride over C.
extern "C" __global__ void plastic_grad_sum_f32(const NpArgs a) {
  const int cols = a.mode == NP_SUM_C ? a.K : a.N;
  const float* src = a.mode == NP_SUM_B ? a.ga : a.mode == NP_SUM_C ? a.gs : a.gmm;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    float acc = 0.0f;
    for (long bt = 0; bt < (long)a.B * a.T; ++bt) acc += src[bt * cols + c];
    a.out[c] = acc;
  }
}

// δin (B, T, X) of a recurrent layer: Uᵀ ga_t (InputMap::Linear) or ga_t
// (Direct). (A feed-forward layer's δin = δx comes from plastic_bwd_finish_f32.)
// Grid-stride over B·T·X.
extern "C" __global__ void plastic_grad_input_f32(const NpArgs a) {
  const long total = (long)a.B * a.T * a.X;
  for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)gridDim.x * blockDim.x) {
    const int q = (int)(o % a.X);
    const long bt = o / a.X;
    if (a.input_map == NP_IN_LINEAR) {
      float acc = 0.0f;
      for (int j = 0; j < a.N; ++j) acc += a.u[(long)j * a.X + q] * a.ga[bt * a.N + j];
      a.gin[o] = acc;
    } else {
      a.gin[o] = a.ga[bt * a.N + q];
    }
  }
}
