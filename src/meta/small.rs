//! `y += x · wᵀ` for a handful of rows, without packing.
//!
//! The dense forward and R-forward multiply a few rows of activations by a
//! weight matrix stored `(out, in)`, as PyTorch stores it: both operands are
//! contiguous along the reduced dimension, so every output is a dot product
//! of two contiguous rows. `matrixmultiply` wants the other operand
//! contiguous along the output dimension and gathers `w` element by element
//! into its packed panel on every call, which for 16 × 300 × 300 costs more
//! than the gathered products are worth (BENCHMARKS.md §11, §13). Tiles of
//! `R` rows of `x` × `J` rows of `w` keep `R·J` accumulators in registers and
//! read each row straight from cache: 16-lane vectors, 4 × 4 tiles where the
//! build targets AVX-512 (32 vector registers; on a core with full-width
//! 512-bit units, eight-lane code runs at half the FMA rate), 8-lane
//! vectors, 4 × 3 tiles otherwise. The reduced length's last partial vector
//! is read as the row's last `L` elements with the lanes already summed
//! masked off, so no element is summed by scalar code.
//! Sums are reduced in a fixed order, so results do not depend on threads or
//! alignment (they do depend on the lane width the build chose).

#[cfg(not(target_feature = "avx512f"))]
use wide::f32x8 as V;
#[cfg(target_feature = "avx512f")]
use wide::f32x16 as V;

/// Lanes per vector.
const L: usize = std::mem::size_of::<V>() / 4;
/// Rows of `w` per tile.
#[cfg(target_feature = "avx512f")]
const TJ: usize = 4;
#[cfg(not(target_feature = "avx512f"))]
const TJ: usize = 3;
/// Rows of `x` per tile.
const TR: usize = 4;

/// Rows up to which [`gemm_nt`] beats the packed SGEMM, measured at widths
/// 300 on quiet hosts (`examples`-style loops, BENCHMARKS.md §11, §13).
/// AVX-512 (Zen 5): 16 rows 2.3×, 32 rows 1.5×, 64 rows 1.1× faster, 128
/// rows at parity, 704 rows 0.8×. AVX2 (Zen 4 guest without AVX-512): 16
/// rows 1.2–1.4× faster, 32 rows at parity, 48 rows slower.
#[cfg(target_feature = "avx512f")]
pub(crate) const MAX_ROWS: usize = 96;
#[cfg(not(target_feature = "avx512f"))]
pub(crate) const MAX_ROWS: usize = 24;
/// Reduced lengths below this are not taken by [`gemm_nt`]: on AVX-512
/// builds they go to [`gemm_xwt_short`] (up to [`MAX_ROWS`] rows), else to
/// the packed SGEMM (its gather is cheap for them). At least one vector,
/// which the tail of [`tile`] relies on.
pub(crate) const MIN_INNER: usize = 64;
const _: () = assert!(MIN_INNER >= L);
/// Columns from which [`gemm_bcast`] takes a product (it needs one vector).
pub(crate) const MIN_COLS: usize = 2 * L;

/// All bits set in the top `n` lanes, clear below.
#[inline(always)]
fn tail_mask(n: usize) -> V {
    V::from(std::array::from_fn::<f32, L, _>(|l| f32::from_bits(if l >= L - n { u32::MAX } else { 0 })))
}

