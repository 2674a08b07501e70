//! The one place that names `wide`: the vector type of the CPU kernels and the
//! few helpers they are written with.
//!
//! `V` is eight `f32` lanes (one AVX2 register when the crate is built with
//! `-C target-cpu=native` on x86-64; `wide` falls back to two SSE halves or to
//! scalar code elsewhere). Every kernel walks a row in chunks of [`LANES`]
//! through [`sweep`]: the last chunk of a row whose length is not a multiple
//! of eight is loaded zero-padded and stored partially, so one body serves the
//! main loop and the tail, and every element of a row is computed by the same
//! sequence of operations wherever it lies. That matters for the trace
//! updates, which the backward pass recomputes and must reproduce bit for bit
//! (they use plain `*`, `+`, never a fused multiply-add whose rounding could
//! differ between a vector and a scalar path).

use wide::f32x8;

/// The vector type of the CPU kernels.
pub(crate) type V = f32x8;

/// Lanes of [`V`].
pub(crate) const LANES: usize = 8;

/// All lanes `v`.
#[inline(always)]
pub(crate) fn splat(v: f32) -> V {
    V::splat(v)
}

/// All lanes zero.
#[inline(always)]
pub(crate) fn zero() -> V {
    V::ZERO
}

/// Loads `s[i..i + n]` (`n ≤ LANES`), zero-padded to a full vector.
#[inline(always)]
pub(crate) fn ld(s: &[f32], i: usize, n: usize) -> V {
    if n == LANES {
        let a: [f32; LANES] = s[i..i + LANES].try_into().unwrap();
        V::new(a)
    } else {
        let mut a = [0.0f32; LANES];
        a[..n].copy_from_slice(&s[i..i + n]);
        V::new(a)
    }
}

/// Stores the first `n` lanes of `v` into `s[i..i + n]`.
#[inline(always)]
pub(crate) fn st(s: &mut [f32], i: usize, n: usize, v: V) {
    let a = v.to_array();
    if n == LANES {
        s[i..i + LANES].copy_from_slice(&a);
    } else {
        s[i..i + n].copy_from_slice(&a[..n]);
    }
}

/// Asks for the cache line holding `p` (a hint: it never faults, whatever
/// the address). The kernels prefetch the next trace row while working on the
/// current one: a row of 1000 floats is a 4 KiB page, and hardware
/// prefetchers stop at page boundaries.
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect and cannot fault.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches the line of `base + i` once per 16 floats (64 bytes).
#[inline(always)]
pub(crate) fn prefetch_at(base: *const f32, i: usize) {
    if i.is_multiple_of(16) {
        prefetch(base.wrapping_add(i));
    }
}

/// `a · b + c`, fused where the target has FMA (only for sums whose rounding
/// nobody needs to reproduce).
#[inline(always)]
pub(crate) fn fma(a: V, b: V, c: V) -> V {
    a.mul_add(b, c)
}

/// `z` clamped to `[lo, hi]`.
#[inline(always)]
pub(crate) fn clamp(z: V, lo: V, hi: V) -> V {
    z.fast_max(lo).fast_min(hi)
}

/// `g` where `|z| ≤ c`, zero elsewhere: the clip's derivative (1 inside
/// `[−c, c]`, bounds included, as in the reference) applied to `g`.
#[inline(always)]
pub(crate) fn pass_inside(z: V, c: V, g: V) -> V {
    z.abs().simd_le(c) & g
}

/// Sum of the lanes, in a fixed order.
#[inline(always)]
pub(crate) fn hsum(v: V) -> f32 {
    v.reduce_add()
}

/// Runs `body(i, n, acc)` over the chunks `[i, i + n)` of `0..len` (`n =
/// LANES` except for a shorter last chunk, whose loads are zero-padded) and
/// returns the lane sums of the `R` accumulators the body adds into. Four
/// independent accumulator sets break the latency chain of the additions;
/// they are combined in a fixed order, so the result depends on `len` and the
/// data only (never on threads or call sites). Every reduced term must vanish
/// on zero-padded lanes (all terms here are products with a loaded value).
#[inline(always)]
pub(crate) fn sweep<const R: usize>(len: usize, mut body: impl FnMut(usize, usize, &mut [V; R])) -> [f32; R] {
    let mut a0 = [zero(); R];
    let mut a1 = [zero(); R];
    let mut a2 = [zero(); R];
    let mut a3 = [zero(); R];
    let mut i = 0;
    while i + 4 * LANES <= len {
        body(i, LANES, &mut a0);
        body(i + LANES, LANES, &mut a1);
        body(i + 2 * LANES, LANES, &mut a2);
        body(i + 3 * LANES, LANES, &mut a3);
        i += 4 * LANES;
    }
    while i + LANES <= len {
        body(i, LANES, &mut a0);
        i += LANES;
    }
    if i < len {
        body(i, len - i, &mut a1);
    }
    let mut out = [0.0f32; R];
    for q in 0..R {
        out[q] = hsum((a0[q] + a1[q]) + (a2[q] + a3[q]));
    }
    out
}

