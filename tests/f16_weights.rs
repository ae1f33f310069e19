//! Packed-f16 weight storage (`WeightDtype::F16Packed`): Linear and Conv2d weights stored as
//! f16 pairs in u32 words on the GPU and unpacked in matmul.wgsl / conv2d.wgsl, against the
//! CPU backend (which keeps f32 values rounded through f16), on odd element counts so the
//! padded last word is exercised; and the bundled model's forward with f16 weights against
//! f32 weights, with the weight bytes it saves.

#[path = "ops/common.rs"]
mod common;

use std::time::Instant;

use common::{gpu, Rng};
use webdiffusion::nn::{Conv2d, Linear};
use webdiffusion::platform::block_on;
use webdiffusion::weights::{ReadyTensor, TensorData, WeightDtype, Weights};
use webdiffusion::{bundled, Exec, Tensor};

/// A weight set holding `tensors`, to be taken as `dtype`.
fn weights(dtype: WeightDtype, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Weights {
    let mut w = Weights::new("test");
    for (name, shape, values) in tensors {
        w.insert(ReadyTensor {
            file: "test".into(),
            name: name.to_string(),
            shape: shape.clone(),
            data: TensorData::F32(values.clone()),
        })
        .unwrap();
    }
    w.set_weight_dtype(dtype);
    w
}

fn read(exec: &mut Exec, t: &Tensor) -> Vec<f32> {
    block_on(exec.read(t)).unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Weight values that f16 cannot hold exactly (so rounding is visible) at a scale typical of
/// trained layers.
fn weight_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec(n, -0.3, 0.3)
}

#[test]
fn packed_linear_matches_cpu_on_odd_shapes() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(7);
    // 13·37 = 481 weights: an odd count, so the last word holds one value and a pad.
    for (k, n, rows) in [(37usize, 13usize, 15usize), (5, 3, 1), (64, 33, 9)] {
        let tensors = [
            ("l.weight", vec![n, k], weight_values(&mut rng, n * k)),
            ("l.bias", vec![n], rng.vec(n, -1.0, 1.0)),
        ];
        let x_host = Tensor::from_vec(&[rows, k], rng.vec(rows * k, -1.0, 1.0)).unwrap();
        let res_host = Tensor::from_vec(&[rows, n], rng.vec(rows * n, -1.0, 1.0)).unwrap();

        let mut outs = Vec::new();
        for (exec, dtype) in [
            (Exec::cpu(), WeightDtype::F16Packed),
            (Exec::gpu(ctx.clone()), WeightDtype::F16Packed),
            (Exec::cpu(), WeightDtype::F32),
        ] {
            let mut exec = exec;
            let mut w = weights(dtype, &tensors);
            let layer = Linear::load(&mut exec, &mut w, "l", k, n, true).unwrap();
            let x = exec.upload(&x_host).unwrap();
            let r = exec.upload(&res_host).unwrap();
            let y = layer.forward(&mut exec, &x).unwrap();
            let yr = layer.forward_residual(&mut exec, &x, &r).unwrap();
            outs.push((read(&mut exec, &y), read(&mut exec, &yr), w.device_bytes()));
        }
        let (cpu16, gpu16, cpu32) = (&outs[0], &outs[1], &outs[2]);
        let what = format!("linear k{k} n{n} rows{rows}");
        for (g, c, name) in [
            (&gpu16.0, &cpu16.0, "plain"),
            (&gpu16.1, &cpu16.1, "residual"),
        ] {
            let e = rel_err(g, c);
            eprintln!("{what} {name}: gpu f16 vs cpu f16 {e:.2e}");
            assert!(e < 1e-5, "{what} {name}: gpu vs cpu {e}");
        }
        // The CPU path really rounds (else the comparison above proves nothing about f16)…
        let e32 = rel_err(&cpu16.0, &cpu32.0);
        eprintln!("{what}: f16 vs f32 weights {e32:.2e}");
        assert!(e32 > 0.0, "{what}: f16 rounding changed nothing");
        // …and stays within the tolerance.
        assert!(e32 < 2e-3, "{what}: f16 vs f32 {e32}");
        // GPU bytes: packed weight words + f32 bias.
        let want = (n * k).div_ceil(2) as u64 * 4 + n as u64 * 4;
        assert_eq!(gpu16.2, want, "{what}: device bytes");
    }
}

