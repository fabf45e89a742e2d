//! Direct convolution in SIMD registers: the inner loops of an f32 convolution over shifted
//! windows of a zero-padded input, with no im2col matrix in between.
//!
//! An im2col matrix costs a write and a read per element, and each element feeds only as many
//! multiply-adds as the layer has output channels: 16 in ResNet-20's first stage, so building
//! the matrix cost about as much as the product. Here the kernel reads the padded input in
//! place. Three tiles cover a convolution (ops/conv/direct.rs chooses and feeds them):
//! - [`Direct::windows`] (forward, and the stride-1 input gradient as a flipped convolution):
//!   output pixels in the vector lanes, a block of output channels across registers; each
//!   (channel, tap) step loads the input window shifted by the tap and broadcasts one weight per
//!   output channel. Outputs land on the padded grid (each row `wp` wide, its last columns
//!   junk) and the caller copies the valid ones out.
//! - [`Direct::weight_grad`]: output channels in the lanes (dy transposed to pixel-major), a
//!   block of (tap, input channel) columns across registers; each output pixel loads dy once and
//!   broadcasts the input (channel-minor, NHWC) at each tap.
//! - [`Direct::window_grad`] (the stride-1 weight gradient of a layer with few output
//!   channels): output pixels in the lanes, a block of (output channel, input channel) pairs
//!   across registers, each tap a shifted load of the padded input as in `windows`.
//!
//! Every output element is one accumulator summed in a fixed order (windows: channel, then tap;
//! weight gradient: pixel by pixel, then added to the caller's accumulator; window gradient:
//! each lane over its pixels image after image, then the lanes added in a fixed tree), whatever
//! the ISA or thread count. AVX-512 and AVX2 with FMA share the code through [`Simd`]; other
//! CPUs (and f64) use im2col and the GEMM.

/// Output channels a [`Direct::windows`] call computes must be a multiple of this.
pub const WINDOW_OUTS: usize = 8;
/// [`Direct::weight_grad`]'s output channels (dy's pixel stride) must be a multiple of this.
pub const GRAD_OUTS: usize = 16;
/// [`Direct::weight_grad`]'s input channels (x's pixel stride) must be a multiple of this.
pub const GRAD_INS: usize = 8;
/// [`Direct::window_grad`]'s output channels must be a multiple of this.
pub const WINDOW_GRAD_OUTS: usize = 4;
/// [`Direct::window_grad`]'s input channels must be a multiple of this.
pub const WINDOW_GRAD_INS: usize = 2;
/// [`Direct::window_grad`]'s pixels must be a multiple of this.
pub const WINDOW_GRAD_PIXELS: usize = 16;

/// The direct-convolution kernels of this CPU.
pub struct Direct {
    windows: WindowsFn,
    weight_grad: GradFn,
    window_grad: WindowGradFn,
    /// Lanes of one vector (16 for AVX-512, 8 for AVX2).
    lanes: usize,
}

type WindowsFn = unsafe fn(&WindowArgs);
type GradFn = unsafe fn(&GradArgs);
type WindowGradFn = unsafe fn(&WindowGradArgs);

/// Raw arguments of the windowed weight-gradient kernel, checked by [`Direct::window_grad`].
struct WindowGradArgs<'a> {
    x: *const f32,
    plane: usize,
    channels: usize,
    offs: &'a [usize],
    x_image: usize,
    dy: *const f32,
    outs: usize,
    pixels: usize,
    dy_image: usize,
    images: usize,
    dw: *mut f32,
}

/// Raw arguments of the windows kernel, checked by [`Direct::windows`].
struct WindowArgs<'a> {
    x: *const f32,
    plane: usize,
    segments: &'a [Segment<'a>],
    w: *const f32,
    outs: usize,
    y: *mut f32,
    pixels: usize,
}

/// Raw arguments of the weight-gradient kernel, checked by [`Direct::weight_grad`].
struct GradArgs<'a> {
    x: *const f32,
    ins: usize,
    dy: *const f32,
    outs: usize,
    rows: usize,
    cols: usize,
    row_step: usize,
    col_step: usize,
    taps: &'a [usize],
    dw: *mut f32,
}

/// Channels of a windows input that share their taps: `channels` planes from `base` on, each
/// read at `offs` (a stride-1 convolution is one segment; a strided one, one per phase of the
/// input that some tap reads).
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub base: usize,
    pub channels: usize,
    pub offs: &'a [usize],
}

