// Multi-head scaled dot-product attention with an online softmax (src/ops/attention.rs):
//   out[b, i, h, :] = Σ_j softmax_j(scale · q[b, i, h, :]·k[b, j, h, :]) · v[b, j, h, :]
// Every tensor is read through (offset, batch, token, head, channel) element strides, so the
// same kernel serves q, k, v as separate (B, N, H·D) tensors, as column slices of one fused
// (B, N, 3·H·D) projection, and guided-diffusion's channel-first (B, 3·H·D, T) layouts.
//
// One invocation per (batch item, query row, head); the workgroup is WG consecutive query
// rows of the same (batch, head), so all its invocations stream the same key and value rows
// at the same time and the caches serve them (a broadcast read), with no barrier and no
// workgroup memory: barriers are very slow on software GPUs, and workgroup memory (16 KiB
// guaranteed by WebGPU) would cap the key tile at a few keys for D = 160. Each invocation
// keeps its q row (pre-scaled) and a DV-long accumulator in private arrays; their capacity
// MAX_D is a const because WGSL only allows override-sized arrays in workgroup memory, and
// D/DV are override constants so that every loop has a trip count known when the pipeline
// is compiled (the driver can unroll it and keep the arrays in registers).
//
// Online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022): keep the
// running maximum m and sum l of exp2(s - m) over the keys seen, and rescale l and the
// accumulator by exp2(m_old - m_new) whenever the maximum grows, so no N×N score matrix
// exists and exp2 never sees a positive argument (no overflow for large logits). Scores
// are in base 2: q is pre-multiplied by scale·log2(e).
//
// Two entry points over the same bindings:
//   attention:       the above; no barrier, no workgroup memory. Fastest on software GPUs
//                    (lavapipe), where a barrier costs more than re-reading K/V from cache.
//   attention_tiled: the workgroup loads TK keys and values at a time into workgroup memory
//                    (two barriers per tile), and every invocation reads them from there;
//                    on hardware GPUs this turns WG global reads of each K/V element into
//                    one. TK·max(D, DV) ≤ TILE floats, so the tiles fit WebGPU's guaranteed
//                    16 KiB of workgroup memory for any head dim up to MAX_D.
// CAUSAL masks key j for query i when j > i (PyTorch's `is_causal`, top-left aligned: CLIP's
// text encoder); masked keys are skipped, not scored.

struct AttentionParams {
    q_off: u32, q_sb: u32, q_st: u32, q_sh: u32,   // offset, batch, token, head strides (elements)
    k_off: u32, k_sb: u32, k_st: u32, k_sh: u32,
    v_off: u32, v_sb: u32, v_st: u32, v_sh: u32,
    o_off: u32, o_sb: u32, o_st: u32, o_sh: u32,
    q_sd: u32, k_sd: u32, v_sd: u32, o_sd: u32,    // channel strides
    rows: u32,        // query rows in this dispatch
    nk: u32,          // keys
    heads: u32,
    batches: u32,     // batch items in this dispatch
    row_tiles: u32,   // ceil(rows / WG)
    scale_log2: f32,  // scale · log2(e)
    row0: u32,        // global index of this dispatch's first query row (for CAUSAL)
    _pad1: u32,
}

// Private-array capacity: the largest head dim the kernel accepts (SD uses up to 160).
const MAX_D: u32 = 256u;
// `attention_wide` (head dims up to 512, the single 512-channel head of SD's VAE) keeps only
// the accumulator in a private array and reads q from memory, so each invocation's private
// storage stays at 2 KiB; it is slower and only chosen when D or DV exceeds MAX_D.
const MAX_D_WIDE: u32 = 512u;
// exp2(NEG_BIG - s) is 0 for any finite score, and unlike -inf it cannot make the first
// rescale exp2(-inf - (-inf)) = NaN.
const NEG_BIG: f32 = -3.0e38;

