//! Matmul / Linear: GPU vs the CPU reference on shapes that are not multiples of the 64×64
//! tile, the reference against hand-computed products, shape errors, and chunking.
//!
//! Tolerance: `|gpu − cpu| ≤ max(1e-4·|cpu|, 1e-5)`. The CPU sums in f64; the GPU in f32
//! over K ≤ 131 terms of magnitude ≤ 1, whose rounding error is ~√K·2⁻²⁴·|partial sums|,
//! about 1e-6 here (max errors observed are printed with `--nocapture`).

use webdiffusion::ops::chunk::Chunk;
use webdiffusion::ops::tune::Kernel;
use webdiffusion::ops::{Matmul, Op};
use webdiffusion::{Error, Exec, Tensor};

use crate::common::{assert_close, gpu, Rng};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

/// CPU reference and (with a GPU) the GPU result compared; prints the worst error.
/// Returns the CPU output and the number of dispatches the GPU run recorded.
#[track_caller]
fn check(what: &str, op: &Matmul, inputs: &[&Tensor]) -> (Vec<f32>, usize) {
    let want = Exec::cpu()
        .run(op, inputs)
        .unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let want_data = want.cpu_data().unwrap().to_vec();
    let Some(ctx) = gpu() else {
        return (want_data, 0);
    };
    let mut ex = Exec::gpu(ctx);
    let ins: Vec<Tensor> = inputs.iter().map(|t| ex.upload(t).unwrap()).collect();
    let refs: Vec<&Tensor> = ins.iter().collect();
    let out = ex
        .run(op, &refs)
        .unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
    let dispatches = ex.pending_dispatches();
    let got = webdiffusion::platform::block_on(ex.read(&out)).unwrap();
    assert_eq!(out.shape(), want.shape(), "{what}: output shape");
    let worst = got
        .iter()
        .zip(&want_data)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{what}: max |gpu - cpu| = {worst:.3e} over {} values ({dispatches} dispatches)",
        got.len()
    );
    assert_close(what, &got, &want_data, RTOL, ATOL);
    (want_data, dispatches)
}

#[test]
fn batched_matmul_matches_cpu() {
    let mut rng = Rng::new(100);
    let a = rng.tensor(&[3, 67, 131]);
    let b = rng.tensor(&[3, 131, 45]);
    let (out, _) = check("matmul (3,67,131)x(3,131,45)", &Matmul::new(), &[&a, &b]);
    assert_eq!(out.len(), 3 * 67 * 45);
}

#[test]
fn linear_with_bias_residual_and_alpha_matches_cpu() {
    let mut rng = Rng::new(101);
    let x = rng.tensor(&[2, 77, 131]);
    let w = rng.tensor(&[45, 131]); // nn.Linear(131, 45).weight
    let bias = rng.tensor(&[45]);
    let res = rng.tensor(&[2, 77, 45]);
    check("linear no bias", &Matmul::linear(false), &[&x, &w]);
    check("linear + bias", &Matmul::linear(true), &[&x, &w, &bias]);
    check(
        "0.5·linear + bias + residual",
        &Matmul::linear(true).with_alpha(0.5).with_residual(),
        &[&x, &w, &bias, &res],
    );
    check(
        "matmul + residual",
        &Matmul::new().with_residual(),
        &[
            &rng.tensor(&[70, 33]),
            &rng.tensor(&[33, 9]),
            &rng.tensor(&[70, 9]),
        ],
    );
    // A single vector through a Linear layer (the time embedding MLP).
    let (out, _) = check(
        "linear on a vector",
        &Matmul::linear(true),
        &[&rng.tensor(&[131]), &w, &bias],
    );
    assert_eq!(out.len(), 45);
}

#[test]
fn broadcast_and_transposed_batches_match_cpu() {
    let mut rng = Rng::new(102);
    // b of batch 1 is shared: a's leading dims fold into M.
    let a = rng.tensor(&[2, 3, 19, 23]);
    let b1 = rng.tensor(&[1, 23, 70]);
    let (out, _) = check("matmul b broadcast", &Matmul::new(), &[&a, &b1]);
    assert_eq!(out.len(), 2 * 3 * 19 * 70);
    // a shared over b's batch (a 1×1 convolution: W (Cout, Cin) × x (B, Cin, H·W)).
    let w = rng.tensor(&[37, 29]);
    let x = rng.tensor(&[3, 29, 81]);
    check("matmul a broadcast", &Matmul::new(), &[&w, &x]);
    // q·kᵀ: batched b stored (B, N, K).
    let q = rng.tensor(&[4, 67, 40]);
    let k = rng.tensor(&[4, 13, 40]);
    let op = Matmul {
        transpose_b: true,
        ..Matmul::new()
    }
    .with_alpha(0.125);
    check("batched q·kᵀ", &op, &[&q, &k]);
}

