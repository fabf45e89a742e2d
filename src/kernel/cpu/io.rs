//! What one launch sees on the CPU: its input and output buffers, their types, scratch memory
//! and the step's runtime scalars. The executor builds it from arena ranges the plan proved
//! disjoint; the only aliasing allowed is an in-place elementwise launch, which goes through
//! [`Io::map`]. Building an `Io` from the executor's tables allocates nothing, and neither do
//! `split` and `map`.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

use super::Real;
use crate::tensor::{StepCtx, TensorType};

/// A buffer as a raw range: start and length in elements.
pub(crate) type Raw<T> = (*mut T, usize);

/// The types of a launch's inputs: borrowed from a graph (tests, the interpreter) or from the
/// executor's table.
enum Types<'a> {
    Refs(Vec<&'a TensorType>),
    Slice(&'a [TensorType]),
}

pub struct Io<'a, T> {
    ins: Cow<'a, [Raw<T>]>,
    outs: Cow<'a, [Raw<T>]>,
    /// True when an output may share memory with an input (an in-place launch).
    aliased: bool,
    in_types: Types<'a>,
    pub out_types: &'a [TensorType],
    pub ctx: StepCtx,
    /// Workspace the executor sized from [`crate::ops::Eval::scratch`] (empty elsewhere).
    scratch: &'a mut [T],
    /// Scratch allocated on demand when `scratch` is too small (the interpreter and tests;
    /// never the executor, which tests/cpu_no_alloc.rs checks).
    spare: Vec<T>,
    _borrow: PhantomData<&'a mut [T]>,
}

// Io holds raw pointers only so that an in-place launch can be expressed; the buffers behind
// them are plain `[T]` owned by the executor for the launch's duration.
unsafe impl<T: Send> Send for Io<'_, T> {}

/// A launch's inputs as shared slices (what [`Io::split`] gives besides the outputs).
#[derive(Clone, Copy)]
pub struct Ins<'b, T> {
    ranges: &'b [Raw<T>],
}

