//! Conv2d and ConvTranspose2d: hand-checked CPU cases, the CPU reference against a naive
//! definition-by-the-formula convolution, the GPU against the CPU reference, the batch
//! split over `maxStorageBufferBindingSize`, and shape errors.
//!
//! Tolerance GPU vs CPU: `|gpu − cpu| ≤ max(1e-4·|cpu|, 1e-5)`. The CPU reference sums in
//! f64 (exact to the final f32 rounding), the GPU in f32 over at most 37·9 = 333 products of
//! values in [−1, 1), whose rounding error is a few ulps of the sum of |products| (≲ 1e-5).
//! Largest errors seen on lavapipe: 1.9e-5 on outputs of magnitude ~10 (the 37-channel
//! case), ≤ 2.4e-6 on the small cases, 0 on the hand-checked ones.

use webdiffusion::ops::tune::Kernel;
use webdiffusion::ops::{Conv2d, ConvTranspose2d, Op};
use webdiffusion::{Error, Exec, Tensor};

use crate::common::{assert_close, gpu, run_gpu, Rng};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

/// CPU reference vs GPU, printing the largest absolute error seen (run with `--nocapture`).
/// Returns the CPU result.
#[track_caller]
fn check<O: Op>(what: &str, op: &O, inputs: &[&Tensor]) -> Vec<f32> {
    let want = cpu_run(op, inputs);
    if let Some(ctx) = gpu() {
        let (shape, got) = run_gpu(&ctx, op, inputs).unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        assert_eq!(
            shape,
            op.output_shape(&shapes).unwrap(),
            "{what}: output shape"
        );
        report(what, &got, &want);
    }
    want
}

/// Print the largest absolute error, then apply the tolerance.
#[track_caller]
fn report(what: &str, got: &[f32], want: &[f32]) {
    let max_err = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{what}: {} outputs, max |gpu − cpu| = {max_err:.3e}",
        want.len()
    );
    assert_close(what, got, want, RTOL, ATOL);
}

#[track_caller]
fn cpu_run<O: Op>(op: &O, inputs: &[&Tensor]) -> Vec<f32> {
    let out = Exec::cpu()
        .run(op, inputs)
        .unwrap_or_else(|e| panic!("cpu: {e}"));
    let v = out.cpu_data().unwrap().to_vec();
    assert!(v.iter().all(|x| x.is_finite()), "CPU reference not finite");
    v
}

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_vec(shape, data.to_vec()).unwrap()
}

/// Conv2d straight from the definition, f64, one output element at a time.
fn naive_conv2d(op: &Conv2d, inputs: &[&Tensor]) -> Vec<f32> {
    let (xs, ws) = (inputs[0].shape(), inputs[1].shape());
    let (x, w) = (inputs[0].cpu_data().unwrap(), inputs[1].cpu_data().unwrap());
    let (n, cin, h, wd) = (xs[0], xs[1], xs[2] as isize, xs[3] as isize);
    let (cout, kh, kw) = (ws[0], ws[2], ws[3]);
    let [sh, sw] = op.stride;
    let [ph, pw] = op.padding;
    let ho = (h as usize + 2 * ph - kh) / sh + 1;
    let wo = (wd as usize + 2 * pw - kw) / sw + 1;
    let bias = op.has_bias.then(|| inputs[2].cpu_data().unwrap());
    let res = op
        .has_residual
        .then(|| inputs[inputs.len() - 1].cpu_data().unwrap());
    let mut out = Vec::with_capacity(n * cout * ho * wo);
    for s in 0..n {
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..cin {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky) as isize - ph as isize;
                                let ix = (ox * sw + kx) as isize - pw as isize;
                                if iy < 0 || iy >= h || ix < 0 || ix >= wd {
                                    continue;
                                }
                                let xi = ((s * cin + ci) as isize * h + iy) * wd + ix;
                                let wi = ((co * cin + ci) * kh + ky) * kw + kx;
                                acc += x[xi as usize] as f64 * w[wi] as f64;
                            }
                        }
                    }
                    let o = ((s * cout + co) * ho + oy) * wo + ox;
                    acc += res.map_or(0.0, |r| r[o] as f64);
                    out.push(acc as f32);
                }
            }
        }
    }
    out
}

