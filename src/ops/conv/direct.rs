//! The f32 paths of the convolution kernels, on the SIMD tiles of kernel/cpu/conv_simd.rs
//! (`Direct`). Each reads a zero-padded copy of each image in place instead of building an
//! im2col matrix (with 16 output channels an im2col element feeds only 16 multiply-adds, so
//! building the matrix cost as much as the product):
//! - forward, any stride (`Windows`): a stride-s input is split into its s·s phases (rows ≡ a,
//!   columns ≡ b mod s), each in planes of its own, so every tap reads a phase at stride 1
//!   (`Phases` groups the taps by the phase they read);
//! - input gradient: at stride 1, the flipped convolution (dy with the weights rotated 180°
//!   and in/out channels swapped, `flipped` in ops/conv.rs) through `Windows`; at stride s
//!   (`PhaseGrad`), dx split into its phases, each a stride-1 correlation of dy with the taps
//!   that land on it;
//! - weight gradient: `WindowGrad` (stride 1 and at most `GRAD_OUTS` output channels: pixels
//!   in the lanes), else `GradWindows` (any stride: output channels in the lanes, over
//!   pixel-major copies of x and dy).
//!
//! A path is taken when the element type is f32, the CPU has the tiles (AVX-512, or AVX2 with
//! FMA) and the convolution is within its limits (at most `MAX_TAPS` taps and `MAX_PHASES`
//! phases, a flip with no negative padding). Otherwise the generic code of ops/conv.rs runs:
//! im2col + GEMM on packed weights, with an im2col slot per worker (f64 gradient checks, other
//! CPUs, large kernels). Both paths are tested against the f64 definition on odd shapes.

use rayon::prelude::*;

use super::geom::{Geom, Work, grad_weight_runs};
use crate::kernel::cpu::{
    Direct, GRAD_INS, GRAD_OUTS, Real, Segment, WINDOW_GRAD_INS, WINDOW_GRAD_OUTS,
    WINDOW_GRAD_PIXELS, WINDOW_OUTS, direct,
};

/// The most taps (kh·kw) the direct paths take: their offsets live on the stack.
const MAX_TAPS: usize = 128;

/// Whether `T` is f32 (the only type the SIMD tiles compute in).
pub(super) fn is_f32<T: Real>() -> bool {
    T::as_f32(&[]).is_some()
}

/// `s` as f32, for a `T` that [`is_f32`].
pub(super) fn f32s<T: Real>(s: &[T]) -> &[f32] {
    T::as_f32(s).expect("the direct path runs in f32")
}

pub(super) fn f32s_mut<T: Real>(s: &mut [T]) -> &mut [f32] {
    T::as_f32_mut(s).expect("the direct path runs in f32")
}

/// The offset of each tap (kernel row, then column) on a padded plane `wp` wide, times `unit`
/// (1 for planes, the channel count for pixel-major data).
#[derive(Clone, Copy)]
struct Taps {
    offs: [usize; MAX_TAPS],
    len: usize,
}

impl Taps {
    fn new(g: &Geom, wp: usize, unit: usize) -> Option<Taps> {
        let len = g.kh * g.kw;
        if len > MAX_TAPS {
            return None;
        }
        let mut offs = [0; MAX_TAPS];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                offs[ki * g.kw + kj] = (ki * g.dil[0] * wp + kj * g.dil[1]) * unit;
            }
        }
        Some(Taps { offs, len })
    }
    fn as_slice(&self) -> &[usize] {
        &self.offs[..self.len]
    }
}

