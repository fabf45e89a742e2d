//! Matrix multiply through the `gemm` crate (blocked, SIMD, on every core), behind a safe,
//! bounds-checked wrapper: the only way CPU kernels multiply matrices.

use super::Real;

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

/// `c = a · b`, or `c += a · b` when `accumulate`. Panics (a kernel bug, never user input) if a
/// view reaches past its slice or the shapes disagree.
pub fn matmul<T: Real>(a: &[T], am: Mat, b: &[T], bm: Mat, c: &mut [T], cm: Mat, accumulate: bool) {
    assert!(
        am.cols == bm.rows && cm.rows == am.rows && cm.cols == bm.cols,
        "matmul shapes {am:?} {bm:?} {cm:?}"
    );
    assert!(
        am.fits(a.len()) && bm.fits(b.len()) && cm.fits(c.len()),
        "matmul view out of bounds"
    );
    let (m, n, k) = (cm.rows, cm.cols, am.cols);
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
    // Small products are faster on one thread than split across the pool.
    let parallelism = if m * n * k >= 1 << 16 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the views were checked to lie inside their slices; `c` is borrowed exclusively
    // and cannot overlap `a` or `b`, which are shared borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            cm.col as isize,
            cm.row as isize,
            accumulate,
            a.as_ptr(),
            am.col as isize,
            am.row as isize,
            b.as_ptr(),
            bm.col as isize,
            bm.row as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
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
        let (m, n, k) = (37, 19, 53);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) * 0.5).collect();
        // b stored as [n, k] and read transposed
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want = naive(&a, Mat::rows(m, k), &b, Mat::rows(k, n));
        let mut c = vec![1.0; m * n];
        matmul(
            &a,
            Mat::rows(m, k),
            &bt,
            Mat::rows(n, k).t(),
            &mut c,
            Mat::rows(m, n),
            false,
        );
        assert_eq!(c, want);
        matmul(
            &a,
            Mat::rows(m, k),
            &b,
            Mat::rows(k, n),
            &mut c,
            Mat::rows(m, n),
            true,
        );
        let twice: Vec<f64> = want.iter().map(|x| 2.0 * x).collect();
        assert_eq!(c, twice);
    }
}
