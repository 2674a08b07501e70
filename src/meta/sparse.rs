//! Products whose left operand is mostly zeros.
//!
//! In a ReLU network every hidden activation is zero wherever its unit is
//! off, and so is the adjoint of every pre-activation (the ReLU's backward
//! passes nothing there). The three products of an outer-only network's
//! layer over all the task's rows (the RLN, `S·Bi + Bo` rows) each have such
//! a factor on the left: the forward `x · Wᵀ` (x the previous layer's ReLU
//! output), the input adjoint `da · W` and the weight gradient `daᵀ · x`. A
//! dense GEMM multiplies every zero; at the usual half of the units off
//! that is half its work. Here each row of the left operand is split into
//! blocks of 64 columns, a bit mask marks the block's non-zeros, and only
//! those rows of the right operand are added into the row of the result:
//! `c[i, :] += Σ_{a[i,p] ≠ 0} a[i,p] · b[p, :]`.
//!
//! The right operand is copied first, scaled by the product's `alpha`,
//! with rows padded to a multiple of 16 elements and starting on 64-byte
//! boundaries: its vector loads are the inner loop's, and a load split
//! across two cache lines costs two (unaligned, the product ran 1.4×
//! slower). The loop order keeps that copy's block in L1: for each block
//! of 64 of its rows, and each chunk of at most [`CV`] vectors of its
//! columns (64 × 160 columns are 40 KiB), every row of the result passes,
//! holding its chunk in registers while the set bits of its mask are
//! walked. Rows of the result go in blocks of [`MB`] so that their part of
//! the result stays in L2 next to all of the right operand; where that is
//! too large for L2 (a weight gradient reduced over many rows), all rows
//! go at once and each block of the right operand is read once. A result
//! A reduction longer than [`KS`] (a weight gradient over a long
//! trajectory's rows) goes in slabs of that many, so the copies stay a
//! slab's size and do not grow with the rows. A result
//! narrower than a multiple of the lane width ends in a vector shifted to
//! end at the last column; it overlaps the vector before it, which sits in
//! the same chunk, and both compute the overlapped columns from the same
//! old values with the same sums, so either store is right.
//!
//! Each element of the result is its old value plus the products in
//! increasing order of `p`, so results do not depend on threads; they
//! differ from a dense GEMM's in rounding only (another summation order),
//! and terms with a zero on the left are skipped, so a NaN or an infinity
//! on the right reaches only the rows that multiply it by a non-zero (a
//! dense product spreads it to every row). A NaN on the left is not zero
//! and is kept.
//!
//! [`gemm`] takes a product only where this pays: AVX-512 or AVX2 + FMA
//! builds ([`ENABLED`]), at least
//! [`MIN_ROWS`] rows and a reduced length of [`MIN_INNER`], and the left
//! operand at most [`MAX_DENSITY`] non-zero, counted on it before the
//! product (the masks are that count; a few percent of the product's time).

#![allow(clippy::too_many_arguments)]

#[cfg(not(target_feature = "avx512f"))]
use wide::f32x8 as V;
#[cfg(target_feature = "avx512f")]
use wide::f32x16 as V;

/// Lanes per vector.
const L: usize = std::mem::size_of::<V>() / 4;
/// Rows of the right operand per block: one `u64` mask per block of a row.
const KB: usize = 64;
/// Most vectors of result columns held in registers per chunk.
const CV: usize = 10;
/// Rows of the result per pass over the right operand: their block of the
/// result and of the left operand stay in L2 while `b` streams through L1.
const MB: usize = 64;
/// Longest reduction done in one pass; longer ones (a weight gradient over
/// a long trajectory's rows) go in slabs of this many, so the copies of the
/// factors stay a slab's size (16 mask blocks).
const KS: usize = 1024;
const _: () = assert!(KS.is_multiple_of(KB));
/// Bytes of the right operand up to which it is kept in L2 across row
/// blocks (half of a 1 MiB L2).
const B_IN_L2: usize = 512 << 10;

