//! The tiled GEMM (kernels/gemm.wgsl) that matmul and convolution run on, with split-K: a
//! product whose output has few tiles but a long inner dim (a weight gradient, where the inner
//! dim is batch × pixels) is cut into slices along it, each slice's partial product written to
//! the launch's workspace, then added in slice order (kernels/split_k.wgsl). That fills the
//! GPU, and partial sums are more accurate than one long running sum. The split depends on the
//! shapes only, so a config runs the same kernels (and bits) on every adapter.

use super::{Bind, Dispatch, MAX_GROUPS, PREAMBLE, Params, SCRATCH_ALIGN, Shader, grid, groups};

/// Split-K slices are a multiple of this many values of the inner dim, so of the core's
/// step through it (kernels/gemm.wgsl `TK`).
const CHUNK_MULTIPLE: usize = 16;

/// The output tile one workgroup of 256 threads computes: `rows` x `cols`, with `wy` threads
/// along the rows (kernels/gemm.wgsl `TM`, `TN`, `WY`). Every shape gives each thread 4x4, 8x4,
/// 8x8 or 16x4 outputs. Tiles of 64 outputs a thread stage the inner dim 8 at a time in two
/// buffers, the others 16 at a time in one: workgroup memory at most 16 · (rows + cols + 8)
/// words, 19 KiB (Metal has 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub rows: usize,
    pub cols: usize,
    pub wy: usize,
}

impl Tile {
    /// The shapes: a GEMM with 16 or 32 rows (the early convolutions' output channels) would
    /// waste most of a 64-row tile; the 64-outputs-per-thread tiles reuse each value read from
    /// workgroup memory twice as often as the 4x4 ones, but leave fewer workgroups. On the
    /// H100 (docs/performance.md, session 9) a 128x256 tile (8x16 per thread) ran slower than
    /// 128x128 with two buffers (its registers leave one workgroup per SM), and 64x256 ran
    /// ResNet-18 6% faster as 16x4 per thread (wy 4) than as 8x8.
    pub const ALL: [Tile; 6] = [
        Tile {
            rows: 16,
            cols: 256,
            wy: 4,
        },
        Tile {
            rows: 32,
            cols: 128,
            wy: 8,
        },
        Tile {
            rows: 32,
            cols: 256,
            wy: 4,
        },
        Tile {
            rows: 64,
            cols: 64,
            wy: 16,
        },
        Tile {
            rows: 64,
            cols: 256,
            wy: 4,
        },
        Tile {
            rows: 128,
            cols: 128,
            wy: 16,
        },
    ];

    /// The tile for a GEMM of `groups` × [rows, cols]: from its shape alone, so every adapter
    /// runs the same kernels. The largest tile that fits the rows and still leaves 256
    /// workgroups (two waves of an H100's 132 SMs), else the smaller one.
    pub fn for_shape(rows: usize, cols: usize, groups: usize) -> Tile {
        let [t16, t32, t32_wide, t64, t64_wide, t128] = Tile::ALL;
        let enough = |t: Tile| t.tiles(rows, cols) * groups >= 256;
        match rows {
            0..=16 => t16,
            17..=32 if enough(t32_wide) => t32_wide,
            17..=32 => t32,
            33..=64 if enough(t64_wide) => t64_wide,
            _ if rows > 64 && enough(t128) => t128,
            _ => t64,
        }
    }

    pub fn tiles(&self, rows: usize, cols: usize) -> usize {
        rows.div_ceil(self.rows) * cols.div_ceil(self.cols)
    }

    /// Whether the core stages the inner dim in two buffers of 8 (else one of 16): for tiles
    /// of 64 outputs a thread, whose registers leave no room for 16-deep staging.
    pub fn double_buffered(&self) -> bool {
        self.rows * self.cols / 256 >= 64
    }

    /// kernels/gemm.wgsl with this tile's constants.
    fn core(&self) -> String {
        const CORE: &str = include_str!("../../../kernels/gemm.wgsl");
        let (tk, stages) = if self.double_buffered() {
            (8, 2)
        } else {
            (16, 1)
        };
        [
            ("TM", 64, self.rows),
            ("TN", 64, self.cols),
            ("WY", 16, self.wy),
            ("TK", 16, tk),
            ("STAGES", 1, stages),
        ]
        .iter()
        .fold(CORE.to_string(), |src, &(name, default, value)| {
            let line = |v| format!("const {name}: u32 = {v}u;");
            assert!(
                src.contains(&line(default)),
                "kernels/gemm.wgsl declares {name}"
            );
            src.replacen(&line(default), &line(value), 1)
        })
    }
}
/// Workgroups split-K aims for: enough to fill a large GPU (132 SMs on an H100) a few times.
const TARGET_GROUPS: usize = 2048;
/// The shortest slice worth its partial sums' traffic.
const MIN_CHUNK: usize = 256;
const MAX_SLICES: usize = 256;
/// Words of workspace one GEMM launch may keep (32 MiB), partial sums and a transposed
/// operand together: workspace shares the arena with the activations, so it counts against
/// the memory peak. At 16 MiB ResNet-18's weight gradients (batch 512) got 4 slices or none and
/// filled half an H100.
const MAX_WORKSPACE: usize = 8 << 20;

