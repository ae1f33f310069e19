// Elementwise ops on contiguous f32 tensors.
//   unary:  out = alpha * f(x) + beta                       x, out: (n)
//   binary: out = a (op) b with NumPy broadcasting, rank <= 4 (shapes padded on the left);
//           a and b are read through strides, 0 on broadcast dimensions.
//   geglu:  x (rows, 2·f) -> out (rows, f) = x[:, :f] * gelu_erf(x[:, f:])   (diffusers GEGLU)
// The 1-D grid is folded into (x, y) workgroups to stay under maxComputeWorkgroupsPerDimension.

struct ElementwiseParams {
    n: u32,          // output elements
    op: u32,         // UnaryOp / BinaryOp code
    alpha: f32,
    beta: f32,
    shape: vec4<u32>,     // output shape, left-padded with 1
    a_strides: vec4<u32>, // element strides of a (0 where broadcast)
    b_strides: vec4<u32>, // element strides of b (0 where broadcast)
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: ElementwiseParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const FRAC_1_SQRT_2: f32 = 0.7071067811865476;

// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26); WGSL has no erf builtin.
fn erf_approx(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * FRAC_1_SQRT_2));
}

// tanh of large arguments overflows exp() to inf/inf = NaN on some drivers; tanh(±10) is
// ±1 in f32 already, so clamp.
fn gelu_tanh(x: f32) -> f32 {
    let u = clamp(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x), -10.0, 10.0);
    return 0.5 * x * (1.0 + tanh(u));
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

fn quick_gelu(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

fn unary_fn(op: u32, x: f32) -> f32 {
    switch op {
        case 0u: { return x; }                 // identity (scale and shift only)
        case 1u: { return silu(x); }
        case 2u: { return max(x, 0.0); }       // relu
        case 3u: { return gelu_erf(x); }
        case 4u: { return gelu_tanh(x); }
        case 5u: { return quick_gelu(x); }
        case 6u: { return exp(x); }
        case 7u: { return tanh(clamp(x, -10.0, 10.0)); } // see gelu_tanh for the clamp
        default: { return x; }
    }
}

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn unary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = p.alpha * unary_fn(p.op, a[i]) + p.beta;
}

@compute @workgroup_size(WG)
fn geglu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    let f = p.shape.w;          // output features
    let row = i / f;
    let col = i - row * f;
    let base = row * 2u * f;
    out[i] = a[base + col] * gelu_erf(a[base + f + col]);
}