/// The kernels for this CPU: AVX-512, else AVX2 with FMA, else none (im2col and the GEMM).
pub fn direct() -> Option<&'static Direct> {
    supported().next()
}

/// Every kernel set this CPU runs, widest first (the tests check each one).
fn supported() -> impl Iterator<Item = &'static Direct> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        static AVX512: Direct = Direct {
            windows: x86::windows_avx512,
            weight_grad: x86::weight_grad_avx512,
            window_grad: x86::window_grad_avx512,
            lanes: 16,
        };
        static AVX2: Direct = Direct {
            windows: x86::windows_avx2,
            weight_grad: x86::weight_grad_avx2,
            window_grad: x86::window_grad_avx2,
            lanes: 8,
        };
        let avx512 = has!("avx512f").then_some(&AVX512);
        let avx2 = (has!("avx2") && has!("fma")).then_some(&AVX2);
        avx512.into_iter().chain(avx2)
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::iter::empty()
}

impl Direct {
    /// The pixels a [`Direct::windows`] call computes for `q` wanted ones: whole tiles of two
    /// or three vectors, whichever wastes less (small planes such as 7x7 lose a third to
    /// tiles of three).
    pub fn window_pixels(&self, q: usize) -> usize {
        let (two, three) = (
            q.next_multiple_of(2 * self.lanes),
            q.next_multiple_of(3 * self.lanes),
        );
        three.min(two)
    }

    /// `y[o·pixels + q] = Σ_(segment, c, t) w[k·outs + o] · x[base + c·plane + offs[t] + q]`
    /// for `o < outs`, `q < pixels`, where k counts (segment, channel, tap) in that order: the
    /// weights packed in the order of the sum, then by output channel (zero past the real
    /// ones). Panics (a kernel bug) on sizes that are not multiples of
    /// [`WINDOW_OUTS`] and [`Direct::window_pixels`] or on views past their slices.
    #[allow(clippy::too_many_arguments)]
    pub fn windows(
        &self,
        x: &[f32],
        plane: usize,
        segments: &[Segment],
        w: &[f32],
        outs: usize,
        y: &mut [f32],
        pixels: usize,
    ) {
        assert!(outs.is_multiple_of(WINDOW_OUTS) && self.window_pixels(pixels) == pixels);
        let k: usize = segments.iter().map(|s| s.channels * s.offs.len()).sum();
        assert!(w.len() >= k * outs && y.len() >= outs * pixels);
        for s in segments.iter().filter(|s| s.channels > 0) {
            let reach = s.offs.iter().max().map_or(0, |&m| m + pixels);
            assert!(s.base + (s.channels - 1) * plane + reach <= x.len());
        }
        // SAFETY: every read of x is at base + c·plane + off + q with c < channels, q < pixels
        // of a segment, of w below k·outs, and every write of y below outs·pixels: checked
        // above.
        unsafe {
            (self.windows)(&WindowArgs {
                x: x.as_ptr(),
                plane,
                segments,
                w: w.as_ptr(),
                outs,
                y: y.as_mut_ptr(),
                pixels,
            })
        }
    }

    /// `dw[(t·ins + c)·outs + o] += Σ_(r, s) dy[(r·cols + s)·outs + o] ·
    /// x[r·row_step + s·col_step + taps[t] + c]` over output rows r < `rows` and columns
    /// s < `cols`, summed pixel by pixel in order: the weight gradient of one image, with x
    /// pixel-major (`ins` channels per pixel) and dy transposed to pixel-major (`outs` channels
    /// per pixel). Panics (a kernel bug) on channel counts that are not multiples of
    /// [`GRAD_INS`]/[`GRAD_OUTS`] or on views past their slices.
    #[allow(clippy::too_many_arguments)]
    pub fn weight_grad(
        &self,
        x: &[f32],
        ins: usize,
        dy: &[f32],
        outs: usize,
        [rows, cols]: [usize; 2],
        [row_step, col_step]: [usize; 2],
        taps: &[usize],
        dw: &mut [f32],
    ) {
        assert!(
            ins.is_multiple_of(GRAD_INS)
                && outs.is_multiple_of(GRAD_OUTS)
                && outs.is_multiple_of(self.lanes)
        );
        assert!(dw.len() >= taps.len() * ins * outs && dy.len() >= rows * cols * outs);
        if rows == 0 || cols == 0 {
            return;
        }
        let far = (rows - 1) * row_step + (cols - 1) * col_step;
        let reach = taps.iter().max().map_or(0, |&m| far + m + ins);
        assert!(reach <= x.len());
        // SAFETY: reads of x reach at most `far + max(taps) + ins`, of dy rows·cols·outs and
        // of dw taps·ins·outs: checked above.
        unsafe {
            (self.weight_grad)(&GradArgs {
                x: x.as_ptr(),
                ins,
                dy: dy.as_ptr(),
                outs,
                rows,
                cols,
                row_step,
                col_step,
                taps,
                dw: dw.as_mut_ptr(),
            })
        }
    }
}

