//! Draws image tensors into a colour target without reading them back: the native preview
//! window's surface, a browser canvas, or an offscreen texture in tests.
//!
//! **Why a render pipeline** (a full-screen triangle whose fragment shader reads the storage
//! buffers, `shaders/render.wgsl`) rather than a compute shader writing a storage texture:
//! surfaces and canvases are `bgra8unorm` or `*-srgb` formats, and neither can be a storage
//! texture in baseline WebGPU (`bgra8unorm` storage needs an optional feature, sRGB formats
//! never), so compute-to-texture would need an extra texture and a blit. A render pass writes
//! any colour format directly, and the hardware does the sRGB encoding.
//!
//! **Mapping**: a value `x` becomes the byte `round_half_even(clamp(x / 2 + 1/2, 0, 1) · 255)`
//! (diffusers' image post-processing; [`to_u8`]). On an sRGB target the shader outputs the
//! linear value whose sRGB encoding is that byte, so the pixels equal what a PNG written from
//! the same tensor shows (±1 from the hardware's encoder).
//!
//! **Layout** (`Layout`): tensors are (N, C, H, W). A batch is a near-square grid (`cols =
//! ⌈√N⌉`, `rows = ⌈N / cols⌉`) of tiles `gap` source pixels apart; up to two panels (x_t and the
//! x₀ prediction) side by side, `panel_gap` apart. Channels: C = 1 is grey, C ≥ 3 shows the
//! first three as RGB, C = 2 shows channel 0 as grey. The whole is scaled to the target with
//! its aspect kept, nearest neighbour at pixel centres, centred on the background colour.
//!
//! **Lifetime of what is drawn**: the tensors a sampling step hands out live in its
//! executor's buffer pool and are recycled once dropped. A viewer that keeps showing a frame
//! after the step must hold its own copy: [`snapshot`] records a GPU-side copy into the
//! executor's recording (no readback).

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::gpu::{GpuContext, Recorder};
use crate::ops::{GpuArg, Op};
use crate::tensor::Tensor;

/// The WGSL file (`shaders/render.wgsl`).
pub const SHADER: &str = "render";

/// diffusers' mapping of a model-space value in [-1, 1] to an 8-bit channel: `(x / 2 + 0.5)`
/// clamped to [0, 1], times 255, rounded half to even (numpy's `round`). NaN becomes 0. The
/// shader performs the same f32 operations, so PNG writers should use this to agree with it.
pub fn to_u8(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    ((x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8
}

/// How tiles and panels are arranged, in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Background pixels between tiles of a batch.
    pub gap: u32,
    /// Background pixels between the two panels.
    pub panel_gap: u32,
    /// RGBA bytes of everything that is not a tile (letterbox, gaps, empty grid cells).
    pub background: [u8; 4],
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            gap: 2,
            panel_gap: 8,
            background: [32, 32, 40, 255],
        }
    }
}

/// The uniform of `render.wgsl`: where every part of the picture goes for one target size.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RenderParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub cols: u32,
    pub rows: u32,
    pub panels: u32,
    pub gap: u32,
    pub panel_gap: u32,
    pub logical_w: u32,
    pub logical_h: u32,
    pub panel_w: u32,
    pub origin_x: u32,
    pub origin_y: u32,
    pub scaled_w: u32,
    pub scaled_h: u32,
    pub background: [u32; 4],
    /// [`RenderMode`] as a number (0 image, 1 relief, 2 asinh).
    pub mode: u32,
    /// [`AsinhStretch`] (s, a, x_max) as f32 bits in asinh mode (the shader reads f32;
    /// bits keep this struct `Eq`), else zeros.
    pub stretch: [u32; 3],
}