override WG: u32 = 64u;
override D: u32 = 64u;   // q/k channels per head
override DV: u32 = 64u;  // v/out channels per head
override CAUSAL: bool = false;
// Keys per tile of attention_tiled: at most TILE / max(D, DV).
override TK: u32 = 32u;
const TILE: u32 = 2048u;

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;   // (B, Nq, H·D) or a strided view
@group(0) @binding(2) var<storage, read> k: array<f32>;   // (B, Nk, H·D) or a strided view
@group(0) @binding(3) var<storage, read> v: array<f32>;   // (B, Nk, H·DV) or a strided view
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // (B, Nq, H·DV) or (B, H·DV, Nq)

var<workgroup> k_tile: array<f32, TILE>;  // (TK, D)
var<workgroup> v_tile: array<f32, TILE>;  // (TK, DV)

// Keys query row `row` (dispatch-local) may see.
fn keys_for(row: u32) -> u32 {
    if (CAUSAL) {
        return min(p.nk, p.row0 + row + 1u);
    }
    return p.nk;
}

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = wg.x + wg.y * nwg.x;
    let bh = t / p.row_tiles;
    let b = bh / p.heads;
    if (b >= p.batches) { return; }
    let h = bh - b * p.heads;
    let row = (t - bh * p.row_tiles) * WG + lid;
    // No barrier follows, so invocations past the last row may leave early.
    if (row >= p.rows) { return; }

    var qr: array<f32, MAX_D>;
    let qb = p.q_off + b * p.q_sb + row * p.q_st + h * p.q_sh;
    for (var d = 0u; d < D; d++) {
        qr[d] = q[qb + d * p.q_sd] * p.scale_log2;
    }
    var acc: array<f32, MAX_D>;
    for (var d = 0u; d < DV; d++) {
        acc[d] = 0.0;
    }
    var m = NEG_BIG;
    var l = 0.0;
    let kb = p.k_off + b * p.k_sb + h * p.k_sh;
    let vb = p.v_off + b * p.v_sb + h * p.v_sh;
    let nk = keys_for(row);
    for (var j = 0u; j < nk; j++) {
        let kj = kb + j * p.k_st;
        var s = 0.0;
        for (var d = 0u; d < D; d++) {
            s = fma(qr[d], k[kj + d * p.k_sd], s);
        }
        if (s > m) {
            // The maximum grows rarely (about log N times for keys in random order), so the
            // accumulator is rescaled only then, not for every key.
            let c = exp2(m - s);
            l *= c;
            for (var d = 0u; d < DV; d++) {
                acc[d] *= c;
            }
            m = s;
        }
        let pj = exp2(s - m);
        l += pj;
        let vj = vb + j * p.v_st;
        for (var d = 0u; d < DV; d++) {
            acc[d] = fma(pj, v[vj + d * p.v_sd], acc[d]);
        }
    }
    // l ≥ 1: the key holding the maximum contributed exp2(0).
    let inv = 1.0 / l;
    let ob = p.o_off + b * p.o_sb + row * p.o_st + h * p.o_sh;
    for (var d = 0u; d < DV; d++) {
        out[ob + d * p.o_sd] = acc[d] * inv;
    }
}

