// One input's share of a concatenation: x viewed as (outer, block) is copied into out viewed
// as (outer, out_block) at column `offset`, where for concat along `dim`:
//   outer = Π shape[..dim],  block = shape_k[dim] · inner,  out_block = Σₖ shape_k[dim] · inner,
//   offset = (Σ_{k' < k} shape_k'[dim]) · inner,  inner = Π shape[dim + 1..].
// One dispatch per input, one thread per input element (reads coalesced; writes in runs of
// `block`). Only used when outer is large: few large blocks are buffer copies instead.

struct ConcatParams {
    total: u32,      // elements of x in this dispatch
    block: u32,
    out_block: u32,
    offset: u32,
    x_off: u32,      // elements from the start of the x binding to block 0
    out_off: u32,    // elements from the start of the out binding to block 0
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: ConcatParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (outer, block)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (outer, out_block)

@compute @workgroup_size(WG)
fn concat(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let o = i / p.block;
    out[p.out_off + o * p.out_block + p.offset + (i - o * p.block)] = x[p.x_off + i];
}
