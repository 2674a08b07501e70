//! `y += x · wᵀ` for a handful of rows, without packing.
//!
//! The dense forward and R-forward multiply a few rows of activations by a
//! weight matrix stored `(out, in)`, as PyTorch stores it: both operands are
//! contiguous along the reduced dimension, so every output is a dot product
//! of two contiguous rows. `matrixmultiply` wants the other operand
//! contiguous along the output dimension and gathers `w` element by element
//! into its packed panel on every call, which for 16 × 300 × 300 costs more
//! than the gathered products are worth (BENCHMARKS.md §11). Tiles of
//! 4 rows of `x` × 3 rows of `w` keep 12 eight-lane accumulators in
//! registers and read each row straight from cache; sums are reduced in a
//! fixed order, so results do not depend on threads or alignment.

use wide::f32x8;

/// Rows up to which [`gemm_nt`] beats the packed SGEMM (measured at widths
/// 300 on a quiet host: 16 rows 1.2–1.4× faster, 32 rows at parity, 48
/// rows slower; under load 16 rows come near parity).
pub(crate) const MAX_ROWS: usize = 24;
/// Reduced lengths below this go to the packed SGEMM (its gather is cheap).
pub(crate) const MIN_INNER: usize = 64;

#[inline(always)]
fn load(s: &[f32], k: usize) -> f32x8 {
    let a: [f32; 8] = s[k..k + 8].try_into().expect("eight lanes");
    f32x8::from(a)
}

/// The R × J dot products of rows `xs` with rows `ws` (each of length `i`).
#[inline(always)]
fn tile<const R: usize, const J: usize>(xs: [&[f32]; R], ws: [&[f32]; J], i: usize) -> [[f32; J]; R] {
    let iv = i / 8 * 8;
    let mut acc = [[f32x8::ZERO; J]; R];
    let mut k = 0;
    while k < iv {
        let mut wv = [f32x8::ZERO; J];
        for b in 0..J {
            wv[b] = load(ws[b], k);
        }
        for a in 0..R {
            let xv = load(xs[a], k);
            for b in 0..J {
                acc[a][b] = xv.mul_add(wv[b], acc[a][b]);
            }
        }
        k += 8;
    }
    let mut out = [[0.0f32; J]; R];
    for a in 0..R {
        for b in 0..J {
            let mut s = acc[a][b].reduce_add();
            for kk in iv..i {
                s += xs[a][kk] * ws[b][kk];
            }
            out[a][b] = s;
        }
    }
    out
}

/// Rows `r0 .. r0 + R` of `y` against every row of `w`.
#[inline(always)]
fn rows<const R: usize>(x: &[f32], w: &[f32], y: &mut [f32], r0: usize, i: usize, j: usize) {
    let xs: [&[f32]; R] = std::array::from_fn(|a| &x[(r0 + a) * i..(r0 + a + 1) * i]);
    let mut j0 = 0;
    while j0 + 3 <= j {
        let ws: [&[f32]; 3] = std::array::from_fn(|b| &w[(j0 + b) * i..(j0 + b + 1) * i]);
        let t = tile::<R, 3>(xs, ws, i);
        for (a, t) in t.iter().enumerate() {
            for (b, &t) in t.iter().enumerate() {
                y[(r0 + a) * j + j0 + b] += t;
            }
        }
        j0 += 3;
    }
    for j0 in j0..j {
        let t = tile::<R, 1>(xs, [&w[j0 * i..(j0 + 1) * i]], i);
        for (a, t) in t.iter().enumerate() {
            y[(r0 + a) * j + j0] += t[0];
        }
    }
}

/// `y (r×j) += x (r×i) · wᵀ` with `w: (j, i)`, all row-major.
pub(crate) fn gemm_nt(x: &[f32], w: &[f32], y: &mut [f32], r: usize, i: usize, j: usize) {
    assert!(x.len() >= r * i && w.len() >= j * i && y.len() >= r * j, "gemm_nt: operand too short");
    let mut r0 = 0;
    while r0 + 4 <= r {
        rows::<4>(x, w, y, r0, i, j);
        r0 += 4;
    }
    for r0 in r0..r {
        rows::<1>(x, w, y, r0, i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