/// The R × J dot products of rows `xs` with rows `ws` (each of length `i`).
#[inline(always)]
fn tile<const R: usize, const J: usize>(xs: [&[f32]; R], ws: [&[f32]; J], i: usize) -> [[f32; J]; R] {
    assert!(xs.iter().chain(ws.iter()).all(|s| s.len() == i), "tile: rows of length {i}");
    let iv = i / L * L;
    // Raw row pointers, so the loop keeps them in registers (through the
    // slices LLVM reloads each base from the stack at every step).
    let xp: [*const f32; R] = std::array::from_fn(|a| xs[a].as_ptr());
    let wp: [*const f32; J] = std::array::from_fn(|b| ws[b].as_ptr());
    let mut acc = [[V::ZERO; J]; R];
    let mut k = 0;
    while k < iv {
        // SAFETY: every row holds `i` elements (asserted) and k + L <= iv <= i.
        let wv: [V; J] = std::array::from_fn(|b| V::from(unsafe { wp[b].add(k).cast::<[f32; L]>().read_unaligned() }));
        for a in 0..R {
            // SAFETY: as above.
            let xv = V::from(unsafe { xp[a].add(k).cast::<[f32; L]>().read_unaligned() });
            for b in 0..J {
                acc[a][b] = xv.mul_add(wv[b], acc[a][b]);
            }
        }
        k += L;
    }
    if iv < i {
        // The last L elements, with the lanes the loop already summed
        // cleared in both operands (i >= L: `MIN_INNER`).
        let k = i - L;
        let keep = tail_mask(i - iv);
        // SAFETY: k + L = i, and every row holds `i` elements.
        let wv: [V; J] =
            std::array::from_fn(|b| V::from(unsafe { wp[b].add(k).cast::<[f32; L]>().read_unaligned() }) & keep);
        for a in 0..R {
            // SAFETY: as above.
            let xv = V::from(unsafe { xp[a].add(k).cast::<[f32; L]>().read_unaligned() }) & keep;
            for b in 0..J {
                acc[a][b] = xv.mul_add(wv[b], acc[a][b]);
            }
        }
    }
    reduce::<R, J>(&acc)
}

/// Each accumulator's horizontal sum. A full 4 × 4 tile on AVX-512 sums its
/// sixteen vectors together in a transposing tree (45 shuffles and adds for
/// all sixteen instead of eight for each), which leaves lane `t` holding
/// the sum of accumulator [`TREE_LANE`]`⁻¹[t]`; other tiles reduce one
/// vector at a time. Either way the order of the additions is fixed.
#[inline(always)]
fn reduce<const R: usize, const J: usize>(acc: &[[V; J]; R]) -> [[f32; J]; R] {
    #[cfg(target_feature = "avx512f")]
    if R * J == 16 {
        let flat: [V; 16] = std::array::from_fn(|q| acc[q / J][q % J]);
        let sums = tree16(&flat);
        return std::array::from_fn(|a| std::array::from_fn(|b| sums[TREE_LANE[a * J + b]]));
    }
    std::array::from_fn(|a| std::array::from_fn(|b| acc[a][b].reduce_add()))
}

/// Where [`tree16`] leaves the sum of its input vector `q`.
#[cfg(target_feature = "avx512f")]
const TREE_LANE: [usize; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

/// Sixteen 16-lane vectors to one vector of their sums (lane
/// [`TREE_LANE`]`[q]` = Σ of vector `q`): four levels, each pairing vectors
/// and adding the halves that belong to the same input (256-bit halves,
/// then 128-bit quarters, then pairs of lanes, then lanes).
#[cfg(target_feature = "avx512f")]
#[inline(always)]
fn tree16(v: &[V; 16]) -> [f32; 16] {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_castpd_ps, _mm512_castps_pd, _mm512_shuffle_f32x4, _mm512_shuffle_ps,
        _mm512_unpackhi_pd, _mm512_unpacklo_pd,
    };
    // SAFETY: the build targets AVX-512 (this function's cfg), so the
    // intrinsics' instructions exist; with AVX-512 `V` wraps 16 f32 lanes in
    // exactly `__m512`'s layout, and every bit pattern is valid in both.
    unsafe {
        let m: [__m512; 16] = std::array::from_fn(|q| std::mem::transmute::<V, __m512>(v[q]));
        // [a's quarters 0 1 | b's 0 1] + [a's 2 3 | b's 2 3]: each 256-bit half
        // holds one input's partial sums.
        let l1: [__m512; 8] = std::array::from_fn(|k| {
            let (a, b) = (m[2 * k], m[2 * k + 1]);
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
        });
        // Each 128-bit quarter holds one input's four partial sums.
        let l2: [__m512; 4] = std::array::from_fn(|k| {
            let (a, b) = (l1[2 * k], l1[2 * k + 1]);
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
        });
        // Each pair of lanes holds one input's two partial sums.
        let l3: [__m512; 2] = std::array::from_fn(|k| {
            let (a, b) = (_mm512_castps_pd(l2[2 * k]), _mm512_castps_pd(l2[2 * k + 1]));
            _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)))
        });
        let (a, b) = (l3[0], l3[1]);
        let l4 = _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(a, b), _mm512_shuffle_ps::<0b11_01_11_01>(a, b));
        // SAFETY: `__m512` holds 16 f32 lanes; every bit pattern is a valid array.
        std::mem::transmute::<__m512, [f32; 16]>(l4)
    }
}

