// matmul.wgsl's register-blocked `matmul` kernel for a packed-f16 B (a Linear weight) on
// adapters that grant `shader-f16`: b is bound as `array<vec2<f16>>` and each element
// converted with `f32(...)` instead of `unpack2x16float` on a u32 word; accumulation and
// everything else are f32 and the same code (`tests/shaders.rs` checks that every function
// but `load_b` is identical to matmul.wgsl's). The op picks it for packed weights when the
// device has `shader-f16` (src/ops/matmul.rs); the baseline kernel stays in matmul.wgsl.

enable f16;

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

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // (batches, m, k)
// The packed-f16 weight (element 2i in .x of pair i, offsets in pairs) read as f16 directly.
@group(0) @binding(2) var<storage, read> b: array<vec2<f16>>;  // (n, k) or (k, n), unbatched
@group(0) @binding(3) var<storage, read> bias: array<f32>;     // (n)
@group(0) @binding(4) var<storage, read> residual: array<f32>; // (batches, m, n)
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (batches, m, n)

// Element `i` of b counted from `b_off` (in f16 pairs).
fn load_b(i: u32) -> f32 {
    return f32(b[p.b_off + (i >> 1u)][i & 1u]);
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
