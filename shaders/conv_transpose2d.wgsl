// Transposed 2-D convolution with stride == kernel size and no padding (patch un-embedding,
// PyTorch `F.conv_transpose2d(x, weight, bias, stride=(kh, kw))`): every input pixel writes
// its own kh × kw block of the output, so each output element has exactly one source pixel:
//     out[s, co, iy·kh + ky, ix·kw + kx] = bias[co] + Σ_ci x[s, ci, iy, ix] · weight[ci, co, ky, kx]
//
// Each invocation fixes one kernel tap (ky, kx) and computes TC output channels (4 or 8) for
// four consecutive input pixels of a row (TC vec4 accumulators): per input channel 4 input
// loads and TC weight loads for 4·TC multiply-adds, no workgroup memory, no barriers. The tap
// varies fastest across invocations, so neighbours write neighbouring output pixels.
// Grid layout and batch offsets are as in conv2d.wgsl.

struct ConvTranspose2dParams {
    n: u32,       // samples in this dispatch
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    kh: u32,
    kw: u32,
    tiles_x: u32, // ceil(w / 4): input pixel tiles per row
    pix_wgs: u32, // workgroups per channel block
    x_off: u32,   // element offset of this dispatch's first sample in `x`
    out_off: u32, // ... in `out`
    _pad0: u32,
}

override WG: u32 = 64u;
// Output channels per invocation: 4 or 8.
override TC: u32 = 8u;
override HAS_BIAS: bool = false;

// Input pixels per invocation: one vec4 along a row.
const TP: u32 = 4u;

@group(0) @binding(0) var<uniform> p: ConvTranspose2dParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (n, Cin, H, W) from x_off
@group(0) @binding(2) var<storage, read> weight: array<f32>;    // (Cin, Cout, kh, kw)
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (Cout); read only if HAS_BIAS
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // (n, Cout, H·kh, W·kw) from out_off

// The register tile, as named variables (see conv2d.wgsl for why not arrays): acc_c holds
// channel co0 + c at the four pixels, w_c is that channel's weight offset for this tap.
var<private> acc0: vec4<f32>;
var<private> acc1: vec4<f32>;
var<private> acc2: vec4<f32>;
var<private> acc3: vec4<f32>;
var<private> acc4: vec4<f32>;
var<private> acc5: vec4<f32>;
var<private> acc6: vec4<f32>;
var<private> acc7: vec4<f32>;
var<private> w0: u32;
var<private> w1: u32;
var<private> w2: u32;
var<private> w3: u32;
var<private> w4: u32;
var<private> w5: u32;
var<private> w6: u32;
var<private> w7: u32;

// One input channel (weight offset `wi` of its row of the weight) for the four pixels `xv`.
fn tap(wi: u32, xv: vec4<f32>) {
    acc0 += weight[w0 + wi] * xv;
    acc1 += weight[w1 + wi] * xv;
    acc2 += weight[w2 + wi] * xv;
    acc3 += weight[w3 + wi] * xv;
    if (TC > 4u) {
        acc4 += weight[w4 + wi] * xv;
        acc5 += weight[w5 + wi] * xv;
        acc6 += weight[w6 + wi] * xv;
        acc7 += weight[w7 + wi] * xv;
    }
}

// Store channel co0 + c (if it exists) for the first `cols` pixels; pixel i goes to
// o + i·kw, the same tap of the next input pixel's block.
fn store(c: u32, co0: u32, o: u32, cols: u32, v: vec4<f32>) {
    let co = co0 + c;
    if (co >= p.cout) {
        return;
    }
    var y = v;
    if (HAS_BIAS) {
        y += vec4<f32>(bias[co]);
    }
    let oc = p.out_off + o + c * p.h * p.kh * p.w * p.kw;
    for (var i = 0u; i < cols; i++) {
        out[oc + i * p.kw] = y[i];
    }
}

@compute @workgroup_size(WG)
fn conv_transpose2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let lin = wg.x + wg.y * nwg.x;
    let co0 = (lin / p.pix_wgs) * TC;
    let t = (lin % p.pix_wgs) * WG + lid;
    if (co0 >= p.cout || t >= p.n * p.h * p.kh * p.tiles_x * p.kw) {
        return;
    }
    let kx = t % p.kw;
    var r = t / p.kw;
    let tx = r % p.tiles_x;
    r /= p.tiles_x;
    let ky = r % p.kh;
    r /= p.kh;
    let iy = r % p.h;
    let s = r / p.h;
    let ix0 = tx * TP;

    let khw = p.kh * p.kw;
    // Channels past Cout (the last, partial block) read channel Cout − 1 and are not stored.
    let last = p.cout - 1u;
    let k = ky * p.kw + kx;
    w0 = min(co0, last) * khw + k;
    w1 = min(co0 + 1u, last) * khw + k;
    w2 = min(co0 + 2u, last) * khw + k;
    w3 = min(co0 + 3u, last) * khw + k;
    w4 = min(co0 + 4u, last) * khw + k;
    w5 = min(co0 + 5u, last) * khw + k;
    w6 = min(co0 + 6u, last) * khw + k;
    w7 = min(co0 + 7u, last) * khw + k;
    let wstep = p.cout * khw;
    // Pixels past the row end (the last, partial tile) read the last pixel and are not stored.
    let hw = p.h * p.w;
    var i0 = p.x_off + s * p.cin * hw + iy * p.w + ix0;
    let e = i0 - ix0 + p.w - 1u;
    let i1 = min(i0 + 1u, e) - i0;
    let i2 = min(i0 + 2u, e) - i0;
    let i3 = min(i0 + 3u, e) - i0;
    var wi = 0u;
    for (var ci = 0u; ci < p.cin; ci++) {
        tap(wi, vec4<f32>(x[i0], x[i0 + i1], x[i0 + i2], x[i0 + i3]));
        i0 += hw;
        wi += wstep;
    }

    let cols = min(TP, p.w - ix0);
    let o = ((s * p.cout + co0) * p.h * p.kh + iy * p.kh + ky) * p.w * p.kw + ix0 * p.kw + kx;
    store(0u, co0, o, cols, acc0);
    store(1u, co0, o, cols, acc1);
    store(2u, co0, o, cols, acc2);
    store(3u, co0, o, cols, acc3);
    if (TC > 4u) {
        store(4u, co0, o, cols, acc4);
        store(5u, co0, o, cols, acc5);
        store(6u, co0, o, cols, acc6);
        store(7u, co0, o, cols, acc7);
    }
}