/// How a tensor element becomes a colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenderMode {
    /// diffusers' `x/2 + 1/2` grey or RGB (see the module doc).
    #[default]
    Image,
    /// Channel 0 as a heightmap in [-1, 1]: shaded relief, i.e. a hypsometric tint (green
    /// lowlands, tan slopes, white tops) times a hillshade lit from the upper left at 45°,
    /// with slopes from central differences inside each tile (one-sided at its edges).
    Relief,
    /// Channel 0 as a galaxy image in the log data space of galaxygrad's score networks:
    /// the transform inverted, then an asinh stretch (see [`AsinhStretch`]); grey.
    Asinh(AsinhStretch),
}

/// Display of galaxygrad samples: the data transform y = ln(1 + x)/s is inverted to the
/// flux x = e^(s·y) − 1, then shown with the asinh stretch of Lupton, Blanton et al. (2004,
/// PASP 116, 133: linear below the softening a, logarithmic above), scaled so that x_max is
/// white: grey = asinh(x/a)/asinh(x_max/a), clamped to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsinhStretch {
    /// s of y = ln(1 + x)/s (0.1 for galaxygrad's HSC and ZTF networks).
    pub transform_scale: f32,
    /// The softening a (flux units): where the stretch turns from linear to logarithmic.
    pub soft: f32,
    /// The flux shown white.
    pub max: f32,
}

// The fields are finite constants, never NaN: equality is reflexive.
impl Eq for AsinhStretch {}

impl AsinhStretch {
    /// galaxygrad's HSC/ZTF networks: s = 0.1; a and x_max chosen on their samples (fluxes
    /// mostly in [0, 1], cores up to ≈ 10).
    pub const GALAXYGRAD: AsinhStretch = AsinhStretch {
        transform_scale: 0.1,
        soft: 0.05,
        max: 5.0,
    };

    /// The grey level in [0, 1] of data-space value `y` (NaN: 0), in the shader's f32 steps.
    pub fn grey(&self, y: f32) -> f32 {
        if y.is_nan() {
            return 0.0;
        }
        let x = (self.transform_scale * y).exp() - 1.0;
        ((x / self.soft).asinh() / (self.max / self.soft).asinh()).clamp(0.0, 1.0)
    }
}

/// Vertical exaggeration of the relief: height units per tile height (a heightmap's
/// [-1, 1] spans a quarter of its own height in pixels).
pub const RELIEF_Z_PER_TILE: f32 = 0.25;

/// (t, r, g, b) stops of the relief's elevation tint, t = (h + 1)/2; shared with the shader.
pub const RELIEF_TINT: [[f32; 4]; 5] = [
    [0.0, 0.16, 0.40, 0.20],
    [0.35, 0.45, 0.62, 0.30],
    [0.6, 0.76, 0.68, 0.45],
    [0.8, 0.58, 0.46, 0.34],
    [1.0, 0.96, 0.96, 0.96],
];

fn relief_tint(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    for k in 1..RELIEF_TINT.len() {
        let (a, b) = (RELIEF_TINT[k - 1], RELIEF_TINT[k]);
        if t <= b[0] || k == RELIEF_TINT.len() - 1 {
            let f = ((t - a[0]) / (b[0] - a[0])).clamp(0.0, 1.0);
            return [
                a[1] + (b[1] - a[1]) * f,
                a[2] + (b[2] - a[2]) * f,
                a[3] + (b[3] - a[3]) * f,
            ];
        }
    }
    [1.0; 3]
}

