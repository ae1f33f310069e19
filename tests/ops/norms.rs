//! GroupNorm and LayerNorm: GPU vs the f64-accumulating CPU reference on odd shapes, both
//! kernel strategies (one workgroup per row; partial stats + combine + apply for long rows),
//! inputs with a large mean offset, hand-computed values, argument errors, and dispatches
//! split to respect a small `maxStorageBufferBindingSize`.

use std::sync::{Arc, OnceLock};

use webdiffusion::ops::{GroupNorm, LayerNorm, Op};
use webdiffusion::{Error, Exec, GpuContext, GpuOptions, Tensor};

use crate::common::{assert_close, gpu, run_gpu, Rng};

/// Binding limit of `small_binding_gpu`: 256 KiB, so tensors of a few hundred thousand
/// elements need several dispatches.
pub const SMALL_BINDING: u64 = 256 * 1024;

/// A second context on the same adapter whose `maxStorageBufferBindingSize` is lowered to
/// `SMALL_BINDING` and its offset alignment raised to 256, so ops must split their
/// dispatches into sub-ranges bound at aligned offsets. Binding less than the device
/// allows is always legal, so wgpu agrees.
pub fn small_binding_gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| {
        gpu()?;
        let mut ctx =
            webdiffusion::platform::block_on(GpuContext::new(&GpuOptions::default())).ok()?;
        let c = Arc::get_mut(&mut ctx).expect("a fresh context has one owner");
        c.caps.limits.max_storage_buffer_binding_size = SMALL_BINDING;
        // Browsers' 256-byte offset alignment (lavapipe's is 32); a multiple of the
        // device's own alignment, so every offset chosen is still valid there.
        let align = c.caps.limits.min_storage_buffer_offset_alignment;
        c.caps.limits.min_storage_buffer_offset_alignment = align.max(256);
        eprintln!(
            "small-binding context: maxStorageBufferBindingSize {SMALL_BINDING}, minStorageBufferOffsetAlignment {}",
            c.caps.limits.min_storage_buffer_offset_alignment
        );
        Some(ctx)
    })
    .clone()
}

/// Run `op` on the CPU reference and the GPU, compare with `|gpu − cpu| ≤ max(rtol·|cpu|,
/// atol)`, and report the largest |gpu − cpu| (run with `--nocapture` to see it).
/// Returns the CPU result.
#[track_caller]
pub fn check_report<O: Op>(
    what: &str,
    op: &O,
    inputs: &[&Tensor],
    rtol: f32,
    atol: f32,
) -> Vec<f32> {
    let want_t = Exec::cpu()
        .run(op, inputs)
        .unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let want = want_t.cpu_data().unwrap().to_vec();
    assert!(
        want.iter().all(|x| x.is_finite()),
        "{what}: CPU reference is not finite"
    );
    if let Some(ctx) = gpu() {
        let (shape, got) = run_gpu(&ctx, op, inputs).unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
        assert_eq!(shape, want_t.shape(), "{what}: output shape");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        eprintln!("{what}: max |gpu - cpu| = {worst:.3e}");
        assert_close(what, &got, &want, rtol, atol);
    }
    want
}