/// `Σ_i a_i b_i`.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let [s] = sweep(
        a.len(),
        #[inline(always)]
        |i, n, acc| acc[0] = fma(ld(a, i, n), ld(b, i, n), acc[0]),
    );
    s
}

/// `y += s · x`.
#[inline]
pub(crate) fn axpy(y: &mut [f32], s: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    let sv = splat(s);
    sweep::<0>(
        y.len(),
        #[inline(always)]
        |i, n, _| {
            let v = fma(sv, ld(x, i, n), ld(y, i, n));
            st(y, i, n, v);
        },
    );
}

/// `y += x`.
#[inline]
pub(crate) fn add_assign(y: &mut [f32], x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    sweep::<0>(
        y.len(),
        #[inline(always)]
        |i, n, _| {
            let v = ld(y, i, n) + ld(x, i, n);
            st(y, i, n, v);
        },
    );
}

/// `C[m][·] += Σ_k a_m[k] · b_k[·]` for the rows `m` of `c` (whole rows of
/// `cols` elements), where `at` holds `a` transposed, `at[m·K + k]`, `K =
/// b_rows.len()`: the sum of outer products that gives `dW = Σ_{b,t} ga xᵀ`
/// in one blocked pass instead of a rank-1 update of `dW` per step. Columns
/// go 16 at a time so that the panel of `b` (K × 64 bytes) stays in L1 while
/// every row of `c` takes it; each element sums over `k` in order, so the
/// result does not depend on how the caller splits the rows.
pub(crate) fn outer_acc(c: &mut [f32], cols: usize, b_rows: &[&[f32]], at: &[f32]) {
    if cols == 0 {
        return;
    }
    let (rows, k) = (c.len() / cols, b_rows.len());
    assert!(at.len() >= rows * k, "outer_acc: `at` too short");
    let mut p = 0;
    while p < cols {
        let w0 = (cols - p).min(LANES);
        let w1 = (cols - p - w0).min(LANES);
        let full = w0 + w1 == 2 * LANES;
        let mut m = 0;
        while m + 4 <= rows {
            let a = &at[m * k..(m + 4) * k];
            if full {
                outer_block::<4, true>(c, m, cols, p, (LANES, LANES), b_rows, a);
            } else {
                outer_block::<4, false>(c, m, cols, p, (w0, w1), b_rows, a);
            }
            m += 4;
        }
        while m < rows {
            outer_block::<1, false>(c, m, cols, p, (w0, w1), b_rows, &at[m * k..(m + 1) * k]);
            m += 1;
        }
        p += w0 + w1;
    }
}

/// `MR` rows × (`w0 + w1` ≤ 16) columns of [`outer_acc`]: `2·MR` accumulators
/// stay in registers while `k` runs (`FULL`: 16 columns, no tail).
#[inline(always)]
fn outer_block<const MR: usize, const FULL: bool>(
    c: &mut [f32],
    m: usize,
    cols: usize,
    p: usize,
    (w0, w1): (usize, usize),
    b_rows: &[&[f32]],
    at: &[f32],
) {
    let k = b_rows.len();
    let (w0, w1) = if FULL { (LANES, LANES) } else { (w0, w1) };
    let mut acc = [[zero(); 2]; MR];
    for (r, ar) in acc.iter_mut().enumerate() {
        let row = &c[(m + r) * cols..(m + r + 1) * cols];
        ar[0] = ld(row, p, w0);
        ar[1] = ld(row, p + w0, w1);
    }
    for (kk, bk) in b_rows.iter().enumerate() {
        let bk = &bk[p..p + w0 + w1];
        let b0 = ld(bk, 0, w0);
        let b1 = ld(bk, w0, w1);
        for (r, ar) in acc.iter_mut().enumerate() {
            let s = splat(at[r * k + kk]);
            ar[0] = fma(s, b0, ar[0]);
            ar[1] = fma(s, b1, ar[1]);
        }
    }
    for (r, ar) in acc.iter().enumerate() {
        let row = &mut c[(m + r) * cols..(m + r + 1) * cols];
        st(row, p, w0, ar[0]);
        st(row, p + w0, w1, ar[1]);
    }
}