/// Rows `r0 .. r0 + R` of `y` against rows `j0 .. j0 + J` of `w`.
#[inline(always)]
fn block<const R: usize, const J: usize>(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    r0: usize,
    j0: usize,
    i: usize,
    j: usize,
) {
    let xs: [&[f32]; R] = std::array::from_fn(|a| &x[(r0 + a) * i..(r0 + a + 1) * i]);
    let ws: [&[f32]; J] = std::array::from_fn(|b| &w[(j0 + b) * i..(j0 + b + 1) * i]);
    let t = tile::<R, J>(xs, ws, i);
    for (a, t) in t.iter().enumerate() {
        for (b, &t) in t.iter().enumerate() {
            y[(r0 + a) * j + j0 + b] += t;
        }
    }
}

/// Every row of `y` against rows `j0 .. j0 + J` of `w` (which stay in L1
/// while the rows of `x` pass by).
#[inline(always)]
fn cols<const J: usize>(x: &[f32], w: &[f32], y: &mut [f32], j0: usize, r: usize, i: usize, j: usize) {
    let mut r0 = 0;
    while r0 + TR <= r {
        block::<TR, J>(x, w, y, r0, j0, i, j);
        r0 += TR;
    }
    for r0 in r0..r {
        block::<1, J>(x, w, y, r0, j0, i, j);
    }
}

/// `y (r×j) += x (r×i) · wᵀ` with `w: (j, i)`, all row-major.
pub(crate) fn gemm_nt(x: &[f32], w: &[f32], y: &mut [f32], r: usize, i: usize, j: usize) {
    assert!(x.len() >= r * i && w.len() >= j * i && y.len() >= r * j, "gemm_nt: operand too short");
    let mut j0 = 0;
    while j0 + TJ <= j {
        cols::<TJ>(x, w, y, j0, r, i, j);
        j0 += TJ;
    }
    for j0 in j0..j {
        cols::<1>(x, w, y, j0, r, i, j);
    }
}

/// `c (m×n) = beta·c + alpha · a · b`, `a` read at `a[row·rsa + p·csa]` (any
/// strides: a row-major matrix or the transpose of one), `b: (k, n)`
/// row-major with row stride `rsb`, `c` row-major `(m, n)`.
///
/// Broadcast form: each step of the reduction loads `NV` vectors of a row of
/// `b` and multiplies them by `R` broadcast elements of `a`, into an
/// `R × NV` tile of `c` held in registers; `b` is read in place, never
/// packed. Serves the dense layers' `dy · W` (a few rows of `dy` against a
/// whole weight matrix) and `dyᵀ · x` (a few rows reduced into a whole
/// weight-shaped gradient), where the packed SGEMM spends a large share of
/// its time copying (BENCHMARKS.md §13). Columns are swept in blocks of
/// `NV·L` that stay in L1 while every row tile passes; the last block
/// recomputes the row's last `L` columns and stores only the new ones.
/// Needs `n ≥ L`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bcast(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    rsb: usize,
    beta: f32,
    c: &mut [f32],
) {
    bcast(m, k, n, alpha, a, (rsa, csa), b, rsb, None, beta, None, c);
}

/// `c = beta·c + alpha · (a · b + a2 · b2)`: [`gemm_bcast`] over two pairs
/// of operands with the same shapes and strides, summed in the same
/// accumulators (so `c` is read and written once, not twice). Serves the
/// R-backward's `rdyᵀ · x + dyᵀ · rx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bcast2(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    (a, a2): (&[f32], &[f32]),
    (rsa, csa): (usize, usize),
    (b, b2): (&[f32], &[f32]),
    rsb: usize,
    beta: f32,
    c: &mut [f32],
) {
    bcast(m, k, n, alpha, a, (rsa, csa), b, rsb, Some((a2, b2)), beta, None, c);
}

