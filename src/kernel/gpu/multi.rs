//! Multi-tensor kernels: one dispatch applies an elementwise formula to many tensors (the
//! fusion pass's `Foreach` of updates), as PyTorch's foreach optimizers do. An instance of the
//! op is a member; its k-th tensor of every member is bound through one `Bind::Window`, and a
//! table in the kernel's `Params` gives each member's first workgroup, element count and
//! offsets in the windows (written by the executor). kernels/multi.wgsl walks the table.
//!
//! A kernel's WGSL `Params` ends with a `//MULTI` marker that `source` replaces with the
//! table's fields; its Rust parameters (`head`) are padded to 16 bytes and followed by them.

use super::{Bind, Dispatch, Shader, Window, groups};
use crate::tensor::TensorType;

/// Members one dispatch takes at most: the rows of its table.
pub const TENSORS: usize = 256;
/// Words per row: first workgroup, element count, an offset per binding (at most 10).
pub const ROW: usize = 12;
/// Elements of one dispatch's members, at most (unless one member alone has more): each
/// window then stays a small multiple of that, well within WebGPU's default 128 MiB binding.
pub const ELEMENTS: usize = 1 << 23;
/// Elements one workgroup takes (kernels/multi.wgsl `MULTI_CHUNK`).
pub const CHUNK: usize = 1024;

const HELPERS: &str = include_str!("../../../kernels/multi.wgsl");

/// `text` (a kernel with its preamble, whose `Params` ends with `//MULTI`) with the table's
/// fields in place of the marker and kernels/multi.wgsl appended.
pub fn source(text: &str) -> String {
    let fields = format!(
        "tensors: u32,\n    row: u32,\n    _multi0: u32,\n    _multi1: u32,\n    table: array<vec4<u32>, {}>,",
        TENSORS * ROW / 4
    );
    assert!(
        text.contains("//MULTI"),
        "a multi-tensor kernel marks its table"
    );
    format!("{}\n{HELPERS}", text.replace("//MULTI", &fields))
}

/// The dispatches of `entry` of `shader` (made by `source`) over `members` instances, whose
/// inputs then outputs `args` holds member after member: one per run of members within
/// `TENSORS` and `ELEMENTS` (a member's size is that of its input 0). Binding k is a window
/// over the k-th input (then output) of each member of the run.
pub fn dispatches(
    shader: &Shader,
    head: &[u32],
    members: usize,
    args: &super::KernelArgs,
) -> Result<Vec<Dispatch>, String> {
    let divides = |n: usize| members > 0 && n.is_multiple_of(members);
    if !divides(args.inputs.len()) || !divides(args.outputs.len()) {
        return Err(format!("{members} members do not divide the tensors"));
    }
    let (a, b) = (args.inputs.len() / members, args.outputs.len() / members);
    if 2 + a + b > ROW {
        return Err(format!("{} tensors per member, above {}", a + b, ROW - 2));
    }
    let size = |m: usize| -> &TensorType { args.inputs[m * a] };
    let at = head.len().next_multiple_of(4) + 4;
    let mut out = Vec::new();
    let mut first = 0;
    while first < members {
        let (mut end, mut elements) = (first, 0);
        while end < members
            && end - first < TENSORS
            && (end == first || elements + size(end).numel() <= ELEMENTS)
        {
            elements += size(end).numel();
            end += 1;
        }
        let mut table = vec![0u32; TENSORS * ROW];
        let mut chunks = 0usize;
        for (k, m) in (first..end).enumerate() {
            let n = size(m).numel();
            table[k * ROW] = u32::try_from(chunks).map_err(|_| "too many workgroups")?;
            table[k * ROW + 1] = u32::try_from(n).map_err(|_| "a member above 2^32 elements")?;
            chunks += n.div_ceil(CHUNK).max(1);
        }
        let window = |outputs: bool, role: usize, per: usize, column: usize| {
            Bind::Window(Window {
                outputs,
                first: first * per + role,
                step: per,
                count: end - first,
                table: at + 2 + column,
                row: ROW,
            })
        };
        let mut bindings: Vec<Bind> = (0..a).map(|r| window(false, r, a, r)).collect();
        bindings.extend((0..b).map(|r| window(true, r, b, a + r)));
        let mut params = head.to_vec();
        params.resize(at - 4, 0);
        params.extend([(end - first) as u32, ROW as u32, 0, 0]);
        params.extend(table);
        out.push(Dispatch {
            shader: shader.clone(),
            bindings,
            params,
            workgroups: groups(chunks),
        });
        first = end;
    }
    Ok(out)
}