/// How the inner dim `k` of a GEMM with `tiles` output tiles of `words` outputs in all is cut:
/// (slices, chunk), every slice `chunk` long (a multiple of `CHUNK_MULTIPLE`) except the last.
pub fn split_k(tiles: usize, k: usize, words: usize) -> (usize, usize) {
    split_k_within(tiles, k, words, MAX_WORKSPACE)
}

/// `split_k` with at most `budget` words of partial sums.
fn split_k_within(tiles: usize, k: usize, words: usize, budget: usize) -> (usize, usize) {
    let want = (TARGET_GROUPS / tiles.max(1)).max(1);
    let most = (k / MIN_CHUNK).max(1).min(budget / words.max(1));
    let slices = want.min(most).clamp(1, MAX_SLICES);
    let chunk = k
        .div_ceil(slices)
        .next_multiple_of(CHUNK_MULTIPLE)
        .max(CHUNK_MULTIPLE);
    (k.div_ceil(chunk).max(1), chunk)
}

/// What a GEMM with an epilogue stores in place of each finished sum `v` at output index `o`
/// (kernels/gemm.wgsl `finish`): `a = v + bias[o % cols]`, then `expr` of `a`. The sum is
/// complete first, split or not (split-K's reduce finishes it), so the stored value is what a
/// separate bias add and activation would store.
#[derive(Clone, Debug, PartialEq)]
pub struct Epilogue {
    /// The bias, `cols` values, read at the output's column.
    pub bias: Bind,
    pub cols: usize,
    /// WGSL functions `expr` may call.
    pub decls: String,
    /// A WGSL expression of `a`, the sum plus the bias.
    pub expr: String,
}

/// The identity `finish` of kernels/gemm.wgsl and split_k.wgsl, which an epilogue replaces.
const FINISH: &str = "fn finish(v: f32, o: u32) -> f32 {\n    return v;\n}";

impl Epilogue {
    /// `source` with its `finish` replaced by this epilogue's, the bias at `binding`.
    fn apply(&self, source: &str, binding: usize) -> String {
        let finish = format!(
            "@group(0) @binding({binding}) var<storage, read_write> bias: array<f32>;\n\n{}\n\n\
             fn finish(v: f32, o: u32) -> f32 {{\n    let a = stored(stored(v) + bias[o % {}u]);\n    \
             return {};\n}}",
            self.decls, self.cols, self.expr
        );
        assert!(
            source.contains(FINISH),
            "the kernel declares the identity `finish`"
        );
        source.replacen(FINISH, &finish, 1)
    }
}

/// Whether a GEMM of `macs` multiply-adds, whose operand `w` (read along the inner dim) it
/// reads `reuse` times over, should first copy `w` transposed into its workspace. The core
/// stages an operand that runs along the inner dim slower than one that runs along its rows or
/// columns (4096³ on an H100: 32 against 40 TFLOP/s, docs/performance.md); the copy reads and
/// writes `w` once, and pays for its dispatch (a few µs) from about 2^28 multiply-adds.
pub fn transpose_pays(macs: usize, reuse: usize) -> bool {
    reuse >= 128 && macs >= 1 << 28
}

/// The dispatch that writes `src` ([rows, cols], row-major) transposed into workspace words
/// `0..rows * cols` (kernels/transpose.wgsl), that copy's binding, and the first workspace word
/// after it that a GEMM may take.
pub fn transposed(src: Bind, rows: usize, cols: usize) -> (Dispatch, Bind, usize) {
    let copy = Bind::Scratch {
        at: 0,
        len: rows * cols,
    };
    let d = Dispatch {
        shader: Shader::file(include_str!("../../../kernels/transpose.wgsl"), "main"),
        bindings: vec![src, copy],
        params: Params::new().u32(rows).u32(cols).done(),
        workgroups: groups(rows.div_ceil(16) * cols.div_ceil(16)),
    };
    (d, copy, (rows * cols).next_multiple_of(SCRATCH_ALIGN))
}

/// The operand files' uniform declaration, which `Gemm` replaces by a constant.
const UNIFORM_PARAMS: &str = "@group(0) @binding(0) var<uniform> p: Params;";