/// `c = src + alpha · a · b` ([`gemm_bcast`] with beta 1 reading the old
/// values from `src`, same layout as `c`): bit for bit what copying `src`
/// into `c` and calling [`gemm_bcast`] gives, without the copy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bcast_from(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    sa: (usize, usize),
    b: &[f32],
    rsb: usize,
    src: &[f32],
    c: &mut [f32],
) {
    assert!(m * n <= src.len(), "gemm_bcast_from: src too short");
    bcast(m, k, n, alpha, a, sa, b, rsb, None, 1.0, Some(src), c);
}

#[allow(clippy::too_many_arguments)]
fn bcast(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    rsb: usize,
    more: Option<(&[f32], &[f32])>,
    beta: f32,
    src: Option<&[f32]>,
    c: &mut [f32],
) {
    assert!(n >= L, "gemm_bcast: {n} columns, fewer than a vector");
    for (a, b) in std::iter::once((a, b)).chain(more) {
        assert!(m == 0 || k == 0 || (m - 1) * rsa + (k - 1) * csa < a.len(), "gemm_bcast: a too short");
        assert!(k == 0 || (k - 1) * rsb + n <= b.len(), "gemm_bcast: b too short");
    }
    assert!(m * n <= c.len(), "gemm_bcast: c too short");
    let go = |a: &[f32], (rsa, csa): (usize, usize), more: Option<(&[f32], &[f32])>, c: &mut [f32]| {
        let ops = Ops { k, n, a, rsa, csa, b, rsb, more, beta, src };
        // One instance of the kernels per number of pairs, so the one-pair
        // loops carry no test for a second.
        if ops.more.is_some() { ops.run::<true>(m, c) } else { ops.run::<false>(m, c) }
    };
    if alpha == 1.0 {
        return go(a, (rsa, csa), more, c);
    }
    // alpha multiplies `a` once, m·k products, instead of every element of
    // the result (m·n of them, each a multiply and an add on the FMA ports
    // the tile needs): the tiles then start from beta·c and end in a plain
    // store. Into compact scratch of the same orientation as `a`.
    let (rs, cs) = if rsa == 1 { (1, m) } else { (k, 1) };
    ASCALED.with_borrow_mut(|buf| {
        let pairs = 1 + usize::from(more.is_some());
        if buf.len() < pairs * m * k {
            buf.resize(pairs * m * k, 0.0);
        }
        let (s1, s2) = buf[..pairs * m * k].split_at_mut(m * k);
        for (a, dst) in std::iter::once(a).chain(more.map(|(a2, _)| a2)).zip([s1, s2]) {
            // Contiguous runs of `a` scale as slices (vectorized, no index
            // arithmetic per element): this copy is m·k scalar products
            // otherwise, 14% of a 300 × 16 × 300 weight gradient.
            let scale = |dst: &mut [f32], src: &[f32]| dst.iter_mut().zip(src).for_each(|(d, &s)| *d = alpha * s);
            if rs == 1 {
                // rsa == 1: each p is a run of m.
                for (p, col) in dst.chunks_exact_mut(m.max(1)).enumerate() {
                    scale(col, &a[p * csa..p * csa + m]);
                }
            } else {
                for (r, row) in dst.chunks_exact_mut(k.max(1)).enumerate() {
                    if csa == 1 {
                        scale(row, &a[r * rsa..r * rsa + k]);
                    } else {
                        row.iter_mut().enumerate().for_each(|(p, d)| *d = alpha * a[r * rsa + p * csa]);
                    }
                }
            }
        }
        let (s1, s2) = buf[..pairs * m * k].split_at(m * k);
        go(s1, (rs, cs), more.map(|(_, b2)| (s2, b2)), c)
    })
}

