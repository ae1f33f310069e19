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
    // 0: the image itself (grey or RGB); 1: channel 0 as a heightmap in shaded relief;
    // 2: channel 0 as a galaxy in log data space, asinh-stretched (render.rs AsinhStretch).
    mode: u32,
    // Mode 2: s of y = ln(1 + x)/s, the softening a, the flux shown white.
    stretch_scale: f32,
    stretch_soft: f32,
    stretch_max: f32,
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

// Height units per tile height (render.rs RELIEF_Z_PER_TILE).
const RELIEF_Z_PER_TILE: f32 = 0.25;

fn height(panel: u32, base: u32, x: u32, y: u32) -> f32 {
    let v = fetch(panel, base + y * p.w + x);
    return select(0.0, v, v == v);
}

// Elevation tint, t = (h + 1)/2: the stops of render.rs RELIEF_TINT, linear in between.
fn tint(t_in: f32) -> vec3<f32> {
    let t = clamp(t_in, 0.0, 1.0);
    var stops = array<vec4<f32>, 5>(
        vec4<f32>(0.0, 0.16, 0.40, 0.20),
        vec4<f32>(0.35, 0.45, 0.62, 0.30),
        vec4<f32>(0.6, 0.76, 0.68, 0.45),
        vec4<f32>(0.8, 0.58, 0.46, 0.34),
        vec4<f32>(1.0, 0.96, 0.96, 0.96),
    );
    for (var k = 1; k < 5; k++) {
        let a = stops[k - 1];
        let b = stops[k];
        if t <= b.x || k == 4 {
            let f = clamp((t - a.x) / (b.x - a.x), 0.0, 1.0);
            return a.yzw + (b.yzw - a.yzw) * f;
        }
    }
    return vec3<f32>(1.0);
}

// Shaded relief of the heightmap plane at `base` at source pixel (x, y): central differences
// (one-sided at the tile's edges), a hillshade lit from the upper left at 45°, times the tint.
fn relief(panel: u32, base: u32, x: u32, y: u32) -> vec3<f32> {
    let x0 = select(x - 1u, 0u, x == 0u);
    let x1 = min(x + 1u, p.w - 1u);
    let y0 = select(y - 1u, 0u, y == 0u);
    let y1 = min(y + 1u, p.h - 1u);
    let z = RELIEF_Z_PER_TILE * f32(p.h);
    var dx = 0.0;
    if x1 > x0 {
        dx = (height(panel, base, x1, y) - height(panel, base, x0, y)) / f32(x1 - x0) * z;
    }
    var dy = 0.0;
    if y1 > y0 {
        dy = (height(panel, base, x, y1) - height(panel, base, x, y0)) / f32(y1 - y0) * z;
    }
    let len = sqrt(dx * dx + dy * dy + 1.0);
    let shade = max((dx + dy + 1.4142135) * 0.5 / len, 0.0);
    let light = 0.35 + 0.65 * shade;
    let c = tint(height(panel, base, x, y) * 0.5 + 0.5);
    return round(clamp(c * light, vec3<f32>(0.0), vec3<f32>(1.0)) * 255.0);
}

// The flux x = e^(s·y) − 1 of data-space y, then asinh(x/a)/asinh(x_max/a) in [0, 1] as a
// byte; the same f32 steps as `AsinhStretch::grey` (NaN shows as 0).
fn asinh_byte(y: f32) -> f32 {
    if !(y == y) {
        return 0.0;
    }
    let x = exp(p.stretch_scale * y) - 1.0;
    let v = asinh(x / p.stretch_soft) / asinh(p.stretch_max / p.stretch_soft);
    return round(clamp(v, 0.0, 1.0) * 255.0);
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
    if p.mode == 1u {
        rgb = relief(panel, item * p.c * plane, sx, sy);
    } else if p.mode == 2u {
        rgb = vec3<f32>(asinh_byte(fetch(panel, base)));
    } else if p.c >= 3u {
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
