//! Matrix multiply on the `gemm` crate's microkernels (gemm-f32/gemm-f64: FMA/AVX2 where the CPU
//! has it), behind a safe, bounds-checked wrapper: the only way CPU kernels multiply matrices.
//!
//! The blocking around the microkernels is ours rather than `gemm::gemm`'s for two reasons.
//! `gemm::gemm` allocates on every call (its packed-operand buffers and a `Vec<bool>` per call
//! and per worker; gemm-common 0.19, `gemm_basic_generic`), and a prepared step allocates
//! nothing. And convolutions want to keep an operand packed across calls (the weights, once
//! per launch) and read the other straight from its im2col buffer, which `gemm::gemm` would
//! copy again. So: the left operand is packed into panels of `MR` rows (`pack_lhs`, into memory
//! the caller owns), the right one is read in place through its strides, and the microkernel
//! computes each `MR x NR` tile of the product over blocks of `KC` of the inner dim.
//!
//! Every element of a product is summed in one fixed order (blocks of `KC`, each in index
//! order, by the microkernel alone), whatever the thread count or how the columns are split.

use rayon::prelude::*;

use super::Real;
use super::micro::MAX_MR;

/// A strided matrix view: element (i, j) is at `data[i * row + j * col]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub row: usize,
    pub col: usize,
}

impl Mat {
    /// A row-major `rows x cols` matrix.
    pub fn rows(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            row: cols,
            col: 1,
        }
    }
    /// The same memory read as its transpose.
    pub fn t(self) -> Mat {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row: self.col,
            col: self.row,
        }
    }
    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row + (self.cols - 1) * self.col < len
    }
}

/// Inner-dim block: one microkernel call sums at most this many products per element.
const KC: usize = 256;

/// Elements `pack_lhs` writes for a `rows x k` left operand: whole panels of `MR` rows.
pub fn packed_len<T: Real>(rows: usize, k: usize) -> usize {
    rows.next_multiple_of(T::micro().mr) * k
}

/// At least [`packed_len`] for every element type: what workspace sizes (which do not know
/// the type) reserve for a packed operand.
pub fn packed_bound(rows: usize, k: usize) -> usize {
    rows.next_multiple_of(MAX_MR) * k
}

/// Packs the `rows x k` matrix `value(i, p)` into panels of `MR` rows: panel `i / MR` holds,
/// for each `p` in order, its `MR` rows' values (zero past the last row).
pub fn pack_with<T: Real>(rows: usize, k: usize, out: &mut [T], value: impl Fn(usize, usize) -> T) {
    let mr = T::micro().mr;
    let out = &mut out[..packed_len::<T>(rows, k)];
    for (panel, dst) in out.chunks_exact_mut(mr * k.max(1)).enumerate() {
        let r0 = panel * mr;
        let live = mr.min(rows - r0);
        for (p, d) in dst.chunks_exact_mut(mr).enumerate().take(k) {
            for (i, v) in d[..live].iter_mut().enumerate() {
                *v = value(r0 + i, p);
            }
            d[live..].fill(T::ZERO);
        }
    }
}

/// [`pack_with`] of a strided matrix.
pub fn pack_lhs<T: Real>(a: &[T], am: Mat, out: &mut [T]) {
    assert!(am.fits(a.len()), "pack_lhs view out of bounds");
    pack_with(am.rows, am.cols, out, |i, p| a[i * am.row + p * am.col]);
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: parallel column blocks of `product` write disjoint tiles of `c`.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// `c = lhs · b`, or `c += lhs · b` when `accumulate`, where `lhs` is an `m x k` operand packed
/// by [`pack_lhs`]/[`pack_with`] and `b` a `k x n` view read in place. Splits the columns of
/// `c` across threads when `parallel` and the product is large; no result depends on it.
/// Panics (a kernel bug, never user input) if a view reaches past its slice or the shapes
/// disagree.
#[allow(clippy::too_many_arguments)]
pub fn product<T: Real>(
    lhs: &[T],
    m: usize,
    k: usize,
    b: &[T],
    bm: Mat,
    c: &mut [T],
    cm: Mat,
    accumulate: bool,
    parallel: bool,
) {
    assert!(
        bm.rows == k && cm.rows == m && cm.cols == bm.cols,
        "matmul shapes {m}x{k} {bm:?} {cm:?}"
    );
    assert!(
        lhs.len() >= packed_len::<T>(m, k) && bm.fits(b.len()) && cm.fits(c.len()),
        "matmul view out of bounds"
    );
    let n = cm.cols;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * cm.row + j * cm.col] = T::ZERO;
                }
            }
        }
        return;
    }
    let micro = T::micro();
    let (mr, nr) = (micro.mr, micro.nr);
    let panels = n.div_ceil(nr);
    let cp = SendPtr(c.as_mut_ptr());
    // Columns `j0..j1` (a multiple of NR apart, but the last) of the whole product.
    let block = |j0: usize, j1: usize| {
        // Capture the whole `SendPtr` (which is Send), not its raw-pointer field.
        #[allow(clippy::redundant_locals)]
        let cp = cp;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let status = if accumulate || k0 > 0 { 1 } else { 0 };
            for jj in (j0..j1).step_by(nr) {
                let cols = nr.min(j1 - jj);
                for i0 in (0..m).step_by(mr) {
                    let rows = mr.min(m - i0);
                    let kernel = micro.table[rows.div_ceil(micro.lanes) - 1][cols - 1];
                    // SAFETY: `lhs` holds whole panels of MR rows for all k (checked above),
                    // so the kernel's MR x kc reads from panel i0 / MR at k0 are in bounds;
                    // it reads b at (k0 + p) * row + (jj + j) * col for p < kc, j < cols,
                    // and reads/writes c at (i0 + i) * row + (jj + j) * col for i < rows,
                    // j < cols: inside the views checked to fit their slices. Tiles written by
                    // different column blocks are disjoint.
                    unsafe {
                        kernel(
                            rows,
                            cols,
                            kc,
                            cp.0.add(i0 * cm.row + jj * cm.col),
                            lhs.as_ptr().add(i0 * k + k0 * mr),
                            b.as_ptr().add(k0 * bm.row + jj * bm.col),
                            cm.col as isize,
                            cm.row as isize,
                            mr as isize,
                            bm.row as isize,
                            bm.col as isize,
                            T::ONE,
                            T::ONE,
                            status,
                            false,
                            false,
                            false,
                            std::ptr::null(),
                        )
                    }
                }
            }
        }
    };
    // Small products are faster on one thread than split across the pool.
    let threads = rayon::current_num_threads();
    if parallel && threads > 1 && m * n * k >= 1 << 17 && panels > 1 {
        let per = panels.div_ceil(threads * 2).max(1);
        (0..panels.div_ceil(per)).into_par_iter().for_each(|t| {
            let j0 = t * per * nr;
            block(j0, ((t + 1) * per * nr).min(n));
        });
    } else {
        block(0, n);
    }
}

