// Batched matrix transpose, one thread per output element:
//   transpose: x (B, R, C) -> out (B, C, R), out[b, c, r] = x[b, r, c]
// Used to move a feature map between channel-first (N, C, H·W) and token-major (N, H·W, C)
// around diffusers' Transformer2DModel. A pure copy, so GPU and CPU agree bit for bit.

struct TransposeParams {
    total: u32,    // output elements in this dispatch
    rows: u32,     // R
    cols: u32,     // C
    x_off: u32,    // elements from the start of the x binding to its first batch item
    out_off: u32,  // elements from the start of the out binding to its first batch item
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: TransposeParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (B, R, C)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (B, C, R)

@compute @workgroup_size(WG)
fn transpose(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let plane = p.rows * p.cols;
    let b = i / plane;
    let rem = i - b * plane;
    let c = rem / p.rows;
    let r = rem - c * p.rows;
    out[p.out_off + i] = x[p.x_off + b * plane + r * p.cols + c];
}
