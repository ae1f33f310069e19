// conv2d.wgsl's register-blocked `conv2d` kernel for packed-f16 weights on adapters that grant
// `shader-f16`: the weight buffer is bound as `array<vec2<f16>>` and each weight converted
// with `f32(...)` instead of `unpack2x16float` on a u32 word; everything else, accumulation
// included, is f32 and the same code (`tests/shaders.rs` checks that every function but
// `load_w` is identical to conv2d.wgsl's). The op picks it for packed weights when the
// device has `shader-f16` (src/ops/conv2d.rs); the baseline kernel stays in conv2d.wgsl.

enable f16;

struct Conv2dParams {
    n: u32,       // samples in this dispatch
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    tiles_x: u32, // ceil(wo / 4): pixel tiles per output row
    pix_wgs: u32, // workgroups per channel block
    x_off: u32,   // element offset of this dispatch's first sample in `x`
    out_off: u32, // ... in `out`
    res_off: u32, // ... in `residual`
    scale: f32,   // multiplies bias + conv + residual (diffusers' 1 / output_scale_factor)
    _pad1: u32,
}

override WG: u32 = 64u;
// Output channels per invocation: 4 or 8.
override TC: u32 = 8u;
override HAS_BIAS: bool = false;
override HAS_RESIDUAL: bool = false;
// Horizontal stride 1: the four pixels' windows overlap, so each kernel column adds one load.
override UNIT_SW: bool = false;
// 1×1 kernel, stride 1, no padding (passed in as a 1 × (H·W) image): a plain GEMM loop.
override POINTWISE: bool = false;
// max(out, 0) after the scale: a conv + ReLU, or relu(conv + residual), in one pass.
override RELU: bool = false;

// Output pixels per invocation: one vec4 along a row.
const TP: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Conv2dParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (n, Cin, H, W) from x_off
// The packed-f16 weight buffer (element 2i in .x of pair i) read as f16 directly.
@group(0) @binding(2) var<storage, read> weight: array<vec2<f16>>; // (Cout, Cin, kh, kw)
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (Cout); read only if HAS_BIAS
@group(0) @binding(4) var<storage, read> residual: array<f32>;  // (n, Cout, Ho, Wo) from res_off; read only if HAS_RESIDUAL
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (n, Cout, Ho, Wo) from out_off

// The register tile: acc_c holds channel co0 + c at the four pixels, w_c is the start of that
// channel's weights. Named variables rather than arrays: software GPUs (lavapipe) keep
// dynamically indexed arrays in memory, which made the kernel 1.5–2× slower. Channels
// 4..7 compile away when TC = 4.
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

fn load_w(i: u32) -> f32 {
    return f32(weight[i >> 1u][i & 1u]);
}

// One kernel tap (weight offset `wi` within each channel) for the four pixels `xv`.
fn tap(wi: u32, xv: vec4<f32>) {
    acc0 += load_w(w0 + wi) * xv;
    acc1 += load_w(w1 + wi) * xv;
    acc2 += load_w(w2 + wi) * xv;
    acc3 += load_w(w3 + wi) * xv;
    if (TC > 4u) {
        acc4 += load_w(w4 + wi) * xv;
        acc5 += load_w(w5 + wi) * xv;
        acc6 += load_w(w6 + wi) * xv;
        acc7 += load_w(w7 + wi) * xv;
    }
}

// x[row + ix], or 0 in the padding. The index is clamped so that no load leaves the row.
fn load_x(row: u32, ix: i32) -> f32 {
    let v = x[row + u32(clamp(ix, 0, i32(p.w) - 1))];
    return select(0.0, v, ix >= 0 && ix < i32(p.w));
}

fn epilogue(v: f32) -> f32 {
    if (RELU) {
        return max(v, 0.0);
    }
    return v;
}