impl<'b, T> Ins<'b, T> {
    /// Input `i`.
    pub fn get(&self, i: usize) -> &'b [T] {
        let (p, n) = self.ranges[i];
        // SAFETY: `Ins` is only made by `Io::split`, whose contract (see `Io::from_raw`) makes
        // every input range valid and unaliased by any output for the `Io` borrow `'b`.
        unsafe { std::slice::from_raw_parts(p, n) }
    }
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    /// The first `N` inputs as an array (panics if there are fewer: a kernel bug).
    pub fn array<const N: usize>(&self) -> [&'b [T]; N] {
        assert!(self.len() >= N, "{N} inputs expected, got {}", self.len());
        std::array::from_fn(|i| self.get(i))
    }
    pub fn iter(&self) -> impl Iterator<Item = &'b [T]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl<'a, T: Real> Io<'a, T> {
    /// A launch over separately borrowed buffers (the interpreter, tests).
    pub fn new(
        ins: Vec<&'a [T]>,
        outs: Vec<&'a mut [T]>,
        in_types: Vec<&'a TensorType>,
        out_types: &'a [TensorType],
        ctx: StepCtx,
    ) -> Io<'a, T> {
        Io {
            ins: Cow::Owned(
                ins.into_iter()
                    .map(|s| (s.as_ptr() as *mut T, s.len()))
                    .collect(),
            ),
            outs: Cow::Owned(
                outs.into_iter()
                    .map(|s| (s.as_mut_ptr(), s.len()))
                    .collect(),
            ),
            aliased: false,
            in_types: Types::Refs(in_types),
            out_types,
            ctx,
            scratch: &mut [],
            spare: Vec::new(),
            _borrow: PhantomData,
        }
    }

    /// Gives the launch `scratch` as its workspace.
    pub fn with_scratch(mut self, scratch: &'a mut [T]) -> Io<'a, T> {
        self.scratch = scratch;
        self
    }

    /// A launch over raw ranges of the executor's memory; builds nothing.
    ///
    /// # Safety
    /// Every range is valid for the lifetime `'a` and no other reference to it exists while the
    /// `Io` lives. Output ranges are disjoint from each other and from the inputs, except when
    /// `aliased` is set, in which case the op must only use [`Io::map`]. Input ranges are only
    /// read.
    pub(crate) unsafe fn from_raw(
        ins: &'a [Raw<T>],
        outs: &'a [Raw<T>],
        aliased: bool,
        in_types: &'a [TensorType],
        out_types: &'a [TensorType],
        ctx: StepCtx,
        scratch: &'a mut [T],
    ) -> Io<'a, T> {
        Io {
            ins: Cow::Borrowed(ins),
            outs: Cow::Borrowed(outs),
            aliased,
            in_types: Types::Slice(in_types),
            out_types,
            ctx,
            scratch,
            spare: Vec::new(),
            _borrow: PhantomData,
        }
    }

    /// The launch narrowed to inputs `ins` and outputs `outs`, over the same memory and step:
    /// one member of an op made of several (`ops::Foreach`). Allocates nothing when the
    /// executor built this `Io`.
    pub fn group(&mut self, ins: Range<usize>, outs: Range<usize>) -> Io<'_, T> {
        let in_types = match &self.in_types {
            Types::Refs(v) => Types::Refs(v[ins.clone()].to_vec()),
            Types::Slice(s) => Types::Slice(&s[ins.clone()]),
        };
        Io {
            ins: Cow::Borrowed(&self.ins[ins]),
            outs: Cow::Borrowed(&self.outs[outs.clone()]),
            aliased: self.aliased,
            in_types,
            out_types: &self.out_types[outs],
            ctx: self.ctx,
            scratch: &mut [],
            spare: Vec::new(),
            _borrow: PhantomData,
        }
    }

    pub fn in_type(&self, i: usize) -> &'a TensorType {
        match &self.in_types {
            Types::Refs(v) => v[i],
            Types::Slice(s) => &s[i],
        }
    }
    pub fn in_shape(&self, i: usize) -> &'a [usize] {
        &self.in_type(i).shape
    }
    pub fn out_shape(&self, j: usize) -> &'a [usize] {
        &self.out_types[j].shape
    }
    pub fn inputs(&self) -> usize {
        self.ins.len()
    }
    /// Elements of workspace the executor gave this launch.
    pub fn scratch_len(&self) -> usize {
        self.scratch.len()
    }

    /// All inputs as shared slices and the outputs as exclusive ones (`O` at least the launch's
    /// output count; any beyond it are empty).
    pub fn split<const O: usize>(&mut self) -> (Ins<'_, T>, [&mut [T]; O]) {
        let (ins, outs, _) = self.split_scratch::<O>(0);
        (ins, outs)
    }

    /// [`Io::split`], and `len` elements of scratch memory (the executor's workspace, sized from
    /// the op's `Eval::scratch`; allocated here only when a caller gave too little).
    pub fn split_scratch<const O: usize>(
        &mut self,
        len: usize,
    ) -> (Ins<'_, T>, [&mut [T]; O], &mut [T]) {
        assert!(
            !self.aliased,
            "an in-place launch must go through Io::map (planner bug)"
        );
        assert!(self.outs.len() <= O, "more than {O} outputs");
        let scratch = if self.scratch.len() >= len {
            &mut self.scratch[..len]
        } else {
            if self.spare.len() < len {
                self.spare.resize(len, T::ZERO);
            }
            &mut self.spare[..len]
        };
        let outs = std::array::from_fn(|j| {
            let Some(&(p, n)) = self.outs.get(j) else {
                return &mut [][..];
            };
            // SAFETY: `new` took the slices from disjoint borrows; `from_raw`'s contract makes
            // the ranges disjoint when not aliased, and `&mut self` keeps this the only view.
            unsafe { std::slice::from_raw_parts_mut(p, n) }
        });
        (Ins { ranges: &self.ins }, outs, scratch)
    }

    /// [`Io::split_scratch`] with the scratch memory as `len` f64s, for partial sums kept in
    /// f64 whatever T is; the op's `Eval::scratch` asks for [`f64_scratch_len`]`(len)`.
    pub fn split_scratch_f64<const O: usize>(
        &mut self,
        len: usize,
    ) -> (Ins<'_, T>, [&mut [T]; O], &mut [f64]) {
        let (ins, outs, scratch) = self.split_scratch::<O>(f64_scratch_len(len));
        let id = std::any::TypeId::of::<T>();
        assert!(
            id == std::any::TypeId::of::<f32>() || id == std::any::TypeId::of::<f64>(),
            "f64 scratch over f32 or f64 memory only"
        );
        // SAFETY: T is f32 or f64 (checked): plain bits without padding, every pattern valid as
        // for f64, so the aligned middle of the memory may be used as f64s and later as T again.
        let (_, wide, _) = unsafe { scratch.align_to_mut::<f64>() };
        (ins, outs, &mut wide[..len])
    }

    /// Elementwise: every output element `k` is `f(inputs at k)`, each input broadcast (numpy
    /// rules) to output 0's shape. Reads an element's inputs before writing its outputs, so an
    /// output may overwrite an input of the same shape. Runs on every core for large tensors.
    pub fn map<const I: usize, const O: usize>(&mut self, f: impl Fn([T; I]) -> [T; O] + Sync) {
        assert_eq!(self.ins.len(), I, "map arity");
        assert_eq!(self.outs.len(), O, "map outputs");
        let shape = &self.out_types[0].shape;
        let n: usize = shape.iter().product();
        for (j, &(_, len)) in self.outs.iter().enumerate() {
            assert_eq!(len, n, "map output {j} has {len} elements, expected {n}");
        }
        let index: [Broadcast; I] =
            std::array::from_fn(|i| Broadcast::new(&self.in_type(i).shape, shape, self.ins[i].1));
        let ins: [SendPtr<T>; I] = std::array::from_fn(|i| SendPtr(self.ins[i].0));
        let outs: [SendPtr<T>; O] = std::array::from_fn(|j| SendPtr(self.outs[j].0));
        let same = index.iter().all(|b| b.kind == BroadcastKind::Same);
        let chunk = 1 << 14;
        let run = |start: usize| {
            let end = (start + chunk).min(n);
            if same {
                // SAFETY: start < end <= n, the length of every input (Broadcast::new checked)
                // and output (checked above).
                unsafe { map_same(&ins, &outs, start..end, &f) };
                return;
            }
            let mut cursors: [Cursor; I] = std::array::from_fn(|i| index[i].cursor(start));
            for k in start..end {
                let mut x = [T::ZERO; I];
                for (i, c) in cursors.iter_mut().enumerate() {
                    // SAFETY: Broadcast::new checked every offset it yields is < the input's
                    // length; reads go through raw pointers, so aliasing an output is sound.
                    x[i] = unsafe { *ins[i].0.add(c.offset) };
                    c.advance(&index[i]);
                }
                let y = f(x);
                for (j, v) in y.into_iter().enumerate() {
                    // SAFETY: k < n, the length of every output (checked above).
                    unsafe { *outs[j].0.add(k) = v };
                }
            }
        };
        in_chunks(n, chunk, run);
    }

    /// [`Io::map`] with one output, a tile at a time: `f(x, len, y)` gets each input's values
    /// at up to `TILE` consecutive output elements (broadcast, copied out first, so the output
    /// may overwrite an input of its shape) and writes the output's values at them into
    /// `y[..len]`. A function of several steps (a fused elementwise chain) then runs each step
    /// over a whole tile, in loops that vectorise, instead of all steps one element at a time.
    pub fn map_tiles<const I: usize>(
        &mut self,
        f: impl Fn(&[[T; TILE]; I], usize, &mut [T; TILE]) + Sync,
    ) {
        assert_eq!(self.ins.len(), I, "map arity");
        assert_eq!(self.outs.len(), 1, "map_tiles writes one output");
        let shape = &self.out_types[0].shape;
        let n: usize = shape.iter().product();
        assert_eq!(self.outs[0].1, n, "map output has the wrong length");
        let index: [Broadcast; I] =
            std::array::from_fn(|i| Broadcast::new(&self.in_type(i).shape, shape, self.ins[i].1));
        let ins: [SendPtr<T>; I] = std::array::from_fn(|i| SendPtr(self.ins[i].0));
        let out = SendPtr(self.outs[0].0);
        let chunk = 1 << 14;
        let run = |start: usize| {
            // The whole SendPtr, not its raw field, is what the closure may share.
            let out = &out;
            let end = (start + chunk).min(n);
            let mut cursors: [Cursor; I] = std::array::from_fn(|i| index[i].cursor(start));
            let mut x = [[T::ZERO; TILE]; I];
            let mut y = [T::ZERO; TILE];
            let mut k = start;
            while k < end {
                let len = TILE.min(end - k);
                for (i, c) in cursors.iter_mut().enumerate() {
                    // An input of the output's shape is read at k itself (its cursor unused).
                    if index[i].kind == BroadcastKind::Same {
                        // SAFETY: [k, k + len) < n, the input's length (Broadcast::new); x is
                        // a stack copy, so an aliased output cannot overlap it.
                        unsafe {
                            std::ptr::copy_nonoverlapping(ins[i].0.add(k), x[i].as_mut_ptr(), len)
                        };
                        continue;
                    }
                    for v in &mut x[i][..len] {
                        // SAFETY: Broadcast::new checked every offset it yields is in range.
                        *v = unsafe { *ins[i].0.add(c.offset) };
                        c.advance(&index[i]);
                    }
                }
                f(&x, len, &mut y);
                // SAFETY: [k, k + len) < n, the output's length (checked above); every input
                // value of these elements was copied to x first.
                unsafe { std::ptr::copy_nonoverlapping(y.as_ptr(), out.0.add(k), len) };
                k += len;
            }
        };
        in_chunks(n, chunk, run);
    }
}