/// (rows, row pitch, tail) of the zero-padded planes the window kernels read: `h + 2·pad`
/// rows, each row's data at `pad` into it. At stride 1 a row's right padding can be the next
/// row's left padding, so the pitch is `w + pad` (and the last row's right padding a tail
/// after the plane), when every valid output still fits in a row (pad ≤ dil·(kw − 1));
/// otherwise, and for the phases of a strided input, `w + 2·pad` split into phases.
fn pitch(g: &Geom) -> (usize, usize, usize) {
    let (hp, wp) = (g.h + 2 * g.pad[0], g.w + 2 * g.pad[1]);
    if g.stride == [1, 1] && g.pad[1] <= g.dil[1] * (g.kw - 1) {
        (hp, g.w + g.pad[1], g.pad[1])
    } else {
        (hp, wp.div_ceil(g.stride[1]), 0)
    }
}

/// The most phases (stride_y · stride_x) a strided convolution splits its input into.
const MAX_PHASES: usize = 16;

/// A strided kernel's taps grouped by stride phase: tap (ki, kj) reads phase
/// (ki·dil mod sy, kj·dil mod sx) at a whole step (ki·dil / sy, kj·dil / sx) into it.
#[derive(Clone, Copy)]
struct Phases {
    /// Each tap's offset on its phase's plane, grouped by phase, and the tap it is.
    offs: [usize; MAX_TAPS],
    tap_of: [usize; MAX_TAPS],
    /// (row phase, column phase, its taps `start..end` in `offs`).
    list: [(usize, usize, usize, usize); MAX_PHASES],
    count: usize,
    taps: usize,
}

impl Phases {
    /// The phases of `g`'s taps with `off(row step, column step)` as each one's offset; the
    /// phases no tap reads are listed (empty) only when `keep_empty`. None past the limits.
    fn new(g: &Geom, keep_empty: bool, off: impl Fn(usize, usize) -> usize) -> Option<Phases> {
        let [sy, sx] = g.stride;
        if sy * sx > MAX_PHASES || g.kh * g.kw > MAX_TAPS {
            return None;
        }
        let (mut offs, mut tap_of) = ([0; MAX_TAPS], [0; MAX_TAPS]);
        let (mut list, mut count, mut k) = ([(0, 0, 0, 0); MAX_PHASES], 0, 0);
        for a in 0..sy {
            for b in 0..sx {
                let start = k;
                for ki in (0..g.kh).filter(|ki| ki * g.dil[0] % sy == a) {
                    for kj in (0..g.kw).filter(|kj| kj * g.dil[1] % sx == b) {
                        offs[k] = off(ki * g.dil[0] / sy, kj * g.dil[1] / sx);
                        tap_of[k] = ki * g.kw + kj;
                        k += 1;
                    }
                }
                if keep_empty || k > start {
                    list[count] = (a, b, start, k);
                    count += 1;
                }
            }
        }
        Some(Phases {
            offs,
            tap_of,
            list,
            count,
            taps: k,
        })
    }

    fn list(&self) -> &[(usize, usize, usize, usize)] {
        &self.list[..self.count]
    }

    /// The farthest offset any tap reads.
    fn reach(&self) -> usize {
        self.offs[..self.taps].iter().max().copied().unwrap_or(0)
    }
}

/// A convolution as [`Direct::windows`] runs it on each image's group. The group's input is
/// copied into zero-padded planes; at stride s, each of the s·s phases (rows ≡ a, columns ≡ b
/// mod s) that some tap reads gets its own planes (`hq x wq`, a 1/s subsample), so every tap
/// reads a phase at stride 1. The output is computed on the grid of those planes (`oh` rows of
/// `wq`, padded to whole tiles of pixels and output channels) and its valid columns copied out.
pub(super) struct Windows {
    kernel: &'static Direct,
    stride: [usize; 2],
    wq: usize,
    hq: usize,
    plane: usize,
    /// Output pixels on the grid, rounded up to whole tiles.
    pixels: usize,
    /// Output channels rounded up to whole tiles.
    outs: usize,
    /// Elements of the padded input buffer.
    input: usize,
    /// The phases some tap reads.
    phases: Phases,
}

