// Shared by the multi-tensor kernels (src/kernel/gpu/multi.rs), appended to their source. Their
// Params end with the fields below in place of a `//MULTI` marker: the rows of the table, the
// words per row, and the table.
//
// Binding b_k is a window over the k-th input (then output) of every member. Row t of the
// table holds member t's first workgroup, its element count, then its word offset in each
// window (b0, b1, ...), which the executor wrote. Workgroup g takes elements
// [c·MULTI_CHUNK, (c + 1)·MULTI_CHUNK) of one member, so a chunk never spans two; each thread
// runs the single-tensor entry's formula on its elements, so the bits are the unfused ones.

const MULTI_CHUNK: u32 = 1024u;

fn cell(t: u32, c: u32) -> u32 {
    let w = t * p.row + c;
    return p.table[w / 4u][w % 4u];
}

struct Span {
    t: u32,
    start: u32,
    end: u32,
}

// The member and element range of this workgroup: the last row whose first workgroup is at
// most g (a binary search). Past the last chunk (a folded grid's padding) the range is empty.
fn span(wid: vec3<u32>, nwg: vec3<u32>) -> Span {
    let g = wid.y * nwg.x + wid.x;
    var lo = 0u;
    var hi = p.tensors;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (cell(mid, 0u) <= g) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let start = (g - cell(lo, 0u)) * MULTI_CHUNK;
    return Span(lo, start, min(cell(lo, 1u), start + MULTI_CHUNK));
}