// Store channel co0 + c (if it exists) for the first `cols` pixels at output offset `o`.
fn store(c: u32, co0: u32, o: u32, cols: u32, v: vec4<f32>) {
    let co = co0 + c;
    if (co >= p.cout) {
        return;
    }
    var y = v;
    if (HAS_BIAS) {
        y += vec4<f32>(bias[co]);
    }
    let oc = o + c * p.ho * p.wo;
    for (var i = 0u; i < cols; i++) {
        var r = y[i];
        if (HAS_RESIDUAL) {
            r += residual[p.res_off + oc + i];
        }
        out[p.out_off + oc + i] = epilogue(r * p.scale);
    }
}

@compute @workgroup_size(WG)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let lin = wg.x + wg.y * nwg.x;
    let co0 = (lin / p.pix_wgs) * TC;
    let t = (lin % p.pix_wgs) * WG + lid;
    if (co0 >= p.cout || t >= p.n * p.ho * p.tiles_x) {
        return;
    }
    let tx = t % p.tiles_x;
    let r = t / p.tiles_x;
    let oy = r % p.ho;
    let s = r / p.ho;
    let ox0 = tx * TP;

    let khw = p.kh * p.kw;
    // Channels past Cout (the last, partial block) read channel Cout − 1 and are not stored.
    let wstride = p.cin * khw;
    let last = p.cout - 1u;
    w0 = min(co0, last) * wstride;
    w1 = min(co0 + 1u, last) * wstride;
    w2 = min(co0 + 2u, last) * wstride;
    w3 = min(co0 + 3u, last) * wstride;
    w4 = min(co0 + 4u, last) * wstride;
    w5 = min(co0 + 5u, last) * wstride;
    w6 = min(co0 + 6u, last) * wstride;
    w7 = min(co0 + 7u, last) * wstride;

    let hw = p.h * p.w;
    let sw = i32(p.sw);
    let ix0 = i32(ox0 * p.sw) - i32(p.pw);
    let iy0 = i32(oy * p.sh) - i32(p.ph);
    // Kernel rows that land inside the image; skipping the others is the zero padding in y.
    let ky_lo = u32(max(-iy0, 0));
    let ky_hi = u32(clamp(i32(p.h) - iy0, 0, i32(p.kh)));
    var xc = p.x_off + s * p.cin * hw;
    if (POINTWISE) {
        // Pixels past the end of the plane read its last pixel and are not stored.
        let e = xc + p.w - 1u;
        var i0 = xc + ox0;
        let i1 = min(i0 + 1u, e) - i0;
        let i2 = min(i0 + 2u, e) - i0;
        let i3 = min(i0 + 3u, e) - i0;
        for (var ci = 0u; ci < p.cin; ci++) {
            tap(ci, vec4<f32>(x[i0], x[i0 + i1], x[i0 + i2], x[i0 + i3]));
            i0 += hw;
        }
    }
    var wc = 0u;
    for (var ci = 0u; ci < p.cin && !POINTWISE; ci++) {
        for (var ky = ky_lo; ky < ky_hi; ky++) {
            let row = xc + u32(iy0 + i32(ky)) * p.w;
            let wk = wc + ky * p.kw;
            if (UNIT_SW) {
                // Slide the window x[ix0 + kx ..][..4] along the row: one load per tap.
                var xv = vec4<f32>(0.0, load_x(row, ix0), load_x(row, ix0 + 1), load_x(row, ix0 + 2));
                for (var kx = 0u; kx < p.kw; kx++) {
                    xv = vec4<f32>(xv.yzw, load_x(row, ix0 + i32(kx) + 3));
                    tap(wk + kx, xv);
                }
            } else {
                for (var kx = 0u; kx < p.kw; kx++) {
                    let ix = ix0 + i32(kx);
                    tap(wk + kx, vec4<f32>(load_x(row, ix), load_x(row, ix + sw),
                                           load_x(row, ix + 2 * sw), load_x(row, ix + 3 * sw)));
                }
            }
        }
        xc += hw;
        wc += khw;
    }

    let cols = min(TP, p.wo - ox0);
    let o = ((s * p.cout + co0) * p.ho + oy) * p.wo + ox0;
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