/// Elements of workspace [`matmul`] takes for an `m x k` left operand, whatever the type.
pub fn matmul_scratch(m: usize, k: usize) -> usize {
    packed_bound(m, k)
}

/// `c = a · b`, or `c += a · b` when `accumulate`, packing `a` into `scratch` (at least
/// [`matmul_scratch`] elements). Parallel for large products. Panics (a kernel bug, never user
/// input) if a view reaches past its slice or the shapes disagree.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    a: &[T],
    am: Mat,
    b: &[T],
    bm: Mat,
    c: &mut [T],
    cm: Mat,
    accumulate: bool,
    scratch: &mut [T],
) {
    assert!(am.cols == bm.rows, "matmul shapes {am:?} {bm:?} {cm:?}");
    pack_lhs(a, am, scratch);
    product(scratch, am.rows, am.cols, b, bm, c, cm, accumulate, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], am: Mat, b: &[f64], bm: Mat) -> Vec<f64> {
        let mut c = vec![0.0; am.rows * bm.cols];
        for i in 0..am.rows {
            for j in 0..bm.cols {
                for p in 0..am.cols {
                    c[i * bm.cols + j] += a[i * am.row + p * am.col] * b[p * bm.row + j * bm.col];
                }
            }
        }
        c
    }

    #[test]
    fn matches_the_definition_with_transposes_and_accumulation() {
        for (m, n, k) in [
            (37, 19, 53),
            (1, 1, 1),
            (16, 6, 300),
            (17, 7, 600),
            (3, 40, 2),
        ] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) * 0.5).collect();
            // b stored as [n, k] and read transposed
            let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let want = naive(&a, Mat::rows(m, k), &b, Mat::rows(k, n));
            let mut scratch = vec![f64::NAN; matmul_scratch(m, k)];
            let mut c = vec![1.0; m * n];
            matmul(
                &a,
                Mat::rows(m, k),
                &bt,
                Mat::rows(n, k).t(),
                &mut c,
                Mat::rows(m, n),
                false,
                &mut scratch,
            );
            assert_eq!(c, want, "{m}x{n}x{k}");
            matmul(
                &a,
                Mat::rows(m, k),
                &b,
                Mat::rows(k, n),
                &mut c,
                Mat::rows(m, n),
                true,
                &mut scratch,
            );
            let twice: Vec<f64> = want.iter().map(|x| 2.0 * x).collect();
            assert_eq!(c, twice, "{m}x{n}x{k}");
            // The result written transposed (column-major c).
            let mut ct = vec![f64::NAN; m * n];
            matmul(
                &a,
                Mat::rows(m, k),
                &b,
                Mat::rows(k, n),
                &mut ct,
                Mat::rows(n, m).t(),
                false,
                &mut scratch,
            );
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(ct[j * m + i], want[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn f32_products_do_not_depend_on_the_thread_count() {
        let (m, n, k) = (70, 300, 700);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919 % 1000) as f32) / 997.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729 % 1000) as f32) / 991.0 - 0.5)
            .collect();
        let run = || {
            let mut scratch = vec![0.0; matmul_scratch(m, k)];
            let mut c = vec![0.0f32; m * n];
            matmul(
                &a,
                Mat::rows(m, k),
                &b,
                Mat::rows(k, n),
                &mut c,
                Mat::rows(m, n),
                false,
                &mut scratch,
            );
            c
        };
        crate::ops::testing::assert_same_bits_on_any_thread_count(|| vec![run()]);
    }
}