#[test]
fn cpu_reference_matches_hand_computed_products() {
    // [[1,2],[3,4]]·[[5,6],[7,8]] = [[19,22],[43,50]]
    let a = Tensor::from_vec(&[2, 2], vec![1., 2., 3., 4.]).unwrap();
    let b = Tensor::from_vec(&[2, 2], vec![5., 6., 7., 8.]).unwrap();
    let out = Exec::cpu().run(&Matmul::new(), &[&a, &b]).unwrap();
    assert_eq!(out.cpu_data().unwrap(), &[19., 22., 43., 50.]);
    // Linear: x (1, 3) = [1, 2, 3], W (2, 3) = [[1, 0, -1], [2, 2, 2]], bias [10, 20]
    // → [1 - 3 + 10, 2 + 4 + 6 + 20] = [8, 32]; with alpha 2 and residual [1, 1]:
    // [2·(-2) + 10 + 1, 2·12 + 20 + 1] = [7, 45].
    let x = Tensor::from_vec(&[1, 3], vec![1., 2., 3.]).unwrap();
    let w = Tensor::from_vec(&[2, 3], vec![1., 0., -1., 2., 2., 2.]).unwrap();
    let bias = Tensor::from_vec(&[2], vec![10., 20.]).unwrap();
    let out = Exec::cpu()
        .run(&Matmul::linear(true), &[&x, &w, &bias])
        .unwrap();
    assert_eq!(out.cpu_data().unwrap(), &[8., 32.]);
    let r = Tensor::from_vec(&[1, 2], vec![1., 1.]).unwrap();
    let op = Matmul::linear(true).with_alpha(2.0).with_residual();
    let out = check("hand-computed linear", &op, &[&x, &w, &bias, &r]).0;
    assert_eq!(out, vec![7., 45.]);
}

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    let mut rng = Rng::new(103);
    let a = rng.tensor(&[2, 5, 7]);
    let cases: Vec<(Matmul, Vec<Tensor>, &str)> = vec![
        (
            Matmul::new(),
            vec![a.clone(), rng.tensor(&[2, 6, 3])],
            "matmul",
        ),
        (
            Matmul::new(),
            vec![a.clone(), rng.tensor(&[3, 7, 3])],
            "matmul",
        ),
        (Matmul::new(), vec![a.clone(), rng.tensor(&[7])], "matmul"),
        (
            Matmul::linear(false),
            vec![a.clone(), rng.tensor(&[3, 6])],
            "linear",
        ),
        (
            Matmul::linear(true),
            vec![a.clone(), rng.tensor(&[3, 7]), rng.tensor(&[4])],
            "linear",
        ),
        (
            Matmul::linear(false).with_residual(),
            vec![a.clone(), rng.tensor(&[3, 7]), rng.tensor(&[2, 5, 4])],
            "linear",
        ),
        (
            Matmul::linear(false),
            vec![rng.tensor(&[0, 7]), rng.tensor(&[3, 7])],
            "linear",
        ),
    ];
    for (op, ins, name) in cases {
        let refs: Vec<&Tensor> = ins.iter().collect();
        let err = Exec::cpu().run(&op, &refs).unwrap_err();
        assert!(
            matches!(&err, Error::Shape { op, .. } if *op == name),
            "expected a shape error from {name}, got {err}"
        );
        assert!(err.to_string().starts_with(name), "{err}");
    }
    let err = Exec::cpu().run(&Matmul::linear(true), &[&a]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { op: "linear", .. }),
        "{err}"
    );
}

