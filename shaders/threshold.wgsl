// x̂₀ processing of the samplers: diffusers' `clip_sample` (a clamp) and dynamic thresholding
// (Saharia et al. 2022, "Imagen", arXiv:2205.11487 Sec. 2.3): per sample, s = the
// q-quantile of |x̂₀| as torch.quantile computes it (linear interpolation between the order
// statistics at floor and ceil of q·(n − 1)), s ← clamp(s, 1, max), x̂₀ ← clamp(x̂₀, −s, s)/s.
// CPU twins in src/ops/threshold.rs. All three entry points share one binding set:
//   a: the values, (rows, n) row-major
//   b: abs_quantile/clamp_values: unused (bound to a); threshold_rows: s, (rows)
//   out: clamp_values/threshold_rows: (rows, n); abs_quantile: (rows)

struct ThresholdParams {
    n: u32,       // clamp_values: all elements; else elements per row
    rows: u32,
    rank_lo: u32, // abs_quantile: floor(q·(n − 1))
    rank_hi: u32, // abs_quantile: ceil(q·(n − 1))
    weight: f32,  // abs_quantile: q·(n − 1) − rank_lo, as float32
    lo: f32,      // clamp_values: bounds; threshold_rows: bounds on s
    hi: f32,
    total: u32,   // threshold_rows: rows·n
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: ThresholdParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn is_nan(x: f32) -> bool {
    // The exponent all ones and a non-zero mantissa (no reliance on x != x, which
    // compilers may fold away).
    let bits = bitcast<u32>(x);
    return (bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0u;
}

// torch.clamp: NaN stays NaN, else min(max(x, lo), hi).
fn clamp_torch(x: f32, lo: f32, hi: f32) -> f32 {
    if (is_nan(x)) { return x; }
    return min(max(x, lo), hi);
}

@compute @workgroup_size(WG)
fn clamp_values(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let e = (wg.x + wg.y * nwg.x) * WG + lid;
    if (e >= p.n) { return; }
    out[e] = clamp_torch(a[e], p.lo, p.hi);
}

@compute @workgroup_size(WG)
fn threshold_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let e = (wg.x + wg.y * nwg.x) * WG + lid;
    if (e >= p.total) { return; }
    let s = clamp_torch(b[e / p.n], p.lo, p.hi);
    out[e] = clamp_torch(a[e], -s, s) / s;
}

// One workgroup per row: radix select (8 bits per pass, most significant first) on the bit
// patterns of |x|, which order like the values for non-negative floats. Only thread 0 scans
// the 256-bin histogram: four barriers per pass instead of a parallel scan's many (software
// adapters pay dearly for barriers).
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> chosen_prefix: u32;
var<workgroup> chosen_rank: u32;
var<workgroup> saw_nan: atomic<u32>; // bits of a NaN in the row, or 0

fn select_rank(row: u32, lid: u32, rank: u32) -> u32 {
    var prefix = 0u;
    var mask = 0u;
    var k = rank;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var i = lid; i < p.n; i += WG) {
            let bits = bitcast<u32>(a[row * p.n + i]) & 0x7fffffffu;
            if ((bits & mask) == prefix) {
                atomicAdd(&hist[(bits >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var cum = 0u;
            var digit = 255u;
            for (var d = 0u; d < 256u; d++) {
                let c = atomicLoad(&hist[d]);
                if (k < cum + c) {
                    digit = d;
                    break;
                }
                cum += c;
            }
            chosen_prefix = prefix | (digit << shift);
            chosen_rank = k - cum;
        }
        workgroupBarrier();
        prefix = chosen_prefix;
        k = chosen_rank;
        mask |= 255u << shift;
        workgroupBarrier();
    }
    return prefix;
}

@compute @workgroup_size(256)
fn abs_quantile(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    // The histogram has one bin per thread, so this entry point is fixed at 256 threads.
    let row = wg.x + wg.y * nwg.x;
    // `row` is uniform across the workgroup, so every thread returns or none does.
    if (row >= p.rows) { return; }
    if (lid == 0u) { atomicStore(&saw_nan, 0u); }
    workgroupBarrier();
    for (var i = lid; i < p.n; i += 256u) {
        let v = a[row * p.n + i];
        // Keep the NaN's own bits (never 0): Tint rejects a NaN constant.
        if (is_nan(v)) { atomicStore(&saw_nan, bitcast<u32>(v)); }
    }
    let lo_bits = select_rank(row, lid, p.rank_lo);
    let hi_bits = select_rank(row, lid, p.rank_hi);
    if (lid == 0u) {
        let nan_bits = atomicLoad(&saw_nan);
        if (nan_bits != 0u) {
            out[row] = bitcast<f32>(nan_bits);
            return;
        }
        let lo = bitcast<f32>(lo_bits);
        let hi = bitcast<f32>(hi_bits);
        // torch.lerp: from the nearer end, so weight 0 and 1 give the order statistics exactly.
        if (p.weight < 0.5) {
            out[row] = lo + p.weight * (hi - lo);
        } else {
            out[row] = hi - (hi - lo) * (1.0 - p.weight);
        }
    }
}
