//! Attention: GPU (online softmax in f32) vs the CPU reference (full softmax in f64) on odd
//! shapes, the reference against a hand-computed softmax, large logits, the fused and
//! guided-diffusion layouts against explicit re-layouts into separate q, k, v, shape
//! errors, and chunking into several dispatches.
//!
//! Tolerance: `|gpu − cpu| ≤ max(1e-4·|cpu|, 2e-5)` (outputs are convex combinations of v
//! rows in [-1, 1]; the GPU's f32 dot products, exp2 and running sums differ from the f64
//! reference by ~1e-6). With logits scaled ×100 the scores reach ~±100 and their f32
//! rounding (~1e-5 absolute) moves the softmax weights by as much, so that test allows
//! `max(1e-3·|cpu|, 1e-4)`. Max errors observed are printed with `--nocapture`.

use webdiffusion::ops::chunk::Chunk;
use webdiffusion::ops::{Attention, AttentionKernel, QkvLayout};
use webdiffusion::{Error, Exec, Tensor};

use crate::common::{assert_close, gpu, Rng};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 2e-5;

/// CPU reference and (with a GPU) the GPU result compared; prints the worst error.
/// Returns the CPU output and the number of dispatches the GPU run recorded.
#[track_caller]
fn check(
    what: &str,
    op: &Attention,
    inputs: &[&Tensor],
    rtol: f32,
    atol: f32,
) -> (Vec<f32>, usize) {
    let want = Exec::cpu()
        .run(op, inputs)
        .unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let want_data = want.cpu_data().unwrap().to_vec();
    assert!(
        want_data.iter().all(|x| x.is_finite()),
        "{what}: CPU not finite"
    );
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
    assert!(
        got.iter().all(|x| x.is_finite()),
        "{what}: GPU output not finite"
    );
    let worst = got
        .iter()
        .zip(&want_data)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{what}: max |gpu - cpu| = {worst:.3e} over {} values ({dispatches} dispatches)",
        got.len()
    );
    assert_close(what, &got, &want_data, rtol, atol);
    (want_data, dispatches)
}

fn scaled(t: &Tensor, s: f32) -> Tensor {
    let d = t.cpu_data().unwrap().iter().map(|x| x * s).collect();
    Tensor::from_vec(t.shape(), d).unwrap()
}

#[test]
fn self_and_cross_attention_match_cpu() {
    let mut rng = Rng::new(200);
    // B=2, 3 heads of D=40 (SD 1.x's first level), 67 query rows.
    let q = rng.tensor(&[2, 67, 120]);
    let k = rng.tensor(&[2, 67, 120]);
    let v = rng.tensor(&[2, 67, 120]);
    check(
        "self-attention H=3 D=40",
        &Attention::new(3),
        &[&q, &k, &v],
        RTOL,
        ATOL,
    );
    // Cross-attention to 13 tokens, with Dv = 24 ≠ D.
    let kc = rng.tensor(&[2, 13, 120]);
    let vc = rng.tensor(&[2, 13, 72]);
    check(
        "cross-attention Nk=13 Dv=24",
        &Attention::new(3),
        &[&q, &kc, &vc],
        RTOL,
        ATOL,
    );
    // Small and large head dims.
    let (q8, k8, v8) = (
        rng.tensor(&[1, 33, 16]),
        rng.tensor(&[1, 50, 16]),
        rng.tensor(&[1, 50, 16]),
    );
    check("D=8", &Attention::new(2), &[&q8, &k8, &v8], RTOL, ATOL);
    let (q64, k64, v64) = (
        rng.tensor(&[1, 45, 128]),
        rng.tensor(&[1, 77, 128]),
        rng.tensor(&[1, 77, 128]),
    );
    check(
        "D=64 cross Nk=77",
        &Attention::new(2),
        &[&q64, &k64, &v64],
        RTOL,
        ATOL,
    );
    let (q160, k160, v160) = (
        rng.tensor(&[1, 20, 160]),
        rng.tensor(&[1, 77, 160]),
        rng.tensor(&[1, 77, 160]),
    );
    check(
        "D=160 (SD deepest level)",
        &Attention::new(1),
        &[&q160, &k160, &v160],
        RTOL,
        ATOL,
    );
    // An explicit scale.
    check(
        "scale 0.3",
        &Attention::new(3).with_scale(0.3),
        &[&q, &kc, &vc],
        RTOL,
        ATOL,
    );
}