// Both grow to the largest size a thread has needed and stay allocated for
// the thread's life (`meta::estimate` counts them on top of any product's
// own scratch): `ASCALED` only for products with alpha ≠ 1 (the PLN's SGD
// steps and R-products, over a batch's rows), `SCRATCH` only for a layer
// whose input is narrower than `MIN_INNER` (its weights, or its weight
// gradient, transposed).
thread_local! {
    /// `alpha · a` for [`bcast`] (grows to the largest seen, then is reused).
    static ASCALED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Scratch for the padded and transposed operands below (grows to the
    /// largest seen, then is reused).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`gemm_bcast`] for fewer than [`MIN_COLS`] columns (a dense layer's
/// weight gradient on a handful of raw inputs, `dyᵀ · x` with `x` narrow):
/// the transposed product `cᵀ = bᵀ · aᵀ` has `m` columns, so it runs in the
/// broadcast form into scratch and is added back transposed. Needs `a`'s
/// rows contiguous along `m` (`rsa == 1`, as `dyᵀ` is); otherwise the
/// packed SGEMM.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bcast_narrow(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    rsb: usize,
    beta: f32,
    c: &mut [f32],
) -> bool {
    if rsa != 1 || m < MIN_COLS {
        return false;
    }
    assert!(m * n <= c.len(), "gemm_bcast_narrow: c too short");
    SCRATCH.with_borrow_mut(|buf| {
        // Written in full (beta 0) before it is read: only grown, never cleared.
        if buf.len() < n * m {
            buf.resize(n * m, 0.0);
        }
        gemm_bcast(n, k, m, alpha, b, (1, rsb), a, csa, 0.0, buf);
        for (q, row) in c[..m * n].chunks_exact_mut(n).enumerate() {
            for (r, x) in row.iter_mut().enumerate() {
                let t = buf[r * m + q];
                *x = if beta == 0.0 { t } else { beta * *x + t };
            }
        }
    });
    true
}

/// `y (r×j) += x (r×i) · wᵀ` for a reduced length too short for
/// [`gemm_nt`]'s vectors (a first layer on a handful of raw inputs): `w`
/// copied transposed, `(i, j)`, then the broadcast form.
pub(crate) fn gemm_xwt_short(x: &[f32], w: &[f32], y: &mut [f32], r: usize, i: usize, j: usize) {
    SCRATCH.with_borrow_mut(|buf| {
        if buf.len() < i * j {
            buf.resize(i * j, 0.0);
        }
        super::sparse::transpose_into(w, j, i, i, buf, j);
        gemm_bcast(r, i, j, 1.0, x, (i, 1), buf, j, 1.0, y);
    });
}

/// Vectors per column block of [`gemm_bcast`] and rows per tile: 8 × 2
/// accumulators plus 2 loaded vectors and a broadcast in AVX-512's 32
/// registers, 6 × 2 in AVX2's 16.
const BV: usize = 2;
#[cfg(target_feature = "avx512f")]
const BR: usize = 8;
#[cfg(not(target_feature = "avx512f"))]
const BR: usize = 6;

/// Elements of `b` (both pairs) up to which [`gemm_bcast`] sweeps `c` row
/// tile by row tile: 32 KiB, within every L1 data cache it targets.
const B_IN_L1: usize = 8192;

/// Whether the CPU backend sends `dy · W` and `dyᵀ · x` to [`gemm_bcast`]:
/// where the build targets AVX-512 (a dense backward's two products at
/// 16 × 300 × 300 1.3–1.4× faster than `matrixmultiply` on Zen 5, at
/// parity or better up to 96 rows and widths 1,500; BENCHMARKS.md §13). On AVX2 an eight-lane version measured
/// at parity with it (§12), so the packed SGEMM stays.
pub(crate) const BCAST: bool = cfg!(target_feature = "avx512f");

/// The operands of one [`gemm_bcast`].
struct Ops<'a> {
    k: usize,
    n: usize,
    a: &'a [f32],
    rsa: usize,
    csa: usize,
    b: &'a [f32],
    rsb: usize,
    /// A second `(a, b)` whose product is summed into the same tile.
    more: Option<(&'a [f32], &'a [f32])>,
    beta: f32,
    /// Where the old values of `c` are read (`c` itself when `None`).
    src: Option<&'a [f32]>,
}

/// The row tiles of an `m`-row result: `(first row, rows)`, rows being
/// `BR`, then 2, then 1 for what is left.
fn row_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = m / BR * BR;
    let pairs = full + (m - full) / 2 * 2;
    (0..full)
        .step_by(BR)
        .map(|m0| (m0, BR))
        .chain((full..pairs).step_by(2).map(|m0| (m0, 2)))
        .chain((pairs..m).map(|m0| (m0, 1)))
}