/// Run on the small-binding context and compare with the CPU reference.
#[track_caller]
pub fn check_split<O: Op>(what: &str, op: &O, inputs: &[&Tensor], rtol: f32, atol: f32) {
    let want = Exec::cpu().run(op, inputs).unwrap();
    if let Some(ctx) = small_binding_gpu() {
        let (shape, got) = run_gpu(&ctx, op, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(shape, want.shape(), "{what}: shape");
        assert_close(what, &got, want.cpu_data().unwrap(), rtol, atol);
    }
}

/// How many compute dispatches `op` records on `ctx` (buffer copies not counted): shows
/// which strategy an op took and into how many parts it split.
pub fn dispatches<O: Op>(ctx: &Arc<GpuContext>, op: &O, inputs: &[&Tensor]) -> usize {
    let mut ex = Exec::gpu(ctx.clone());
    let ins: Vec<Tensor> = inputs.iter().map(|t| ex.upload(t).unwrap()).collect();
    let refs: Vec<&Tensor> = ins.iter().collect();
    ex.run(op, &refs).unwrap();
    let n = ex.pending_dispatches();
    ex.submit().unwrap();
    n
}

fn tensor(rng: &mut Rng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    Tensor::from_vec(shape, rng.vec(shape.iter().product(), lo, hi)).unwrap()
}

#[test]
fn group_norm_reference_hand_computed() {
    // x (1, 4, 2), 2 groups, eps 0. Group 0 = [1, 2, 3, 4]: mean 5/2, var 5/4, so the
    // normalised values are ±3/√5, ±1/√5. Group 1 = [10, 10, 10, 14]: mean 11, var 3,
    // so −1/√3 (three times) and √3. (numpy float64, rounded to f32.)
    let x = Tensor::from_vec(&[1, 4, 2], vec![1., 2., 3., 4., 10., 10., 10., 14.]).unwrap();
    let w = Tensor::from_vec(&[4], vec![1., 2., 3., 4.]).unwrap();
    let b = Tensor::from_vec(&[4], vec![0., 1., 0., -1.]).unwrap();
    let plain = [
        -1.3416408,
        -0.4472136,
        0.4472136,
        1.3416408,
        -0.57735026,
        -0.57735026,
        -0.57735026,
        1.7320508,
    ];
    // Channel k scaled by w[k] and shifted by b[k]: channel 1 = 2·(1/√5, 3/√5) + 1, …
    let affine = [
        -1.3416408, -0.4472136, 1.8944272, 3.6832817, -1.7320508, -1.7320508, -3.309401, 5.928203,
    ];
    // silu(y) = y / (1 + e^-y) of the affine values.
    let silu = [
        -0.2780421,
        -0.1744238,
        1.6467488,
        3.5929534,
        -0.2603713,
        -0.2603713,
        -0.11665666,
        5.912457,
    ];
    let gn = GroupNorm::new(2, 0.0);
    let mut cpu = Exec::cpu();
    let got = cpu.run(&gn.without_affine(), &[&x]).unwrap();
    assert_close("plain", got.cpu_data().unwrap(), &plain, 1e-7, 1e-7);
    let got = cpu.run(&gn, &[&x, &w, &b]).unwrap();
    assert_close("affine", got.cpu_data().unwrap(), &affine, 1e-7, 1e-7);
    let got = cpu.run(&gn.with_silu(), &[&x, &w, &b]).unwrap();
    assert_close("silu", got.cpu_data().unwrap(), &silu, 1e-7, 1e-7);
    // And the GPU on the same tiny case.
    check_report(
        "group_norm hand",
        &gn.with_silu(),
        &[&x, &w, &b],
        1e-6,
        1e-6,
    );
}

#[test]
fn group_norm_matches_cpu() {
    let mut rng = Rng::new(11);
    for &(shape, groups) in &[
        (&[2usize, 48, 13, 17][..], 8usize), // 6·221 = 1326 per group
        (&[2, 64, 13, 17][..], 32),          // 2 channels per group
        (&[3, 40, 37][..], 5),               // (N, C, L)
        (&[2, 12][..], 3),                   // no spatial dims
    ] {
        let c = shape[1];
        let x = tensor(&mut rng, shape, -2.0, 2.0);
        let w = tensor(&mut rng, &[c], 0.5, 1.5);
        let b = tensor(&mut rng, &[c], -0.5, 0.5);
        let gn = GroupNorm::new(groups, 1e-5);
        let tag = format!("group_norm {shape:?} groups {groups}");
        if let Some(ctx) = gpu() {
            assert_eq!(
                dispatches(&ctx, &gn, &[&x, &w, &b]),
                1,
                "{tag}: norm_rows only"
            );
        }
        check_report(&tag, &gn, &[&x, &w, &b], 1e-5, 1e-5);
        check_report(
            &format!("{tag} silu"),
            &gn.with_silu(),
            &[&x, &w, &b],
            1e-5,
            1e-5,
        );
        check_report(
            &format!("{tag} no affine"),
            &gn.without_affine(),
            &[&x],
            1e-5,
            1e-5,
        );
        check_report(
            &format!("{tag} no affine silu"),
            &gn.without_affine().with_silu(),
            &[&x],
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn group_norm_large_group_uses_split_strategy() {
    // One group of 32·61·67 = 130,784 elements per sample: 32 chunks of 4096 (the last
    // partial) per row, merged by norm_combine.
    let mut rng = Rng::new(12);
    let x = tensor(&mut rng, &[2, 32, 61, 67], -3.0, 1.0);
    let w = tensor(&mut rng, &[32], 0.5, 1.5);
    let b = tensor(&mut rng, &[32], -0.5, 0.5);
    let gn = GroupNorm::new(1, 1e-6);
    if let Some(ctx) = gpu() {
        let n = dispatches(&ctx, &gn, &[&x, &w, &b]);
        assert_eq!(n, 3, "partial, combine, apply");
    }
    check_report(
        "group_norm 1 group of 130784",
        &gn.with_silu(),
        &[&x, &w, &b],
        1e-5,
        1e-5,
    );
    // Just above the one-workgroup threshold: 8200 elements, 3 chunks.
    let x = tensor(&mut rng, &[2, 8, 25, 41], -1.0, 1.0);
    if let Some(ctx) = gpu() {
        let gn = GroupNorm::new(1, 1e-5).without_affine();
        assert_eq!(dispatches(&ctx, &gn, &[&x]), 3);
    }
    check_report(
        "group_norm 1 group of 8200",
        &GroupNorm::new(1, 1e-5).without_affine(),
        &[&x],
        1e-5,
        1e-5,
    );
}

#[test]
fn group_norm_is_stable_with_a_large_mean() {
    // Values 100 ± 1: E[x²] − mean² would lose ~4 of f32's 7 digits here. Both strategies.
    let mut rng = Rng::new(13);
    for &(shape, groups) in &[
        (&[2usize, 48, 13, 17][..], 8usize),
        (&[2, 32, 61, 67][..], 1),
    ] {
        let c = shape[1];
        let x = tensor(&mut rng, shape, 99.0, 101.0);
        let w = tensor(&mut rng, &[c], 0.5, 1.5);
        let b = tensor(&mut rng, &[c], -0.5, 0.5);
        let out = check_report(
            &format!("group_norm offset 100 {shape:?} groups {groups}"),
            &GroupNorm::new(groups, 1e-5),
            &[&x, &w, &b],
            1e-5,
            1e-5,
        );
        // The outputs really are O(1): the offset was removed, not amplified.
        assert!(out.iter().all(|v| v.abs() < 4.0));
    }
}

#[test]
fn layer_norm_matches_cpu() {
    let mut rng = Rng::new(14);
    // Transformer style: (N, T, D) over D.
    let x = tensor(&mut rng, &[3, 77, 320], -2.0, 2.0);
    let w = tensor(&mut rng, &[320], 0.5, 1.5);
    let b = tensor(&mut rng, &[320], -0.5, 0.5);
    let ln = LayerNorm::new(&[320], 1e-5);
    check_report("layer_norm last dim", &ln, &[&x, &w, &b], 1e-5, 1e-5);
    check_report(
        "layer_norm last dim no bias",
        &ln.clone().without_bias(),
        &[&x, &w],
        1e-5,
        1e-5,
    );
    check_report(
        "layer_norm last dim no affine",
        &ln.clone().without_affine(),
        &[&x],
        1e-5,
        1e-5,
    );
    // Last two dims, 37·45 = 1665 per row.
    let x = tensor(&mut rng, &[2, 3, 37, 45], -2.0, 2.0);
    let w = tensor(&mut rng, &[37, 45], 0.5, 1.5);
    let b = tensor(&mut rng, &[37, 45], -0.5, 0.5);
    check_report(
        "layer_norm last two dims",
        &LayerNorm::new(&[37, 45], 1e-6),
        &[&x, &w, &b],
        1e-5,
        1e-5,
    );
    // MLP-Mixer style: a whole (C, P) slab per sample, 96·197 = 18,912 → split strategy;
    // offset values as well.
    let x = tensor(&mut rng, &[2, 96, 197], 99.0, 101.0);
    let w = tensor(&mut rng, &[96, 197], 0.5, 1.5);
    let b = tensor(&mut rng, &[96, 197], -0.5, 0.5);
    let ln = LayerNorm::new(&[96, 197], 1e-6);
    check_report(
        "layer_norm (C, P) slab offset 100",
        &ln,
        &[&x, &w, &b],
        1e-5,
        1e-5,
    );
    if let Some(ctx) = gpu() {
        assert_eq!(dispatches(&ctx, &ln, &[&x, &w, &b]), 3);
    }
    // One row that is the whole tensor.
    let x = tensor(&mut rng, &[5, 7], -1.0, 1.0);
    check_report(
        "layer_norm whole tensor",
        &LayerNorm::new(&[5, 7], 1e-5).without_affine(),
        &[&x],
        1e-5,
        1e-5,
    );
}

#[test]
fn layer_norm_reference_hand_computed() {
    // Rows [1, 2, 3, 4] and [−1, −1, 1, 1]: (x − 2.5)/√1.25 = ±3/√5, ±1/√5; and ±1.
    let x = Tensor::from_vec(&[2, 4], vec![1., 2., 3., 4., -1., -1., 1., 1.]).unwrap();
    let w = Tensor::from_vec(&[4], vec![2., 2., 2., 2.]).unwrap();
    let b = Tensor::from_vec(&[4], vec![0., 0., 0., 1.]).unwrap();
    let got = Exec::cpu()
        .run(&LayerNorm::new(&[4], 0.0), &[&x, &w, &b])
        .unwrap();
    let s = 1.0 / 5f32.sqrt();
    let want = [-6. * s, -2. * s, 2. * s, 6. * s + 1., -2., -2., 2., 3.];
    assert_close(
        "layer_norm hand",
        got.cpu_data().unwrap(),
        &want,
        1e-6,
        1e-6,
    );
}

#[test]
fn norms_reject_bad_arguments() {
    let mut rng = Rng::new(15);
    let x = rng.tensor(&[2, 48, 5, 5]);
    let w48 = rng.tensor(&[48]);
    let w47 = rng.tensor(&[47]);
    let mut cpu = Exec::cpu();

    let e = cpu
        .run(&GroupNorm::new(5, 1e-5), &[&x, &w48, &w48])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "group_norm",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("num_groups = 5"), "{e}");
    let e = cpu
        .run(&GroupNorm::new(8, 1e-5), &[&x, &w47, &w48])
        .unwrap_err();
    assert!(
        matches!(e, Error::Shape { op: "group_norm", ref what, .. } if what == "weight"),
        "{e}"
    );
    let e = cpu
        .run(&GroupNorm::new(8, 1e-5), &[&x, &w48, &w47])
        .unwrap_err();
    assert!(
        matches!(e, Error::Shape { op: "group_norm", ref what, .. } if what == "bias"),
        "{e}"
    );
    let e = cpu.run(&GroupNorm::new(8, 1e-5), &[&x]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "group_norm",
                ..
            }
        ),
        "{e}"
    );
    let e = cpu.run(&GroupNorm::new(0, 1e-5), &[&x]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "group_norm",
                ..
            }
        ),
        "{e}"
    );
    let e = cpu
        .run(
            &GroupNorm::new(1, 1e-5).without_affine(),
            &[&rng.tensor(&[7])],
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "group_norm",
                ..
            }
        ),
        "{e}"
    );

    let y = rng.tensor(&[2, 7, 320]);
    let e = cpu
        .run(&LayerNorm::new(&[7, 321], 1e-5).without_affine(), &[&y])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "layer_norm",
                ..
            }
        ),
        "{e}"
    );
    let e = cpu
        .run(&LayerNorm::new(&[320], 1e-5), &[&y, &w48, &w48])
        .unwrap_err();
    assert!(
        matches!(e, Error::Shape { op: "layer_norm", ref what, .. } if what == "weight"),
        "{e}"
    );
    let e = cpu
        .run(&LayerNorm::new(&[], 1e-5).without_affine(), &[&y])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "layer_norm",
                ..
            }
        ),
        "{e}"
    );
    let e = cpu.run(&LayerNorm::new(&[320], 1e-5), &[&y]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "layer_norm",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn norms_split_dispatches_under_a_small_binding_limit() {
    let mut rng = Rng::new(16);
    // 64 rows of 5304 bytes = 339,456 bytes > 256 KiB: several one-workgroup-per-row parts,
    // the later ones starting at a row that is not group 0.
    let x = tensor(&mut rng, &[8, 48, 13, 17], -2.0, 2.0);
    let w = tensor(&mut rng, &[48], 0.5, 1.5);
    let b = tensor(&mut rng, &[48], -0.5, 0.5);
    let gn = GroupNorm::new(8, 1e-5).with_silu();
    check_split("group_norm split rows", &gn, &[&x, &w, &b], 1e-5, 1e-5);
    if let Some(ctx) = small_binding_gpu() {
        assert!(dispatches(&ctx, &gn, &[&x, &w, &b]) >= 2);
    }
    // Three rows of exactly 256 KiB, each taking the split strategy on its own.
    let x = tensor(&mut rng, &[3, 16, 64, 64], -2.0, 2.0);
    let w = tensor(&mut rng, &[16], 0.5, 1.5);
    let b = tensor(&mut rng, &[16], -0.5, 0.5);
    let gn = GroupNorm::new(1, 1e-5);
    check_split(
        "group_norm split rows, long rows",
        &gn,
        &[&x, &w, &b],
        1e-5,
        1e-5,
    );
    if let Some(ctx) = small_binding_gpu() {
        assert_eq!(dispatches(&ctx, &gn, &[&x, &w, &b]), 3 * 3);
    }
    let x = tensor(&mut rng, &[700, 320], -2.0, 2.0);
    let w = tensor(&mut rng, &[320], 0.5, 1.5);
    let b = tensor(&mut rng, &[320], -0.5, 0.5);
    let ln = LayerNorm::new(&[320], 1e-5);
    check_split("layer_norm split rows", &ln, &[&x, &w, &b], 1e-5, 1e-5);
    if let Some(ctx) = small_binding_gpu() {
        // 896,000 bytes in parts of at most 204 rows.
        assert_eq!(dispatches(&ctx, &ln, &[&x, &w, &b]), 4);
    }
    // A row larger than the limit cannot be split: a Limit error naming the op.
    if let Some(ctx) = small_binding_gpu() {
        let x = tensor(&mut rng, &[1, 80_000], -1.0, 1.0);
        let e = run_gpu(
            &ctx,
            &LayerNorm::new(&[80_000], 1e-5).without_affine(),
            &[&x],
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Limit {
                    op: "layer_norm",
                    ..
                }
            ),
            "{e}"
        );
    }
}

/// Long rows (the partial + combine + apply strategy) in parts whose second one starts 80
/// bytes past an aligned offset: x and out are bound from the offset below, the shader
/// skipping the rest.
#[test]
fn norms_split_long_rows_at_unaligned_offsets() {
    let mut rng = Rng::new(17);
    // 5 rows of 9·37·41 = 13,653 floats (54,612 bytes): 4 rows, then 1.
    let x = tensor(&mut rng, &[5, 9, 37, 41], -2.0, 2.0);
    let w = tensor(&mut rng, &[9], 0.5, 1.5);
    let b = tensor(&mut rng, &[9], -0.5, 0.5);
    let gn = GroupNorm::new(1, 1e-5).with_silu();
    check_split(
        "group_norm long rows, unaligned parts",
        &gn,
        &[&x, &w, &b],
        1e-5,
        1e-5,
    );
    if let Some(ctx) = small_binding_gpu() {
        assert_eq!(dispatches(&ctx, &gn, &[&x, &w, &b]), 2 * 3);
    }
}