/// Head dims above 256 run the `attention_wide` kernel (SD's VAE has one head of 512).
#[test]
fn wide_heads_match_cpu() {
    let mut rng = Rng::new(204);
    // The VAE's layout: one channel-first head of 260 channels over 67 tokens.
    let qkv = rng.tensor(&[1, 3 * 260, 67]);
    check(
        "guided-diffusion H=1 D=260",
        &Attention::new(1).with_layout(QkvLayout::GuidedDiffusion),
        &[&qkv],
        RTOL,
        ATOL,
    );
    // Two heads, D = 260 and Dv = 300 ≠ D, cross-attention to 13 keys, batch 2.
    let q = rng.tensor(&[2, 29, 520]);
    let k = rng.tensor(&[2, 13, 520]);
    let v = rng.tensor(&[2, 13, 600]);
    check(
        "cross H=2 D=260 Dv=300",
        &Attention::new(2),
        &[&q, &k, &v],
        RTOL,
        ATOL,
    );
    // Past the wide kernel's capacity: an error naming the limit.
    let big = Tensor::from_vec(&[1, 3, 513], vec![0.0; 3 * 513]).unwrap();
    let err = Exec::cpu()
        .run(&Attention::new(1), &[&big, &big, &big])
        .unwrap_err()
        .to_string();
    assert!(err.contains("513") && err.contains("512"), "{err}");
}

#[test]
fn cpu_reference_matches_hand_computed_softmax() {
    // One batch item, one query, two keys, two heads of D = 2, Dv = 1, scale 1.
    // Head 0: q = [1, 0], k = [[0, 5], [ln 3, -1]] → scores [0, ln 3] → weights [1/4, 3/4];
    //         v = [2, 6] → 2/4 + 18/4 = 5.
    // Head 1: q = [0, 1], k = [[1, 2], [3, 2]] → scores [2, 2] → weights [1/2, 1/2];
    //         v = [-1, 4] → 1.5.
    let ln3 = 3f32.ln();
    let q = Tensor::from_vec(&[1, 1, 4], vec![1., 0., 0., 1.]).unwrap();
    let k = Tensor::from_vec(&[1, 2, 4], vec![0., 5., 1., 2., ln3, -1., 3., 2.]).unwrap();
    let v = Tensor::from_vec(&[1, 2, 2], vec![2., -1., 6., 4.]).unwrap();
    let op = Attention::new(2).with_scale(1.0);
    let (out, _) = check("hand-computed", &op, &[&q, &k, &v], 1e-6, 1e-6);
    assert!(
        (out[0] - 5.0).abs() < 1e-6 && (out[1] - 1.5).abs() < 1e-6,
        "{out:?}"
    );
    // The default scale is 1/√D: with D = 2 the head-0 scores become [0, ln 3 / √2].
    let out = Exec::cpu().run(&Attention::new(2), &[&q, &k, &v]).unwrap();
    let w1 = 1.0 / (1.0 + (-(ln3 as f64) / 2f64.sqrt()).exp());
    let want = 2.0 * (1.0 - w1) + 6.0 * w1;
    assert!((out.cpu_data().unwrap()[0] as f64 - want).abs() < 1e-6);
}

#[test]
fn large_logits_stay_finite_and_match_cpu() {
    let mut rng = Rng::new(201);
    // Scores up to ~±100: exp() of them overflows f32 without the running maximum.
    let q = scaled(&rng.tensor(&[2, 67, 120]), 100.0);
    let k = rng.tensor(&[2, 29, 120]);
    let v = rng.tensor(&[2, 29, 120]);
    check("logits ×100", &Attention::new(3), &[&q, &k, &v], 1e-3, 1e-4);
    let q = scaled(&q, 30.0);
    check(
        "logits ×3000",
        &Attention::new(3),
        &[&q, &k, &v],
        1e-3,
        1e-4,
    );
}

