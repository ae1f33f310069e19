// Draws image tensors that live in storage buffers straight into a colour target (a window
// surface, a canvas, an offscreen texture): no readback. A full-screen triangle; each fragment
// finds the tensor element it shows. `src/render.rs` has the CPU twin (`render_cpu`) that the
// tests compare against, and the layout rules.
//
// Layout, in "logical" pixels (one per source pixel): a batch is a near-square grid of
// `cols` x `rows` tiles `gap` apart; with two panels (x_t and the x0 prediction) the second
// grid sits `panel_gap` to the right of the first. The logical image is scaled to the target
// with its aspect kept (nearest neighbour at pixel centres, in integers so the CPU agrees to
// the bit) and centred; everything else is the background colour.

struct RenderParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    cols: u32,
    rows: u32,
    panels: u32,
    gap: u32,
    panel_gap: u32,
    logical_w: u32,
    logical_h: u32,
    panel_w: u32,
    origin_x: u32,
    origin_y: u32,
    scaled_w: u32,
    scaled_h: u32,
    // RGBA bytes 0..=255.
    background: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: RenderParams;
@group(0) @binding(1) var<storage, read> panel0: array<f32>; // (N, C, H, W)
@group(0) @binding(2) var<storage, read> panel1: array<f32>; // (N, C, H, W); panel0 again when one panel

// The target stores sRGB-encoded bytes itself (`*Srgb` formats): hand it linear values so
// the stored byte is the one a PNG of the same tensor would hold.
override SRGB_TARGET: bool = false;

@vertex
fn render_vs(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {
    // (-1, -1), (3, -1), (-1, 3): one triangle covering the viewport.
    let x = f32(i32(i & 1u) * 4 - 1);
    let y = f32(i32(i >> 1u) * 4 - 1);
    return vec4<f32>(x, y, 0.0, 1.0);
}

// diffusers' `(x / 2 + 0.5).clamp(0, 1) * 255`, rounded half to even (numpy's round); the
// same f32 operations as `render::to_u8`. NaN shows as 0.
fn to_byte(x: f32) -> f32 {
    if !(x == x) {
        return 0.0;
    }
    return round(clamp(x * 0.5 + 0.5, 0.0, 1.0) * 255.0);
}

fn srgb_to_linear(v: vec3<f32>) -> vec3<f32> {
    let lo = v / 12.92;
    let hi = pow((v + 0.055) / 1.055, vec3<f32>(2.4));
    return select(hi, lo, v <= vec3<f32>(0.04045));
}

fn encode(bytes: vec3<f32>, alpha: f32) -> vec4<f32> {
    let v = bytes / 255.0;
    if SRGB_TARGET {
        return vec4<f32>(srgb_to_linear(v), alpha);
    }
    return vec4<f32>(v, alpha);
}

fn fetch(panel: u32, i: u32) -> f32 {
    if panel == 0u {
        return panel0[i];
    }
    return panel1[i];
}

@fragment
fn render_fs(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let bg = encode(vec3<f32>(p.background.xyz), f32(p.background.w) / 255.0);
    // Fragment positions are pixel centres (x + 0.5): truncation gives the pixel index.
    let px = u32(pos.x);
    let py = u32(pos.y);
    if px < p.origin_x || py < p.origin_y {
        return bg;
    }
    let dx = px - p.origin_x;
    let dy = py - p.origin_y;
    if dx >= p.scaled_w || dy >= p.scaled_h {
        return bg;
    }
    // Nearest logical pixel to this pixel's centre: floor((dx + 1/2) * logical / scaled).
    // render.rs checks that the products fit in u32.
    let lx = ((2u * dx + 1u) * p.logical_w) / (2u * p.scaled_w);
    let ly = ((2u * dy + 1u) * p.logical_h) / (2u * p.scaled_h);
    var x = lx;
    var panel = 0u;
    if x >= p.panel_w {
        if x < p.panel_w + p.panel_gap {
            return bg;
        }
        x = x - p.panel_w - p.panel_gap;
        panel = 1u;
    }
    let col = x / (p.w + p.gap);
    let sx = x % (p.w + p.gap);
    let row = ly / (p.h + p.gap);
    let sy = ly % (p.h + p.gap);
    if sx >= p.w || sy >= p.h || col >= p.cols || row >= p.rows {
        return bg;
    }
    let item = row * p.cols + col;
    if item >= p.n {
        return bg;
    }
    let plane = p.h * p.w;
    let base = item * p.c * plane + sy * p.w + sx;
    var rgb: vec3<f32>;
    if p.c >= 3u {
        rgb = vec3<f32>(
            to_byte(fetch(panel, base)),
            to_byte(fetch(panel, base + plane)),
            to_byte(fetch(panel, base + 2u * plane)),
        );
    } else {
        rgb = vec3<f32>(to_byte(fetch(panel, base)));
    }
    return encode(rgb, 1.0);
}