/// ConvTranspose2d (stride = kernel, no padding) from the definition, scattering each input
/// pixel's contribution, f64.
fn naive_conv_transpose2d(op: &ConvTranspose2d, inputs: &[&Tensor]) -> Vec<f32> {
    let (xs, ws) = (inputs[0].shape(), inputs[1].shape());
    let (x, w) = (inputs[0].cpu_data().unwrap(), inputs[1].cpu_data().unwrap());
    let (n, cin, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (cout, kh, kw) = (ws[1], ws[2], ws[3]);
    let [sh, sw] = op.stride;
    let (ho, wo) = (h * sh, wd * sw);
    let mut acc = vec![0f64; n * cout * ho * wo];
    for s in 0..n {
        for ci in 0..cin {
            for iy in 0..h {
                for ix in 0..wd {
                    let xv = x[((s * cin + ci) * h + iy) * wd + ix] as f64;
                    for co in 0..cout {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let wv = w[((ci * cout + co) * kh + ky) * kw + kx] as f64;
                                let o = ((s * cout + co) * ho + iy * sh + ky) * wo + ix * sw + kx;
                                acc[o] += xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    if op.has_bias {
        let b = inputs[2].cpu_data().unwrap();
        for (i, a) in acc.iter_mut().enumerate() {
            *a += b[(i / (ho * wo)) % cout] as f64;
        }
    }
    acc.into_iter().map(|v| v as f32).collect()
}

/// Random inputs for `op` on x of `xs` and a weight of `ws`.
fn conv_inputs(rng: &mut Rng, op: &Conv2d, xs: &[usize], ws: &[usize]) -> Vec<Tensor> {
    let mut v = vec![rng.tensor(xs), rng.tensor(ws)];
    if op.has_bias {
        v.push(rng.tensor(&[ws[0]]));
    }
    if op.has_residual {
        let probe = Conv2d {
            has_residual: false,
            ..*op
        };
        let shapes: Vec<&[usize]> = v.iter().map(|t| t.shape()).collect();
        let out = probe.output_shape(&shapes).unwrap();
        v.push(rng.tensor(&out));
    }
    v
}

#[test]
fn conv2d_cpu_hand_checked() {
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let x = t(&[1, 1, 3, 3], &x);
    // F.conv2d(arange(1, 10).view(1, 1, 3, 3), tensor([[1., 2.], [3., 4.]]).view(1, 1, 2, 2))
    // = [[37, 47], [67, 77]]: a cross-correlation, the kernel is not flipped
    // (37 = 1·1 + 2·2 + 4·3 + 5·4).
    let w = t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let out = check("hand 2x2", &Conv2d::new(1, 0), &[&x, &w]);
    assert_eq!(out, [37.0, 47.0, 67.0, 77.0]);

    // A 3×3 box filter, stride 2, padding 1: each output sums the 2×2 corner of the image
    // that its window covers (1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9), then + 0.5 + residual.
    let w = t(&[1, 1, 3, 3], &[1.0; 9]);
    let b = t(&[1], &[0.5]);
    let r = t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let op = Conv2d::new(2, 1).with_bias().with_residual();
    let out = check("hand box s2 p1", &op, &[&x, &w, &b, &r]);
    assert_eq!(out, [13.5, 18.5, 27.5, 32.5]);

    // Channel mixing with a 1×1 kernel: out0 = x0 − x1, out1 = 0.5·x0 + 2·x1.
    let x = t(&[1, 2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let w = t(&[2, 2, 1, 1], &[1.0, -1.0, 0.5, 2.0]);
    let out = check("hand 1x1 mixing", &Conv2d::new(1, 0), &[&x, &w]);
    assert_eq!(out, [-4.0, -4.0, -4.0, -4.0, 10.5, 13.0, 15.5, 18.0]);
}

/// (input shape, weight shape, stride, padding).
type ConvCase = ([usize; 4], [usize; 4], Pair, Pair);
type Pair = [usize; 2];

#[test]
fn conv2d_cpu_matches_naive_definition() {
    let mut rng = Rng::new(11);
    let cases: &[ConvCase] = &[
        ([2, 5, 13, 11], [7, 5, 3, 3], [1, 1], [1, 1]),
        ([2, 5, 13, 11], [7, 5, 3, 3], [2, 2], [1, 1]),
        ([1, 3, 9, 10], [9, 3, 3, 2], [2, 1], [1, 0]),
        ([1, 2, 7, 8], [3, 2, 1, 1], [1, 2], [3, 2]),
        ([1, 4, 12, 15], [5, 4, 4, 4], [4, 4], [0, 0]),
        ([2, 3, 11, 9], [10, 3, 5, 5], [3, 2], [2, 2]),
    ];
    for &(xs, ws, stride, padding) in cases {
        for (bias, res) in [(false, false), (true, false), (false, true), (true, true)] {
            let op = Conv2d {
                stride,
                padding,
                has_bias: bias,
                has_residual: res,
                ..Conv2d::new(1, 0)
            };
            let ins = conv_inputs(&mut rng, &op, &xs, &ws);
            let refs: Vec<&Tensor> = ins.iter().collect();
            let got = cpu_run(&op, &refs);
            let want = naive_conv2d(&op, &refs);
            assert_close(
                &format!("cpu vs naive {op:?} x {xs:?} w {ws:?}"),
                &got,
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn conv2d_gpu_matches_cpu_small() {
    let mut rng = Rng::new(12);
    let xs = [2, 5, 13, 11];
    let flags = [(false, false), (true, false), (false, true), (true, true)];
    for k in [1, 3] {
        for stride in [1, 2] {
            for pad in [0, 1] {
                for (bias, res) in flags {
                    let op = Conv2d {
                        stride: [stride; 2],
                        padding: [pad; 2],
                        has_bias: bias,
                        has_residual: res,
                        ..Conv2d::new(1, 0)
                    };
                    let ins = conv_inputs(&mut rng, &op, &xs, &[7, 5, k, k]);
                    let refs: Vec<&Tensor> = ins.iter().collect();
                    check(
                        &format!("conv2d k{k} s{stride} p{pad} bias {bias} res {res}"),
                        &op,
                        &refs,
                    );
                }
            }
        }
    }
}

#[test]
#[allow(clippy::type_complexity)] // an inline table of named cases reads best here
fn conv2d_gpu_odd_channels_and_kernels() {
    let mut rng = Rng::new(13);
    let cases: &[(&str, [usize; 4], [usize; 4], Pair, Pair)] = &[
        // conv_out of a UNet: 3 and 4 output channels use the 4-channel tile.
        ("cout 3", [1, 6, 10, 9], [3, 6, 3, 3], [1, 1], [1, 1]),
        ("cout 4", [2, 5, 7, 6], [4, 5, 3, 3], [1, 1], [1, 1]),
        (
            "cout 9 (one channel past a tile)",
            [1, 4, 5, 5],
            [9, 4, 3, 3],
            [1, 1],
            [1, 1],
        ),
        (
            "kernel 3x2 stride (2,1) pad (1,0)",
            [1, 3, 9, 10],
            [9, 3, 3, 2],
            [2, 1],
            [1, 0],
        ),
        (
            "padding wider than the kernel",
            [1, 2, 7, 8],
            [3, 2, 1, 1],
            [1, 2],
            [3, 2],
        ),
        (
            "patch embedding k=s=4",
            [2, 3, 16, 20],
            [11, 3, 4, 4],
            [4, 4],
            [0, 0],
        ),
        (
            "kernel 5 stride (3,2) pad 2",
            [2, 3, 11, 9],
            [10, 3, 5, 5],
            [3, 2],
            [2, 2],
        ),
        ("1-pixel image", [3, 2, 1, 1], [5, 2, 3, 3], [1, 1], [1, 1]),
    ];
    for &(what, xs, ws, stride, padding) in cases {
        let op = Conv2d {
            stride,
            padding,
            has_bias: true,
            has_residual: false,
            ..Conv2d::new(1, 0)
        };
        let ins = conv_inputs(&mut rng, &op, &xs, &ws);
        let refs: Vec<&Tensor> = ins.iter().collect();
        check(what, &op, &refs);
    }
}

#[test]
fn conv2d_gpu_matches_cpu_larger() {
    let mut rng = Rng::new(14);
    // 19·45·67·37·9·2 ≈ 38 MFLOP.
    let op = Conv2d::new(1, 1).with_bias().with_residual();
    let ins = conv_inputs(&mut rng, &op, &[1, 37, 45, 67], &[19, 37, 3, 3]);
    let refs: Vec<&Tensor> = ins.iter().collect();
    check("conv2d (1, 37, 45, 67) -> 19, k3 s1 p1", &op, &refs);
    // The UNet downsampler: 3×3, stride 2, padding 1.
    let op = Conv2d::new(2, 1).with_bias();
    let ins = conv_inputs(&mut rng, &op, &[1, 37, 45, 67], &[19, 37, 3, 3]);
    let refs: Vec<&Tensor> = ins.iter().collect();
    check("conv2d (1, 37, 45, 67) -> 19, k3 s2 p1", &op, &refs);
}

/// A batch whose tensors exceed one storage binding runs as several dispatches over
/// per-sample ranges, whose byte offsets here are not multiples of the offset alignment.
/// Each sample is ~0.34·maxStorageBufferBindingSize, so two fit a binding and three do not.
#[test]
fn conv2d_splits_batch_over_binding_limit() {
    let Some(ctx) = gpu() else { return };
    let max = ctx.caps.max_binding();
    if max > 256 << 20 {
        eprintln!("skipping: maxStorageBufferBindingSize is {max}, too large to exceed cheaply");
        return;
    }
    let side = (((max as f64 * 0.34) / 4.0).sqrt() as usize) | 1;
    let xs = [3, 1, side, side + 2];
    let per_sample = (side * (side + 2) * 4) as u64;
    assert!(per_sample * 3 > max && per_sample * 2 < max);
    let align = ctx.caps.limits.min_storage_buffer_offset_alignment as u64;
    assert_ne!(per_sample % align, 0, "sample 2 should start unaligned");
    // Pointwise with a residual: input, output and residual are all split. Then 3×3 with
    // stride 2 (the general path): only the input is split, the output is bound whole.
    let cases = [
        (
            "pointwise",
            Conv2d::new(1, 0).with_bias().with_residual(),
            [1, 1, 1, 1],
        ),
        ("3x3 s2 p1", Conv2d::new(2, 1).with_bias(), [1, 1, 3, 3]),
    ];
    let mut rng = Rng::new(15);
    for (what, op, ws) in cases {
        let ins = conv_inputs(&mut rng, &op, &xs, &ws);
        let refs: Vec<&Tensor> = ins.iter().collect();
        let mut ex = Exec::gpu(ctx.clone());
        let gpu_ins: Vec<Tensor> = refs.iter().map(|t| ex.upload(t).unwrap()).collect();
        let gpu_refs: Vec<&Tensor> = gpu_ins.iter().collect();
        let out = ex.run(&op, &gpu_refs).unwrap();
        assert_eq!(
            ex.pending_dispatches(),
            2,
            "{what}: samples {{0, 1}} and {{2}}"
        );
        let got = webdiffusion::platform::block_on(ex.read(&out)).unwrap();
        let want = cpu_run(&op, &refs);
        report(&format!("split conv2d {what} {xs:?}"), &got, &want);
    }
}

/// Under a small binding limit (256 KiB, 256-byte offset alignment) both convolutions split
/// the batch into parts whose later ones start between aligned offsets, so x, out and the
/// residual are bound from the aligned offset below and the shader skips the rest.
#[test]
fn convolutions_split_at_unaligned_offsets_under_a_small_binding_limit() {
    let Some(ctx) = crate::norms::small_binding_gpu() else {
        return;
    };
    let mut rng = Rng::new(17);
    // Output samples of 6·19·23·4 = 10,488 bytes: 24 per part (+ 192 bytes of slack), the
    // second part's out starting 64 bytes and its x 244 bytes past an aligned offset.
    let op = Conv2d::new(1, 1).with_bias().with_residual();
    let ins = conv_inputs(&mut rng, &op, &[30, 5, 19, 23], &[6, 5, 3, 3]);
    let conv: Vec<&Tensor> = ins.iter().collect();
    // Output samples of 5·42·46·4 = 38,640 bytes: 6 per part, the second 160 bytes past.
    let (x, w, b) = (
        rng.tensor(&[9, 3, 21, 23]),
        rng.tensor(&[3, 5, 2, 2]),
        rng.tensor(&[5]),
    );
    let convt = ConvTranspose2d::new(2).with_bias();
    for (what, op, ins) in [
        ("conv2d", &op as &dyn Op, conv),
        ("conv_transpose2d", &convt, vec![&x, &w, &b]),
    ] {
        let mut ex = Exec::gpu(ctx.clone());
        let gpu_ins: Vec<Tensor> = ins.iter().map(|t| ex.upload(t).unwrap()).collect();
        let gpu_refs: Vec<&Tensor> = gpu_ins.iter().collect();
        let out = ex.run(op, &gpu_refs).unwrap();
        assert_eq!(ex.pending_dispatches(), 2, "{what}");
        let got = webdiffusion::platform::block_on(ex.read(&out)).unwrap();
        let want = Exec::cpu().run(op, &ins).unwrap();
        report(
            &format!("{what} split at unaligned offsets"),
            &got,
            want.cpu_data().unwrap(),
        );
    }
}

#[test]
fn conv2d_one_sample_over_binding_limit_is_a_limit_error() {
    let Some(ctx) = gpu() else { return };
    let max = ctx.caps.max_binding();
    if max > 256 << 20 {
        eprintln!("skipping: maxStorageBufferBindingSize is {max}");
        return;
    }
    let side = ((max as f64 / 4.0).sqrt() as usize) + 2;
    let x = Tensor::from_vec(&[1, 1, side, side], vec![0.0; side * side]).unwrap();
    let w = t(&[1, 1, 1, 1], &[1.0]);
    let mut ex = Exec::gpu(ctx.clone());
    let x = ex.upload(&x).unwrap();
    let w = ex.upload(&w).unwrap();
    match ex.run(&Conv2d::new(1, 0), &[&x, &w]) {
        Err(e @ Error::Limit { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("maxStorageBufferBindingSize"), "{msg}");
            assert!(msg.contains(&max.to_string()), "{msg}");
            assert!(msg.contains("conv2d"), "{msg}");
        }
        other => panic!("expected a Limit error, got {other:?}"),
    }
}

#[test]
fn conv2d_shape_errors_name_the_op() {
    let x = [2usize, 5, 13, 11];
    let shape_err = |op: Conv2d, shapes: &[&[usize]], what: &str| match op.output_shape(shapes) {
        Err(Error::Shape {
            op: "conv2d",
            what: w,
            ..
        }) => assert_eq!(w, what),
        other => panic!("{what}: expected a conv2d Shape error, got {other:?}"),
    };
    let plain = Conv2d::new(1, 1);
    shape_err(plain, &[&x, &[7, 4, 3, 3]], "weight"); // wrong Cin
    shape_err(plain, &[&x, &[7, 5, 3]], "weight"); // weight rank
    shape_err(plain, &[&[5, 13, 11], &[7, 5, 3, 3]], "input"); // input rank
    shape_err(plain.with_bias(), &[&x, &[7, 5, 3, 3], &[6]], "bias");
    shape_err(
        plain.with_residual(),
        &[&x, &[7, 5, 3, 3], &[2, 7, 13, 10]],
        "residual",
    );
    shape_err(Conv2d::new(1, 0), &[&[1, 1, 2, 2], &[1, 1, 3, 3]], "weight"); // kernel > input
    let invalid = |op: Conv2d, shapes: &[&[usize]]| match op.output_shape(shapes) {
        Err(Error::InvalidArgument { op: "conv2d", .. }) => {}
        other => panic!("expected a conv2d InvalidArgument, got {other:?}"),
    };
    invalid(plain.with_bias(), &[&x, &[7, 5, 3, 3]]); // bias missing
    invalid(plain, &[&x, &[7, 5, 3, 3], &[7]]); // an input too many
    invalid(Conv2d::new(0, 1), &[&x, &[7, 5, 3, 3]]); // stride 0
    invalid(Conv2d::new(1, usize::MAX / 2), &[&x, &[7, 5, 3, 3]]); // absurd padding
                                                                   // The message says what was expected.
    let e = plain
        .output_shape(&[&x, &[7, 4, 3, 3]])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2d") && e.contains("(Cout, 5, kh, kw)"),
        "{e}"
    );
}

#[test]
fn conv_transpose2d_cpu_hand_checked() {
    // x (1, 2, 1, 2): channel 0 = [1, 2], channel 1 = [3, 4]; weight (2, 1, 2, 2):
    // identity from channel 0, anti-diagonal from channel 1. Pixel 0 writes
    // 1·[[1,0],[0,1]] + 3·[[0,1],[1,0]] = [[1,3],[3,1]], pixel 1 writes [[2,4],[4,2]], +10.
    // (= F.conv_transpose2d(x, w, torch.tensor([10.]), stride=2))
    let x = t(&[1, 2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
    let w = t(&[2, 1, 2, 2], &[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
    let b = t(&[1], &[10.0]);
    let op = ConvTranspose2d::new(2).with_bias();
    let out = check("hand conv_transpose2d", &op, &[&x, &w, &b]);
    assert_eq!(out, [11.0, 13.0, 12.0, 14.0, 13.0, 11.0, 14.0, 12.0]);
}

#[test]
fn conv_transpose2d_gpu_matches_cpu() {
    let mut rng = Rng::new(16);
    let cases: &[(&str, [usize; 4], [usize; 4], bool)] = &[
        ("k=s=4, Cin 5 -> Cout 7", [2, 5, 7, 9], [5, 7, 4, 4], true),
        (
            "k=s=2, Cin 13 -> Cout 3",
            [1, 13, 6, 5],
            [13, 3, 2, 2],
            false,
        ),
        (
            "k=s=(2,3), Cin 6 -> Cout 9",
            [2, 6, 5, 10],
            [6, 9, 2, 3],
            true,
        ),
        ("k=s=1 (a 1x1 conv)", [1, 3, 3, 2], [3, 17, 1, 1], true),
    ];
    for &(what, xs, ws, bias) in cases {
        let op = ConvTranspose2d {
            stride: [ws[2], ws[3]],
            padding: [0, 0],
            has_bias: bias,
        };
        let mut ins = vec![rng.tensor(&xs), rng.tensor(&ws)];
        if bias {
            ins.push(rng.tensor(&[ws[1]]));
        }
        let refs: Vec<&Tensor> = ins.iter().collect();
        let got = check(what, &op, &refs);
        let want = naive_conv_transpose2d(&op, &refs);
        assert_close(&format!("{what}: cpu vs naive"), &got, &want, 1e-6, 1e-6);
    }
}

#[test]
fn conv_transpose2d_errors() {
    let x = [2usize, 5, 7, 9];
    let op = ConvTranspose2d::new(4);
    match op.output_shape(&[&x, &[5, 7, 3, 3]]) {
        Err(
            e @ Error::InvalidArgument {
                op: "conv_transpose2d",
                ..
            },
        ) => assert!(e.to_string().contains("stride == kernel"), "{e}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let padded = ConvTranspose2d {
        padding: [1, 1],
        ..op
    };
    assert!(matches!(
        padded.output_shape(&[&x, &[5, 7, 4, 4]]),
        Err(Error::InvalidArgument {
            op: "conv_transpose2d",
            ..
        })
    ));
    let shape_err =
        |op: ConvTranspose2d, shapes: &[&[usize]], what: &str| match op.output_shape(shapes) {
            Err(Error::Shape {
                op: "conv_transpose2d",
                what: w,
                ..
            }) => assert_eq!(w, what),
            other => panic!("{what}: expected a Shape error, got {other:?}"),
        };
    shape_err(op, &[&x, &[7, 5, 4, 4]], "weight"); // Conv2d layout instead of (Cin, Cout, ..)
    shape_err(op, &[&x, &[5, 7, 4]], "weight");
    shape_err(op.with_bias(), &[&x, &[5, 7, 4, 4], &[5]], "bias");
    assert_eq!(
        op.output_shape(&[&x, &[5, 7, 4, 4]]).unwrap(),
        vec![2, 7, 28, 36]
    );
}

/// Throughput of the GPU kernels and the CPU reference on UNet-like layers:
/// `cargo test --test ops bench_conv -- --ignored --nocapture`. On lavapipe these are
/// software-GPU numbers, not GPU numbers.
#[test]
#[ignore]
fn bench_conv() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(1);
    let upload = |ts: &[&Tensor]| -> Vec<Tensor> {
        let mut ex = Exec::gpu(ctx.clone());
        ts.iter().map(|t| ex.upload(t).unwrap()).collect()
    };
    let time = |op: &dyn Fn(&mut Exec) -> Tensor| {
        let mut ex = Exec::gpu(ctx.clone());
        let o = op(&mut ex); // compiles the pipeline
        webdiffusion::platform::block_on(ex.read(&o)).unwrap();
        let k = 5;
        let t0 = std::time::Instant::now();
        let outs: Vec<Tensor> = (0..k).map(|_| op(&mut ex)).collect();
        webdiffusion::platform::block_on(ex.read(&outs[k - 1])).unwrap();
        t0.elapsed().as_secs_f64() / k as f64
    };
    let conv_cases: &[([usize; 4], [usize; 4], usize, usize)] = &[
        ([1, 64, 64, 64], [64, 64, 3, 3], 1, 1),
        ([1, 128, 32, 32], [128, 128, 3, 3], 1, 1),
        ([1, 256, 16, 16], [256, 256, 1, 1], 1, 0),
        ([1, 64, 64, 64], [64, 64, 3, 3], 2, 1),
        ([1, 64, 64, 64], [4, 64, 3, 3], 1, 1),
    ];
    for &(xs, ws, s, p) in conv_cases {
        let op = Conv2d::new(s, p).with_bias();
        let ins = conv_inputs(&mut rng, &op, &xs, &ws);
        let refs: Vec<&Tensor> = ins.iter().collect();
        let shapes: Vec<&[usize]> = refs.iter().map(|t| t.shape()).collect();
        let out: usize = op.output_shape(&shapes).unwrap().iter().product();
        let flop = 2.0 * (out * ws[1] * ws[2] * ws[3]) as f64;
        let g = upload(&refs);
        let gpu_s = time(&|ex: &mut Exec| ex.run(&op, &g.iter().collect::<Vec<_>>()).unwrap());
        let t0 = std::time::Instant::now();
        cpu_run(&op, &refs);
        let cpu_s = t0.elapsed().as_secs_f64();
        eprintln!(
            "conv2d {xs:?} * {ws:?} s{s} p{p}: gpu {:.1} ms ({:.2} GFLOP/s), cpu reference {:.1} ms ({:.2} GFLOP/s)",
            gpu_s * 1e3,
            flop / gpu_s / 1e9,
            cpu_s * 1e3,
            flop / cpu_s / 1e9
        );
    }
    let op = ConvTranspose2d::new(2).with_bias();
    let ins = [
        rng.tensor(&[1, 256, 32, 32]),
        rng.tensor(&[256, 64, 2, 2]),
        rng.tensor(&[64]),
    ];
    let refs: Vec<&Tensor> = ins.iter().collect();
    let flop = 2.0 * (64 * 64 * 64 * 256) as f64;
    let g = upload(&refs);
    let gpu_s = time(&|ex: &mut Exec| ex.run(&op, &g.iter().collect::<Vec<_>>()).unwrap());
    let t0 = std::time::Instant::now();
    cpu_run(&op, &refs);
    let cpu_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "conv_transpose2d (1, 256, 32, 32) k=s=2 -> 64: gpu {:.1} ms ({:.2} GFLOP/s), cpu reference {:.1} ms ({:.2} GFLOP/s)",
        gpu_s * 1e3,
        flop / gpu_s / 1e9,
        cpu_s * 1e3,
        flop / cpu_s / 1e9
    );
}

/// Every variant the autotuner can pick, and the baseline implicit GEMM, on odd shapes with
/// strides, padding, bias, residual and the output scale of the fused resnet epilogue.
#[test]
fn conv2d_every_kernel_variant_matches_cpu() {
    let mut rng = Rng::new(404);
    let kernels = [
        Kernel::Baseline,
        Kernel::Tiles(64, 8),
        Kernel::Tiles(64, 4),
        Kernel::Tiles(32, 8),
        Kernel::Tiles(128, 8),
        Kernel::Tiles(128, 4),
    ];
    let cases: &[([usize; 4], [usize; 4], usize, usize)] = &[
        ([2, 5, 9, 11], [13, 5, 3, 3], 1, 1),
        ([1, 7, 10, 7], [3, 7, 3, 3], 2, 1),
        ([2, 6, 5, 9], [11, 6, 1, 1], 1, 0),
    ];
    for &(xs, ws, s, p) in cases {
        let op = Conv2d::new(s, p)
            .with_bias()
            .with_residual()
            .with_scale(0.5);
        let ins = conv_inputs(&mut rng, &op, &xs, &ws);
        let refs: Vec<&Tensor> = ins.iter().collect();
        for k in kernels {
            check(
                &format!("conv2d {xs:?} * {ws:?} s{s} p{p} {k:?}"),
                &op.with_kernel(k),
                &refs,
            );
        }
    }
}

/// The scale multiplies conv + bias + residual: against the unscaled op, halved.
#[test]
fn conv2d_scale_applies_after_residual() {
    let mut rng = Rng::new(405);
    let op = Conv2d::new(1, 1).with_bias().with_residual();
    let ins = conv_inputs(&mut rng, &op, &[1, 3, 6, 5], &[4, 3, 3, 3]);
    let refs: Vec<&Tensor> = ins.iter().collect();
    let plain = cpu_run(&op, &refs);
    let scaled = check("conv2d scale 0.25", &op.with_scale(0.25), &refs);
    for (p, s) in plain.iter().zip(&scaled) {
        assert!(
            (p * 0.25 - s).abs() <= 1e-6 * p.abs().max(1.0),
            "{p} vs {s}"
        );
    }
}

/// Baseline (16×16 workgroup-memory) vs register-blocked throughput, same adapter, same run:
/// `cargo test --test ops bench_kernels -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_kernels() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(7);
    let time = |op: &dyn Fn(&mut Exec) -> Tensor| {
        let mut ex = Exec::gpu(ctx.clone());
        let o = op(&mut ex);
        webdiffusion::platform::block_on(ex.read(&o)).unwrap();
        let t0 = std::time::Instant::now();
        let o = op(&mut ex);
        webdiffusion::platform::block_on(ex.read(&o)).unwrap();
        t0.elapsed().as_secs_f64()
    };
    for &(xs, ws) in &[
        ([1usize, 64, 32, 32], [64usize, 64, 3, 3]),
        ([1, 128, 16, 16], [128, 128, 3, 3]),
    ] {
        let op = Conv2d::new(1, 1).with_bias();
        let ins = conv_inputs(&mut rng, &op, &xs, &ws);
        let mut ex = Exec::gpu(ctx.clone());
        let g: Vec<Tensor> = ins.iter().map(|t| ex.upload(t).unwrap()).collect();
        let flop = 2.0 * (xs[2] * xs[3] * ws[0] * ws[1] * 9) as f64;
        let mut r = Vec::new();
        for k in [Kernel::Baseline, Kernel::Tiles(64, 8)] {
            let s = time(&|ex: &mut Exec| {
                ex.run(&op.with_kernel(k), &g.iter().collect::<Vec<_>>())
                    .unwrap()
            });
            r.push(flop / s / 1e9);
            eprintln!("conv2d {xs:?}*{ws:?} {k:?}: {:.2} GFLOP/s", flop / s / 1e9);
        }
        eprintln!("ratio {:.2}", r[1] / r[0]);
    }
}

/// The fused ReLU clips the scaled conv + bias + residual: the CPU reference against the
/// unfused op clipped by hand (about half the outputs are negative, so a ReLU that were
/// dropped or applied before the residual would show), and every GPU kernel variant
/// (including the pointwise path and the baseline) against the CPU.
#[test]
fn conv2d_relu_clips_after_scale_and_residual() {
    let mut rng = Rng::new(406);
    // (x, weight, stride, padding, residual)
    type ReluCase = ([usize; 4], [usize; 4], usize, usize, bool);
    let cases: &[ReluCase] = &[
        ([2, 5, 9, 11], [13, 5, 3, 3], 1, 1, true),
        ([1, 6, 7, 13], [3, 6, 3, 3], 1, 1, false),
        ([2, 6, 5, 9], [11, 6, 1, 1], 1, 0, true),
    ];
    for &(xs, ws, s, p, res) in cases {
        let mut op = Conv2d::new(s, p).with_bias().with_scale(0.5);
        op.has_residual = res;
        let ins = conv_inputs(&mut rng, &op, &xs, &ws);
        let refs: Vec<&Tensor> = ins.iter().collect();
        let plain = cpu_run(&op, &refs);
        let relu = op.with_relu();
        let clipped = cpu_run(&relu, &refs);
        let negatives = plain.iter().filter(|v| **v < 0.0).count();
        assert!(
            negatives * 4 > plain.len(),
            "too few negative outputs to test"
        );
        for (p, c) in plain.iter().zip(&clipped) {
            assert_eq!(p.max(0.0), *c);
        }
        for k in [
            Kernel::Tuned,
            Kernel::Baseline,
            Kernel::Tiles(64, 4),
            Kernel::Tiles(32, 8),
        ] {
            check(
                &format!("conv2d relu {xs:?} * {ws:?} res {res} {k:?}"),
                &relu.with_kernel(k),
                &refs,
            );
        }
    }
}