/// `[q | k | v]` along the last dim → three (B, N, C) tensors.
fn split_last(qkv: &Tensor) -> [Tensor; 3] {
    let s = qkv.shape();
    let (b, n, c3) = (s[0], s[1], s[2]);
    let c = c3 / 3;
    let data = qkv.cpu_data().unwrap();
    std::array::from_fn(|part| {
        let mut out = Vec::with_capacity(b * n * c);
        for row in data.chunks(c3) {
            out.extend_from_slice(&row[part * c..(part + 1) * c]);
        }
        Tensor::from_vec(&[b, n, c], out).unwrap()
    })
}

/// guided-diffusion's split of qkv (B, 3·H·D, T) into (B·H, D, T) tensors, written as the
/// PyTorch code reads, then moved to token-major (B, T, H·D) (head h at columns h·D..).
fn guided_diffusion_split(qkv: &Tensor, heads: usize, legacy: bool) -> [Tensor; 3] {
    let s = qkv.shape();
    let (b, width, t) = (s[0], s[1], s[2]);
    let ch = width / (3 * heads);
    let x = qkv.cpu_data().unwrap();
    let at = |bi: usize, c: usize, ti: usize| x[(bi * width + c) * t + ti];
    std::array::from_fn(|part| {
        // bhd[(bi·H + h), d, ti] as the module builds it.
        let bhd = |bi: usize, h: usize, d: usize, ti: usize| {
            if legacy {
                // qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)[part]
                let flat_row = h * 3 * ch + part * ch + d; // row of the (bs·H, 3·ch) view within item bi
                at(bi, flat_row, ti)
            } else {
                // qkv.chunk(3, dim=1)[part].view(bs * n_heads, ch, length)
                let chunk_row = h * ch + d;
                at(bi, part * heads * ch + chunk_row, ti)
            }
        };
        let mut out = vec![0f32; b * t * heads * ch];
        for bi in 0..b {
            for ti in 0..t {
                for h in 0..heads {
                    for d in 0..ch {
                        out[(bi * t + ti) * heads * ch + h * ch + d] = bhd(bi, h, d, ti);
                    }
                }
            }
        }
        Tensor::from_vec(&[b, t, heads * ch], out).unwrap()
    })
}

/// (B, T, C) → (B, C, T): guided-diffusion returns `a.reshape(bs, -1, length)` of
/// a (B·H, D, T), i.e. channel h·D + d at token t.
fn to_channels_first(x: &[f32], b: usize, t: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            for ci in 0..c {
                out[(bi * c + ci) * t + ti] = x[(bi * t + ti) * c + ci];
            }
        }
    }
    out
}

#[test]
fn fused_and_guided_diffusion_layouts_match_separate() {
    let mut rng = Rng::new(202);
    let (b, n, h, d) = (2, 37, 3, 8);
    let qkv = rng.tensor(&[b, n, 3 * h * d]);
    let [q, k, v] = split_last(&qkv);
    let want = Exec::cpu().run(&Attention::new(h), &[&q, &k, &v]).unwrap();
    let fused = Attention::new(h).with_layout(QkvLayout::Fused);
    let (got, _) = check("fused qkv", &fused, &[&qkv], RTOL, ATOL);
    assert_close(
        "fused vs separate (cpu)",
        &got,
        want.cpu_data().unwrap(),
        1e-6,
        1e-7,
    );

    // Channel-first qkv (B, 3·H·D, T), as guided-diffusion's qkv conv1d produces it.
    let t = 41;
    let qkv = rng.tensor(&[b, 3 * h * d, t]);
    for (layout, legacy) in [
        (QkvLayout::GuidedDiffusion, false),
        (QkvLayout::GuidedDiffusionLegacy, true),
    ] {
        let [q, k, v] = guided_diffusion_split(&qkv, h, legacy);
        let sep = Exec::cpu().run(&Attention::new(h), &[&q, &k, &v]).unwrap();
        let want = to_channels_first(sep.cpu_data().unwrap(), b, t, h * d);
        let op = Attention::new(h).with_layout(layout);
        assert_eq!(op_shape(&op, &qkv), vec![b, h * d, t]);
        let (got, _) = check(&format!("{layout:?}"), &op, &[&qkv], RTOL, ATOL);
        assert_close(
            &format!("{layout:?} vs separate (cpu)"),
            &got,
            &want,
            1e-6,
            1e-7,
        );
    }
}

