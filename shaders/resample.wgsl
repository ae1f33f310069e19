// 2× resampling of NCHW images, one thread per output element, planes = N·C.
//   upsample2x:  x (planes, H, W) -> out (planes, 2H, 2W), nearest: out[y, x] = x[y/2, x/2]
//                (F.interpolate(scale_factor=2, mode="nearest"), diffusers Upsample2D)
//   avg_pool2x:  x (planes, H, W) -> out (planes, H/2, W/2), kernel 2, stride 2, floor
//                (nn.AvgPool2d(2, 2); an odd last row/column is dropped), diffusers
//                Downsample2D without conv
// The pool sums in PyTorch's order, ((x00 + x01) + x10) + x11, and multiplies by 0.25
// (exact, where WGSL's division may be off by 2.5 ulp), so it matches the CPU bit for bit.

struct ResampleParams {
    total: u32,  // output elements in this dispatch
    h: u32,      // input H
    w: u32,      // input W
    ho: u32,     // output H
    wo: u32,     // output W
    x_off: u32,  // elements from the start of the x binding to plane 0
    out_off: u32,  // elements from the start of the out binding to plane 0
    _pad: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: ResampleParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (planes, H, W)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (planes, Ho, Wo)

// (plane, output row, output column) of output element i.
fn unravel(i: u32) -> vec3<u32> {
    let hw = p.ho * p.wo;
    let plane = i / hw;
    let r = i - plane * hw;
    let oy = r / p.wo;
    return vec3<u32>(plane, oy, r - oy * p.wo);
}

@compute @workgroup_size(WG)
fn upsample2x(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let o = unravel(i);
    out[p.out_off + i] = x[p.x_off + o.x * p.h * p.w + (o.y >> 1u) * p.w + (o.z >> 1u)];
}

@compute @workgroup_size(WG)
fn avg_pool2x(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let o = unravel(i);
    let b = p.x_off + o.x * p.h * p.w + 2u * o.y * p.w + 2u * o.z;
    out[p.out_off + i] = (((x[b] + x[b + 1u]) + x[b + p.w]) + x[b + p.w + 1u]) * 0.25;
}