impl Direct {
    /// `dw[(o·channels + c)·taps + t] = Σ_i Σ_q dy[i·dy_image + o·pixels + q] ·
    /// x[i·x_image + c·plane + offs[t] + q]` over `images` images and `pixels` output pixels
    /// on the padded grid (dy zero at its junk columns): the stride-1 weight gradient of a run
    /// of images with the pixels in the vector lanes. Each lane sums its pixels in order, image
    /// after image, and the lanes are then added in a fixed tree. Panics (a kernel bug) on
    /// counts that are not multiples of [`WINDOW_GRAD_OUTS`], [`WINDOW_GRAD_INS`],
    /// [`WINDOW_GRAD_PIXELS`] or on views past their slices.
    #[allow(clippy::too_many_arguments)]
    pub fn window_grad(
        &self,
        x: &[f32],
        [plane, channels, x_image]: [usize; 3],
        offs: &[usize],
        dy: &[f32],
        [outs, pixels, dy_image]: [usize; 3],
        images: usize,
        dw: &mut [f32],
    ) {
        assert!(outs % WINDOW_GRAD_OUTS == 0 && channels % WINDOW_GRAD_INS == 0);
        assert!(pixels % WINDOW_GRAD_PIXELS == 0 && dw.len() >= outs * channels * offs.len());
        if images == 0 || channels == 0 || outs == 0 {
            dw[..outs * channels * offs.len()].fill(0.0);
            return;
        }
        let reach = offs.iter().max().map_or(0, |&m| m + pixels);
        assert!((images - 1) * x_image + (channels - 1) * plane + reach <= x.len());
        assert!((images - 1) * dy_image + outs * pixels <= dy.len());
        // SAFETY: reads of x reach (images−1)·x_image + (channels−1)·plane + max(offs) +
        // pixels, of dy (images−1)·dy_image + outs·pixels, writes of dw outs·channels·taps:
        // all checked above.
        unsafe {
            (self.window_grad)(&WindowGradArgs {
                x: x.as_ptr(),
                plane,
                channels,
                offs,
                x_image,
                dy: dy.as_ptr(),
                outs,
                pixels,
                dy_image,
                images,
                dw: dw.as_mut_ptr(),
            })
        }
    }
}

/// One SIMD vector of f32 and the few operations the tiles use.
trait Simd {
    const LANES: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn splat(p: *const f32) -> Self::V;
    /// `a · b + c`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
}

/// A windows tile: `MV` vectors of pixels by `NO` output channels, summed over every segment,
/// channel and tap. `x` points at the tile's first pixel, `w` at its first output channel, `y` at its
/// first output.
#[inline(always)]
unsafe fn windows_tile<S: Simd, const MV: usize, const NO: usize>(
    a: &WindowArgs,
    x: *const f32,
    w: *const f32,
    y: *mut f32,
) {
    unsafe {
        let mut acc = [[S::zero(); MV]; NO];
        let mut wc = w;
        for seg in a.segments {
            for c in 0..seg.channels {
                let xc = x.add(seg.base + c * a.plane);
                for &off in seg.offs {
                    let xs = xc.add(off);
                    let mut xv = [S::zero(); MV];
                    for (v, xv) in xv.iter_mut().enumerate() {
                        *xv = S::load(xs.add(v * S::LANES));
                    }
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let b = S::splat(wc.add(j));
                        for (acc, &xv) in acc.iter_mut().zip(&xv) {
                            *acc = S::fma(xv, b, *acc);
                        }
                    }
                    wc = wc.add(a.outs);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                S::store(y.add(j * a.pixels + v * S::LANES), acc);
            }
        }
    }
}

#[inline(always)]
unsafe fn windows_all<S: Simd, const MV: usize, const NO: usize>(a: &WindowArgs) {
    for o0 in (0..a.outs).step_by(NO) {
        for q0 in (0..a.pixels).step_by(MV * S::LANES) {
            unsafe {
                windows_tile::<S, MV, NO>(a, a.x.add(q0), a.w.add(o0), a.y.add(o0 * a.pixels + q0))
            };
        }
    }
}