fn op_shape(op: &Attention, x: &Tensor) -> Vec<usize> {
    use webdiffusion::ops::Op;
    op.output_shape(&[x.shape()]).unwrap()
}

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    let mut rng = Rng::new(203);
    let q = rng.tensor(&[2, 5, 12]);
    let shape_cases: Vec<(Attention, Vec<Tensor>)> = vec![
        // k channels differ from q
        (
            Attention::new(3),
            vec![q.clone(), rng.tensor(&[2, 7, 9]), rng.tensor(&[2, 7, 12])],
        ),
        // v has another number of keys
        (
            Attention::new(3),
            vec![q.clone(), rng.tensor(&[2, 7, 12]), rng.tensor(&[2, 6, 12])],
        ),
        // batch mismatch
        (
            Attention::new(3),
            vec![q.clone(), rng.tensor(&[1, 7, 12]), rng.tensor(&[1, 7, 12])],
        ),
        // 12 channels do not split into 5 heads
        (Attention::new(5), vec![q.clone(), q.clone(), q.clone()]),
        // rank 2
        (
            Attention::new(3),
            vec![rng.tensor(&[5, 12]), q.clone(), q.clone()],
        ),
        // fused: 12 is not 3·heads·D for 3 heads
        (
            Attention::new(3).with_layout(QkvLayout::Fused),
            vec![q.clone()],
        ),
        (
            Attention::new(2).with_layout(QkvLayout::GuidedDiffusion),
            vec![rng.tensor(&[2, 10, 7])],
        ),
    ];
    for (op, ins) in shape_cases {
        let refs: Vec<&Tensor> = ins.iter().collect();
        let err = Exec::cpu().run(&op, &refs).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Shape {
                    op: "attention",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().starts_with("attention"), "{err}");
    }
    let invalid: Vec<(Attention, Vec<Tensor>)> = vec![
        (Attention::new(3), vec![q.clone(), q.clone()]),
        (Attention::new(0), vec![q.clone(), q.clone(), q.clone()]),
        // D = 600 exceeds the wide kernel's private arrays
        (Attention::new(1), vec![rng.tensor(&[1, 2, 600]); 3]),
    ];
    for (op, ins) in invalid {
        let refs: Vec<&Tensor> = ins.iter().collect();
        let err = Exec::cpu().run(&op, &refs).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    op: "attention",
                    ..
                }
            ),
            "{err}"
        );
    }
}

fn covered_once(chunks: &[Chunk], batches: usize, rows: usize) -> bool {
    let mut seen = vec![0u8; batches * rows];
    for c in chunks {
        if c.batches.len() != 1 && c.rows != (0..rows) {
            return false;
        }
        for b in c.batches.clone() {
            for r in c.rows.clone() {
                seen[b * rows + r] += 1;
            }
        }
    }
    seen.iter().all(|&s| s == 1)
}

