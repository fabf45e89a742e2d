//! The sizes of one convolution (`Geom`), how a launch divides its workspace (`Work`) and how
//! weight gradients split their images into runs: what the im2col and the direct paths share.

/// Sizes of one convolution, from the shapes of its input, output and kernel.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) stride: [usize; 2],
    pub(super) pad: [usize; 2],
    pub(super) dil: [usize; 2],
    pub(super) groups: usize,
}

impl Geom {
    /// Input and output channels per group.
    pub(super) fn cg(&self) -> usize {
        self.c / self.groups
    }
    pub(super) fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Rows of the unfolded input: the GEMM's inner dim.
    pub(super) fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    /// Output pixels per image: the GEMM's columns.
    pub(super) fn p(&self) -> usize {
        self.oh * self.ow
    }
    pub(super) fn hw(&self) -> usize {
        self.h * self.w
    }
    /// A 1x1, stride-1, unpadded conv reads the input as the unfolded matrix itself.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0, 0]
    }
    /// im2col scratch per image and group (none when pointwise).
    pub(super) fn cols_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.k() * self.p()
        }
    }
}

/// How a convolution launch divides its workspace: the weights packed once (`packed`, shared),
/// then `slots` private slots of `slot` elements, one per worker (an im2col buffer, and for the
/// weight gradient the packed dy), after `accs` accumulators (the weight gradient's runs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Work {
    pub(super) packed: usize,
    pub(super) accs: usize,
    pub(super) slot: usize,
}

impl Work {
    pub(super) fn len(&self, slots: usize) -> usize {
        self.packed + self.accs + slots * self.slot
    }
    /// Slots `available` elements hold, at least one (the `Io` allocates when a caller gave
    /// less than one slot's worth) and at most `most`.
    pub(super) fn slots(&self, available: usize, most: usize) -> usize {
        (available.saturating_sub(self.packed + self.accs) / self.slot).clamp(1, most.max(1))
    }
}

/// Runs of images whose weight gradients `Conv2dGradWeight` sums in parallel: fixed, so the
/// order of the sum over images does not depend on the machine's thread count.
const GRAD_WEIGHT_RUNS: usize = 16;

/// (images per run, runs) of a weight gradient over `n` images.
pub(super) fn grad_weight_runs(n: usize) -> (usize, usize) {
    let per = n.div_ceil(GRAD_WEIGHT_RUNS).max(1);
    (per, n.div_ceil(per))
}
