// Crop of NCHW images for tiled VAE decoding/encoding (diffusers' AutoencoderKL
// tiled_decode/tiled_encode cut the latent or the image into overlapping tiles), one thread
// per output element, planes = N·C:
//   crop: x (planes, H, W) -> out (planes, h, w), out[y, x] = x[top + y, left + x]

struct CropParams {
    total: u32,   // output elements in this dispatch
    h: u32,       // input H
    w: u32,       // input W
    ho: u32,      // output H
    wo: u32,      // output W
    top: u32,     // first input row
    left: u32,    // first input column
    x_off: u32,   // elements from the start of the x binding to plane 0
    out_off: u32, // elements from the start of the out binding to plane 0
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: CropParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (planes, H, W)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (planes, h, w)

@compute @workgroup_size(WG)
fn crop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let hw = p.ho * p.wo;
    let plane = i / hw;
    let r = i - plane * hw;
    let oy = r / p.wo;
    let ox = r - oy * p.wo;
    out[p.out_off + i] = x[p.x_off + plane * p.h * p.w + (p.top + oy) * p.w + p.left + ox];
}