#[test]
fn chunk_planning_respects_a_small_limit() {
    let op = Attention::new(3);
    // q (2, 67, 120): 32,160 bytes an item, 480 a row; k 6,240 and v 3,744 bytes an item;
    // out (2, 67, 72): 19,296 bytes an item, 288 a row.
    let shapes: [&[usize]; 3] = [&[2, 67, 120], &[2, 13, 120], &[2, 13, 72]];
    assert_eq!(op.plan_chunks(&shapes, 1 << 20, 256).unwrap().len(), 1);
    // 40 KiB: one batch item per dispatch.
    let c = op.plan_chunks(&shapes, 40 * 1024, 256).unwrap();
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(covered_once(&c, 2, 67));
    // 8 KiB: (8192 − 252) / 480 = 16 query rows per dispatch, 5 dispatches per item.
    let c = op.plan_chunks(&shapes, 8 * 1024, 256).unwrap();
    assert_eq!(c.len(), 10, "{c:?}");
    assert!(c.iter().all(|c| c.rows.len() <= 16));
    assert!(covered_once(&c, 2, 67));
    // 6 KiB: k's 6,240 bytes must be bound whole for every query row.
    let err = op.plan_chunks(&shapes, 6 * 1024, 256).unwrap_err();
    assert!(
        matches!(&err, Error::Limit { op: "attention", limit: "maxStorageBufferBindingSize", value: 6144, what, .. } if what.contains("`k`")),
        "{err}"
    );
    // Channel-first qkv cannot be split over tokens: whole batch items only.
    let gd = Attention::new(3).with_layout(QkvLayout::GuidedDiffusionLegacy);
    let shapes: [&[usize]; 1] = [&[3, 72, 41]]; // 11,808 bytes an item
    let c = gd.plan_chunks(&shapes, 24 * 1024, 256).unwrap();
    assert_eq!(c.len(), 2, "{c:?}"); // two items, then one
    assert!(covered_once(&c, 3, 41));
    assert!(matches!(
        gd.plan_chunks(&shapes, 8 * 1024, 256).unwrap_err(),
        Error::Limit {
            op: "attention",
            ..
        }
    ));
}

#[test]
fn chunked_dispatches_match_cpu() {
    let mut rng = Rng::new(204);
    let q = rng.tensor(&[2, 67, 120]);
    let k = rng.tensor(&[2, 13, 120]);
    let v = rng.tensor(&[2, 13, 72]);
    for cap in [40 * 1024, 8 * 1024] {
        let mut op = Attention::new(3);
        op.binding_cap = Some(cap);
        let (_, n) = check(
            &format!("separate, {cap}-byte bindings"),
            &op,
            &[&q, &k, &v],
            RTOL,
            ATOL,
        );
        if gpu().is_some() {
            assert!(n > 1, "{n} dispatches");
        }
    }
    let qkv = rng.tensor(&[3, 29, 72]);
    let mut op = Attention::new(3).with_layout(QkvLayout::Fused);
    op.binding_cap = Some(12 * 1024);
    let (_, n) = check("fused, 12 KiB bindings", &op, &[&qkv], RTOL, ATOL);
    if gpu().is_some() {
        assert!(n > 1, "{n} dispatches");
    }
    let qkv = rng.tensor(&[3, 72, 41]);
    let mut op = Attention::new(3).with_layout(QkvLayout::GuidedDiffusion);
    op.binding_cap = Some(24 * 1024);
    let (_, n) = check(
        "guided-diffusion, 24 KiB bindings",
        &op,
        &[&qkv],
        RTOL,
        ATOL,
    );
    if gpu().is_some() {
        assert!(n > 1, "{n} dispatches");
    }
}

