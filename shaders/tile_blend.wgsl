// The seam blend of tiled VAE decoding/encoding (diffusers' AutoencoderKL blend_v/blend_h),
// one thread per output element, planes = N·C:
//   blend: a (planes, Ha, Wa), b (planes, Hb, Wb) -> out (planes, Hb, Wb): b with its first e
//          rows (`cols == 0`; Wa = Wb) or first e columns (`cols == 1`; Ha = Hb) cross-faded
//          from the last e rows/columns of a, t < e:
//            out[t] = a[(Ha or Wa) − e + t]·(1 − t/e) + b[t]·(t/e),   elsewhere out = b.
//          The weights are the f32 values of t/e and 1 − t/e (the host passes none: the
//          kernel forms them as f32(t)/f32(e) and 1 − that), the products and the sum in f32.

struct BlendParams {
    total: u32,   // output elements in this dispatch
    ha: u32,      // a's H
    wa: u32,      // a's W
    hb: u32,      // b's (and the output's) H
    wb: u32,      // b's (and the output's) W
    e: u32,       // rows or columns blended, ≤ min of the two extents
    cols: u32,    // 1: blend columns (left edge), 0: rows (top edge)
    a_off: u32,   // elements from the start of the a binding to plane 0
    b_off: u32,   // elements from the start of the b binding to plane 0
    out_off: u32, // elements from the start of the out binding to plane 0
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: BlendParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;          // (planes, Ha, Wa)
@group(0) @binding(2) var<storage, read> b: array<f32>;          // (planes, Hb, Wb)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (planes, Hb, Wb)

@compute @workgroup_size(WG)
fn blend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let hw = p.hb * p.wb;
    let plane = i / hw;
    let r = i - plane * hw;
    let y = r / p.wb;
    let x = r - y * p.wb;
    let bv = b[p.b_off + i];
    var t = y;
    var ai = (p.ha - p.e + y) * p.wa + x;
    if (p.cols == 1u) {
        t = x;
        ai = y * p.wa + (p.wa - p.e + x);
    }
    if (t >= p.e) {
        out[p.out_off + i] = bv;
        return;
    }
    let s = f32(t) / f32(p.e);
    out[p.out_off + i] = a[p.a_off + plane * p.ha * p.wa + ai] * (1.0 - s) + bv * s;
}