#[test]
fn packed_conv_matches_cpu_on_odd_shapes() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(11);
    // (cin, cout, kernel, stride, padding, h, w): 3×3 (135 weights), 1×1 pointwise path
    // (21 weights), strided 3×3, and cout > 8 (several channel blocks).
    let cases = [
        (3usize, 5usize, 3usize, 1usize, 1usize, 9usize, 7usize),
        (7, 3, 1, 1, 0, 5, 11),
        (5, 9, 3, 2, 1, 11, 9),
        (4, 17, 3, 1, 1, 6, 6),
    ];
    for (cin, cout, kk, stride, pad, h, wd) in cases {
        let nw = cout * cin * kk * kk;
        let tensors = [
            (
                "c.weight",
                vec![cout, cin, kk, kk],
                weight_values(&mut rng, nw),
            ),
            ("c.bias", vec![cout], rng.vec(cout, -1.0, 1.0)),
        ];
        let x_host =
            Tensor::from_vec(&[2, cin, h, wd], rng.vec(2 * cin * h * wd, -1.0, 1.0)).unwrap();
        let mut outs = Vec::new();
        for (exec, dtype) in [
            (Exec::cpu(), WeightDtype::F16Packed),
            (Exec::gpu(ctx.clone()), WeightDtype::F16Packed),
            (Exec::cpu(), WeightDtype::F32),
        ] {
            let mut exec = exec;
            let mut w = weights(dtype, &tensors);
            let layer = Conv2d::load(&mut exec, &mut w, "c", cin, cout, kk, stride, pad).unwrap();
            let x = exec.upload(&x_host).unwrap();
            let y = layer.forward(&mut exec, &x).unwrap();
            outs.push((read(&mut exec, &y), w.device_bytes()));
        }
        let what = format!("conv cin{cin} cout{cout} k{kk} s{stride}");
        let e = rel_err(&outs[1].0, &outs[0].0);
        let e32 = rel_err(&outs[0].0, &outs[2].0);
        eprintln!("{what}: gpu f16 vs cpu f16 {e:.2e}, f16 vs f32 weights {e32:.2e}");
        assert!(e < 1e-5, "{what}: gpu vs cpu {e}");
        assert!(e32 > 0.0 && e32 < 2e-3, "{what}: f16 vs f32 {e32}");
        let want = nw.div_ceil(2) as u64 * 4 + cout as u64 * 4;
        assert_eq!(outs[1].1, want, "{what}: device bytes");
    }
}

/// The native `shader-f16` kernels (matmul_f16.wgsl / conv2d_f16.wgsl, on a device that
/// granted the feature) against the `unpack2x16float` path (a device created without it, as
/// in a browser on SwiftShader), on the same packed weights and odd shapes: f16 → f32 is exact
/// either way and the arithmetic is the same, so the outputs must agree to 1e-6 (they are
/// in fact bit-identical on lavapipe). Also checks that each device compiled the kernel
/// family it should.
#[test]
fn native_f16_kernels_match_the_unpack_path() {
    use webdiffusion::{GpuContext, GpuOptions};
    let Some(native) = gpu() else { return };
    if !native.caps.shader_f16 {
        eprintln!("skipping: the adapter does not offer shader-f16");
        return;
    }
    let unpack = block_on(GpuContext::new(&GpuOptions {
        want_f16: false,
        ..GpuOptions::default()
    }))
    .unwrap();
    assert!(
        !unpack.caps.shader_f16,
        "want_f16: false must not request shader-f16"
    );
    let mut outs: Vec<Vec<Vec<f32>>> = Vec::new();
    // Identical weights and inputs for each device: the same seed.
    for ctx in [&native, &unpack] {
        let mut rng = Rng::new(29);
        let mut exec = Exec::gpu(ctx.clone());
        let mut res = Vec::new();
        for (k, n, rows) in [(37usize, 13usize, 15usize), (5, 3, 1), (64, 33, 9)] {
            let tensors = [
                ("l.weight", vec![n, k], weight_values(&mut rng, n * k)),
                ("l.bias", vec![n], rng.vec(n, -1.0, 1.0)),
            ];
            let mut w = weights(WeightDtype::F16Packed, &tensors);
            let layer = Linear::load(&mut exec, &mut w, "l", k, n, true).unwrap();
            let x = exec
                .upload(&Tensor::from_vec(&[rows, k], rng.vec(rows * k, -1.0, 1.0)).unwrap())
                .unwrap();
            let r = exec
                .upload(&Tensor::from_vec(&[rows, n], rng.vec(rows * n, -1.0, 1.0)).unwrap())
                .unwrap();
            let y = layer.forward(&mut exec, &x).unwrap();
            res.push(read(&mut exec, &y));
            let y = layer.forward_residual(&mut exec, &x, &r).unwrap();
            res.push(read(&mut exec, &y));
        }
        for (cin, cout, kk, stride, pad, h, wd) in [
            (3usize, 5usize, 3usize, 1usize, 1usize, 9usize, 7usize),
            (7, 3, 1, 1, 0, 5, 11),
            (5, 9, 3, 2, 1, 11, 9),
            (4, 17, 3, 1, 1, 6, 6),
        ] {
            let tensors = [
                (
                    "c.weight",
                    vec![cout, cin, kk, kk],
                    weight_values(&mut rng, cout * cin * kk * kk),
                ),
                ("c.bias", vec![cout], rng.vec(cout, -1.0, 1.0)),
            ];
            let mut w = weights(WeightDtype::F16Packed, &tensors);
            let layer = Conv2d::load(&mut exec, &mut w, "c", cin, cout, kk, stride, pad).unwrap();
            let x = exec
                .upload(
                    &Tensor::from_vec(&[2, cin, h, wd], rng.vec(2 * cin * h * wd, -1.0, 1.0))
                        .unwrap(),
                )
                .unwrap();
            let y = layer.forward(&mut exec, &x).unwrap();
            res.push(read(&mut exec, &y));
        }
        outs.push(res);
    }
    for (i, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
        let e = rel_err(a, b);
        let bits = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        eprintln!(
            "case {i}: native vs unpack rel err {e:.2e}, {bits} of {} values differ in bits",
            a.len()
        );
        assert!(e <= 1e-6, "case {i}: native f16 vs unpack {e}");
    }
    let compiled = native.compiled_shaders();
    assert!(
        compiled.contains(&"matmul_f16") && compiled.contains(&"conv2d_f16"),
        "native device compiled {compiled:?}"
    );
    let compiled = unpack.compiled_shaders();
    assert!(
        !compiled.iter().any(|s| s.ends_with("_f16")),
        "unpack device compiled {compiled:?}"
    );
}