impl Windows {
    pub(super) fn new(g: &Geom) -> Option<Windows> {
        let kernel = direct()?;
        let (hp, wq, tail) = pitch(g);
        let phases = Phases::new(g, false, |f, c| f * wq + c)?;
        let hq = hp.div_ceil(g.stride[0]);
        let (plane, pixels) = (hq * wq + tail, kernel.window_pixels(g.oh * wq));
        let (reach, used) = (phases.reach() + pixels, phases.count);
        Some(Windows {
            kernel,
            stride: g.stride,
            wq,
            hq,
            plane,
            pixels,
            outs: g.og().next_multiple_of(WINDOW_OUTS),
            input: (used * g.cg()).saturating_sub(1) * plane + reach.max(plane),
            phases,
        })
    }

    /// Packed weights of one group: phase, channel, tap, then output channel.
    fn group_len(&self, g: &Geom) -> usize {
        g.cg() * g.kh * g.kw * self.outs
    }

    /// The packed weights (shared), then per worker the padded input and the output grid.
    pub(super) fn work(&self, g: &Geom) -> Work {
        Work {
            packed: g.groups * self.group_len(g),
            accs: 0,
            slot: self.input + self.outs * self.pixels,
        }
    }

    /// Packs `weight(group, out, in, tap)` for each group in the order the kernel sums, zero
    /// past the real output channels.
    pub(super) fn pack(
        &self,
        g: &Geom,
        packed: &mut [f32],
        weight: impl Fn(usize, usize, usize, usize) -> f32,
    ) {
        let (og, len) = (g.og(), self.group_len(g));
        for (gi, packed) in packed.chunks_exact_mut(len).take(g.groups).enumerate() {
            let mut rows = packed.chunks_exact_mut(self.outs);
            for &(_, _, start, end) in self.phases.list() {
                for c in 0..g.cg() {
                    for &t in &self.phases.tap_of[start..end] {
                        let row = rows.next().expect("one row per (channel, tap)");
                        for (o, v) in row.iter_mut().enumerate() {
                            *v = if o < og { weight(gi, o, c, t) } else { 0.0 };
                        }
                    }
                }
            }
        }
    }

    /// Copies channel plane `src` (h x w) into phase (a, b)'s padded plane `dst`; what falls in
    /// the padding is never written, so it stays zero.
    fn fill(&self, g: &Geom, (a, b): (usize, usize), src: &[f32], dst: &mut [f32]) {
        let [sy, sx] = self.stride;
        // Plane columns j whose input column sx·j + b − pad lies inside 0..w.
        let lo = g.pad[1].saturating_sub(b).div_ceil(sx);
        let hi = (g.w + g.pad[1]).saturating_sub(b).div_ceil(sx).min(self.wq);
        for i in 0..self.hq {
            let Some(iy) = (sy * i + a).checked_sub(g.pad[0]).filter(|&iy| iy < g.h) else {
                continue;
            };
            let row = &src[iy * g.w..][..g.w];
            let out = &mut dst[i * self.wq..][..self.wq];
            if sx == 1 {
                out[lo..hi].copy_from_slice(&row[lo + b - g.pad[1]..hi + b - g.pad[1]]);
            } else {
                for (j, v) in out.iter_mut().enumerate().take(hi).skip(lo) {
                    *v = row[sx * j + b - g.pad[1]];
                }
            }
        }
    }