/// A weight-gradient tile: `MO` vectors of output channels by `NT` taps by `NC` input
/// channels, summed over every output pixel, then added to dw. `x` points at the tile's first
/// input channel, `dy` at its first output channel, `dw` at its first (tap, channel, output).
#[inline(always)]
unsafe fn grad_tile<S: Simd, const MO: usize, const NT: usize, const NC: usize>(
    a: &GradArgs,
    taps: &[usize],
    x: *const f32,
    dy: *const f32,
    dw: *mut f32,
) {
    unsafe {
        let taps: [usize; NT] = std::array::from_fn(|t| taps[t]);
        let mut acc = [[[S::zero(); MO]; NC]; NT];
        for r in 0..a.rows {
            let xr = x.add(r * a.row_step);
            let dr = dy.add(r * a.cols * a.outs);
            for s in 0..a.cols {
                let xp = xr.add(s * a.col_step);
                let dp = dr.add(s * a.outs);
                let mut d = [S::zero(); MO];
                for (m, d) in d.iter_mut().enumerate() {
                    *d = S::load(dp.add(m * S::LANES));
                }
                for (acc, &tap) in acc.iter_mut().zip(&taps) {
                    let xt = xp.add(tap);
                    for (c, acc) in acc.iter_mut().enumerate() {
                        let b = S::splat(xt.add(c));
                        for (acc, &d) in acc.iter_mut().zip(&d) {
                            *acc = S::fma(d, b, *acc);
                        }
                    }
                }
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            for (c, acc) in acc.iter().enumerate() {
                for (m, &acc) in acc.iter().enumerate() {
                    let p = dw.add((t * a.ins + c) * a.outs + m * S::LANES);
                    S::store(p, S::add(S::load(p), acc));
                }
            }
        }
    }
}

/// Every tile of one weight gradient, taps in runs of 3 (a kernel row), then `NT` = 1 or 2.
#[inline(always)]
unsafe fn grad_taps<S: Simd, const MO: usize, const NC: usize>(a: &GradArgs) {
    let mut t0 = 0;
    while t0 < a.taps.len() {
        let nt = (a.taps.len() - t0).min(3);
        let taps = &a.taps[t0..t0 + nt];
        for o0 in (0..a.outs).step_by(MO * S::LANES) {
            for c0 in (0..a.ins).step_by(NC) {
                let (x, dy) = unsafe { (a.x.add(c0), a.dy.add(o0)) };
                let dw = unsafe { a.dw.add((t0 * a.ins + c0) * a.outs + o0) };
                unsafe {
                    match nt {
                        3 => grad_tile::<S, MO, 3, NC>(a, taps, x, dy, dw),
                        2 => grad_tile::<S, MO, 2, NC>(a, taps, x, dy, dw),
                        _ => grad_tile::<S, MO, 1, NC>(a, taps, x, dy, dw),
                    }
                }
            }
        }
        t0 += nt;
    }
}

/// A windowed weight-gradient tile: `NO` output channels by `NT` taps by `NC` input
/// channels, pixels in the lanes, summed over every pixel of every image, then added across
/// lanes. `x` points at the tile's first channel, `dy` at its first output channel, `dw` at its
/// (first output, first channel, first tap).
#[inline(always)]
unsafe fn window_grad_tile<S: Simd, const NO: usize, const NT: usize, const NC: usize>(
    a: &WindowGradArgs,
    offs: &[usize],
    x: *const f32,
    dy: *const f32,
    dw: *mut f32,
) {
    unsafe {
        let offs: [usize; NT] = std::array::from_fn(|t| offs[t]);
        let mut acc = [[[S::zero(); NC]; NT]; NO];
        for i in 0..a.images {
            let xi = x.add(i * a.x_image);
            let di = dy.add(i * a.dy_image);
            let xs: [[*const f32; NC]; NT] =
                std::array::from_fn(|t| std::array::from_fn(|c| xi.add(c * a.plane + offs[t])));
            let ds: [*const f32; NO] = std::array::from_fn(|o| di.add(o * a.pixels));
            for q in (0..a.pixels).step_by(S::LANES) {
                let d: [S::V; NO] = std::array::from_fn(|o| S::load(ds[o].add(q)));
                for t in 0..NT {
                    for c in 0..NC {
                        let xv = S::load(xs[t][c].add(q));
                        for o in 0..NO {
                            acc[o][t][c] = S::fma(d[o], xv, acc[o][t][c]);
                        }
                    }
                }
            }
        }
        let taps = a.offs.len();
        for (o, acc) in acc.iter().enumerate() {
            for (t, acc) in acc.iter().enumerate() {
                for (c, &acc) in acc.iter().enumerate() {
                    *dw.add((o * a.channels + c) * taps + t) = hsum::<S>(acc);
                }
            }
        }
    }
}

/// The lanes of `v` added in a fixed pairwise tree.
#[inline(always)]
unsafe fn hsum<S: Simd>(v: S::V) -> f32 {
    let mut lanes = [0.0f32; 16];
    unsafe { S::store(lanes.as_mut_ptr(), v) };
    let mut n = S::LANES;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            lanes[l] += lanes[l + n];
        }
    }
    lanes[0]
}