/// Whether the CPU backend sends products here: on builds for AVX-512, or
/// for AVX2 with FMA (eight-lane vectors). Not on older targets, where
/// `wide` emulates the vectors. At half zeros and 704 × 300 × 300 the
/// masked product takes 0.6–0.7× `matrixmultiply`'s time with the same
/// vector width (BENCHMARKS.md §19: AVX-512 on both sides, or AVX2 on both
/// sides), and about the same time when an AVX2 build runs on an AVX-512
/// CPU (where `matrixmultiply` picks its AVX-512 kernel at run time).
pub(crate) const ENABLED: bool =
    cfg!(any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma")));

/// Fraction of non-zeros in the left operand above which [`gemm`] leaves
/// the product to the dense GEMM. At 704 × 300 × 300 on Zen 5
/// (BENCHMARKS.md §19) the masked product, masks and copies included,
/// takes 0.6× the dense one's time at half non-zeros, 0.93× at 80%, and
/// is slower from about 85%.
pub(crate) const MAX_DENSITY: f64 = 0.75;
/// Smallest dimensions [`gemm`] takes: fewer rows or a shorter reduction
/// and the masks cost more than the zeros save.
const MIN_ROWS: usize = 32;
const MIN_INNER: usize = 32;

/// Where each row's non-zeros are: bit `t` of `masks[i·blocks + q]` is set
/// where `a[i, 64q + t]` is not zero.
struct Pattern {
    masks: Vec<u64>,
    blocks: usize,
    nonzeros: usize,
}

/// The pattern of `a (m × k)` with row stride `rsa` (columns contiguous).
fn pattern(a: &[f32], m: usize, k: usize, rsa: usize) -> Pattern {
    let blocks = k.div_ceil(KB);
    let mut masks = vec![0u64; m * blocks];
    let mut nonzeros = 0usize;
    let zero = V::ZERO;
    for (i, out) in masks.chunks_exact_mut(blocks).enumerate() {
        let row = &a[i * rsa..i * rsa + k];
        for (q, mask) in out.iter_mut().enumerate() {
            let blk = &row[q * KB..((q + 1) * KB).min(k)];
            let mut bits = 0u64;
            let mut vecs = blk.chunks_exact(L);
            for (v, chunk) in vecs.by_ref().enumerate() {
                let lanes: [f32; L] = chunk.try_into().expect("full vector");
                // Lanes equal to zero (a NaN is not, so it is kept).
                let eq = V::from(lanes).simd_eq(zero).to_bitmask() as u64;
                bits |= (!eq & ((1u64 << L) - 1)) << (v * L);
            }
            let done = blk.len() / L * L;
            for (t, &x) in vecs.remainder().iter().enumerate() {
                bits |= u64::from(x != 0.0) << (done + t);
            }
            nonzeros += bits.count_ones() as usize;
            *mask = bits;
        }
    }
    Pattern { masks, blocks, nonzeros }
}

/// How each element of the result starts: its old value, zero, or the
/// bias of its column (`c[i, j] = bias[j]`, a dense layer's forward).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start<'a> {
    Old,
    Zero,
    Bias(&'a [f32]),
}

/// What is done to each element of the result after its last term: nothing,
/// a ReLU (`max(c, 0)`, a NaN becoming 0 as `f32::max` makes it), or a mask
/// (`c[i, j]` kept where `h[i·rs + j] > 0`, zero elsewhere: the ReLU's
/// backward, `h` the ReLU's output with row stride `rs`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum End<'a> {
    Plain,
    Relu,
    Mask(&'a [f32], usize),
}

/// `c (m × n, row stride n) += a · b` over `a`'s non-zeros (`pat`);
/// `a (m × k)` row stride `rsa`, columns contiguous; `b` the right operand
/// as [`Padded`] makes it. `start` replaces the old values of `c` (this
/// call's reduction being the first part of the product's) and `end` is
/// applied after the last term (this call's reduction being the last part).
fn product(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    b: &Padded,
    pat: &Pattern,
    start: Start,
    end: End,
    c: &mut [f32],
) {
    assert!(n >= L, "sparse product: at least one vector of columns");
    assert!(m == 0 || (m - 1) * rsa + k <= a.len(), "sparse product: a too short");
    assert!(b.rows == k && b.cols == n, "sparse product: b is {} × {}, not {k} × {n}", b.rows, b.cols);
    assert!(m * n <= c.len(), "sparse product: c too short");
    if let Start::Bias(bias) = start {
        assert!(bias.len() >= n, "sparse product: bias shorter than a row");
    }
    if let End::Mask(h, rs) = end {
        assert!(rs >= n && (m == 0 || (m - 1) * rs + n <= h.len()), "sparse product: mask too short");
    }
    // Vectors of columns: full ones from 0, the last one ending at n (it
    // overlaps the one before it where L does not divide n).
    let vecs = n.div_ceil(L);
    let chunks = vecs.div_ceil(CV);
    // Rows per pass: a block of them while all of b fits in L2 next to it,
    // else all rows (then each block of b is read from memory once).
    let mb = if b.rows * b.stride * 4 <= B_IN_L2 { MB } else { m.max(1) };
    for i0 in (0..m).step_by(mb) {
        let rows_ = i0..(i0 + mb).min(m);
        for q in 0..pat.blocks {
            // The start on the first block of b's rows, the end on the last.
            let ends = (if q == 0 { start } else { Start::Old }, if q + 1 == pat.blocks { end } else { End::Plain });
            for ch in 0..chunks {
                // Balanced chunks: with two vectors or more, each holds at least
                // two, so the last vector shares its chunk with the one it
                // overlaps, and both are loaded before either is stored.
                let (v0, v1) = (ch * vecs / chunks, (ch + 1) * vecs / chunks);
                let olast = if v1 == vecs { n - L } else { (v1 - 1) * L };
                macro_rules! arms {
                    ($($nv:literal)*) => {
                        match v1 - v0 {
                            $($nv => rows::<$nv>(rows_.clone(), q, v0 * L, olast, a, rsa, b, pat, ends, c, n),)*
                            _ => unreachable!("chunks hold at most CV vectors"),
                        }
                    };
                }
                arms!(1 2 3 4 5 6 7 8 9 10);
            }
        }
    }
}

/// Every row of `c` for block `q` of `b`'s rows and `NV` vectors of
/// columns: the first `NV − 1` from `o0`, the last at `olast`. Where the
/// last overlaps the one before it, both hold the same sums of the same old
/// values there, so the order of the stores does not matter.
#[inline(always)]
fn rows<const NV: usize>(
    rows: std::ops::Range<usize>,
    q: usize,
    o0: usize,
    olast: usize,
    a: &[f32],
    rsa: usize,
    b: &Padded,
    pat: &Pattern,
    (start, end): (Start, End),
    c: &mut [f32],
    n: usize,
) {
    let off = |v: usize| if v + 1 < NV { o0 + v * L } else { olast };
    assert!(off(0) + L <= n && olast + L <= n, "sparse product: columns inside c");
    let (ap, bp, cp) = (a.as_ptr(), b.data().as_ptr(), c.as_mut_ptr());
    let rsb = b.stride;
    let plain = matches!((start, end), (Start::Old, End::Plain));
    for i in rows {
        let mut bits = pat.masks[i * pat.blocks + q];
        if bits == 0 && plain {
            continue;
        }
        // SAFETY: `product` asserted m·n <= c.len(), and every offset is at
        // most n − L: the first and the last are asserted above, and the
        // ones between lie between them.
        let crow = unsafe { cp.add(i * n) };
        let mut acc: [V; NV] = std::array::from_fn(|v| match start {
            Start::Old => V::from(unsafe { crow.add(off(v)).cast::<[f32; L]>().read_unaligned() }),
            Start::Zero => V::ZERO,
            // `product` asserted the bias holds n >= off(v) + L elements.
            Start::Bias(bias) => V::from(<[f32; L]>::try_from(&bias[off(v)..off(v) + L]).expect("full vector")),
        });
        while bits != 0 {
            let p = q * KB + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // SAFETY: a set bit lies below k, and `product` asserted
            // (m−1)·rsa + k <= a.len(); `Padded` holds k rows of `stride`
            // ≥ n elements.
            let s = V::splat(unsafe { *ap.add(i * rsa + p) });
            let row = unsafe { bp.add(p * rsb) };
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let bv = V::from(unsafe { row.add(off(v)).cast::<[f32; L]>().read_unaligned() });
                *acc = s.mul_add(bv, *acc);
            }
        }
        match end {
            End::Plain => {}
            End::Relu => acc.iter_mut().for_each(|a| *a = a.max(V::ZERO)),
            End::Mask(h, rs) => {
                for (v, a) in acc.iter_mut().enumerate() {
                    // `product` asserted (m−1)·rs + n <= h.len().
                    let at = i * rs + off(v);
                    let hv = V::from(<[f32; L]>::try_from(&h[at..at + L]).expect("full vector"));
                    *a &= hv.simd_gt(V::ZERO);
                }
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: as for the loads.
            unsafe { crow.add(off(v)).cast::<[f32; L]>().write_unaligned(acc.to_array()) };
        }
    }
}

/// A right operand `(rows × cols)` copied row-major with rows padded with
/// zeros to a multiple of the lane width and starting on 64-byte
/// boundaries, so no vector load splits a cache line.
struct Padded {
    buf: Vec<f32>,
    start: usize,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl Padded {
    /// `alpha · b`, `b (rows × cols)` with strides `(rs, cs)`, one of them 1.
    fn new(b: &[f32], rows: usize, cols: usize, (rs, cs): (usize, usize), alpha: f32) -> Self {
        let stride = cols.div_ceil(16) * 16;
        let len = rows * stride + 16;
        let mut buf: Vec<f32>;
        let start;
        if cs == 1 {
            // Written once, row by row, after `start` elements that align
            // the first row (the allocation does not move within capacity).
            buf = Vec::with_capacity(len);
            start = buf.as_ptr().align_offset(64).min(16);
            buf.resize(start, 0.0);
            for r in 0..rows {
                buf.extend_from_slice(&b[r * rs..r * rs + cols]);
                buf.resize(buf.len() + stride - cols, 0.0);
            }
            buf.resize(len, 0.0);
        } else {
            // Stored transposed, as (cols × rows) with row stride cs.
            buf = vec![0.0; len];
            start = buf.as_ptr().align_offset(64).min(16);
            transpose_into(b, cols, rows, cs, &mut buf[start..start + rows * stride], stride);
        }
        let data = &mut buf[start..start + rows * stride];
        if alpha != 1.0 {
            data.iter_mut().for_each(|x| *x *= alpha);
        }
        Padded { buf, start, rows, cols, stride }
    }

    fn data(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.rows * self.stride]
    }
}

/// `c (m × n) = beta·c + alpha · a (m × k) · b (k × n)`, strides (row,
/// column) for `a` and `b`, `c` row-major: taken here, and `true` returned,
/// where the build enables it ([`ENABLED`]), the product is large enough
/// and `a` sparse enough (at most [`MAX_DENSITY`] non-zero); `false`, with
/// nothing touched, otherwise. `a` with rows strided and columns
/// contiguous is read as is; stored transposed (row stride 1) it is first
/// copied row-major. `b` is always copied, padded and scaled by `alpha`.
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    sa: (usize, usize),
    b: &[f32],
    sb: (usize, usize),
    beta: f32,
    c: &mut [f32],
) -> bool {
    ENABLED && masked(m, k, n, alpha, a, sa, b, sb, beta, Start::Old, End::Plain, c)
}