/// The column blocks of an `n`-column result (`n ≥ L`): `(first column,
/// first column to store, wide)`, wide blocks `BV·L` columns and the others
/// `L`. A last partial vector is recomputed as the row's last `L` columns,
/// storing only those from the second value on.
fn col_blocks(n: usize) -> impl Iterator<Item = (usize, usize, bool)> {
    let wide = n / (BV * L) * (BV * L);
    let narrow = wide + (n - wide) / L * L;
    let tail = (narrow < n).then_some((n - L, narrow, false));
    (0..wide)
        .step_by(BV * L)
        .map(|n0| (n0, n0, true))
        .chain((wide..narrow).step_by(L).map(|n0| (n0, n0, false)))
        .chain(tail)
}

impl Ops<'_> {
    /// All of `c` (`TWO`: whether `more` is set). Where all of `b` fits
    /// in L1 (a weight gradient `dyᵀ · x` over a few rows), row tile by row
    /// tile, so `c` streams through once in memory order; otherwise column
    /// block by column block, so each block of `b` stays in L1 while every
    /// row tile passes.
    fn run<const TWO: bool>(&self, m: usize, c: &mut [f32]) {
        if self.k * self.n * if TWO { 2 } else { 1 } <= B_IN_L1 {
            for (m0, rows) in row_tiles(m) {
                match rows {
                    BR => self.row::<BR, TWO>(m0, c),
                    2 => self.row::<2, TWO>(m0, c),
                    _ => self.row::<1, TWO>(m0, c),
                }
            }
        } else {
            for (n0, keep, wide) in col_blocks(self.n) {
                if wide { self.cols::<BV, TWO>(m, n0, keep, c) } else { self.cols::<1, TWO>(m, n0, keep, c) }
            }
        }
    }

    /// Rows `m0 .. m0 + R` of `c`, every column.
    #[inline(always)]
    fn row<const R: usize, const TWO: bool>(&self, m0: usize, c: &mut [f32]) {
        for (n0, keep, wide) in col_blocks(self.n) {
            if wide { self.tile::<R, BV, TWO>(m0, n0, keep, c) } else { self.tile::<R, 1, TWO>(m0, n0, keep, c) }
        }
    }

    /// Every row of `c` for the `NV·L` columns from `n0`, of which those
    /// from `keep` on are stored (the rest were stored by an earlier block).
    #[inline(always)]
    fn cols<const NV: usize, const TWO: bool>(&self, m: usize, n0: usize, keep: usize, c: &mut [f32]) {
        for (m0, rows) in row_tiles(m) {
            match rows {
                BR => self.tile::<BR, NV, TWO>(m0, n0, keep, c),
                2 => self.tile::<2, NV, TWO>(m0, n0, keep, c),
                _ => self.tile::<1, NV, TWO>(m0, n0, keep, c),
            }
        }
    }

    /// `acc += a · b` over the tile's rows `m0..` and columns `n0..`.
    #[inline(always)]
    fn accumulate<const R: usize, const NV: usize>(
        &self,
        acc: &mut [[V; NV]; R],
        a: &[f32],
        b: &[f32],
        m0: usize,
        n0: usize,
    ) {
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for p in 0..self.k {
            // SAFETY: `bcast` asserted (k-1)·rsb + n <= b.len() and
            // n0 + NV·L <= n; and (m-1)·rsa + (k-1)·csa < a.len() with
            // m0 + R <= m, for both pairs.
            let bv: [V; NV] = std::array::from_fn(|v| {
                V::from(unsafe { bp.add(p * self.rsb + n0 + v * L).cast::<[f32; L]>().read_unaligned() })
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let s = V::splat(unsafe { *ap.add((m0 + r) * self.rsa + p * self.csa) });
                for v in 0..NV {
                    acc[v] = s.mul_add(bv[v], acc[v]);
                }
            }
        }
    }

    #[inline(always)]
    fn tile<const R: usize, const NV: usize, const TWO: bool>(&self, m0: usize, n0: usize, keep: usize, c: &mut [f32]) {
        let n = self.n;
        let mut acc = [[V::ZERO; NV]; R];
        // The tile starts from beta·c (alpha is already in `a`), so the
        // broadcasts stay plain loads and the store a plain store.
        if self.beta != 0.0 {
            let beta = V::splat(self.beta);
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = &self.src.unwrap_or(&*c)[(m0 + r) * n..(m0 + r + 1) * n];
                for (v, acc) in acc.iter_mut().enumerate() {
                    // (Lanes below `keep` belong to an earlier block and
                    // are not stored back.)
                    let lanes: [f32; L] = row[n0 + v * L..n0 + (v + 1) * L].try_into().expect("full vector");
                    *acc = if self.beta == 1.0 { V::from(lanes) } else { V::from(lanes) * beta };
                }
            }
        }
        self.accumulate(&mut acc, self.a, self.b, m0, n0);
        if TWO && let Some((a, b)) = self.more {
            self.accumulate(&mut acc, a, b, m0, n0);
        }
        for (r, acc) in acc.iter().enumerate() {
            let (lo, hi) = ((m0 + r) * n, (m0 + r + 1) * n);
            for (v, &val) in acc.iter().enumerate() {
                let at = n0 + v * L;
                let out: &mut [f32; L] = (&mut c[lo..hi][at..at + L]).try_into().expect("full vector");
                if at >= keep {
                    *out = val.to_array();
                } else {
                    // Lanes below `keep` were stored by an earlier block:
                    // keep them (one full store, not a short copy).
                    let new = tail_mask(at + L - keep);
                    let prev = V::from(*out);
                    *out = ((val & new) | (prev ^ (prev & new))).to_array();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree's lane map, found by summing one marked vector at a time:
    /// a wrong map or a shuffle that mixes two inputs fails here (and in
    /// every product test below).
    #[cfg(target_feature = "avx512f")]
    #[test]
    fn the_reduction_tree_puts_each_sum_where_the_map_says() {
        for (q, &lane) in TREE_LANE.iter().enumerate() {
            let v: [V; 16] = std::array::from_fn(|p| {
                V::from(std::array::from_fn::<f32, L, _>(|l| if p == q { (l + 1) as f32 } else { 0.0 }))
            });
            let sums = tree16(&v);
            for (t, &s) in sums.iter().enumerate() {
                assert_eq!(s, if t == lane { 136.0 } else { 0.0 }, "input {q}, lane {t}");
            }
        }
    }

    /// Against a plain triple loop in f64, over shapes that exercise every
    /// remainder (rows mod 4, outputs mod 3, inputs mod 8).
    #[test]
    fn matches_a_plain_product() {
        for &(r, i, j) in &[(1, 1, 1), (3, 7, 2), (4, 8, 3), (5, 17, 4), (16, 300, 300), (9, 64, 10), (24, 65, 7)] {
            let x: Vec<f32> = (0..r * i).map(|k| ((k * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let w: Vec<f32> = (0..j * i).map(|k| ((k * 53 % 97) as f32 - 48.0) / 31.0).collect();
            let y0: Vec<f32> = (0..r * j).map(|k| k as f32 * 0.5).collect();
            let mut y = y0.clone();
            gemm_nt(&x, &w, &mut y, r, i, j);
            for a in 0..r {
                for b in 0..j {
                    let want =
                        y0[a * j + b] as f64 + (0..i).map(|k| x[a * i + k] as f64 * w[b * i + k] as f64).sum::<f64>();
                    let got = y[a * j + b] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "({r},{i},{j}) [{a},{b}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The two paths for a layer on a handful of inputs: `dyᵀ · x` with `x`
    /// narrower than a vector (transposed product, beta 0 and 1) and
    /// `x · wᵀ` with a reduced length shorter than a vector (transposed
    /// copy of `w`), against plain loops in f64.
    #[test]
    fn narrow_products_match_plain_ones() {
        let (r, i, j) = (16, 11, 300);
        let dy: Vec<f32> = (0..r * j).map(|q| ((q * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let x: Vec<f32> = (0..r * i).map(|q| ((q * 53 % 97) as f32 - 48.0) / 31.0).collect();
        for beta in [0.0f32, 1.0] {
            let c0: Vec<f32> = (0..j * i).map(|q| q as f32 * 0.01).collect();
            let mut c = c0.clone();
            assert!(gemm_bcast_narrow(j, r, i, 1.0, &dy, (1, j), &x, i, beta, &mut c));
            for q in 0..j {
                for p in 0..i {
                    let want = beta as f64 * c0[q * i + p] as f64
                        + (0..r).map(|t| dy[t * j + q] as f64 * x[t * i + p] as f64).sum::<f64>();
                    let got = c[q * i + p] as f64;
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "beta {beta} [{q},{p}]: {got} vs {want}");
                }
            }
        }
        // Rows of `a` not contiguous along m: refused (the caller falls back).
        assert!(!gemm_bcast_narrow(r, j, i, 1.0, &dy, (j, 1), &x, i, 0.0, &mut vec![0.0; r * i]));
        let w: Vec<f32> = (0..j * i).map(|q| ((q * 29 % 89) as f32 - 44.0) / 20.0).collect();
        let y0: Vec<f32> = (0..r * j).map(|q| q as f32 * 0.5).collect();
        let mut y = y0.clone();
        gemm_xwt_short(&x, &w, &mut y, r, i, j);
        for a in 0..r {
            for b in 0..j {
                let want =
                    y0[a * j + b] as f64 + (0..i).map(|p| x[a * i + p] as f64 * w[b * i + p] as f64).sum::<f64>();
                let got = y[a * j + b] as f64;
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "[{a},{b}]: {got} vs {want}");
            }
        }
    }

    /// `gemm_bcast` against a plain triple loop in f64: `a` row-major and
    /// transposed, beta 0 (c's old values, even NaN, ignored) and beta 1,
    /// alpha 1 and a negative alpha (an SGD step's `−β`),
    /// over shapes that exercise every remainder (rows mod 8 and mod 2,
    /// columns mod 32 and mod 16, a column tail narrower than a vector).
    #[test]
    fn broadcast_form_matches_a_plain_product() {
        for &(m, k, n) in
            &[(1, 1, 16), (3, 5, 17), (8, 16, 32), (16, 300, 300), (300, 16, 300), (9, 7, 47), (11, 64, 65), (3, 0, 17)]
        {
            let mut seed = 0usize;
            let mut val = |d: f32| {
                seed += 1;
                ((seed * 37 % 101) as f32 - 50.0) / d
            };
            let a: Vec<f32> = (0..m * k).map(|_| val(25.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| val(31.0)).collect();
            let c0: Vec<f32> = (0..m * n).map(|q| q as f32 * 0.25).collect();
            for transposed in [false, true] {
                let strides = if transposed { (1, m) } else { (k, 1) };
                let at = |r: usize, p: usize| r * strides.0 + p * strides.1;
                for (alpha, beta) in [(1.0f32, 0.0f32), (1.0, 1.0), (-0.375, 1.0)] {
                    let mut c = c0.clone();
                    if beta == 0.0 {
                        c[0] = f32::NAN;
                    }
                    gemm_bcast(m, k, n, alpha, &a, strides, &b, n, beta, &mut c);
                    // The two-pair form: a·b + a2·b2 with a2 = 2a reversed
                    // and b2 = b reversed (each pair's terms differ).
                    let (a2, b2): (Vec<f32>, Vec<f32>) =
                        (a.iter().rev().map(|v| 2.0 * v).collect(), b.iter().rev().copied().collect());
                    let mut c2 = c0.clone();
                    gemm_bcast2(m, k, n, alpha, (&a, &a2), strides, (&b, &b2), n, beta, &mut c2);
                    for r in 0..m {
                        for q in 0..n {
                            let terms = |a: &[f32], b: &[f32]| -> Vec<f64> {
                                (0..k).map(|p| a[at(r, p)] as f64 * b[p * n + q] as f64).collect()
                            };
                            let (t1, t2) = (terms(&a, &b), terms(&a2, &b2));
                            let (dot, dot2): (f64, f64) = (t1.iter().sum(), t2.iter().sum());
                            // f32 rounding is relative to the terms' magnitudes, not the sum's.
                            let size = t1.iter().chain(&t2).map(|t| t.abs()).sum::<f64>();
                            for (got, dot, what) in
                                [(c[r * n + q], dot, "one pair"), (c2[r * n + q], dot + dot2, "two pairs")]
                            {
                                let want = beta as f64 * c0[r * n + q] as f64 + alpha as f64 * dot;
                                assert!(
                                    (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()) + 1e-6 * size,
                                    "{what} ({m},{k},{n}) transposed {transposed} beta {beta} [{r},{q}]: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
