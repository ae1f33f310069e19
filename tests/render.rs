//! The render shader (`shaders/render.wgsl`) against its CPU twin (`render::render_cpu`):
//! drawn into offscreen textures of the four surface formats on odd sizes and batch counts,
//! read back (here only; the render path never reads back) and compared byte for byte
//! (±1 on sRGB targets, whose encoding the hardware does). Plus a hand-computed picture for
//! the CPU twin itself, `snapshot` surviving buffer recycling, and bad inputs.

#[path = "ops/common.rs"]
mod common;

use common::{gpu, Rng};
use webdiffusion::platform::block_on;
use webdiffusion::render::{self, render_cpu, render_cpu_mode, Layout, RenderMode, Renderer};
use webdiffusion::{Exec, GpuContext, Tensor};

const FORMATS: [wgpu::TextureFormat; 4] = [
    wgpu::TextureFormat::Rgba8Unorm,
    wgpu::TextureFormat::Bgra8Unorm,
    wgpu::TextureFormat::Rgba8UnormSrgb,
    wgpu::TextureFormat::Bgra8UnormSrgb,
];

fn target(ctx: &GpuContext, format: wgpu::TextureFormat, (w, h): (u32, u32)) -> wgpu::Texture {
    ctx.device.create_texture(&wgpu::TextureDescriptor {
        label: Some("render test target"),
        size: wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    })
}

fn draw(
    ctx: &GpuContext,
    renderer: &Renderer,
    size: (u32, u32),
    panels: &[&Tensor],
    layout: &Layout,
) -> webdiffusion::Result<Vec<u8>> {
    let tex = target(ctx, renderer.format(), size);
    let view = tex.create_view(&Default::default());
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    renderer.draw(ctx, &mut enc, &view, size, panels, layout)?;
    ctx.submit_commands([enc.finish()]);
    block_on(render::read_rgba(ctx, &tex))
}

/// Values in [-1.3, 1.3] (so clamping shows) with the exact ends and the midpoint mixed in.
fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = rng.vec(n, -1.3, 1.3);
    for (i, x) in v.iter_mut().enumerate() {
        match i % 11 {
            0 => *x = -1.0,
            5 => *x = 1.0,
            7 => *x = 0.0,
            _ => {}
        }
    }
    v
}

#[test]
fn cpu_twin_matches_a_hand_computed_picture() {
    // A 1x2 image [-1, 1] scaled into 4x3: the width limits (4/2 < 3/1), so the picture is
    // 4x2 at the top (origin_y = (3 - 2) / 2 = 0), each source pixel 2x2; the last row is
    // background.
    let layout = Layout {
        gap: 0,
        panel_gap: 0,
        background: [9, 8, 7, 255],
    };
    let got = render_cpu(&[&[-1.0, 1.0]], &[1, 1, 1, 2], &layout, (4, 3)).unwrap();
    let (k, w, b) = ([0, 0, 0, 255], [255, 255, 255, 255], [9, 8, 7, 255]);
    let want: Vec<u8> = [k, k, w, w, k, k, w, w, b, b, b, b].concat();
    assert_eq!(got, want);

    // Two panels of a 3-image RGB batch (grid 2x2, one empty cell), 1x1 images, gap 1,
    // panel gap 2, unscaled: logical width 2·(2+1) + 2 = 8, height 3.
    let layout = Layout {
        gap: 1,
        panel_gap: 2,
        background: [1, 2, 3, 4],
    };
    // (3, 3, 1, 1): image i has channels (r, g, b).
    let a = [-1.0, 0.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0];
    let bb = [1.0, -1.0, -1.0, -1.0, 1.0, -1.0, -1.0, -1.0, 1.0];
    let got = render_cpu(&[&a, &bb], &[3, 3, 1, 1], &layout, (8, 3)).unwrap();
    let bg = [1, 2, 3, 4];
    let px = |x: usize, y: usize| -> [u8; 4] { got[(y * 8 + x) * 4..][..4].try_into().unwrap() };
    assert_eq!(px(0, 0), [0, 128, 255, 255]);
    assert_eq!(px(1, 0), bg); // gap
    assert_eq!(px(2, 0), [255, 255, 255, 255]);
    assert_eq!(px(0, 2), [0, 0, 0, 255]);
    assert_eq!(px(2, 2), bg); // empty fourth cell
    assert_eq!(px(3, 0), bg); // panel gap
    assert_eq!(px(4, 0), bg);
    assert_eq!(px(5, 0), [255, 0, 0, 255]);
    assert_eq!(px(7, 0), [0, 255, 0, 255]);
    assert_eq!(px(5, 2), [0, 0, 255, 255]);
}