/// [`gemm`] with `c`'s elements started by `start` (instead of `beta·c`)
/// and finished by `end`: `c = end(start + alpha · a · b)`, one pass over
/// `c` for a dense layer's forward with its bias and ReLU, or for an input
/// adjoint with the ReLU's backward below it. The same conditions as
/// [`gemm`]: `false`, with nothing touched, where the product is not taken.
pub(crate) fn gemm_with(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    sa: (usize, usize),
    b: &[f32],
    sb: (usize, usize),
    start: Start,
    end: End,
    c: &mut [f32],
) -> bool {
    ENABLED && masked(m, k, n, alpha, a, sa, b, sb, 1.0, start, end, c)
}

/// Elements of scratch (in f32 words) that [`gemm`] allocates for an
/// `m × k × n` product: the padded copy of the right factor, the row-major
/// copy of a left factor stored transposed, and the masks (two words each).
/// They are plain allocations, freed when the product ends: the buffer
/// pool (`pool::Buf`) keeps every size it is given, and these sizes differ
/// from layer to layer, so pooled they would all stay (one product's worth
/// each) and the estimate's "one product at a time" would not hold.
pub(crate) fn scratch_words(m: usize, k: usize, n: usize, a_transposed: bool) -> u128 {
    // A longer reduction goes in slabs of KS, one slab's copies at a time.
    let (m, k, n) = (m as u128, k.min(KS) as u128, n as u128);
    let padded = k.saturating_mul(n.div_ceil(16) * 16).saturating_add(16);
    let copy = if a_transposed { m.saturating_mul(k) } else { 0 };
    let masks = m.saturating_mul(k.div_ceil(KB as u128)).saturating_mul(2);
    padded.saturating_add(copy).saturating_add(masks)
}