/// `run(start)` for every `chunk`-long piece of `0..n`, in parallel where there are several.
fn in_chunks(n: usize, chunk: usize, run: impl Fn(usize) + Sync) {
    if n > chunk {
        (0..n.div_ceil(chunk))
            .into_par_iter()
            .for_each(|c| run(c * chunk));
    } else if n > 0 {
        run(0);
    }
}

/// Elements [`map_same`] and [`Io::map_tiles`] copy their inputs in at a time.
pub const TILE: usize = 64;

/// `outs[j][k] = f(ins at k)[j]` for k in `range`, every input of the outputs' shape. Each tile
/// of inputs is copied to the stack first: an output that is also an input (an in-place launch)
/// then cannot alias what the loop reads, so the loop vectorises without runtime overlap checks
/// (which an in-place launch would fail, falling back to scalar code).
///
/// # Safety
/// Every pointer is valid for `range`; inputs are only read; outputs may equal an input but
/// otherwise overlap nothing.
#[inline(always)]
unsafe fn map_same<T: Real, const I: usize, const O: usize>(
    ins: &[SendPtr<T>; I],
    outs: &[SendPtr<T>; O],
    range: std::ops::Range<usize>,
    f: &impl Fn([T; I]) -> [T; O],
) {
    // The pointers by value: read through a reference, they would be reloaded after every
    // store (which might have changed them), and the loop would not vectorise.
    let (ins, outs) = (*ins, *outs);
    // A tile of `len` elements from `k`; always inlined, so whole tiles get a constant length.
    let tile = |k: usize, len: usize| {
        let mut x = [[T::ZERO; TILE]; I];
        for (x, p) in x.iter_mut().zip(ins) {
            // SAFETY: [k, k + len) lies in `range`; `x` is a stack copy, so overlap-free.
            unsafe { std::ptr::copy_nonoverlapping(p.0.add(k), x.as_mut_ptr(), len) };
        }
        #[allow(clippy::needless_range_loop, reason = "t indexes every input's tile")]
        for t in 0..len {
            let y = f(std::array::from_fn(|i| x[i][t]));
            for (p, v) in outs.iter().zip(y) {
                // SAFETY: k + t < range.end.
                unsafe { *p.0.add(k + t) = v };
            }
        }
    };
    let mut k = range.start;
    while k + TILE <= range.end {
        tile(k, TILE);
        k += TILE;
    }
    if k < range.end {
        tile(k, range.end - k);
    }
}

