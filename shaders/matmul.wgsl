// Batched matrix product with a fused epilogue (src/ops/matmul.rs):
//   out[b, m, n] = alpha · Σ_k a[b, m, k] · B[b, k, n] + bias[n] + residual[b, m, n]
// B[b, k, n] is read as b[b_off + b·b_batch + k·b_stride_k + n·b_stride_n], so one kernel
// serves b stored (K, N) (a matmul) and b stored (N, K) (a PyTorch Linear weight, transposed).
// A batch stride of 0 broadcasts an operand over the batch.
//
// Register blocking without workgroup memory: each invocation accumulates a 4×4 block of
// outputs in registers, reading 4 values of a and 4 of B per k for 16 FMAs. Shared-memory
// tiling needs two barriers per k-tile, and barriers cost more than they save on software
// GPUs (lavapipe, SwiftShader); neighbouring invocations read the same a rows and adjacent
// B columns at the same time, so the caches do the sharing instead. The invocation's rows
// and columns are strided by the workgroup size (row0 + i·WG_Y, col0 + j·WG_X) so that
// adjacent invocations touch adjacent columns (coalesced reads and writes on real GPUs).
// Rows and columns past the matrix edge are clamped when loading (so the k loop has no
// branch) and skipped when storing.
//
// The grid is one workgroup per (batch, row tile, column tile), linearised and folded into
// (x, y) to respect maxComputeWorkgroupsPerDimension.

struct MatmulParams {
    m: u32,          // rows of a and out in this dispatch
    n: u32,
    k: u32,
    batches: u32,    // batch items in this dispatch
    a_off: u32,      // element offsets into each binding (alignment remainders)
    a_batch: u32,    // elements between batch items of a (0: broadcast)
    b_off: u32,
    b_batch: u32,    // elements between batch items of b (0: broadcast)
    b_stride_k: u32,
    b_stride_n: u32,
    bias_off: u32,
    res_off: u32,
    out_off: u32,
    tiles_n: u32,    // column tiles (WG_X·4 wide)
    tiles_m: u32,    // row tiles (WG_Y·4 high)
    alpha: f32,
}

override WG_X: u32 = 16u;            // invocations along n; a tile is 4·WG_X columns
override WG_Y: u32 = 16u;            // invocations along m; a tile is 4·WG_Y rows
override HAS_BIAS: bool = false;     // without it `bias` is a dummy binding, never read
override HAS_RESIDUAL: bool = false; // without it `residual` is a dummy binding, never read
// b holds f16 pairs packed in u32 words (`pack2x16float` layout: element 2i in the low half
// of word i) instead of f32 bits: half the memory and bandwidth of a Linear weight, and
// `unpack2x16float` needs no `shader-f16` feature. b is then a shared (unbatched) operand.
override PACKED_B: bool = false;

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // (batches, m, k)
// u32 so one binding serves both storages: f32 bits (bitcast, free) or packed f16 pairs.
@group(0) @binding(2) var<storage, read> b: array<u32>;        // (batches, k, n) or (batches, n, k)
@group(0) @binding(3) var<storage, read> bias: array<f32>;     // (n)
@group(0) @binding(4) var<storage, read> residual: array<f32>; // (batches, m, n)
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (batches, m, n)

// Element `i` of b counted from `b_off` (in f32 elements, or in words when packed).
fn load_b(i: u32) -> f32 {
    if (PACKED_B) {
        return unpack2x16float(b[p.b_off + (i >> 1u)])[i & 1u];
    }
    return bitcast<f32>(b[p.b_off + i]);
}

fn store(batch: u32, row: u32, cols: vec4<u32>, acc: vec4<f32>) {
    if (row >= p.m) { return; }
    let base = (batch * p.m + row) * p.n;
    for (var j = 0u; j < 4u; j++) {
        let col = cols[j];
        if (col < p.n) {
            var v = p.alpha * acc[j];
            if (HAS_BIAS) { v += bias[p.bias_off + col]; }
            if (HAS_RESIDUAL) { v += residual[p.res_off + base + col]; }
            out[p.out_off + base + col] = v;
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wg.x + wg.y * nwg.x;
    let tiles = p.tiles_n * p.tiles_m;
    let batch = t / tiles;
    if (batch >= p.batches) { return; }
    let r = t - batch * tiles;
    let tm = r / p.tiles_n;
    let tn = r - tm * p.tiles_n;

    let step = vec4<u32>(0u, 1u, 2u, 3u);
    let rows = vec4<u32>(tm * WG_Y * 4u + lid.y) + step * WG_Y;
    let cols = vec4<u32>(tn * WG_X * 4u + lid.x) + step * WG_X;
    let a_row = p.a_off + batch * p.a_batch + min(rows, vec4<u32>(p.m - 1u)) * p.k;
    let b_col = batch * p.b_batch + min(cols, vec4<u32>(p.n - 1u)) * p.b_stride_n;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var bk = b_col;
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(load_b(bk.x), load_b(bk.y), load_b(bk.z), load_b(bk.w));
        acc0 = fma(vec4<f32>(a[a_row.x + kk]), bv, acc0);
        acc1 = fma(vec4<f32>(a[a_row.y + kk]), bv, acc1);
        acc2 = fma(vec4<f32>(a[a_row.z + kk]), bv, acc2);
        acc3 = fma(vec4<f32>(a[a_row.w + kk]), bv, acc3);
        bk += vec4<u32>(p.b_stride_k);
    }
    store(batch, rows.x, cols, acc0);
    store(batch, rows.y, cols, acc1);
    store(batch, rows.z, cols, acc2);
    store(batch, rows.w, cols, acc3);
}

// The textbook baseline, kept only as the yardstick of `webdiffusion bench --kernels`: one
// output per invocation, 16×16 tiles of a and B staged in workgroup memory with two barriers
// per k-tile. `tiles_n` / `tiles_m` count 16-wide tiles here.
const BT: u32 = 16u;
var<workgroup> tile_a: array<array<f32, 16>, 16>;
var<workgroup> tile_b: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16)
fn matmul_tiled16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wg.x + wg.y * nwg.x;
    let tiles = p.tiles_n * p.tiles_m;
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    let batch = t / tiles;
    if (batch >= p.batches) { return; }
    let r = t - batch * tiles;
    let tm = r / p.tiles_n;
    let tn = r - tm * p.tiles_n;
    let row = tm * BT + lid.y;
    let col = tn * BT + lid.x;
    let a0 = p.a_off + batch * p.a_batch + min(row, p.m - 1u) * p.k;
    let b0 = batch * p.b_batch + min(col, p.n - 1u) * p.b_stride_n;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += BT) {
        let ka = k0 + lid.x;
        let kb = k0 + lid.y;
        tile_a[lid.y][lid.x] = select(0.0, a[a0 + min(ka, p.k - 1u)], ka < p.k);
        tile_b[lid.y][lid.x] = select(0.0, load_b(b0 + min(kb, p.k - 1u) * p.b_stride_k), kb < p.k);
        workgroupBarrier();
        for (var kk = 0u; kk < BT; kk++) {
            acc = fma(tile_a[lid.y][kk], tile_b[kk][lid.x], acc);
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        let o = (batch * p.m + row) * p.n + col;
        var v = p.alpha * acc;
        if (HAS_BIAS) { v += bias[p.bias_off + col]; }
        if (HAS_RESIDUAL) { v += residual[p.res_off + o]; }
        out[p.out_off + o] = v;
    }
}