/// Every (batch, row) is covered exactly once, and every binding fits the limit.
fn assert_plan_covers(op: &Matmul, shapes: &[&[usize]], chunks: &[Chunk], limit: u64) {
    let out = op.output_shape(shapes).unwrap();
    let n = *out.last().unwrap();
    let k = *shapes[0].last().unwrap();
    // Geometry as the op flattens it.
    let (batches, m) = if shapes[1].len() == 2 {
        (1, out.iter().product::<usize>() / n)
    } else {
        (shapes[1][0], out[out.len() - 2])
    };
    let mut seen = vec![0u8; batches * m];
    for c in chunks {
        assert!(c.batches.len() == 1 || c.rows == (0..m), "{c:?}");
        for b in c.batches.clone() {
            for r in c.rows.clone() {
                seen[b * m + r] += 1;
            }
        }
        // a, out and residual rows; b and bias whole.
        let rows = c.rows.len() as u64 * c.batches.len() as u64;
        for bytes in [rows * k as u64 * 4, rows * n as u64 * 4] {
            assert!(bytes <= limit, "{c:?}: {bytes} > {limit}");
        }
    }
    assert!(
        seen.iter().all(|&s| s == 1),
        "rows not covered exactly once"
    );
}

#[test]
fn chunk_planning_respects_a_small_limit() {
    let op = Matmul::linear(true).with_residual();
    // x (2, 77, 131), W (45, 131): one row of x is 524 bytes, W is 23,580 bytes.
    let shapes: [&[usize]; 4] = [&[2, 77, 131], &[45, 131], &[45], &[2, 77, 45]];
    let limit = 24 * 1024;
    let chunks = op.plan_chunks(&shapes, limit, 256).unwrap();
    // W folds the batch into M = 154 rows; (24,576 − 252) / 524 = 46 rows per chunk.
    assert_eq!(chunks.len(), 4, "{chunks:?}");
    assert_plan_covers(&op, &shapes, &chunks, limit);
    // Everything fits: one dispatch.
    assert_eq!(op.plan_chunks(&shapes, 1 << 20, 256).unwrap().len(), 1);
    // W alone exceeds the limit: no split can help.
    let err = op.plan_chunks(&shapes, 16 * 1024, 256).unwrap_err();
    match &err {
        Error::Limit {
            op: "linear",
            limit: "maxStorageBufferBindingSize",
            value,
            what,
            ..
        } => {
            assert_eq!(*value, 16 * 1024);
            assert!(what.contains("`b`"), "{err}");
        }
        _ => panic!("expected a limit error, got {err}"),
    }
    // Batched matmul: whole batch items first (each item's a is 35 KB, b 23 KB, out 12 KB).
    let mm = Matmul::new();
    let shapes: [&[usize]; 2] = [&[3, 67, 131], &[3, 131, 45]];
    let chunks = mm.plan_chunks(&shapes, 80 * 1024, 256).unwrap();
    assert_eq!(chunks.len(), 2, "{chunks:?}"); // two items, then one
    assert_plan_covers(&mm, &shapes, &chunks, 80 * 1024);
    let chunks = mm.plan_chunks(&shapes, 24 * 1024, 256).unwrap();
    assert_eq!(chunks.len(), 3 * 2, "{chunks:?}"); // 46 rows of a per chunk
    assert_plan_covers(&mm, &shapes, &chunks, 24 * 1024);
}

#[test]
fn chunked_dispatches_match_cpu() {
    let mut rng = Rng::new(104);
    let x = rng.tensor(&[2, 77, 131]);
    let w = rng.tensor(&[45, 131]);
    let bias = rng.tensor(&[45]);
    let res = rng.tensor(&[2, 77, 45]);
    let shapes: [&[usize]; 4] = [&[2, 77, 131], &[45, 131], &[45], &[2, 77, 45]];
    let mut op = Matmul::linear(true).with_residual();
    op.binding_cap = Some(24 * 1024);
    let planned = op.plan_chunks(&shapes, 24 * 1024, 256).unwrap().len();
    let (_, dispatches) = check("linear in row chunks", &op, &[&x, &w, &bias, &res]);
    if gpu().is_some() {
        // The GPU plans with its own offset alignment (≤ 256), so at most as many chunks.
        assert!(
            dispatches > 1 && dispatches <= planned,
            "{dispatches} dispatches"
        );
    }
    // The shared weight is bound whole for every batch item of x.
    let wc = rng.tensor(&[37, 29]);
    let xc = rng.tensor(&[3, 29, 81]);
    let mut mm = Matmul::new();
    mm.binding_cap = Some(12 * 1024);
    let (_, dispatches) = check("a broadcast, one item per dispatch", &mm, &[&wc, &xc]);
    if gpu().is_some() {
        assert_eq!(dispatches, 3);
    }
    // A cap below one weight matrix is a limit error from `record`, not a wrong result.
    if let Some(ctx) = gpu() {
        let mut tiny = Matmul::linear(true);
        tiny.binding_cap = Some(4 * 1024);
        let err = crate::common::run_gpu(&ctx, &tiny, &[&x, &w, &bias]).unwrap_err();
        assert!(matches!(err, Error::Limit { op: "linear", .. }), "{err}");
    }
    let a = rng.tensor(&[3, 67, 131]);
    let b = rng.tensor(&[3, 131, 45]);
    for cap in [80 * 1024, 24 * 1024] {
        let mut mm = Matmul::new();
        mm.binding_cap = Some(cap);
        let (_, dispatches) = check(&format!("matmul chunked at {cap} bytes"), &mm, &[&a, &b]);
        if gpu().is_some() {
            assert!(dispatches > 1, "{dispatches} dispatches");
        }
    }
}