/// The most scratch (f32 words) one product of a dense layer `i → j` over
/// `rows` rows takes here: its forward (`rows × i × j`), input adjoint
/// (`rows × j × i`) or weight gradient (`j × rows × i`, the adjoint
/// transposed first), whichever is largest.
pub(crate) fn layer_scratch(rows: usize, i: usize, j: usize) -> u128 {
    let fwd = scratch_words(rows, i, j, false);
    let dx = scratch_words(rows, j, i, false);
    let dw = scratch_words(j, rows, i, true);
    fwd.max(dx).max(dw)
}

/// [`gemm`] and [`gemm_with`] on every build (what the tests check):
/// `beta` scales the old values only where `start` is [`Start::Old`]
/// (`gemm_with` passes 1).
fn masked(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    start: Start,
    end: End,
    c: &mut [f32],
) -> bool {
    if m < MIN_ROWS || k < MIN_INNER || n < L || (csa != 1 && rsa != 1) || (csb != 1 && rsb != 1) {
        return false;
    }
    // Sparse enough? A row-major left factor short enough for one pass is
    // counted by its pattern below, before anything is written; otherwise
    // it is counted first, as it is stored.
    let counted_by_pattern = csa == 1 && k <= KS;
    if !counted_by_pattern {
        let density = if csa == 1 { density_of(a, k, m, rsa) } else { density_of(a, m, k, csa) };
        if density > MAX_DENSITY {
            return false;
        }
    }
    // A reduction longer than KS (a weight gradient over many rows) in
    // slabs: the copies are a slab's, and each element still adds its
    // products in increasing order of the summed index, as in one pass.
    for p0 in (0..k).step_by(KS) {
        let ks = KS.min(k - p0);
        // The slab of the left operand row-major (a copy when it is stored
        // transposed).
        let at;
        let (slab, rs) = if csa == 1 {
            (&a[p0..], rsa)
        } else {
            at = transpose(&a[p0 * csa..], m, ks, csa);
            (&at[..], ks)
        };
        let pat = pattern(slab, m, ks, rs);
        if counted_by_pattern && pat.nonzeros as f64 > MAX_DENSITY * (m * k) as f64 {
            return false;
        }
        // beta·c as the first slab's start: zero for beta 0 (whatever c
        // held), the old values scaled in place otherwise.
        let first = match start {
            _ if p0 > 0 => Start::Old,
            Start::Old if beta == 0.0 => Start::Zero,
            Start::Old => {
                if beta != 1.0 {
                    c[..m * n].iter_mut().for_each(|x| *x *= beta);
                }
                Start::Old
            }
            other => other,
        };
        let last = if p0 + ks == k { end } else { End::Plain };
        let bs = if csb == 1 { &b[p0 * rsb..] } else { &b[p0..] };
        let bp = Padded::new(bs, ks, n, (rsb, csb), alpha);
        product(m, ks, n, slab, rs, &bp, &pat, first, last, c);
    }
    true
}

