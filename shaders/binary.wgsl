// Binary elementwise op with NumPy broadcasting (rank <= 4). Same params struct as
// elementwise.wgsl; a second input is bound, so it is its own file (its own layout).
//   a: strided by a_strides, b: strided by b_strides, out: (shape) contiguous.

struct ElementwiseParams {
    n: u32,
    op: u32,
    alpha: f32,
    beta: f32,
    shape: vec4<u32>,
    a_strides: vec4<u32>,
    b_strides: vec4<u32>,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: ElementwiseParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;   // broadcastable to shape
@group(0) @binding(2) var<storage, read> b: array<f32>;   // broadcastable to shape
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (shape)

@compute @workgroup_size(WG)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
    // Unravel i over the (left-padded) output shape.
    let i3 = i % p.shape.w;
    let r3 = i / p.shape.w;
    let i2 = r3 % p.shape.z;
    let r2 = r3 / p.shape.z;
    let i1 = r2 % p.shape.y;
    let i0 = r2 / p.shape.y;
    let idx = vec4<u32>(i0, i1, i2, i3);
    let x = a[dot(idx, p.a_strides)];
    let y = b[dot(idx, p.b_strides)];
    var r: f32;
    switch p.op {
        case 0u: { r = x + p.alpha * y; }   // add (alpha scales b)
        case 1u: { r = x * y; }             // mul
        case 2u: { r = x / y; }             // div
        case 3u: { r = max(x, y); }         // max
        default: { r = x + y; }
    }
    out[i] = r;
}