/// Shaded-relief colour bytes of the heightmap `d` (one (H, W) plane at `plane_base`) at
/// (x, y): the CPU twin of `relief` in `render.wgsl` (the GPU may differ by one in a byte:
/// its `normalize` and `sqrt` are not correctly rounded).
pub fn relief_rgb(d: &[f32], plane_base: usize, h: u32, w: u32, x: u32, y: u32) -> [u8; 3] {
    let at = |xx: u32, yy: u32| {
        let v = d[plane_base + (yy * w + xx) as usize];
        if v.is_nan() {
            0.0
        } else {
            v
        }
    };
    let (x0, x1) = (x.saturating_sub(1), (x + 1).min(w - 1));
    let (y0, y1) = (y.saturating_sub(1), (y + 1).min(h - 1));
    let z = RELIEF_Z_PER_TILE * h as f32;
    let dx = if x1 > x0 {
        (at(x1, y) - at(x0, y)) / (x1 - x0) as f32 * z
    } else {
        0.0
    };
    let dy = if y1 > y0 {
        (at(x, y1) - at(x, y0)) / (y1 - y0) as f32 * z
    } else {
        0.0
    };
    // Normal (−dx, −dy, 1)/|…| against the light (−1, −1, √2)/2 (upper left, 45° up).
    let len = (dx * dx + dy * dy + 1.0).sqrt();
    let shade = ((dx + dy + std::f32::consts::SQRT_2) * 0.5 / len).max(0.0);
    let tint = relief_tint(at(x, y) * 0.5 + 0.5);
    let light = 0.35 + 0.65 * shade;
    tint.map(|c| ((c * light).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
}

/// Columns and rows of the near-square grid for `n` tiles.
pub fn grid(n: usize) -> (usize, usize) {
    let n = n.max(1);
    let mut cols = (n as f64).sqrt() as usize;
    while cols * cols < n {
        cols += 1;
    }
    while cols > 1 && (cols - 1) * (cols - 1) >= n {
        cols -= 1;
    }
    (cols, n.div_ceil(cols))
}

fn image_shape(shape: &[usize]) -> Result<[u32; 4]> {
    if shape.len() != 4 || shape.contains(&0) {
        return Err(Error::shape(
            "render",
            "the image tensor",
            "(N, C, H, W) with every dimension at least 1",
            shape,
        ));
    }
    let mut out = [0u32; 4];
    for (o, &d) in out.iter_mut().zip(shape) {
        *o = u32::try_from(d).map_err(|_| {
            Error::shape("render", "the image tensor", "dimensions below 2^32", shape)
        })?;
    }
    if shape.iter().product::<usize>() as u64 >= 1 << 32 {
        return Err(Error::shape(
            "render",
            "the image tensor",
            "fewer than 2^32 elements",
            shape,
        ));
    }
    Ok(out)
}

impl Layout {
    /// Width and height of the unscaled picture (one pixel per source pixel).
    pub fn natural_size(&self, shape: &[usize], panels: usize) -> Result<(u32, u32)> {
        let [n, _, h, w] = image_shape(shape)?;
        let (cols, rows) = grid(n as usize);
        let panel_w = cols as u64 * w as u64 + (cols as u64 - 1) * self.gap as u64;
        let panel_h = rows as u64 * h as u64 + (rows as u64 - 1) * self.gap as u64;
        let panels = panels.clamp(1, 2) as u64;
        let lw = panels * panel_w + (panels - 1) * self.panel_gap as u64;
        if lw >= 1 << 31 || panel_h >= 1 << 31 {
            return Err(Error::shape(
                "render",
                "the image tensor",
                "a grid narrower than 2^31 pixels",
                shape,
            ));
        }
        Ok((lw as u32, panel_h as u32))
    }

    /// The shader's parameters for drawing `panels` tensors of `shape` into a
    /// `target`-sized texture.
    pub fn params(
        &self,
        shape: &[usize],
        panels: usize,
        target: (u32, u32),
    ) -> Result<RenderParams> {
        self.params_mode(shape, panels, target, RenderMode::Image)
    }

    /// [`Layout::params`] in a [`RenderMode`].
    pub fn params_mode(
        &self,
        shape: &[usize],
        panels: usize,
        target: (u32, u32),
        mode: RenderMode,
    ) -> Result<RenderParams> {
        if !(1..=2).contains(&panels) {
            return Err(Error::invalid(
                "render",
                format!("draws one or two panels (x_t and the x0 prediction), got {panels}"),
            ));
        }
        let [n, c, h, w] = image_shape(shape)?;
        let (cols, rows) = grid(n as usize);
        let (lw, lh) = self.natural_size(shape, panels)?;
        let (tw, th) = (target.0.max(1) as u64, target.1.max(1) as u64);
        // Aspect kept: the limiting side fills the target, the other is rounded down.
        let (sw, sh) = if tw * lh as u64 <= th * lw as u64 {
            (tw, (tw * lh as u64 / lw as u64).max(1))
        } else {
            ((th * lw as u64 / lh as u64).max(1), th)
        };
        // The shader computes (2·dx + 1)·logical in u32.
        if 2 * sw * lw as u64 >= 1 << 32 || 2 * sh * lh as u64 >= 1 << 32 {
            return Err(Error::invalid(
                "render",
                format!(
                    "a {lw}x{lh} picture scaled to {sw}x{sh} pixels is too large to map in 32-bit \
                     arithmetic; draw fewer images at once or into a smaller target"
                ),
            ));
        }
        let panel_w = cols as u32 * w + (cols as u32 - 1) * self.gap;
        Ok(RenderParams {
            n,
            c,
            h,
            w,
            cols: cols as u32,
            rows: rows as u32,
            panels: panels as u32,
            gap: self.gap,
            panel_gap: self.panel_gap,
            logical_w: lw,
            logical_h: lh,
            panel_w,
            origin_x: ((tw - sw) / 2) as u32,
            origin_y: ((th - sh) / 2) as u32,
            scaled_w: sw as u32,
            scaled_h: sh as u32,
            background: self.background.map(u32::from),
            mode: match mode {
                RenderMode::Image => 0,
                RenderMode::Relief => 1,
                RenderMode::Asinh(_) => 2,
            },
            stretch: match mode {
                RenderMode::Asinh(a) => [a.transform_scale, a.soft, a.max].map(f32::to_bits),
                _ => [0; 3],
            },
        })
    }
}

/// The CPU twin of `render.wgsl`: RGBA bytes, row-major, of `panels` (each (N, C, H, W) data of
/// `shape`) drawn into a `target`-sized picture. Also what a PNG grid writer can use to get
/// the same picture as the window.
pub fn render_cpu(
    panels: &[&[f32]],
    shape: &[usize],
    layout: &Layout,
    target: (u32, u32),
) -> Result<Vec<u8>> {
    render_cpu_mode(panels, shape, layout, target, RenderMode::Image)
}

/// [`render_cpu`] in a [`RenderMode`].
pub fn render_cpu_mode(
    panels: &[&[f32]],
    shape: &[usize],
    layout: &Layout,
    target: (u32, u32),
    mode: RenderMode,
) -> Result<Vec<u8>> {
    let p = layout.params_mode(shape, panels.len(), target, mode)?;
    let numel = shape.iter().product::<usize>();
    if let Some(bad) = panels.iter().find(|d| d.len() != numel) {
        return Err(Error::invalid(
            "render",
            format!(
                "a panel holds {} values, its shape {shape:?} needs {numel}",
                bad.len()
            ),
        ));
    }
    let (tw, th) = (target.0 as usize, target.1 as usize);
    let bg = layout.background;
    let mut out = Vec::with_capacity(tw * th * 4);
    for py in 0..th as u32 {
        for px in 0..tw as u32 {
            out.extend_from_slice(&pixel_cpu(&p, panels, px, py).unwrap_or(bg));
        }
    }
    Ok(out)
}

fn pixel_cpu(p: &RenderParams, panels: &[&[f32]], px: u32, py: u32) -> Option<[u8; 4]> {
    let dx = px.checked_sub(p.origin_x).filter(|&d| d < p.scaled_w)?;
    let dy = py.checked_sub(p.origin_y).filter(|&d| d < p.scaled_h)?;
    let lx = ((2 * dx + 1) * p.logical_w) / (2 * p.scaled_w);
    let ly = ((2 * dy + 1) * p.logical_h) / (2 * p.scaled_h);
    let (x, panel) = if lx >= p.panel_w {
        if lx < p.panel_w + p.panel_gap {
            return None;
        }
        (lx - p.panel_w - p.panel_gap, 1)
    } else {
        (lx, 0)
    };
    let (col, sx) = (x / (p.w + p.gap), x % (p.w + p.gap));
    let (row, sy) = (ly / (p.h + p.gap), ly % (p.h + p.gap));
    if sx >= p.w || sy >= p.h || col >= p.cols || row >= p.rows {
        return None;
    }
    let item = row * p.cols + col;
    if item >= p.n {
        return None;
    }
    let plane = (p.h * p.w) as usize;
    let base = item as usize * p.c as usize * plane + (sy * p.w + sx) as usize;
    let d = panels[panel];
    if p.mode == 1 {
        let [r, g, b] = relief_rgb(d, item as usize * p.c as usize * plane, p.h, p.w, sx, sy);
        return Some([r, g, b, 255]);
    }
    if p.mode == 2 {
        let [s, soft, max] = p.stretch.map(f32::from_bits);
        let a = AsinhStretch {
            transform_scale: s,
            soft,
            max,
        };
        let g = (a.grey(d[base]) * 255.0).round_ties_even() as u8;
        return Some([g, g, g, 255]);
    }
    Some(if p.c >= 3 {
        [
            to_u8(d[base]),
            to_u8(d[base + plane]),
            to_u8(d[base + 2 * plane]),
            255,
        ]
    } else {
        let g = to_u8(d[base]);
        [g, g, g, 255]
    })
}

/// A render pipeline for one target format. Cheap to keep; create one per surface format.
pub struct Renderer {
    format: wgpu::TextureFormat,
    pipeline: wgpu::RenderPipeline,
    bind_group_layout: wgpu::BindGroupLayout,
}

impl Renderer {
    /// Compile `render.wgsl` for `format` (any filterable colour format; for `*Srgb` formats
    /// the shader hands the hardware linear values).
    pub fn new(ctx: &GpuContext, format: wgpu::TextureFormat) -> Result<Self> {
        let src =
            crate::shaders::source(SHADER).ok_or_else(|| Error::MissingShader(SHADER.into()))?;
        let device = &ctx.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(SHADER),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let storage = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: true },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("render"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1),
                storage(2),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("render"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let srgb = [("SRGB_TARGET", if format.is_srgb() { 1.0 } else { 0.0 })];
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("render"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("render_vs"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("render_fs"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &srgb,
                    zero_initialize_workgroup_memory: false,
                },
                targets: &[Some(wgpu::ColorTargetState {
                    format,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            multiview_mask: None,
            cache: None,
        });
        ctx.take_error(&format!("creating the render pipeline for {format:?}"))?;
        Ok(Self {
            format,
            pipeline,
            bind_group_layout,
        })
    }

    pub fn format(&self) -> wgpu::TextureFormat {
        self.format
    }

    /// Record into `encoder` a pass drawing `panels` (one or two GPU tensors of one (N, C, H, W)
    /// shape) over the whole of `target`, a view of a `target_size` texture in this
    /// renderer's format. With no panels the target is cleared to the background.
    pub fn draw(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
        target_size: (u32, u32),
        panels: &[&Tensor],
        layout: &Layout,
    ) -> Result<()> {
        self.draw_mode(
            ctx,
            encoder,
            target,
            target_size,
            panels,
            layout,
            RenderMode::Image,
        )
    }

    /// [`Renderer::draw`] in a [`RenderMode`].
    #[allow(clippy::too_many_arguments)]
    pub fn draw_mode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
        target_size: (u32, u32),
        panels: &[&Tensor],
        layout: &Layout,
        mode: RenderMode,
    ) -> Result<()> {
        let bg = layout.background.map(|b| f64::from(b) / 255.0);
        let clear = if self.format.is_srgb() {
            // The clear colour is linear on sRGB targets.
            let lin = |v: f64| {
                if v <= 0.04045 {
                    v / 12.92
                } else {
                    ((v + 0.055) / 1.055).powf(2.4)
                }
            };
            wgpu::Color {
                r: lin(bg[0]),
                g: lin(bg[1]),
                b: lin(bg[2]),
                a: bg[3],
            }
        } else {
            wgpu::Color {
                r: bg[0],
                g: bg[1],
                b: bg[2],
                a: bg[3],
            }
        };
        let bind_group = match panels {
            [] => None,
            _ => Some(self.bind(ctx, target_size, panels, layout, mode)?),
        };
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("render"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: target,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(clear),
                    store: wgpu::StoreOp::Store,
                },
            })],
            depth_stencil_attachment: None,
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        if let Some(bind_group) = bind_group {
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.draw(0..3, 0..1);
        }
        Ok(())
    }

    fn bind(
        &self,
        ctx: &GpuContext,
        target_size: (u32, u32),
        panels: &[&Tensor],
        layout: &Layout,
        mode: RenderMode,
    ) -> Result<wgpu::BindGroup> {
        let shape = panels[0].shape();
        let mut buffers = Vec::with_capacity(2);
        for (i, t) in panels.iter().enumerate() {
            if t.shape() != shape {
                return Err(Error::shape(
                    "render",
                    format!("panel {i}"),
                    format!("{shape:?} like panel 0"),
                    t.shape(),
                ));
            }
            let buffer = t.gpu_buffer().ok_or(Error::Backend {
                op: "render",
                index: i,
                expected: "gpu",
                got: "cpu",
            })?;
            ctx.check_binding("render", &format!("panel {i}"), t.byte_len())?;
            buffers.push(buffer.buffer());
        }
        let params = layout.params_mode(shape, panels.len(), target_size, mode)?;
        use wgpu::util::DeviceExt;
        let uniform = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("render params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bytes = wgpu::BufferSize::new(panels[0].byte_len());
        let entry = |binding, buffer| wgpu::BindGroupEntry {
            binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer,
                offset: 0,
                size: bytes,
            }),
        };
        Ok(ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("render"),
            layout: &self.bind_group_layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                entry(1, buffers[0]),
                // One panel: bind it again (read-only twice is allowed); the shader never
                // reads panel1 then.
                entry(2, buffers[buffers.len() - 1]),
            ],
        }))
    }
}