/// Elements of scratch (of f32 or f64) that [`Io::split_scratch_f64`] needs for `len` f64s:
/// two per f64 for f32, and one more for alignment.
pub fn f64_scratch_len(len: usize) -> usize {
    2 * len + 1
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: parallel chunks of `map` touch disjoint output elements and only read inputs.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Dims a broadcast keeps after merging runs of dims that index memory alike; enough for any
/// broadcast of tensors up to this rank, and for most of higher ones.
const MAX_DIMS: usize = 8;

/// Maps an index of the output to an offset in a broadcast input, without allocating.
struct Broadcast {
    /// Output dims (merged where possible) and the input's stride along each (0 where
    /// broadcast); the first `rank` entries are used.
    dims: [usize; MAX_DIMS],
    strides: [usize; MAX_DIMS],
    rank: usize,
    kind: BroadcastKind,
}

#[derive(Clone, Copy, PartialEq)]
enum BroadcastKind {
    Same,
    Scalar,
    Strided,
}

struct Cursor {
    offset: usize,
    coord: [usize; MAX_DIMS],
}

impl Broadcast {
    fn new(input: &[usize], out: &[usize], len: usize) -> Broadcast {
        let numel: usize = input.iter().product();
        let total: usize = out.iter().product();
        assert_eq!(numel, len, "input buffer does not match its type");
        let flat = |kind| Broadcast {
            dims: [0; MAX_DIMS],
            strides: [0; MAX_DIMS],
            rank: 0,
            kind,
        };
        if numel == total
            && input
                .iter()
                .filter(|&&d| d != 1)
                .eq(out.iter().filter(|&&d| d != 1))
        {
            return flat(BroadcastKind::Same);
        }
        if numel == 1 {
            return flat(BroadcastKind::Scalar);
        }
        assert!(input.len() <= out.len(), "broadcast rank");
        let pad = out.len() - input.len();
        let mut b = flat(BroadcastKind::Strided);
        // Innermost first: (dim, stride) pairs, merging a dim into the previous (inner) one when
        // both broadcast, or when the input is contiguous across them.
        let mut s = 1;
        let mut inner: Option<(usize, usize)> = None;
        let mut merged = [(0usize, 0usize); MAX_DIMS];
        let mut count = 0;
        for d in (0..out.len()).rev() {
            let od = out[d];
            let id = if d >= pad { input[d - pad] } else { 1 };
            assert!(id == od || id == 1, "broadcast shape");
            let stride = if id == 1 { 0 } else { s };
            s *= id;
            if od == 1 {
                continue;
            }
            match inner {
                Some((dim, st)) if (st == 0 && stride == 0) || (st != 0 && stride == st * dim) => {
                    inner = Some((dim * od, st));
                }
                Some(prev) => {
                    assert!(
                        count < MAX_DIMS,
                        "a broadcast over more than {MAX_DIMS} alternating dims"
                    );
                    merged[count] = prev;
                    count += 1;
                    inner = Some((od, stride));
                }
                None => inner = Some((od, stride)),
            }
        }
        if let Some(prev) = inner {
            assert!(
                count < MAX_DIMS,
                "a broadcast over more than {MAX_DIMS} alternating dims"
            );
            merged[count] = prev;
            count += 1;
        }
        // Outermost first, as the cursor walks them.
        for (i, &(dim, stride)) in merged[..count].iter().rev().enumerate() {
            b.dims[i] = dim;
            b.strides[i] = stride;
        }
        b.rank = count;
        b
    }

    fn cursor(&self, start: usize) -> Cursor {
        let mut c = Cursor {
            offset: 0,
            coord: [0; MAX_DIMS],
        };
        match self.kind {
            BroadcastKind::Same => c.offset = start,
            BroadcastKind::Scalar => {}
            BroadcastKind::Strided => {
                let mut rest = start;
                for d in (0..self.rank).rev() {
                    c.coord[d] = rest % self.dims[d];
                    rest /= self.dims[d];
                    c.offset += c.coord[d] * self.strides[d];
                }
            }
        }
        c
    }
}

impl Cursor {
    #[inline]
    fn advance(&mut self, b: &Broadcast) {
        match b.kind {
            BroadcastKind::Same => self.offset += 1,
            BroadcastKind::Scalar => {}
            BroadcastKind::Strided => {
                for d in (0..b.rank).rev() {
                    self.coord[d] += 1;
                    self.offset += b.strides[d];
                    if self.coord[d] < b.dims[d] {
                        return;
                    }
                    self.offset -= self.coord[d] * b.strides[d];
                    self.coord[d] = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-place map (output 0 over input 1) over several parallel chunks and a short last
    /// tile: every element from its own inputs, read before written.
    #[test]
    fn in_place_map_reads_each_element_before_writing_it() {
        let n = 3 * (1 << 14) + 7;
        let t = [TensorType::f32(vec![n])];
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut b: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let ins = [(a.as_ptr() as *mut f32, n), (b.as_mut_ptr(), n)];
        let outs = [(b.as_mut_ptr(), n)];
        let types = [t[0].clone(), t[0].clone()];
        // SAFETY: the buffers outlive the Io; the only aliasing is the in-place output.
        let mut io =
            unsafe { Io::from_raw(&ins, &outs, true, &types, &t, StepCtx::default(), &mut []) };
        io.map(|[a, b]| [a * 2.0 + b]);
        for (i, &v) in b.iter().enumerate() {
            assert_eq!(v, (2 * i + i % 7) as f32, "element {i}");
        }
    }

    /// `map_tiles` in place over several parallel chunks and a short last tile, with a
    /// broadcast input: the values `map` gives.
    #[test]
    fn map_tiles_gives_what_map_gives() {
        let (rows, cols) = (3 * (1 << 14) / 7 + 5, 7);
        let n = rows * cols;
        let t = [TensorType::f32(vec![rows, cols])];
        let types = [t[0].clone(), TensorType::f32(vec![cols])];
        let row: Vec<f32> = (0..cols).map(|j| j as f32 - 2.5).collect();
        let start: Vec<f32> = (0..n).map(|i| (i % 11) as f32 * 0.5).collect();
        let mut want = start.clone();
        let ins = [
            (start.as_ptr() as *mut f32, n),
            (row.as_ptr() as *mut f32, cols),
        ];
        let outs = [(want.as_mut_ptr(), n)];
        // SAFETY: the buffers outlive the Io; nothing aliases.
        let mut io =
            unsafe { Io::from_raw(&ins, &outs, false, &types, &t, StepCtx::default(), &mut []) };
        io.map(|[a, b]| [(a * b).max(0.0)]);
        let mut got = start.clone();
        let ins = [(got.as_mut_ptr(), n), (row.as_ptr() as *mut f32, cols)];
        let outs = [(got.as_mut_ptr(), n)];
        // SAFETY: as above, with the output over input 0 (in place).
        let mut io =
            unsafe { Io::from_raw(&ins, &outs, true, &types, &t, StepCtx::default(), &mut []) };
        io.map_tiles::<2>(|[a, b], _, y| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = (a * b).max(0.0);
            }
        });
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    /// The offsets a broadcast yields for every output index, against numpy's rule computed
    /// directly.
    #[test]
    fn merged_broadcasts_index_like_numpy() {
        let cases: [(&[usize], &[usize]); 7] = [
            (&[1, 3, 1, 1], &[2, 3, 4, 5]),
            (&[3, 1], &[2, 3, 4]),
            (&[2, 1, 4, 5, 6, 1, 8, 1, 2], &[2, 3, 4, 5, 6, 7, 8, 3, 2]),
            (&[4, 5], &[2, 3, 4, 5]),
            (&[2, 1, 1, 5], &[2, 3, 4, 5]),
            (&[1, 1], &[1, 1]),
            (&[5], &[1, 5]),
        ];
        for (input, out) in cases {
            let numel: usize = input.iter().product();
            let total: usize = out.iter().product();
            let b = Broadcast::new(input, out, numel);
            let pad = out.len() - input.len();
            for start in [0, 1, 7, total / 2] {
                if start >= total {
                    continue;
                }
                let mut c = b.cursor(start);
                for k in start..total {
                    // numpy: the input index of each output coordinate.
                    let mut rest = k;
                    let mut want = 0;
                    let mut stride = 1;
                    for d in (0..out.len()).rev() {
                        let coord = rest % out[d];
                        rest /= out[d];
                        if d >= pad {
                            let id = input[d - pad];
                            if id != 1 {
                                want += coord * stride;
                            }
                            stride *= id;
                        }
                    }
                    assert_eq!(c.offset, want, "{input:?} -> {out:?} at {k}");
                    c.advance(&b);
                }
            }
        }
    }
}
