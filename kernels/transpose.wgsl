// dst [cols, rows] = src [rows, cols]ᵀ, through 16 x 16 tiles of workgroup memory so that both
// the reads and the writes run along rows (src/ops/matmul.rs: x·wᵀ multiplies by a transposed
// copy of w, which the GEMM core stages faster than w's rows).

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

// One padding column, so a column of the tile spreads over the banks.
var<workgroup> tile: array<f32, 272>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = wid.y * nwg.x + wid.x;
    let across = (p.cols + 15u) / 16u;
    let r0 = (t / across) * 16u;
    let c0 = (t % across) * 16u;
    let ty = lid / 16u;
    let tx = lid % 16u;
    if (r0 + ty < p.rows && c0 + tx < p.cols) {
        tile[ty * 17u + tx] = src[(r0 + ty) * p.cols + c0 + tx];
    }
    workgroupBarrier();
    // dst's row c0 + ty, column r0 + tx.
    if (c0 + ty < p.cols && r0 + tx < p.rows) {
        dst[(c0 + ty) * p.rows + r0 + tx] = tile[tx * 17u + ty];
    }
}