/// Draws `t` (a GPU tensor) at its natural size (one pixel per source pixel, the layout's
/// grid) into an offscreen `Rgba8Unorm` texture in `mode` and reads the RGBA bytes back:
/// what `webdiffusion sample --out x.png` writes for a rendered (not raw) output.
pub async fn render_offscreen(
    ctx: &GpuContext,
    t: &Tensor,
    layout: &Layout,
    mode: RenderMode,
) -> Result<(u32, u32, Vec<u8>)> {
    let (w, h) = layout.natural_size(t.shape(), 1)?;
    let renderer = Renderer::new(ctx, wgpu::TextureFormat::Rgba8Unorm)?;
    let texture = ctx.device.create_texture(&wgpu::TextureDescriptor {
        label: Some("offscreen render"),
        size: wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let view = texture.create_view(&Default::default());
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("offscreen render"),
        });
    renderer.draw_mode(ctx, &mut encoder, &view, (w, h), &[t], layout, mode)?;
    ctx.submit_commands([encoder.finish()]);
    ctx.take_error("rendering offscreen")?;
    Ok((w, h, read_rgba(ctx, &texture).await?))
}

/// Read an 8-bit RGBA or BGRA texture back as RGBA bytes, row-major (tests and window
/// captures; the render path itself never reads back). Submits its own copy.
pub async fn read_rgba(ctx: &GpuContext, texture: &wgpu::Texture) -> Result<Vec<u8>> {
    use wgpu::TextureFormat as F;
    let swap = match texture.format() {
        F::Bgra8Unorm | F::Bgra8UnormSrgb => true,
        F::Rgba8Unorm | F::Rgba8UnormSrgb => false,
        f => {
            return Err(Error::invalid(
                "read_rgba",
                format!("reads 8-bit RGBA or BGRA textures, got {f:?}"),
            ))
        }
    };
    let (w, h) = (texture.width(), texture.height());
    let row = w as u64 * 4;
    let padded = row.next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as u64);
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("texture readback"),
        size: (padded * h as u64).max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("texture readback"),
        });
    encoder.copy_texture_to_buffer(
        texture.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &staging,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(padded as u32),
                rows_per_image: None,
            },
        },
        texture.size(),
    );
    ctx.submit_commands([encoder.finish()]);
    ctx.take_error("copying a texture for readback")?;
    let (tx, rx) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    crate::platform::poll_wait(&ctx.device).map_err(Error::Readback)?;
    rx.await
        .map_err(|_| Error::Readback("the map callback was dropped (device lost?)".into()))?
        .map_err(|e| Error::Readback(e.to_string()))?;
    let mut out = Vec::with_capacity((row * h as u64) as usize);
    {
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        for y in 0..h as usize {
            let start = y * padded as usize;
            out.extend_from_slice(&view[start..start + row as usize]);
        }
    }
    staging.unmap();
    if swap {
        for px in out.chunks_exact_mut(4) {
            px.swap(0, 2);
        }
    }
    Ok(out)
}