#[test]
fn gpu_render_matches_cpu_on_every_format() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(6);
    // (shape, panels, target): odd sizes, batch counts that leave empty cells, letterboxing
    // on either axis, down- and up-scaling, C = 1, 2, 3 and 4.
    let cases: [(&[usize], usize, (u32, u32)); 5] = [
        (&[1, 1, 5, 7], 1, (23, 17)),
        (&[3, 3, 4, 5], 2, (41, 19)),
        (&[5, 1, 3, 4], 2, (37, 53)),
        (&[7, 2, 3, 2], 1, (9, 13)),
        (&[2, 4, 6, 3], 2, (29, 31)),
    ];
    let layout = Layout {
        gap: 1,
        panel_gap: 3,
        background: [200, 30, 60, 255],
    };
    let mut exec = Exec::gpu(ctx.clone());
    for format in FORMATS {
        let renderer = Renderer::new(&ctx, format).unwrap();
        let tol = if format.is_srgb() { 1 } else { 0 };
        for &(shape, panels, size) in &cases {
            let n: usize = shape.iter().product();
            let host: Vec<Vec<f32>> = (0..panels).map(|_| values(&mut rng, n)).collect();
            let dev: Vec<Tensor> = host
                .iter()
                .map(|d| exec.tensor(shape, d).unwrap())
                .collect();
            let refs: Vec<&Tensor> = dev.iter().collect();
            let got = draw(&ctx, &renderer, size, &refs, &layout).unwrap();
            let host_refs: Vec<&[f32]> = host.iter().map(|d| d.as_slice()).collect();
            let want = render_cpu(&host_refs, shape, &layout, size).unwrap();
            assert_eq!(got.len(), want.len());
            let mut worst = (0u8, 0usize);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let d = g.abs_diff(*w);
                if d > worst.0 {
                    worst = (d, i);
                }
            }
            let (d, i) = worst;
            eprintln!("{format:?} {shape:?} x{panels} -> {size:?}: max |gpu - cpu| = {d}");
            assert!(
                d <= tol,
                "{format:?} {shape:?} x{panels} into {size:?}: pixel ({}, {}) channel {}: gpu {} cpu {} (tolerance {tol})",
                (i / 4) % size.0 as usize,
                (i / 4) / size.0 as usize,
                i % 4,
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn snapshot_survives_buffer_recycling() {
    let Some(ctx) = gpu() else { return };
    let mut exec = Exec::gpu(ctx.clone());
    let shape = [2, 3, 5, 7];
    let n = 2 * 3 * 5 * 7;
    let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let other = vec![-5.0f32; n];
    let a = exec.tensor(&shape, &data).unwrap();
    // `step` stands for a step's output: a buffer of the executor's pool.
    let step = render::snapshot(&mut exec, &a).unwrap();
    let kept = render::snapshot(&mut exec, &step).unwrap();
    let before = exec.pool_stats().unwrap().reused;
    drop(step);
    // The next step's output takes the freed buffer and overwrites it...
    let b = exec.tensor(&shape, &other).unwrap();
    let next = render::snapshot(&mut exec, &b).unwrap();
    assert_eq!(
        exec.pool_stats().unwrap().reused,
        before + 1,
        "the freed buffer was not recycled, so this test would prove nothing"
    );
    let got = block_on(exec.read_many(&[&kept, &next])).unwrap();
    // ... but the snapshot still holds the first step's values.
    assert_eq!(got[0], data);
    assert_eq!(got[1], other);
}

#[test]
fn bad_inputs_are_errors() {
    let layout = Layout::default();
    assert!(render_cpu(&[&[0.0; 6]], &[2, 3], &layout, (4, 4)).is_err());
    assert!(render_cpu(&[&[0.0; 5]], &[1, 1, 2, 3], &layout, (4, 4)).is_err());
    let z = [0.0f32; 6];
    assert!(render_cpu(&[&z, &z, &z], &[1, 1, 2, 3], &layout, (4, 4)).is_err());
    assert!(render_cpu(&[&[]], &[0, 1, 2, 3], &layout, (4, 4)).is_err());
    let Some(ctx) = gpu() else { return };
    let renderer = Renderer::new(&ctx, wgpu::TextureFormat::Rgba8Unorm).unwrap();
    let mut exec = Exec::gpu(ctx.clone());
    let a = exec.tensor(&[1, 1, 2, 3], &[0.0; 6]).unwrap();
    let b = exec.tensor(&[1, 1, 3, 2], &[0.0; 6]).unwrap();
    let cpu = Tensor::from_vec(&[1, 1, 2, 3], vec![0.0; 6]).unwrap();
    let err = draw(&ctx, &renderer, (8, 8), &[&a, &b], &layout).unwrap_err();
    assert!(err.to_string().contains("panel 1"), "{err}");
    let err = draw(&ctx, &renderer, (8, 8), &[&cpu], &layout).unwrap_err();
    assert!(err.to_string().contains("cpu"), "{err}");
    let flat = a.reshape(&[6]).unwrap();
    let err = draw(&ctx, &renderer, (8, 8), &[&flat], &layout).unwrap_err();
    assert!(err.to_string().contains("(N, C, H, W)"), "{err}");
}

/// Shaded relief, by hand: a flat map at height 0 is the tint at t = 0.5 (0.6 of the way
/// from the 0.35 stop (0.45, 0.62, 0.30) to the 0.6 stop (0.76, 0.68, 0.45)) times
/// 0.35 + 0.65·cos 45° (the light is 45° up); a slope facing the light is brighter than one
/// facing away.
#[test]
fn relief_cpu_by_hand() {
    let layout = Layout {
        gap: 0,
        panel_gap: 0,
        background: [0, 0, 0, 255],
    };
    let flat = render_cpu_mode(
        &[&[0.0; 9]],
        &[1, 1, 3, 3],
        &layout,
        (3, 3),
        RenderMode::Relief,
    )
    .unwrap();
    let light = 0.35 + 0.65 * std::f64::consts::FRAC_1_SQRT_2;
    let tint = [0.45 + 0.31 * 0.6, 0.62 + 0.06 * 0.6, 0.30 + 0.15 * 0.6];
    for px in flat.chunks_exact(4) {
        for k in 0..3 {
            let want = tint[k] * light * 255.0;
            assert!(
                (px[k] as f64 - want).abs() <= 0.5 + 1e-3,
                "{px:?} vs {want}"
            );
        }
    }
    // Rising to the right faces the upper-left light; falling faces away.
    let up: Vec<f32> = (0..16).map(|i| (i % 4) as f32 * 0.5 - 0.75).collect();
    let down: Vec<f32> = up.iter().map(|v| -v).collect();
    let a = render_cpu_mode(&[&up], &[1, 1, 4, 4], &layout, (4, 4), RenderMode::Relief).unwrap();
    let b = render_cpu_mode(&[&down], &[1, 1, 4, 4], &layout, (4, 4), RenderMode::Relief).unwrap();
    let sum = |v: &[u8]| v.iter().map(|&x| x as u32).sum::<u32>();
    assert!(
        sum(&a) > sum(&b) + 16 * 3 * 20,
        "{} vs {}",
        sum(&a),
        sum(&b)
    );
}

#[test]
fn relief_gpu_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(11);
    let layout = Layout {
        gap: 1,
        panel_gap: 3,
        background: [5, 6, 7, 255],
    };
    let mut exec = Exec::gpu(ctx.clone());
    let renderer = Renderer::new(&ctx, wgpu::TextureFormat::Rgba8Unorm).unwrap();
    // Odd sizes, a 1-pixel-wide map (no x neighbours), C = 2 (channel 0 is the height),
    // down- and up-scaling.
    let cases: [(&[usize], (u32, u32)); 3] = [
        (&[1, 1, 7, 5], (23, 31)),
        (&[3, 2, 6, 1], (9, 13)),
        (&[5, 1, 9, 11], (30, 20)),
    ];
    for (shape, size) in cases {
        let n: usize = shape.iter().product();
        // Smooth-ish maps with NaN and out-of-range values mixed in.
        let mut host = values(&mut rng, n);
        host[n / 2] = f32::NAN;
        let t = exec.tensor(shape, &host).unwrap();
        let tex = target(&ctx, renderer.format(), size);
        let view = tex.create_view(&Default::default());
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        renderer
            .draw_mode(
                &ctx,
                &mut enc,
                &view,
                size,
                &[&t],
                &layout,
                RenderMode::Relief,
            )
            .unwrap();
        ctx.submit_commands([enc.finish()]);
        let got = block_on(render::read_rgba(&ctx, &tex)).unwrap();
        let want = render_cpu_mode(&[&host], shape, &layout, size, RenderMode::Relief).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| g.abs_diff(*w))
            .max()
            .unwrap();
        eprintln!("relief {shape:?} -> {size:?}: max |gpu - cpu| = {worst}");
        assert!(worst <= 1, "relief {shape:?}: max byte difference {worst}");
    }
    // The offscreen helper the CLI writes PNGs with draws the same picture at natural size.
    let host = values(&mut rng, 2 * 5 * 6);
    let t = exec.tensor(&[2, 1, 5, 6], &host).unwrap();
    let (w, h, got) = block_on(render::render_offscreen(
        &ctx,
        &t,
        &layout,
        RenderMode::Relief,
    ))
    .unwrap();
    assert_eq!((w, h), (13, 5));
    let want =
        render_cpu_mode(&[&host], &[2, 1, 5, 6], &layout, (w, h), RenderMode::Relief).unwrap();
    assert!(got.iter().zip(&want).all(|(g, w)| g.abs_diff(*w) <= 1));
}
