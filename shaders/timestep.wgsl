// Sinusoidal timestep embedding (diffusers `get_timestep_embedding`, guided-diffusion
// `timestep_embedding`):
//   t (N) -> out (N, dim);  argⱼ = (t · freqⱼ) · scale,  j < half = dim / 2
//   out[:, :half] = sin(arg), out[:, half:2·half] = cos(arg)   (swapped when flip != 0)
//   out[:, dim - 1] = 0 when dim is odd.
// The frequencies come from the CPU in the params (rounded exactly as PyTorch's float32
// code rounds them): the GPU's exp may be off by 3 + 2|x| ulp, which at t ≈ 1000 would
// move the argument by ~1e-3 rad. The products t·freq and ·scale are correctly rounded f32
// multiplies, so the argument is bit-identical to PyTorch's.
// A dispatch covers frequencies [freq0, freq0 + count), at most 1024 (the params table);
// one thread per (row, frequency) writes both its sin and its cos.

struct TimestepParams {
    n: u32,        // timesteps (rows)
    dim: u32,      // output columns
    half: u32,     // dim / 2
    flip: u32,     // 1: cos first (flip_sin_to_cos)
    freq0: u32,    // first frequency of this dispatch
    count: u32,    // frequencies in this dispatch (<= 1024)
    scale: f32,
    _pad: u32,
    freqs: array<vec4<f32>, 256>,  // freqs[j / 4][j % 4] = freq(freq0 + j)
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: TimestepParams;
@group(0) @binding(1) var<storage, read> t: array<f32>;          // (N)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (N, dim)

// π/2 = C1 + C2 + C3 + C4 (Cody & Waite). C1..C3 have 7 significant bits, so k·Cᵢ is exact
// for |k| < 2^17 and the first three subtractions are exact; C4 carries the next 24 bits.
// Together they hold π/2 to ~5e-15, so the reduced argument is good to about one ulp of
// itself for |x| < 2^17·π/2 ≈ 2e5 (far beyond the ~1000 rad of a diffusion timestep). This
// matters: WebGPU only bounds sin/cos error on [−π, π], and even there loosely (2^-11).
// An FMA contraction of k·C4 and the subtraction only makes the last step more accurate.
const TWO_OVER_PI: f32 = 0.636619772367581343;
const C1: f32 = 1.5625;
const C2: f32 = 0.0081787109375;
const C3: f32 = 0.00011730194091796875;
const C4: f32 = 3.1391647326017846e-07;

// (sin x, cos x): reduce to r ∈ [−π/4, π/4] (plus rounding slack) and quadrant q, then
// Cephes' sinf/cosf minimax polynomials (≈1 ulp on that interval).
fn sin_cos(x: f32) -> vec2<f32> {
    let kf = round(x * TWO_OVER_PI);
    let r = (((x - kf * C1) - kf * C2) - kf * C3) - kf * C4;
    let z = r * r;
    let s = r + r * z * ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1);
    let c = 1.0 - 0.5 * z + z * z * ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2);
    let q = u32(i32(kf) & 3);
    switch q {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

@compute @workgroup_size(WG)
fn timestep_embedding(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    let cols = max(p.count, 1u);
    if (i >= p.n * cols) {
        return;
    }
    let row = i / cols;
    let jj = i - row * cols;
    let base = row * p.dim;
    if (jj < p.count) {
        let j = p.freq0 + jj;
        let arg = (t[row] * p.freqs[jj / 4u][jj % 4u]) * p.scale;
        let sc = sin_cos(arg);
        let sin_col = select(j, p.half + j, p.flip != 0u);
        let cos_col = select(p.half + j, j, p.flip != 0u);
        out[base + sin_col] = sc.x;
        out[base + cos_col] = sc.y;
    }
    if (jj == 0u && p.freq0 == 0u && (p.dim & 1u) == 1u) {
        out[base + p.dim - 1u] = 0.0;
    }
}