/// A copy of `t` in a new buffer of `exec`'s pool, recorded into `exec`'s recording (GPU to
/// GPU, nothing read back; a plain copy on the CPU backend). The copy is the caller's until it
/// drops, whatever the executor recycles after the step; it holds the step's values once the
/// recording is submitted.
pub fn snapshot(exec: &mut Exec, t: &Tensor) -> Result<Tensor> {
    exec.run(&Snapshot, &[t])
}

struct Snapshot;

impl Op for Snapshot {
    fn name(&self) -> &'static str {
        "snapshot"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        match inputs {
            [s] => Ok(s.to_vec()),
            _ => Err(Error::invalid(
                "snapshot",
                format!("takes one tensor, got {}", inputs.len()),
            )),
        }
    }

    fn cpu(&self, _shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        out.copy_from_slice(inputs[0]);
    }

    fn record(
        &self,
        _ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let bytes = crate::tensor::numel(inputs[0].shape) as u64 * 4;
        if bytes > 0 {
            rec.copy(inputs[0].buffer, 0, out.buffer, 0, bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_near_square() {
        for (n, want) in [
            (1, (1, 1)),
            (2, (2, 1)),
            (3, (2, 2)),
            (4, (2, 2)),
            (5, (3, 2)),
            (7, (3, 3)),
            (10, (4, 3)),
            (16, (4, 4)),
            (17, (5, 4)),
        ] {
            assert_eq!(grid(n), want, "n = {n}");
        }
    }

    #[test]
    fn byte_mapping_matches_diffusers() {
        // (x/2 + 0.5) * 255 = 127.5 at x = 0: numpy rounds half to even.
        assert_eq!(to_u8(0.0), 128);
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(3.0), 255);
        assert_eq!(to_u8(-7.0), 0);
        assert_eq!(to_u8(f32::NAN), 0);
        // 2·(k/255) − 1 maps back to k.
        for k in 0..=255u8 {
            assert_eq!(to_u8(2.0 * (k as f32 / 255.0) - 1.0), k);
        }
    }

    #[test]
    fn layout_letterboxes_and_keeps_aspect() {
        let l = Layout {
            gap: 1,
            panel_gap: 3,
            background: [0; 4],
        };
        // 5 images 4x3 -> grid 3x2: panel 3*4+2 = 14 wide, 2*3+1 = 7 high; two panels: 31x7.
        let p = l.params(&[5, 1, 3, 4], 2, (62, 100)).unwrap();
        assert_eq!(
            (p.cols, p.rows, p.panel_w, p.logical_w, p.logical_h),
            (3, 2, 14, 31, 7)
        );
        assert_eq!(
            (p.scaled_w, p.scaled_h, p.origin_x, p.origin_y),
            (62, 14, 0, 43)
        );
        assert!(l.params(&[5, 1, 3], 1, (10, 10)).is_err());
        assert!(l.params(&[5, 1, 3, 4], 3, (10, 10)).is_err());
    }
}
