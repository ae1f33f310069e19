// Per-sample reductions, one workgroup per sample:
//   sample_std: x (N, M) -> out (N), the standard deviation of each sample's M elements with
//               Bessel's correction (torch.std's default, as diffusers' rescale_noise_cfg
//               takes it over every non-batch dim): sqrt(Σ(x − mean)² / (M − 1)).
// Two passes (mean, then centred squares), never E[x²] − mean²; every value is taken
// relative to the sample's first element so a large common offset costs no precision.
// Reductions are two-level (256 → 16 → 1): two barriers per sum (barriers are the costly
// part on software GPUs).

struct ReduceParams {
    rows: u32,     // samples in this dispatch
    row_len: u32,  // M
    off: u32,      // elements from the start of the x binding to sample 0
    out_off: u32,  // elements from the start of the out binding to sample 0
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: ReduceParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (N, M)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (N)

var<workgroup> red: array<f32, WG>;
var<workgroup> red16: array<f32, 16>;

// Sum of `v` over the workgroup, returned to every thread; safe back to back (see norm.wgsl).
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

@compute @workgroup_size(WG)
fn sample_std(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    let ss = workgroup_sum(q, lid);
    if (lid == 0u) {
        out[p.out_off + row] = sqrt(ss / f32(n - 1u));
    }
}