    /// y = conv(x) on the packed weights, in parallel over runs of images, one per slot.
    pub(super) fn run(
        &self,
        g: &Geom,
        x: &[f32],
        packed: &[f32],
        y: &mut [f32],
        slots: &mut [f32],
    ) {
        let (cg, og, hw, p) = (g.cg(), g.og(), g.hw(), g.p());
        let (image, slot, len) = (g.o * p, self.work(g).slot, self.group_len(g));
        if y.is_empty() {
            return;
        }
        let segments: [Segment; MAX_PHASES] = std::array::from_fn(|i| {
            let (_, _, start, end) = self.phases.list[i];
            Segment {
                base: i * cg * self.plane,
                channels: if i < self.phases.count { cg } else { 0 },
                offs: &self.phases.offs[start..end],
            }
        });
        let segments = &segments[..self.phases.count];
        let per = g.n.div_ceil(slots.len() / slot);
        y.par_chunks_mut(per * image)
            .zip(slots.par_chunks_mut(slot))
            .enumerate()
            .for_each(|(run, (ys, mem))| {
                let (input, grid) = mem.split_at_mut(self.input);
                // Padding and slack stay zero: only the interior is written below.
                input.fill(0.0);
                for (i, y) in ys.chunks_exact_mut(image).enumerate() {
                    let xi = &x[(run * per + i) * g.c * hw..][..g.c * hw];
                    for gi in 0..g.groups {
                        let xg = &xi[gi * cg * hw..][..cg * hw];
                        for (seg, &(a, b, _, _)) in segments.iter().zip(self.phases.list()) {
                            for (c, src) in xg.chunks_exact(hw).enumerate() {
                                let at = seg.base + c * self.plane;
                                self.fill(g, (a, b), src, &mut input[at..][..self.plane]);
                            }
                        }
                        self.kernel.windows(
                            input,
                            self.plane,
                            segments,
                            &packed[gi * len..][..len],
                            self.outs,
                            grid,
                            self.pixels,
                        );
                        for o in 0..og {
                            let out = &mut y[(gi * og + o) * p..][..p];
                            let from = &grid[o * self.pixels..];
                            for (oy, row) in out.chunks_exact_mut(g.ow).enumerate() {
                                row.copy_from_slice(&from[oy * self.wq..][..g.ow]);
                            }
                        }
                    }
                }
            });
    }
}

/// The input gradient of a strided convolution as [`Direct::windows`] runs it on each image's
/// group: dx split into its stride phases (padded rows ≡ a, columns ≡ b mod the stride), each
/// a stride-1 correlation of dy with the taps that land on that phase. dy is copied into
/// zero-padded planes (`rows x pitch`, the data `top` rows and `left` columns in), each phase
/// computed on the grid of those planes (`mq` rows of `pitch`) and scattered into dx.
pub(super) struct PhaseGrad {
    kernel: &'static Direct,
    pitch: usize,
    plane: usize,
    top: usize,
    left: usize,
    /// Rows and valid columns of each phase's grid.
    mq: usize,
    nq: usize,
    pixels: usize,
    /// dx channels rounded up to whole tiles.
    outs: usize,
    input: usize,
    /// Every phase of dx, with the taps that land on it.
    phases: Phases,
}

impl PhaseGrad {
    pub(super) fn new(g: &Geom) -> Option<PhaseGrad> {
        let kernel = direct()?;
        let [sy, sx] = g.stride;
        if g.stride == [1, 1] {
            return None;
        }
        let (hp, wp) = (g.h + 2 * g.pad[0], g.w + 2 * g.pad[1]);
        let (mq, nq) = (hp.div_ceil(sy), wp.div_ceil(sx));
        // Tap (ki, kj) adds dy at output row m − ki·dil/s of phase row m: dy needs that many
        // zero rows (columns) before it.
        let (top, left) = ((g.kh - 1) * g.dil[0] / sy, (g.kw - 1) * g.dil[1] / sx);
        let pitch = left + nq.max(g.ow);
        let rows = top + mq.max(g.oh);
        let phases = Phases::new(g, true, |f, c| (top - f) * pitch + (left - c))?;
        let plane = rows * pitch;
        let pixels = kernel.window_pixels(mq * pitch);
        let reach = phases.reach() + pixels;
        Some(PhaseGrad {
            kernel,
            pitch,
            plane,
            top,
            left,
            mq,
            nq,
            pixels,
            outs: g.cg().next_multiple_of(WINDOW_OUTS),
            input: g.og().saturating_sub(1) * plane + reach.max(plane),
            phases,
        })
    }