/// One GEMM per group: `out_g [rows, cols] = A_g [rows, inner] · B_g [inner, cols]`.
pub struct Gemm {
    /// The operand file (kernels/matmul.wgsl, conv.wgsl): `Params`, bindings and loaders.
    pub operands: String,
    /// The operand file's own `Params` words, before the split fields the core appends.
    pub params: Params,
    pub rows: usize,
    pub cols: usize,
    pub inner: usize,
    pub groups: usize,
    /// The inputs bound to @binding(2) and (3).
    pub inputs: [Bind; 2],
    /// Bias and activation applied to each finished sum (matmul only: output index `o` at
    /// column `o % cols`).
    pub epilogue: Option<Epilogue>,
}

impl Gemm {
    /// The dispatches: the GEMM writing output 0, or its slices into workspace and the sum.
    pub fn dispatches(self) -> Result<Vec<Dispatch>, String> {
        self.dispatches_from(0)
    }

    /// `dispatches` for a launch whose workspace words below `at` (a multiple of
    /// `SCRATCH_ALIGN`) hold something else: an operand the launch prepared.
    pub fn dispatches_from(self, at: usize) -> Result<Vec<Dispatch>, String> {
        let tile = Tile::for_shape(self.rows, self.cols, self.groups);
        let tiles = tile.tiles(self.rows, self.cols);
        let words = self.groups * self.rows * self.cols;
        let (slices, chunk) = split_k_within(
            tiles * self.groups,
            self.inner,
            words,
            MAX_WORKSPACE.saturating_sub(at),
        );
        if self.groups * slices > MAX_GROUPS as usize {
            return Err(format!(
                "{} groups in {slices} slices (at most {MAX_GROUPS} on the GPU)",
                self.groups
            ));
        }
        let partials = Bind::Scratch {
            at,
            len: slices * words,
        };
        let target = if slices > 1 { partials } else { Bind::Out(0) };
        let params = self
            .params
            .u32(chunk)
            .u32(slices)
            .u32(if slices > 1 { words } else { 0 })
            .done();
        // The sizes are compiled in, not read from a uniform: the index arithmetic of every
        // load (an implicit im2col divides by kernel and image sizes) then divides by
        // constants, which the compiler turns into multiplies.
        let fields: Vec<String> = params.iter().map(|w| format!("{w}u")).collect();
        let operands = self.operands.replacen(
            UNIFORM_PARAMS,
            &format!("const p = Params({});", fields.join(", ")),
            1,
        );
        assert_ne!(
            operands, self.operands,
            "an operand file declares `{UNIFORM_PARAMS}`"
        );
        let [x, y, _] = groups(tiles);
        // The epilogue goes where the sum is finished: the core, or split-K's reduce.
        let (mut core, mut core_binds) =
            (tile.core(), vec![self.inputs[0], self.inputs[1], target]);
        if let (Some(e), 1) = (&self.epilogue, slices) {
            core = e.apply(&core, 2 + core_binds.len());
            core_binds.push(e.bias);
        }
        let mut ds = vec![Dispatch {
            shader: Shader {
                source: format!("{PREAMBLE}\n{operands}\n{core}").into(),
                entry: "main",
            },
            bindings: core_binds,
            params,
            workgroups: [x, y, (self.groups * slices) as u32],
        }];
        if slices > 1 {
            let mut reduce = Shader::file(include_str!("../../../kernels/split_k.wgsl"), "main");
            let mut bindings = vec![partials, Bind::Out(0)];
            if let Some(e) = &self.epilogue {
                reduce.source = e.apply(&reduce.source, 2 + bindings.len()).into();
                bindings.push(e.bias);
            }
            ds.push(Dispatch {
                shader: reduce,
                bindings,
                params: Params::new().u32(words).u32(slices).done(),
                workgroups: grid(words),
            });
        }
        Ok(ds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_k_fills_the_gpu_only_where_tiles_are_few_and_k_is_long() {
        // ResNet-20's first weight gradient: 3 tiles, k = 128 images × 784 pixels.
        let (s, chunk) = split_k(3, 100_352, 16 * 144);
        assert_eq!((s, chunk), (251, 400));
        // ResNet-18's third stage at batch 512 (256 channels, 8x8 pixels): 36 tiles would
        // want 56 slices; the partial sums' 32 MiB bound holds it to 14.
        assert_eq!(split_k(36, 512 * 64, 256 * 2304).0, 14);
        // Plenty of tiles, or a short k: one slice covering all of k.
        assert_eq!(split_k(4096, 4096, 4096 * 4096), (1, 4096));
        assert_eq!(split_k(1, 300, 1).0, 1);
        assert_eq!(split_k(1, 511, 1).0, 1);
        assert_eq!(split_k(1, 512, 1).0, 2);
        for (tiles, k) in [(1, 1), (7, 10_001), (300, 65_537), (2049, 1 << 20)] {
            let (s, chunk) = split_k(tiles, k, tiles * 4096);
            assert!((1..=MAX_SLICES).contains(&s));
            assert!(
                chunk * s >= k && (s == 1 || chunk * (s - 1) < k),
                "{tiles} {k}"
            );
        }
    }
}
