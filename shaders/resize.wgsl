// Nearest-neighbour resize of NCHW images to a given size, one thread per output element,
// planes = N·C:
//   resize_nearest: x (planes, H, W) -> out (planes, Ho, Wo),
//                   out[y, x] = x[min(floor(y·(H/Ho)), H−1), min(floor(x·(W/Wo)), W−1)]
// as PyTorch's F.interpolate(size=(Ho, Wo), mode="nearest") computes it: the scale is the
// f32 quotient in/out and the product is rounded to f32 before the floor (both correctly
// rounded in WGSL and on the CPU, so indices agree exactly). diffusers' Upsample2D uses this
// when UNet2DConditionModel's input is not a multiple of its total downsampling factor.

struct ResizeParams {
    total: u32,    // output elements in this dispatch
    h: u32,        // input H
    w: u32,        // input W
    ho: u32,       // output H
    wo: u32,       // output W
    x_off: u32,    // elements from the start of the x binding to plane 0
    out_off: u32,  // elements from the start of the out binding to plane 0
    scale_h: f32,  // H / Ho in f32
    scale_w: f32,  // W / Wo in f32
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: ResizeParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (planes, H, W)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (planes, Ho, Wo)

fn source(d: u32, scale: f32, n: u32) -> u32 {
    return min(u32(floor(f32(d) * scale)), n - 1u);
}

@compute @workgroup_size(WG)
fn resize_nearest(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    let sy = source(oy, p.scale_h, p.h);
    let sx = source(ox, p.scale_w, p.w);
    out[p.out_off + i] = x[p.x_off + plane * p.h * p.w + sy * p.w + sx];
}