    /// Packed weights of one group: phase, dy channel, tap, then dx channel.
    fn group_len(&self, g: &Geom) -> usize {
        g.og() * g.kh * g.kw * self.outs
    }

    /// The packed weights (shared), then per worker the padded dy and a phase's grid.
    pub(super) fn work(&self, g: &Geom) -> Work {
        Work {
            packed: g.groups * self.group_len(g),
            accs: 0,
            slot: self.input + self.outs * self.pixels,
        }
    }

    /// Packs w [o, c, kh, kw] for each group in the order the kernel sums, zero past the real
    /// dx channels.
    pub(super) fn pack(&self, g: &Geom, w: &[f32], packed: &mut [f32]) {
        let (cg, og, taps, len) = (g.cg(), g.og(), g.kh * g.kw, self.group_len(g));
        for (gi, packed) in packed.chunks_exact_mut(len).take(g.groups).enumerate() {
            let mut rows = packed.chunks_exact_mut(self.outs);
            for &(_, _, start, end) in self.phases.list() {
                for o in 0..og {
                    for &t in &self.phases.tap_of[start..end] {
                        let row = rows.next().expect("one row per (channel, tap)");
                        for (c, v) in row.iter_mut().enumerate() {
                            *v = if c < cg {
                                w[((gi * og + o) * cg + c) * taps + t]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    }

    /// dx = the transposed convolution of dy, in parallel over runs of images, one per slot.
    pub(super) fn run(
        &self,
        g: &Geom,
        dy: &[f32],
        packed: &[f32],
        dx: &mut [f32],
        slots: &mut [f32],
    ) {
        let (cg, og, hw, p) = (g.cg(), g.og(), g.hw(), g.p());
        let (image, slot, len) = (g.c * hw, self.work(g).slot, self.group_len(g));
        if dx.is_empty() {
            return;
        }
        let per = g.n.div_ceil(slots.len() / slot);
        let [sy, sx] = g.stride;
        dx.par_chunks_mut(per * image)
            .zip(slots.par_chunks_mut(slot))
            .enumerate()
            .for_each(|(run, (dxs, mem))| {
                let (input, grid) = mem.split_at_mut(self.input);
                // Padding and slack stay zero: only the interior is written below.
                input.fill(0.0);
                for (i, dx) in dxs.chunks_exact_mut(image).enumerate() {
                    let dyi = &dy[(run * per + i) * g.o * p..][..g.o * p];
                    for gi in 0..g.groups {
                        for (o, src) in dyi[gi * og * p..][..og * p].chunks_exact(p).enumerate() {
                            let dst = &mut input[o * self.plane..];
                            for (oy, row) in src.chunks_exact(g.ow).enumerate() {
                                let at = (oy + self.top) * self.pitch + self.left;
                                dst[at..at + g.ow].copy_from_slice(row);
                            }
                        }
                        let dxg = &mut dx[gi * cg * hw..][..cg * hw];
                        let mut weights = &packed[gi * len..][..len];
                        for &(a, b, start, end) in self.phases.list() {
                            let k = og * (end - start) * self.outs;
                            let (phase, rest) = weights.split_at(k);
                            weights = rest;
                            if start < end {
                                let segment = Segment {
                                    base: 0,
                                    channels: og,
                                    offs: &self.phases.offs[start..end],
                                };
                                self.kernel.windows(
                                    input,
                                    self.plane,
                                    &[segment],
                                    phase,
                                    self.outs,
                                    grid,
                                    self.pixels,
                                );
                            }
                            // Phase (a, b) holds dx at (sy·m + a − pad, sx·n + b − pad).
                            let lo = g.pad[1].saturating_sub(b).div_ceil(sx);
                            let hi = (g.w + g.pad[1]).saturating_sub(b).div_ceil(sx).min(self.nq);
                            for m in 0..self.mq {
                                let Some(iy) = (sy * m + a).checked_sub(g.pad[0]) else {
                                    continue;
                                };
                                if iy >= g.h {
                                    break;
                                }
                                for c in 0..cg {
                                    let row = &mut dxg[c * hw + iy * g.w..][..g.w];
                                    let from = &grid[c * self.pixels + m * self.pitch..];
                                    for n in lo..hi {
                                        let v = if start < end { from[n] } else { 0.0 };
                                        row[sx * n + b - g.pad[1]] = v;
                                    }
                                }
                            }
                        }
                    }
                }
            });
    }
}

/// A weight gradient as [`Direct::weight_grad`] runs it on each image's group: the input
/// copied pixel-major into a zero-padded buffer (`hp x wp` pixels of `ins` channels, the
/// group's channels rounded up) and dy transposed pixel-major (`outs` channels, rounded up);
/// each run of images sums into its own accumulator (tap, in channel, out channel), and the
/// runs are summed in order into dw.
pub(super) struct GradWindows {
    kernel: &'static Direct,
    wp: usize,
    ins: usize,
    outs: usize,
    /// Elements of the padded input buffer and of the transposed dy.
    input: usize,
    grad: usize,
    taps: Taps,
}

impl GradWindows {
    pub(super) fn new(g: &Geom) -> Option<GradWindows> {
        let kernel = direct()?;
        let (hp, wp) = (g.h + 2 * g.pad[0], g.w + 2 * g.pad[1]);
        let ins = g.cg().next_multiple_of(GRAD_INS);
        let outs = g.og().next_multiple_of(GRAD_OUTS);
        Some(GradWindows {
            kernel,
            wp,
            ins,
            outs,
            input: hp * wp * ins,
            grad: g.p() * outs,
            taps: Taps::new(g, wp, ins)?,
        })
    }

    /// One run's accumulator: every group's (tap, in, out) sums.
    fn acc_len(&self, g: &Geom) -> usize {
        g.groups * self.taps.len * self.ins * self.outs
    }

    /// An accumulator per run, then per worker the padded input and the transposed dy.
    pub(super) fn work(&self, g: &Geom) -> Work {
        let (_, runs) = grad_weight_runs(g.n);
        Work {
            packed: 0,
            accs: runs * self.acc_len(g),
            slot: self.input + self.grad,
        }
    }

    /// dw = Σ over images of x ⋆ dy, with `slots` workers over the fixed runs of images.
    pub(super) fn run(&self, g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
        let (cg, og, hw, p) = (g.cg(), g.og(), g.hw(), g.p());
        let (acc_len, glen) = (self.acc_len(g), self.acc_len(g) / g.groups);
        let work = self.work(g);
        let (per, runs) = grad_weight_runs(g.n);
        let (accs, slot_mem) = scratch.split_at_mut(work.accs);
        let slots = slot_mem.len() / work.slot;
        // Slot s sums runs s·rps.. into their own accumulators.
        let rps = runs.div_ceil(slots);
        let steps = [g.stride[0] * self.wp * self.ins, g.stride[1] * self.ins];
        accs.par_chunks_mut(rps * acc_len)
            .zip(slot_mem.par_chunks_mut(work.slot))
            .enumerate()
            .for_each(|(s, (accs, mem))| {
                let (input, grad) = mem.split_at_mut(self.input);
                // Padding and the channels past the real ones stay zero.
                input.fill(0.0);
                grad.fill(0.0);
                for (r, acc) in accs.chunks_exact_mut(acc_len).enumerate() {
                    acc.fill(0.0);
                    let run = s * rps + r;
                    for n in run * per..((run + 1) * per).min(g.n) {
                        for gi in 0..g.groups {
                            let xg = &x[(n * g.c + gi * cg) * hw..][..cg * hw];
                            for (c, plane) in xg.chunks_exact(hw).enumerate() {
                                for (iy, row) in plane.chunks_exact(g.w).enumerate() {
                                    let at = (iy + g.pad[0]) * self.wp + g.pad[1];
                                    let dst = &mut input[at * self.ins + c..];
                                    for (d, &v) in dst.iter_mut().step_by(self.ins).zip(row) {
                                        *d = v;
                                    }
                                }
                            }
                            let dyg = &dy[(n * g.o + gi * og) * p..][..og * p];
                            for (o, plane) in dyg.chunks_exact(p).enumerate() {
                                for (d, &v) in grad[o..].iter_mut().step_by(self.outs).zip(plane) {
                                    *d = v;
                                }
                            }
                            self.kernel.weight_grad(
                                input,
                                self.ins,
                                grad,
                                self.outs,
                                [g.oh, g.ow],
                                steps,
                                self.taps.as_slice(),
                                &mut acc[gi * glen..][..glen],
                            );
                        }
                    }
                }
            });
        let (ins, outs) = (self.ins, self.outs);
        finish(g, &mut accs[..runs * acc_len], dw, |o, c, t| {
            (t * ins + c) * outs + o
        });
    }
}

/// A stride-1 weight gradient as [`Direct::window_grad`] runs it on each run of images and
/// group: the run's inputs copied into zero-padded planes (`ins` of them, the group's channels
/// rounded up) and its dy onto the padded output grid (junk columns zero), pixels in the lanes;
/// each run writes its own accumulator and the runs are summed in order into dw.
pub(super) struct WindowGrad {
    kernel: &'static Direct,
    wp: usize,
    plane: usize,
    ins: usize,
    outs: usize,
    /// Output pixels on the padded grid, rounded up to whole vectors.
    pixels: usize,
    /// Elements of one image's padded input and of its dy grid.
    x_image: usize,
    dy_image: usize,
    taps: Taps,
}

impl WindowGrad {
    pub(super) fn new(g: &Geom) -> Option<WindowGrad> {
        let kernel = direct()?;
        // With more output channels [`GradWindows`] is faster: whole vectors of them per
        // broadcast, no horizontal sums and no per-image setup on small planes.
        if g.stride != [1, 1] || g.og() > GRAD_OUTS {
            return None;
        }
        let (hp, wp, tail) = pitch(g);
        let taps = Taps::new(g, wp, 1)?;
        let (plane, pixels) = (
            hp * wp + tail,
            (g.oh * wp).next_multiple_of(WINDOW_GRAD_PIXELS),
        );
        let ins = g.cg().next_multiple_of(WINDOW_GRAD_INS);
        let outs = g.og().next_multiple_of(WINDOW_GRAD_OUTS);
        let reach = taps.as_slice().iter().max().copied().unwrap_or(0) + pixels;
        Some(WindowGrad {
            kernel,
            wp,
            plane,
            ins,
            outs,
            pixels,
            x_image: (ins - 1) * plane + reach.max(plane),
            dy_image: outs * pixels,
            taps,
        })
    }

    /// One run's accumulator: every group's (out, in, tap) sums.
    fn acc_len(&self, g: &Geom) -> usize {
        g.groups * self.outs * self.ins * self.taps.len
    }

    /// An accumulator per run, then per worker the padded inputs and dy grids of a run.
    pub(super) fn work(&self, g: &Geom) -> Work {
        let (per, runs) = grad_weight_runs(g.n);
        Work {
            packed: 0,
            accs: runs * self.acc_len(g),
            slot: per * (self.x_image + self.dy_image),
        }
    }

    /// dw = Σ over images of x ⋆ dy, with the workers over the fixed runs of images.
    pub(super) fn run(&self, g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
        let (cg, og, hw, p) = (g.cg(), g.og(), g.hw(), g.p());
        let (taps, acc_len) = (self.taps.len, self.acc_len(g));
        let glen = acc_len / g.groups;
        let work = self.work(g);
        let (per, runs) = grad_weight_runs(g.n);
        let (accs, slot_mem) = scratch.split_at_mut(work.accs);
        let slots = slot_mem.len() / work.slot;
        // Slot s sums runs s·rps.. into their own accumulators.
        let rps = runs.div_ceil(slots);
        accs.par_chunks_mut(rps * acc_len)
            .zip(slot_mem.par_chunks_mut(work.slot))
            .enumerate()
            .for_each(|(s, (accs, mem))| {
                let (inputs, grids) = mem.split_at_mut(per * self.x_image);
                // Padding, junk columns and channels past the real ones stay zero.
                inputs.fill(0.0);
                grids.fill(0.0);
                for (r, acc) in accs.chunks_exact_mut(acc_len).enumerate() {
                    let run = s * rps + r;
                    let images = run * per..((run + 1) * per).min(g.n);
                    for (gi, acc) in acc.chunks_exact_mut(glen).enumerate() {
                        for (i, n) in images.clone().enumerate() {
                            let xg = &x[(n * g.c + gi * cg) * hw..][..cg * hw];
                            let input = &mut inputs[i * self.x_image..];
                            for (c, plane) in xg.chunks_exact(hw).enumerate() {
                                let dst = &mut input[c * self.plane..];
                                for (iy, row) in plane.chunks_exact(g.w).enumerate() {
                                    let at = (iy + g.pad[0]) * self.wp + g.pad[1];
                                    dst[at..at + g.w].copy_from_slice(row);
                                }
                            }
                            let dyg = &dy[(n * g.o + gi * og) * p..][..og * p];
                            let grid = &mut grids[i * self.dy_image..];
                            for (o, plane) in dyg.chunks_exact(p).enumerate() {
                                let dst = &mut grid[o * self.pixels..];
                                for (oy, row) in plane.chunks_exact(g.ow).enumerate() {
                                    dst[oy * self.wp..][..g.ow].copy_from_slice(row);
                                }
                            }
                        }
                        self.kernel.window_grad(
                            inputs,
                            [self.plane, self.ins, self.x_image],
                            self.taps.as_slice(),
                            grids,
                            [self.outs, self.pixels, self.dy_image],
                            images.len(),
                            acc,
                        );
                    }
                }
            });
        let ins = self.ins;
        finish(g, &mut accs[..runs * acc_len], dw, |o, c, t| {
            (o * ins + c) * taps + t
        });
    }
}

/// Sums the runs' accumulators (`accs`, one per run of images, each every group's sums laid
/// out by `at(out, in, tap)`) and writes the real channels into dw (OIHW).
fn finish(
    g: &Geom,
    accs: &mut [f32],
    dw: &mut [f32],
    at: impl Fn(usize, usize, usize) -> usize + Sync,
) {
    let (_, runs) = grad_weight_runs(g.n);
    let (cg, og, taps) = (g.cg(), g.og(), g.kh * g.kw);
    let glen = accs.len() / runs / g.groups;
    let sums = sum_runs(accs, accs.len() / runs);
    // One output channel per task.
    dw.par_chunks_exact_mut(cg * taps)
        .enumerate()
        .for_each(|(go, out)| {
            let (gi, o) = (go / og, go % og);
            let acc = &sums[gi * glen..][..glen];
            for (ct, v) in out.iter_mut().enumerate() {
                *v = acc[at(o, ct / taps, ct % taps)];
            }
        });
}

/// Adds each run's accumulator (`len` elements, one after another in `accs`) into the first,
/// run by run in order, so the sum over images has one order whatever the threads; in
/// parallel over blocks of elements, as at 16 threads a serial sum showed in the profile.
fn sum_runs(accs: &mut [f32], len: usize) -> &[f32] {
    const BLOCK: usize = 4096;
    let (first, rest) = accs.split_at_mut(len);
    let rest = &*rest;
    first
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, sums)| {
            for part in rest.chunks_exact(len) {
                for (a, &v) in sums.iter_mut().zip(&part[b * BLOCK..]) {
                    *a += v;
                }
            }
        });
    first
}