/// Every variant the autotuner can pick, and the baseline, on shapes that fill no tile: the
/// tuner may choose any of them, so each must be right on its own.
#[test]
fn every_kernel_variant_matches_cpu() {
    let mut rng = Rng::new(303);
    let a = rng.tensor(&[2, 37, 53]);
    let b = rng.tensor(&[2, 53, 71]);
    let x = rng.tensor(&[3, 45, 19]);
    let w = rng.tensor(&[29, 19]);
    let bias = rng.tensor(&[29]);
    let res = rng.tensor(&[3, 45, 29]);
    let kernels = [
        Kernel::Baseline,
        Kernel::Tiles(16, 16),
        Kernel::Tiles(8, 8),
        Kernel::Tiles(16, 8),
        Kernel::Tiles(8, 16),
        Kernel::Tiles(32, 4),
    ];
    for k in kernels {
        check(
            &format!("batched matmul {k:?}"),
            &Matmul::new().with_kernel(k),
            &[&a, &b],
        );
        check(
            &format!("0.5·linear + bias + residual {k:?}"),
            &Matmul::linear(true)
                .with_alpha(0.5)
                .with_residual()
                .with_kernel(k),
            &[&x, &w, &bias, &res],
        );
    }
}

/// Throughput of the tuned register-blocked matmul against the plain 16×16 workgroup-memory
/// tiled kernel (`Kernel::Baseline`) on the same adapter, at transformer-sized products
/// (`nn.Linear` as in SD's attention projections, fewer rows so lavapipe finishes). Not a
/// test: `cargo test --test ops bench_matmul_kernels -- --ignored --nocapture`
/// (BENCHMARKS.md, "Kernels: baseline vs register-blocked").
#[test]
#[ignore]
fn bench_matmul_kernels() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(8);
    for &(m, k, n) in &[
        (1024usize, 320usize, 320usize),
        (4096, 320, 320),
        (256, 1280, 1280),
    ] {
        let a = rng.tensor(&[m, k]);
        let w = rng.tensor(&[n, k]);
        let mut ex = Exec::gpu(ctx.clone());
        let ga = ex.upload(&a).unwrap();
        let gw = ex.upload(&w).unwrap();
        let flop = 2.0 * (m * k * n) as f64;
        let mut rates = Vec::new();
        for kernel in [Kernel::Baseline, Kernel::Tuned] {
            let op = Matmul::linear(false).with_kernel(kernel);
            let run = |ex: &mut Exec| {
                let o = ex.run(&op, &[&ga, &gw]).unwrap();
                webdiffusion::platform::block_on(ex.read(&o)).unwrap();
            };
            run(&mut ex); // compile + warm-up
            let mut times = Vec::new();
            for _ in 0..3 {
                let t0 = std::time::Instant::now();
                run(&mut ex);
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let gflops = flop / times[1] / 1e9;
            eprintln!(
                "matmul {m}x{k} · ({n}x{k})ᵀ {kernel:?}: median {:.1} ms, {gflops:.2} GFLOP/s",
                times[1] * 1e3
            );
            rates.push(gflops);
        }
        eprintln!(
            "matmul {m}x{k}x{n}: tuned / baseline = {:.2}",
            rates[1] / rates[0]
        );
    }
}