/// Both kernels (the barrier-free streaming one and the workgroup-memory tiled one) against
/// the CPU reference on odd shapes: Nq, Nk not multiples of the tile (TK = 2048 / max(D, Dv),
/// capped at 64) nor of the workgroup (64 rows), head dims not multiples of 4, cross-attention
/// with Nk = 77, Dv ≠ D, the guided-diffusion layout, and a multi-dispatch split.
#[test]
fn stream_and_tiled_kernels_match_cpu() {
    let mut rng = Rng::new(210);
    let cases: Vec<(&str, Attention, Vec<Tensor>)> = vec![
        (
            "self N=67 H=3 D=7",
            Attention::new(3),
            vec![rng.tensor(&[2, 67, 21]); 3],
        ),
        (
            "cross Nq=130 Nk=77 H=2 D=40 Dv=24",
            Attention::new(2),
            vec![
                rng.tensor(&[1, 130, 80]),
                rng.tensor(&[1, 77, 80]),
                rng.tensor(&[1, 77, 48]),
            ],
        ),
        (
            "D=160 Nk=45 (tile of 12 keys)",
            Attention::new(1).with_scale(0.2),
            vec![
                rng.tensor(&[1, 9, 160]),
                rng.tensor(&[1, 45, 160]),
                rng.tensor(&[1, 45, 160]),
            ],
        ),
        (
            "guided-diffusion legacy T=70 H=2 D=9",
            Attention::new(2).with_layout(QkvLayout::GuidedDiffusionLegacy),
            vec![rng.tensor(&[2, 54, 70])],
        ),
    ];
    for (what, op, ins) in &cases {
        let refs: Vec<&Tensor> = ins.iter().collect();
        for kernel in [AttentionKernel::Stream, AttentionKernel::Tiled] {
            let op = op.with_kernel(kernel);
            check(&format!("{what} {kernel:?}"), &op, &refs, RTOL, ATOL);
            let causal = op.with_causal(true);
            check(
                &format!("{what} {kernel:?} causal"),
                &causal,
                &refs,
                RTOL,
                ATOL,
            );
        }
    }
    // Split into row chunks: the causal mask must use global query rows. Keys and values of
    // one item are bound whole, so only q and out can split: Nq > Nk (rows past the last key
    // see every key, rows of the first chunk a prefix).
    let q = rng.tensor(&[2, 67, 24]);
    let k = rng.tensor(&[2, 20, 24]);
    let v = rng.tensor(&[2, 20, 24]);
    for kernel in [AttentionKernel::Stream, AttentionKernel::Tiled] {
        let mut op = Attention::new(3).with_kernel(kernel).with_causal(true);
        op.binding_cap = Some(3 * 1024);
        let (_, dispatches) = check(
            &format!("chunked causal {kernel:?}"),
            &op,
            &[&q, &k, &v],
            RTOL,
            ATOL,
        );
        assert!(dispatches == 0 || dispatches > 2, "{dispatches} dispatches");
    }
}

/// The causal reference against the plain one: query row i with the mask equals row i of
/// attention over keys 0..=i only (Nq > Nk too: rows past the last key see every key).
#[test]
fn causal_reference_equals_attention_over_the_key_prefix() {
    let mut rng = Rng::new(211);
    let (h, d, dv, nq, nk) = (2, 5, 3, 9, 6);
    let q = rng.tensor(&[1, nq, h * d]);
    let k = rng.tensor(&[1, nk, h * d]);
    let v = rng.tensor(&[1, nk, h * dv]);
    let op = Attention::new(h);
    let got = Exec::cpu()
        .run(&op.with_causal(true), &[&q, &k, &v])
        .unwrap();
    let got = got.cpu_data().unwrap();
    let prefix = |t: &Tensor, n: usize| {
        let c = t.shape()[2];
        Tensor::from_vec(&[1, n, c], t.cpu_data().unwrap()[..n * c].to_vec()).unwrap()
    };
    for i in 0..nq {
        let n = nk.min(i + 1);
        let qi = Tensor::from_vec(
            &[1, 1, h * d],
            q.cpu_data().unwrap()[i * h * d..(i + 1) * h * d].to_vec(),
        )
        .unwrap();
        let want = Exec::cpu()
            .run(&op, &[&qi, &prefix(&k, n), &prefix(&v, n)])
            .unwrap();
        assert_close(
            &format!("row {i}"),
            &got[i * h * dv..(i + 1) * h * dv],
            want.cpu_data().unwrap(),
            1e-6,
            1e-7,
        );
    }
    // Row 0 sees key 0 alone: its output is v's row 0.
    assert_close(
        "row 0 = v0",
        &got[..h * dv],
        &v.cpu_data().unwrap()[..h * dv],
        1e-6,
        1e-7,
    );
}
