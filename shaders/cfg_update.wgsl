// Classifier-free guidance folded into a deterministic solver update (CPU twin and the
// reasoning in src/ops/cfg_update.rs). Per element e of one half (n = N·M):
//   g   = (1 − w)·u + w·c                 u = pair[e], c = pair[n + e]
//   m   = m_x·x + m_g·g                   the solver's converted model output (history)
//   out = Σ cᵢ·inᵢ + c_g·g + c_m·m        the new sample
// with the f32 operations in the order two solver_update dispatches would use, so the fused
// result equals the unfused one up to contraction.

struct CfgUpdateParams {
    n: u32,
    num_inputs: u32,
    _pad0: u32,
    _pad1: u32,
    // (1 − w, w, m_x, m_g)
    guide: vec4<f32>,
    // c₁ … c₄ over in1 … in4, then c_g, c_m
    coef: array<vec4<f32>, 2>,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: CfgUpdateParams;
@group(0) @binding(1) var<storage, read> pair: array<f32>;  // (2n): uncond then cond
@group(0) @binding(2) var<storage, read> in1: array<f32>;   // (n) x_t
@group(0) @binding(3) var<storage, read> in2: array<f32>;   // (n) or unused
@group(0) @binding(4) var<storage, read> in3: array<f32>;   // (n) or unused
@group(0) @binding(5) var<storage, read> in4: array<f32>;   // (n) or unused
@group(0) @binding(6) var<storage, read_write> out: array<f32>;        // (n) new sample
@group(0) @binding(7) var<storage, read_write> model_out: array<f32>;  // (n) m

fn coef(i: u32) -> f32 {
    return p.coef[i / 4u][i % 4u];
}

@compute @workgroup_size(WG)
fn cfg_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let e = (wg.x + wg.y * nwg.x) * WG + lid;
    if (e >= p.n) { return; }
    var g = 0.0;
    g += p.guide.x * pair[e];
    g += p.guide.y * pair[p.n + e];
    let x = in1[e];
    var m = 0.0;
    m += p.guide.z * x;
    m += p.guide.w * g;
    var acc = 0.0;
    acc += coef(0u) * x;
    if (p.num_inputs > 1u) { acc += coef(1u) * in2[e]; }
    if (p.num_inputs > 2u) { acc += coef(2u) * in3[e]; }
    if (p.num_inputs > 3u) { acc += coef(3u) * in4[e]; }
    acc += coef(4u) * g;
    acc += coef(5u) * m;
    out[e] = acc;
    model_out[e] = m;
}