/// Every tile of a windowed weight gradient, taps in runs of 3 (a kernel row), then 1 or 2.
#[inline(always)]
unsafe fn window_grad_taps<S: Simd, const NO: usize, const NC: usize>(a: &WindowGradArgs) {
    let taps = a.offs.len();
    let mut t0 = 0;
    while t0 < taps {
        let nt = (taps - t0).min(3);
        let offs = &a.offs[t0..t0 + nt];
        for o0 in (0..a.outs).step_by(NO) {
            for c0 in (0..a.channels).step_by(NC) {
                unsafe {
                    let (x, dy) = (a.x.add(c0 * a.plane), a.dy.add(o0 * a.pixels));
                    let dw = a.dw.add((o0 * a.channels + c0) * taps + t0);
                    match nt {
                        3 => window_grad_tile::<S, NO, 3, NC>(a, offs, x, dy, dw),
                        2 => window_grad_tile::<S, NO, 2, NC>(a, offs, x, dy, dw),
                        _ => window_grad_tile::<S, NO, 1, NC>(a, offs, x, dy, dw),
                    }
                }
            }
        }
        t0 += nt;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        GradArgs, Simd, WindowArgs, WindowGradArgs, grad_taps, window_grad_taps, windows_all,
    };

    struct Avx512;
    struct Avx2;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m512 {
            unsafe { _mm512_set1_ps(*p) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
    }

    impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m256 {
            unsafe { _mm256_broadcast_ss(&*p) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
    }

    // Tiles sized to the register file: 24 accumulators of AVX-512's 32 registers, 12 of
    // AVX2's 16, leaving room for the loaded vectors and a broadcast.

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn windows_avx512(a: &WindowArgs) {
        unsafe {
            match a.pixels % 48 {
                0 => windows_all::<Avx512, 3, 8>(a),
                _ => windows_all::<Avx512, 2, 8>(a),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn windows_avx2(a: &WindowArgs) {
        unsafe {
            match a.pixels % 24 {
                0 => windows_all::<Avx2, 3, 4>(a),
                _ => windows_all::<Avx2, 2, 4>(a),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad_avx512(a: &GradArgs) {
        unsafe {
            match (a.outs / 16) % 4 {
                0 => grad_taps::<Avx512, 4, 2>(a),
                2 => grad_taps::<Avx512, 2, 4>(a),
                _ => grad_taps::<Avx512, 1, 8>(a),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn window_grad_avx512(a: &WindowGradArgs) {
        unsafe { window_grad_taps::<Avx512, 4, 2>(a) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn window_grad_avx2(a: &WindowGradArgs) {
        unsafe { window_grad_taps::<Avx2, 2, 2>(a) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_grad_avx2(a: &GradArgs) {
        unsafe {
            match (a.outs / 8) % 4 {
                0 => grad_taps::<Avx2, 4, 1>(a),
                _ => grad_taps::<Avx2, 2, 2>(a),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn windows_match_a_plain_loop() {
        for k in supported() {
            check_windows(k);
        }
    }

    fn check_windows(k: &Direct) {
        let mut rng = ChaCha8Rng::seed_from_u64(rand::random());
        for _ in 0..5 {
            let plane = rng.random_range(1..90);
            let outs = WINDOW_OUTS * rng.random_range(1..4);
            let pixels = k.window_pixels(rng.random_range(1..120));
            let taps: Vec<Vec<usize>> = (0..rng.random_range(1..5))
                .map(|_| {
                    (0..rng.random_range(1..6))
                        .map(|_| rng.random_range(0..30))
                        .collect()
                })
                .collect();
            let mut base = 0;
            let segments: Vec<Segment> = taps
                .iter()
                .map(|offs| {
                    let channels = rng.random_range(0..4);
                    let s = Segment {
                        base,
                        channels,
                        offs,
                    };
                    base += channels * plane + rng.random_range(0..3);
                    s
                })
                .collect();
            let x = random(&mut rng, base + plane + 30 + pixels);
            let k_len: usize = segments.iter().map(|s| s.channels * s.offs.len()).sum();
            let w = random(&mut rng, k_len * outs);
            let mut y = vec![0.0; outs * pixels];
            k.windows(&x, plane, &segments, &w, outs, &mut y, pixels);
            for o in 0..outs {
                for q in 0..pixels {
                    let (mut want, mut row) = (0.0f64, 0);
                    for s in &segments {
                        for c in 0..s.channels {
                            for &off in s.offs {
                                let wv = w[row * outs + o] as f64;
                                want += wv * x[s.base + c * plane + off + q] as f64;
                                row += 1;
                            }
                        }
                    }
                    let got = y[o * pixels + q] as f64;
                    assert!((got - want).abs() < 1e-4, "o {o} q {q}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn window_grad_matches_a_plain_loop() {
        for k in supported() {
            check_window_grad(k);
        }
    }

    fn check_window_grad(k: &Direct) {
        let mut rng = ChaCha8Rng::seed_from_u64(rand::random());
        for _ in 0..6 {
            let channels = WINDOW_GRAD_INS * rng.random_range(1..4);
            let outs = WINDOW_GRAD_OUTS * rng.random_range(1..4);
            let pixels = WINDOW_GRAD_PIXELS * rng.random_range(1..4);
            let (plane, images) = (rng.random_range(1..70), rng.random_range(1..4));
            let offs: Vec<usize> = (0..rng.random_range(1..10))
                .map(|_| rng.random_range(0..20))
                .collect();
            let x_image = (channels - 1) * plane + 20 + pixels + rng.random_range(0..5);
            let dy_image = outs * pixels + rng.random_range(0..5);
            let x = random(&mut rng, images * x_image);
            let dy = random(&mut rng, images * dy_image);
            let mut dw = random(&mut rng, outs * channels * offs.len());
            let shape = [plane, channels, x_image];
            k.window_grad(
                &x,
                shape,
                &offs,
                &dy,
                [outs, pixels, dy_image],
                images,
                &mut dw,
            );
            for o in 0..outs {
                for c in 0..channels {
                    for (t, &off) in offs.iter().enumerate() {
                        let mut want = 0.0f64;
                        for i in 0..images {
                            for q in 0..pixels {
                                let xv = x[i * x_image + c * plane + off + q] as f64;
                                want += xv * dy[i * dy_image + o * pixels + q] as f64;
                            }
                        }
                        let got = dw[(o * channels + c) * offs.len() + t] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "o {o} c {c} t {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weight_grad_matches_a_plain_loop() {
        for k in supported() {
            check_weight_grad(k);
        }
    }

    fn check_weight_grad(k: &Direct) {
        let mut rng = ChaCha8Rng::seed_from_u64(rand::random());
        for _ in 0..6 {
            let ins = GRAD_INS * rng.random_range(1..3);
            let outs = GRAD_OUTS * [1, 2, 3, 4][rng.random_range(0..4)];
            let (rows, cols) = (rng.random_range(1..6), rng.random_range(1..7));
            let col_step = ins * rng.random_range(1..3);
            let row_step = col_step * cols + ins * rng.random_range(0..3);
            let taps: Vec<usize> = (0..rng.random_range(1..10))
                .map(|_| ins * rng.random_range(0..5))
                .collect();
            let x = random(&mut rng, rows * row_step + cols * col_step + 5 * ins + ins);
            let dy = random(&mut rng, rows * cols * outs);
            let start = random(&mut rng, taps.len() * ins * outs);
            let mut dw = start.clone();
            k.weight_grad(
                &x,
                ins,
                &dy,
                outs,
                [rows, cols],
                [row_step, col_step],
                &taps,
                &mut dw,
            );
            for (t, &tap) in taps.iter().enumerate() {
                for c in 0..ins {
                    for o in 0..outs {
                        let at = (t * ins + c) * outs + o;
                        let mut want = start[at] as f64;
                        for r in 0..rows {
                            for s in 0..cols {
                                let xv = x[r * row_step + s * col_step + tap + c] as f64;
                                want += xv * dy[(r * cols + s) * outs + o] as f64;
                            }
                        }
                        let got = dw[at] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "t {t} c {c} o {o}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
