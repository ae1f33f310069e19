// The one GPU kernel every solver step ends in:
//     out = c0·in0 + c1·in1 + … + c(k-1)·in(k-1) + s·z,     k <= 5
// where z is standard Gaussian noise from Philox4x32-10 (Salmon et al., SC'11) keyed by the
// 64-bit seed, with counter (e/4, 0, step, stream) for element e, turned into normals by
// Box–Muller. The CPU twin is src/ops/philox.rs; both produce the same integer stream.
// Coefficients are computed in f64 on the CPU and passed as f32.
// Each invocation handles four consecutive elements (one Philox block).
//   in0..in4, out: (n)

struct SolverUpdateParams {
    n: u32,
    num_inputs: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    noise_scale: f32,
    _pad: u32,
    coef: array<vec4<f32>, 2>, // c0..c4 in coef[0].xyzw, coef[1].x
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: SolverUpdateParams;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read> in3: array<f32>;
@group(0) @binding(5) var<storage, read> in4: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// 32×32 -> 64-bit product as (hi, lo) from 16-bit halves (WGSL has no 64-bit integers).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let hh = ah * bh;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) {
            k += vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
        }
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

const PI: f32 = 3.141592653589793;

// Box–Muller needs ln, sin and cos far more accurately than WebGPU promises (ln: 2^-21
// absolute near 1; sin/cos: 2^-11 absolute). SwiftShader (Chrome's software WebGPU) uses that
// slack: its ln(1 − 2^-24) is 39% off and its sin/cos up to 1.9e-4, so the same seed gave
// visibly different noise than the CPU twin. These use only + and *, which WGSL rounds
// correctly, so every adapter agrees with the CPU to a few ulp (Cephes logf/sinf/cosf).

// ln(x) for normal x > 0 (here a 24-bit uniform in (0, 1]); relative error ~1e-7 even near 1.
fn ln_f32(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    var e = f32(i32((bits >> 23u) & 0xffu) - 126); // x = m·2^e, m in [0.5, 1)
    var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f000000u);
    if (m < 0.70710678) {
        e -= 1.0;
        m = m + m - 1.0;
    } else {
        m = m - 1.0;
    }
    let z = m * m;
    var y = 7.0376836292e-2 * m - 1.1514610310e-1;
    y = y * m + 1.1676998740e-1;
    y = y * m - 1.2420140846e-1;
    y = y * m + 1.4249322787e-1;
    y = y * m - 1.6668057665e-1;
    y = y * m + 2.0000714765e-1;
    y = y * m - 2.4999993993e-1;
    y = y * m + 3.3333331174e-1;
    y = y * m * z;
    y += -2.12194440e-4 * e; // ln 2 = 0.693359375 − 2.12194440e-4, the first part exact
    y += -0.5 * z;
    return m + y + 0.693359375 * e;
}

// (cos θ, sin θ) for θ in [-π, π].
fn cos_sin(theta: f32) -> vec2<f32> {
    let q = round(theta * 0.63661977); // quadrant, -2..2
    // Cody–Waite: π/2 in three parts; q·part is exact and the first subtraction too.
    let x = ((theta - q * 1.5703125) - q * 4.837512969970703125e-4) - q * 7.54978995489188216e-8;
    let z = x * x;
    let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * x + x;
    let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
        - 0.5 * z + 1.0;
    switch (i32(q) & 3) {
        case 0: { return vec2<f32>(c, s); }
        case 1: { return vec2<f32>(-s, c); }
        case 2: { return vec2<f32>(-c, -s); }
        default: { return vec2<f32>(s, -c); }
    }
}

fn box_muller(a: u32, b: u32) -> vec2<f32> {
    let u1 = (f32(a >> 8u) + 1.0) * (1.0 / 16777216.0); // (0, 1]
    let u2 = f32(b >> 8u) * (1.0 / 16777216.0);         // [0, 1)
    let r = sqrt(-2.0 * ln_f32(u1));
    // The angle is in [-π, π), as on the CPU (src/ops/philox.rs), which computes the same f32.
    let theta = PI * (2.0 * u2 - 1.0);
    return r * cos_sin(theta);
}