/// Non-zero fraction of `s (rows × cols)` stored with row stride `rs`,
/// columns contiguous: the check made before a left factor is copied
/// transposed or cut into slabs.
fn density_of(s: &[f32], cols: usize, rows: usize, rs: usize) -> f64 {
    let nz: usize = (0..rows).map(|r| s[r * rs..r * rs + cols].iter().filter(|&&x| x != 0.0).count()).sum();
    nz as f64 / (rows * cols).max(1) as f64
}

/// The `cols × rows` row-major transpose of `s (rows × cols)` stored with
/// row stride `rs` (columns contiguous).
fn transpose(s: &[f32], cols: usize, rows: usize, rs: usize) -> Vec<f32> {
    let mut t = vec![0.0; cols * rows];
    transpose_into(s, rows, cols, rs, &mut t, rows);
    t
}

/// `d[c·ds + r] = s[r·rs + c]` for `r < rows`, `c < cols`: 8 × 8 tiles
/// transposed in registers, the edges element by element.
pub(crate) fn transpose_into(s: &[f32], rows: usize, cols: usize, rs: usize, d: &mut [f32], ds: usize) {
    use wide::f32x8;
    assert!(rows == 0 || cols == 0 || ((rows - 1) * rs + cols <= s.len() && (cols - 1) * ds + rows <= d.len()));
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    for r0 in (0..r8).step_by(8) {
        for c0 in (0..c8).step_by(8) {
            let tile: [f32x8; 8] = std::array::from_fn(|q| {
                let at = (r0 + q) * rs + c0;
                f32x8::from(<[f32; 8]>::try_from(&s[at..at + 8]).expect("eight lanes"))
            });
            for (q, v) in f32x8::transpose(tile).iter().enumerate() {
                let at = (c0 + q) * ds + r0;
                d[at..at + 8].copy_from_slice(&v.to_array());
            }
        }
        for r in r0..r0 + 8 {
            for c in c8..cols {
                d[c * ds + r] = s[r * rs + c];
            }
        }
    }
    for r in r8..rows {
        for c in 0..cols {
            d[c * ds + r] = s[r * rs + c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(s: &mut u64) -> f32 {
        *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A matrix with about `density` non-zeros (uniform values in ±1).
    fn sparse(s: &mut u64, n: usize, density: f32) -> Vec<f32> {
        (0..n).map(|_| if lcg(s).abs() < density { lcg(s) } else { 0.0 }).collect()
    }

    /// `beta·c + alpha·a·b` in f64, strides as `gemm` takes them, and each
    /// element's scale `|beta·c| + |alpha|·Σ|a·b|` (f32 rounding grows with
    /// it, not with the possibly cancelled result).
    fn naive(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        beta: f32,
        c: &[f32],
    ) -> Vec<(f64, f64)> {
        let mut out = vec![(0.0, 0.0); m * n];
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64);
                let (dot, abs) = terms.fold((0.0, 0.0), |(d, s), t| (d + t, s + t.abs()));
                let old = beta as f64 * c[i * n + j] as f64;
                out[i * n + j] = (old + alpha as f64 * dot, old.abs() + (alpha as f64).abs() * abs);
            }
        }
        out
    }

    #[test]
    fn matches_the_dense_product_in_every_layout_and_width() {
        let mut s = 7u64;
        // Widths below, at and around multiples of the lane width and of
        // the chunk; reductions across block edges, and (the last two)
        // longer than KS = 1024, so in slabs.
        for &(m, k, n) in &[
            (40, 64, 16),
            (33, 65, 17),
            (50, 130, 300),
            (64, 200, 31),
            (37, 96, 129),
            (40, 33, 8 * L + 5),
            (40, 1100, 33),
            (33, 2049, 17),
        ] {
            for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                for &(alpha, beta) in &[(1.0f32, 1.0f32), (-0.5, 0.0), (2.0, 0.25)] {
                    let a = sparse(&mut s, m * k, 0.4);
                    let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
                    let c0: Vec<f32> = (0..m * n).map(|_| lcg(&mut s)).collect();
                    let sa = if ta { (1, m) } else { (k, 1) };
                    let sb = if tb { (1, k) } else { (n, 1) };
                    let want = naive(m, k, n, alpha, &a, sa, &b, sb, beta, &c0);
                    let mut c = c0.clone();
                    assert!(
                        masked(m, k, n, alpha, &a, sa, &b, sb, beta, Start::Old, End::Plain, &mut c),
                        "{m}x{k}x{n} taken"
                    );
                    for (idx, (&g, &(w, scale))) in c.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - w).abs() <= 1e-5 * (1.0 + scale),
                            "{m}x{k}x{n} ta {ta} tb {tb} α {alpha} β {beta} at {idx}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]

        /// Random shapes, densities (up to the dispatch's limit), strides
        /// with slack, layouts and scales against the f64 product.
        #[test]
        fn matches_the_dense_product_on_random_shapes(
            m in 32usize..90, k in 32usize..200, n in L..180, pad in 0usize..5,
            density in 0.0f32..0.65, ta: bool, tb: bool, seed: u64,
            alpha in proptest::prop_oneof![proptest::strategy::Just(1.0f32), -2.0f32..2.0],
            beta in proptest::prop_oneof![proptest::strategy::Just(0.0f32), proptest::strategy::Just(1.0f32), -1.0f32..1.0],
        ) {
            let mut s = seed | 1;
            // Row strides with `pad` unused elements after each row.
            let (sa, alen) = if ta { ((1, m + pad), k * (m + pad)) } else { ((k + pad, 1), m * (k + pad)) };
            let (sb, blen) = if tb { ((1, k + pad), n * (k + pad)) } else { ((n + pad, 1), k * (n + pad)) };
            let a = sparse(&mut s, alen, density);
            let b: Vec<f32> = (0..blen).map(|_| lcg(&mut s)).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| lcg(&mut s)).collect();
            let want = naive(m, k, n, alpha, &a, sa, &b, sb, beta, &c0);
            let mut c = c0.clone();
            proptest::prop_assert!(masked(m, k, n, alpha, &a, sa, &b, sb, beta, Start::Old, End::Plain, &mut c), "taken");
            for (idx, (&g, &(w, scale))) in c.iter().zip(&want).enumerate() {
                proptest::prop_assert!((g as f64 - w).abs() <= 1e-5 * (1.0 + scale), "at {}: {} vs {}", idx, g, w);
            }
        }

        /// The starts (zero, bias) and ends (none, ReLU, mask) on random
        /// shapes, layouts, scales and mask strides, against the f64 product.
        #[test]
        fn starts_and_ends_on_random_shapes(
            m in 32usize..80, k in 32usize..140, n in L..120, pad in 0usize..4,
            density in 0.0f32..0.65, ta: bool, tb: bool, seed: u64, bias_start: bool, end in 0usize..3,
            alpha in proptest::prop_oneof![proptest::strategy::Just(1.0f32), -2.0f32..2.0],
        ) {
            let mut s = seed | 1;
            let (sa, alen) = if ta { ((1, m + pad), k * (m + pad)) } else { ((k + pad, 1), m * (k + pad)) };
            let (sb, blen) = if tb { ((1, k + pad), n * (k + pad)) } else { ((n + pad, 1), k * (n + pad)) };
            let a = sparse(&mut s, alen, density);
            let b: Vec<f32> = (0..blen).map(|_| lcg(&mut s)).collect();
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut s)).collect();
            let h = sparse(&mut s, m * (n + pad), 0.5);
            let dense = naive(m, k, n, alpha, &a, sa, &b, sb, 0.0, &vec![0.0; m * n]);
            let start = if bias_start { Start::Bias(&bias) } else { Start::Zero };
            let fin = [End::Plain, End::Relu, End::Mask(&h, n + pad)][end];
            let mut c = vec![f32::NAN; m * n];
            proptest::prop_assert!(masked(m, k, n, alpha, &a, sa, &b, sb, 1.0, start, fin, &mut c), "taken");
            for (e, (&g, &(dot, scale))) in c.iter().zip(&dense).enumerate() {
                let (i, j) = (e / n, e % n);
                let pre = dot + if bias_start { bias[j] as f64 } else { 0.0 };
                let tol = 1e-5 * (1.0 + scale + pre.abs());
                let (want, zero) = match end {
                    0 => (pre, false),
                    1 => (pre.max(0.0), pre < -tol),
                    _ => if h[i * (n + pad) + j] > 0.0 { (pre, false) } else { (0.0, true) },
                };
                proptest::prop_assert!(
                    (g as f64 - want).abs() <= tol && (!zero || g == 0.0),
                    "end {} bias {} at ({}, {}): {} vs {}", end, bias_start, i, j, g, want
                );
            }
        }
    }

    /// Each start (zero whatever `c` held, a bias per column) with each end
    /// (ReLU, mask by `h > 0`) against the f64 product, one pass and in
    /// slabs (k past KS): the start replaces `c` before the first term and
    /// the end applies after the last, on every element, rows without a
    /// non-zero included.
    #[test]
    fn starts_and_ends_apply_once_to_every_element() {
        let mut s = 13u64;
        for &(m, k, n) in &[(40, 64, 16), (37, 130, 8 * L + 5), (33, 1100, 40)] {
            let mut a = sparse(&mut s, m * k, 0.4);
            // Two rows with no non-zero at all.
            a[..k].fill(0.0);
            a[5 * k..6 * k].fill(0.0);
            let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut s)).collect();
            let mut h = sparse(&mut s, m * (n + 3), 0.5);
            h[7] = f32::NAN;
            let dense = naive(m, k, n, 1.0, &a, (k, 1), &b, (n, 1), 0.0, &vec![0.0; m * n]);
            for bias_start in [false, true] {
                for relu in [false, true] {
                    let start = if bias_start { Start::Bias(&bias) } else { Start::Zero };
                    let end = if relu { End::Relu } else { End::Mask(&h, n + 3) };
                    let mut c = vec![f32::NAN; m * n];
                    assert!(masked(m, k, n, 1.0, &a, (k, 1), &b, (n, 1), 1.0, start, end, &mut c));
                    for (e, (&g, &(dot, scale))) in c.iter().zip(&dense).enumerate() {
                        let (i, j) = (e / n, e % n);
                        let pre = dot + if bias_start { bias[j] as f64 } else { 0.0 };
                        let keep = if relu { pre > 0.0 } else { h[i * (n + 3) + j] > 0.0 };
                        let want = if keep { pre } else { 0.0 };
                        let tol = 1e-5 * (1.0 + scale + pre.abs());
                        // Zero exactly where the mask is off, or the ReLU's
                        // input is clearly negative (f32 rounding may move
                        // one within tol of zero to either side).
                        let zero = if relu { pre < -tol } else { !keep };
                        assert!(
                            (g as f64 - want).abs() <= tol && (!zero || g == 0.0),
                            "{m}x{k}x{n} bias {bias_start} relu {relu} at ({i}, {j}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn leaves_dense_or_small_products_untouched() {
        let mut s = 3u64;
        let (m, k, n) = (64, 64, 64);
        let dense: Vec<f32> = (0..m * k).map(|_| lcg(&mut s) + 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
        let mut c = vec![1.5f32; m * n];
        assert!(!masked(m, k, n, 1.0, &dense, (k, 1), &b, (n, 1), 0.0, Start::Old, End::Plain, &mut c));
        assert!(!masked(m, k, n, 1.0, &dense, (1, m), &b, (n, 1), 0.0, Start::Old, End::Plain, &mut c));
        let few = sparse(&mut s, 8 * k, 0.3);
        assert!(!masked(8, k, n, 1.0, &few, (k, 1), &b, (n, 1), 0.0, Start::Old, End::Plain, &mut c));
        assert!(c.iter().all(|&x| x == 1.5), "a refused product writes nothing");
    }

    #[test]
    fn a_nan_on_the_left_reaches_its_row_and_zeros_skip_infinities() {
        let (m, k, n) = (32, 64, 32);
        let mut a = vec![0.0f32; m * k];
        a[5 * k + 3] = f32::NAN;
        a[7 * k + 9] = 1.0;
        let mut b = vec![1.0f32; k * n];
        b[10 * n..11 * n].fill(f32::INFINITY);
        let mut c = vec![0.0f32; m * n];
        assert!(masked(m, k, n, 1.0, &a, (k, 1), &b, (n, 1), 0.0, Start::Old, End::Plain, &mut c));
        assert!(c[5 * n..6 * n].iter().all(|x| x.is_nan()), "the NaN's row");
        assert!(c[7 * n..8 * n].iter().all(|&x| x == 1.0), "a plain row");
        assert!(c.iter().enumerate().all(|(e, x)| e / n == 5 || x.is_finite()), "no 0·∞ terms");
    }

    #[test]
    fn the_scratch_count_covers_what_a_product_allocates() {
        // Exact-size allocations, freed when the product ends: the largest
        // product's are what `scratch_words` counts (both layouts of b).
        let (m, k, n) = (45, 130, 37);
        let b = vec![1.0f32; k * n];
        let pat = pattern(&vec![1.0f32; m * k], m, k, k);
        for sb in [(n, 1), (1, k)] {
            let padded = Padded::new(&b, k, n, sb, 1.0);
            assert_eq!(padded.buf.capacity(), padded.buf.len());
            // The left factor stored transposed, (k × m), copied row-major.
            let at = transpose(&vec![1.0f32; k * m], m, k, m);
            assert_eq!(at.len(), m * k);
            let words = padded.buf.capacity() + at.capacity() + pat.masks.capacity() * 2;
            assert_eq!(scratch_words(m, k, n, true), words as u128, "b strides {sb:?}");
        }
    }

    #[test]
    fn the_mask_marks_exactly_the_non_zeros() {
        let mut s = 11u64;
        let (m, k, rsa) = (5, 150, 160);
        let a = sparse(&mut s, m * rsa, 0.5);
        let pat = pattern(&a, m, k, rsa);
        let mut count = 0;
        for i in 0..m {
            for p in 0..k {
                let bit = pat.masks[i * pat.blocks + p / KB] >> (p % KB) & 1 == 1;
                assert_eq!(bit, a[i * rsa + p] != 0.0, "row {i} column {p}");
                count += usize::from(bit);
            }
            for p in k..pat.blocks * KB {
                assert_eq!(pat.masks[i * pat.blocks + p / KB] >> (p % KB) & 1, 0, "no bit past k");
            }
        }
        assert_eq!(pat.nonzeros, count);
    }
}