#[test]
fn bundled_model_with_f16_weights_matches_f32() {
    let mut exec = match gpu() {
        Some(ctx) => Exec::gpu(ctx),
        None => Exec::cpu(),
    };
    let arch = bundled::config().unwrap().arch;
    let mut rng = Rng::new(3);
    let x_host = Tensor::from_vec(&[2, 1, 32, 32], rng.vec(2 * 32 * 32, -1.0, 1.0)).unwrap();
    let x = exec.upload(&x_host).unwrap();
    let labels = [3usize, 7];
    // The bundled checkpoint is stored in f16: then packing loses nothing and the outputs
    // must agree exactly; an f32 checkpoint must differ a little.
    let stored = bundled::weights(WeightDtype::F32)
        .unwrap()
        .dtype("conv_in.weight")
        .unwrap();
    let mut runs = Vec::new();
    for dtype in [WeightDtype::F32, WeightDtype::F16Packed] {
        let mut w = bundled::weights(dtype).unwrap();
        let model =
            webdiffusion::models::UNet2DModel::from_weights(&mut exec, &arch, &mut w, false)
                .unwrap();
        // The first forward compiles pipelines; time the second.
        let y = model
            .forward(&mut exec, &x, &[500.0], Some(&labels))
            .unwrap();
        read(&mut exec, &y);
        let t = Instant::now();
        let y = model
            .forward(&mut exec, &x, &[500.0], Some(&labels))
            .unwrap();
        let out = read(&mut exec, &y);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        runs.push((out, w.device_bytes(), ms));
    }
    let (f32_run, f16_run) = (&runs[0], &runs[1]);
    let e = rel_err(&f16_run.0, &f32_run.0);
    let saved = 1.0 - f16_run.1 as f64 / f32_run.1 as f64;
    eprintln!(
        "bundled forward on {}: weights f32 {} B, f16 {} B ({:.1} % smaller); \
         output max|Δ|/max|ref| {e:.2e}; forward f32 {:.1} ms, f16 {:.1} ms",
        exec.backend_name(),
        f32_run.1,
        f16_run.1,
        saved * 100.0,
        f32_run.2,
        f16_run.2
    );
    if stored == webdiffusion::weights::Dtype::F16 {
        assert_eq!(e, 0.0, "an f16 checkpoint packed to f16 must be exact");
    } else {
        assert!(e > 0.0, "f16 weights changed nothing: were they packed?");
    }
    assert!(e < 2e-3, "f16 weights: relative error {e}");
    assert!(
        saved >= 0.45,
        "weight bytes only {:.1} % smaller",
        saved * 100.0
    );
}