fn coef(i: u32) -> f32 {
    return p.coef[i / 4u][i % 4u];
}

fn combine(e: u32, z: f32) -> f32 {
    var acc = p.noise_scale * z;
    if (p.num_inputs > 0u) { acc += coef(0u) * in0[e]; }
    if (p.num_inputs > 1u) { acc += coef(1u) * in1[e]; }
    if (p.num_inputs > 2u) { acc += coef(2u) * in2[e]; }
    if (p.num_inputs > 3u) { acc += coef(3u) * in3[e]; }
    if (p.num_inputs > 4u) { acc += coef(4u) * in4[e]; }
    return acc;
}

@compute @workgroup_size(WG)
fn solver_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let block = (wg.x + wg.y * nwg.x) * WG + lid;
    let e0 = block * 4u;
    if (e0 >= p.n) { return; }
    var z = vec4<f32>(0.0);
    if (p.noise_scale != 0.0) {
        let w = philox4x32_10(vec4<u32>(block, 0u, p.step, p.stream), vec2<u32>(p.seed_lo, p.seed_hi));
        z = vec4<f32>(box_muller(w.x, w.y), box_muller(w.z, w.w));
    }
    for (var j = 0u; j < 4u; j++) {
        let e = e0 + j;
        if (e < p.n) {
            out[e] = combine(e, z[j]);
        }
    }
}

// GMS step (Guo et al. 2023, arXiv:2311.00941; CPU twin and derivation in
// src/ops/gms_update.rs): per element, the two-component mixture
// ⅓·N(M1 + d, v) + ⅔·N(M1 − d/2, v) matching the transition's mean M1, variance M2 and third
// central moment M3, sampled with z from the (step, stream) Philox block and the component
// from the (step, stream + 1) block.
//   in0: x_t, in1: E[ε], in2: Var[ε], in3: κ₃[ε] (third central moment) (n); in4 unused;
//   out: (n)
//   coef[0] = c_x, coef[1] = c_ε, coef[2] = λ² (posterior noise variance)
fn gms_element(x: f32, m1: f32, variance: f32, k3: f32, z: f32, u: f32) -> f32 {
    let c_x = coef(0u);
    let c_e = coef(1u);
    let lambda2 = coef(2u);
    let mean = c_x * x + c_e * m1;
    let var_e = max(variance, 0.0);
    let spread = c_e * c_e * var_e;
    let t = 4.0 * (c_e * c_e * c_e * k3);
    // ∛|t| through exp2/log2 (WGSL has no cbrt); 0 stays 0.
    var d = 0.0;
    if (t != 0.0) {
        d = exp2(log2(abs(t)) * (1.0 / 3.0));
    }
    d = min(d, sqrt(2.0 * spread));
    if (t < 0.0) {
        d = -d;
    }
    let v = max(spread + lambda2 - 0.5 * d * d, 0.0);
    var mu = mean - 0.5 * d;
    if (u < 1.0 / 3.0) {
        mu = mean + d;
    }
    return mu + p.noise_scale * sqrt(v) * z;
}

@compute @workgroup_size(WG)
fn gms_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let block = (wg.x + wg.y * nwg.x) * WG + lid;
    let e0 = block * 4u;
    if (e0 >= p.n) { return; }
    let key = vec2<u32>(p.seed_lo, p.seed_hi);
    let w = philox4x32_10(vec4<u32>(block, 0u, p.step, p.stream), key);
    let z = vec4<f32>(box_muller(w.x, w.y), box_muller(w.z, w.w));
    let wu = philox4x32_10(vec4<u32>(block, 0u, p.step, p.stream + 1u), key);
    for (var j = 0u; j < 4u; j++) {
        let e = e0 + j;
        if (e < p.n) {
            let u = f32(wu[j] >> 8u) * (1.0 / 16777216.0);
            out[e] = gms_element(in0[e], in1[e], in2[e], in3[e], z[j], u);
        }
    }
}