@compute @workgroup_size(WG)
fn attention_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let t = wg.x + wg.y * nwg.x;
    let bh = t / p.row_tiles;
    let b = bh / p.heads;
    // Uniform per workgroup, so the whole workgroup leaves together (no barrier is skipped
    // by some invocations only).
    if (b >= p.batches) { return; }
    let h = bh - b * p.heads;
    let tile0 = (t - bh * p.row_tiles) * WG;
    let row = tile0 + lid;
    let live = row < p.rows;
    // Keys the workgroup needs: those of its last row (the most, under CAUSAL).
    let nk_wg = keys_for(min(p.rows, tile0 + WG) - 1u);

    var qr: array<f32, MAX_D>;
    var acc: array<f32, MAX_D>;
    if (live) {
        let qb = p.q_off + b * p.q_sb + row * p.q_st + h * p.q_sh;
        for (var d = 0u; d < D; d++) {
            qr[d] = q[qb + d * p.q_sd] * p.scale_log2;
        }
    }
    for (var d = 0u; d < DV; d++) {
        acc[d] = 0.0;
    }
    let nk = select(0u, keys_for(row), live);
    var m = NEG_BIG;
    var l = 0.0;
    let kb = p.k_off + b * p.k_sb + h * p.k_sh;
    let vb = p.v_off + b * p.v_sb + h * p.v_sh;
    for (var j0 = 0u; j0 < nk_wg; j0 += TK) {
        let n = min(TK, nk_wg - j0);
        for (var e = lid; e < n * D; e += WG) {
            let jj = e / D;
            k_tile[e] = k[kb + (j0 + jj) * p.k_st + (e - jj * D) * p.k_sd];
        }
        for (var e = lid; e < n * DV; e += WG) {
            let jj = e / DV;
            v_tile[e] = v[vb + (j0 + jj) * p.v_st + (e - jj * DV) * p.v_sd];
        }
        workgroupBarrier();
        let mine = min(n, max(nk, j0) - j0);
        for (var jj = 0u; jj < mine; jj++) {
            var s = 0.0;
            for (var d = 0u; d < D; d++) {
                s = fma(qr[d], k_tile[jj * D + d], s);
            }
            if (s > m) {
                let c = exp2(m - s);
                l *= c;
                for (var d = 0u; d < DV; d++) {
                    acc[d] *= c;
                }
                m = s;
            }
            let pj = exp2(s - m);
            l += pj;
            for (var d = 0u; d < DV; d++) {
                acc[d] = fma(pj, v_tile[jj * DV + d], acc[d]);
            }
        }
        workgroupBarrier();
    }
    if (live) {
        let inv = 1.0 / l;
        let ob = p.o_off + b * p.o_sb + row * p.o_st + h * p.o_sh;
        for (var d = 0u; d < DV; d++) {
            out[ob + d * p.o_sd] = acc[d] * inv;
        }
    }
}

@compute @workgroup_size(WG)
fn attention_wide(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let t = wg.x + wg.y * nwg.x;
    let bh = t / p.row_tiles;
    let b = bh / p.heads;
    if (b >= p.batches) { return; }
    let h = bh - b * p.heads;
    let row = (t - bh * p.row_tiles) * WG + lid;
    if (row >= p.rows) { return; }

    let qb = p.q_off + b * p.q_sb + row * p.q_st + h * p.q_sh;
    var acc: array<f32, MAX_D_WIDE>;
    for (var d = 0u; d < DV; d++) {
        acc[d] = 0.0;
    }
    var m = NEG_BIG;
    var l = 0.0;
    let kb = p.k_off + b * p.k_sb + h * p.k_sh;
    let vb = p.v_off + b * p.v_sb + h * p.v_sh;
    let nk = keys_for(row);
    for (var j = 0u; j < nk; j++) {
        let kj = kb + j * p.k_st;
        var s = 0.0;
        for (var d = 0u; d < D; d++) {
            s = fma(q[qb + d * p.q_sd], k[kj + d * p.k_sd], s);
        }
        s *= p.scale_log2;
        if (s > m) {
            let c = exp2(m - s);
            l *= c;
            for (var d = 0u; d < DV; d++) {
                acc[d] *= c;
            }
            m = s;
        }
        let pj = exp2(s - m);
        l += pj;
        let vj = vb + j * p.v_st;
        for (var d = 0u; d < DV; d++) {
            acc[d] = fma(pj, v[vj + d * p.v_sd], acc[d]);
        }
    }
    let inv = 1.0 / l;
    let ob = p.o_off + b * p.o_sb + row * p.o_st + h * p.o_sh;
    for (var d = 0u; d < DV; d++) {
        out[ob + d * p.o_sd] = acc[d] * inv;
    }
}
