// Normalisation of contiguous rows: GroupNorm and LayerNorm are the same kernel.
//   GroupNorm: x (N, C, *S) is (N·G, (C/G)·|S|) rows; the affine index of row element j is
//              (row % G)·(C/G) + j / |S|   (groups = G, cpg = C/G, inner = |S|)
//   LayerNorm: x (..., *D) is (rows, |D|) rows; the affine index is j   (groups = 1, inner = 1)
// out = ((x − mean) · rsqrt(var + eps)) · weight + bias, then optionally SiLU; var is the
// biased variance (PyTorch).
//
// Stability: every mean is kept as shift + dm with dm = Σ(x − shift)/n and the row's (or
// chunk's) first value as shift, and every centred value is computed as (x − shift) − dm,
// so values like 100 ± 1 lose nothing to the offset (not even the f32 rounding of the mean
// itself); the variance is a second pass Σ(x − mean)², never E[x²] − mean².
//
// Two strategies, one binding layout (so one file, one pipeline layout):
//   norm_rows:    one workgroup per row: mean pass, variance pass, normalise pass.
//                 For rows of up to a few thousand elements.
//   norm_partial: one workgroup per (row, chunk of CHUNK elements): the chunk's (shift, dm,
//                 M2) into scratch; norm_combine: one workgroup per row merges the chunks
//                 (Chan et al.'s pairwise update, again in two passes) into (shift, dm, rstd);
//                 norm_apply: one thread per element. For long rows (a GroupNorm group of
//                 40·64·64 elements), where one workgroup per row would leave the GPU idle.
// Reductions are two-level (256 → 16 → 1): two barriers per sum, because barriers are the
// expensive part on software GPUs and a 16-term serial sum is nothing on any GPU.

struct NormParams {
    rows: u32,     // rows in this dispatch
    row_len: u32,  // L, elements normalised together
    row0: u32,     // global index of this dispatch's first row (selects the group)
    groups: u32,   // G for GroupNorm, 1 for LayerNorm
    inner: u32,    // row elements per affine entry: |S| (GroupNorm), 1 (LayerNorm)
    cpg: u32,      // affine entries per row: C/G (GroupNorm), L (LayerNorm)
    chunks: u32,   // chunks per row (split strategy)
    eps: f32,
    off: u32,      // elements from the start of the x and out bindings to row 0 (same layout)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
override CHUNK: u32 = 4096u;
override HAS_WEIGHT: bool = false;
override HAS_BIAS: bool = false;
override SILU: bool = false;

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;              // (rows, L) from off
@group(0) @binding(2) var<storage, read> weight: array<f32>;         // (G·cpg): (C) or (*D)
@group(0) @binding(3) var<storage, read> bias: array<f32>;           // (G·cpg): (C) or (*D)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;      // (rows, L) from off
@group(0) @binding(5) var<storage, read_write> scratch: array<vec4<f32>>;  // (rows·chunks) then (rows)

var<workgroup> red: array<f32, WG>;
var<workgroup> red16: array<f32, 16>;

// Sum of `v` over the workgroup, returned to every thread. Safe to call back to back: a
// thread writes `red` again only after the second barrier, when all reads of it are done,
// and `red16` only after the next call's first barrier, when all reads of it are done.
fn workgroup_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    if (lid < 16u) {
        var s = 0.0;
        for (var k = 0u; k < 16u; k++) {
            s += red[lid * 16u + k];
        }
        red16[lid] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var k = 0u; k < 16u; k++) {
        t += red16[k];
    }
    return t;
}

fn finish(v: f32, shift: f32, dm: f32, rstd: f32, row: u32, j: u32) -> f32 {
    var y = ((v - shift) - dm) * rstd;
    if (HAS_WEIGHT || HAS_BIAS) {
        let a = ((p.row0 + row) % p.groups) * p.cpg + j / p.inner;
        if (HAS_WEIGHT) {
            y = y * weight[a];
        }
        if (HAS_BIAS) {
            y = y + bias[a];
        }
    }
    if (SILU) {
        // exp(-y) overflows to +inf for y < -88: y / inf = -0, the right limit.
        y = y / (1.0 + exp(-y));
    }
    return y;
}

@compute @workgroup_size(WG)
fn norm_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let n = p.row_len;
    let base = p.off + row * n;
    let shift = x[base];
    var s = 0.0;
    for (var j = lid; j < n; j += WG) {
        s += x[base + j] - shift;
    }
    let dm = workgroup_sum(s, lid) / f32(n);
    var q = 0.0;
    for (var j = lid; j < n; j += WG) {
        let d = (x[base + j] - shift) - dm;
        q += d * d;
    }
    let rstd = 1.0 / sqrt(workgroup_sum(q, lid) / f32(n) + p.eps);
    for (var j = lid; j < n; j += WG) {
        out[base + j] = finish(x[base + j], shift, dm, rstd, row, j);
    }
}

@compute @workgroup_size(WG)
fn norm_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let id = wg.x + wg.y * nwg.x;   // row · chunks + chunk
    if (id >= p.rows * p.chunks) {
        return;
    }
    let row = id / p.chunks;
    let start = (id - row * p.chunks) * CHUNK;
    let n = min(CHUNK, p.row_len - start);
    let base = p.off + row * p.row_len + start;
    let shift = x[base];
    var s = 0.0;
    for (var j = lid; j < n; j += WG) {
        s += x[base + j] - shift;
    }
    let dm = workgroup_sum(s, lid) / f32(n);
    var q = 0.0;
    for (var j = lid; j < n; j += WG) {
        let d = (x[base + j] - shift) - dm;
        q += d * d;
    }
    let m2 = workgroup_sum(q, lid);
    if (lid == 0u) {
        scratch[id] = vec4<f32>(shift, dm, m2, 0.0);
    }
}

@compute @workgroup_size(WG)
fn norm_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let chunks = p.chunks;
    let first = row * chunks;
    let shift = scratch[first].x;
    // Chan et al.: mean = Σ nᵢ·meanᵢ / n, M2 = Σ M2ᵢ + Σ nᵢ·(meanᵢ − mean)², with every
    // mean taken relative to the first chunk's shift.
    var s = 0.0;
    for (var c = lid; c < chunks; c += WG) {
        let st = scratch[first + c];
        let nc = f32(min(CHUNK, p.row_len - c * CHUNK));
        s += nc * ((st.x - shift) + st.y);
    }
    let dm = workgroup_sum(s, lid) / f32(p.row_len);
    var q = 0.0;
    for (var c = lid; c < chunks; c += WG) {
        let st = scratch[first + c];
        let nc = f32(min(CHUNK, p.row_len - c * CHUNK));
        let d = ((st.x - shift) + st.y) - dm;
        q += st.z + nc * d * d;
    }
    let var_ = workgroup_sum(q, lid) / f32(p.row_len);
    if (lid == 0u) {
        scratch[p.rows * chunks + row] = vec4<f32>(shift, dm, 1.0 / sqrt(var_ + p.eps), 0.0);
    }
}

@compute @workgroup_size(WG)
fn norm_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.rows * p.row_len) {
        return;
    }
    let row = i / p.row_len;
    let j = i - row * p.row_len;
    let st = scratch[p.rows * p.chunks + row];
    out[p.off + i] = finish(x[p.off + i], st.x, st.y, st.z, row, j);
}
