//! Upsample2x, AvgPool2x and Concat: GPU vs CPU on odd shapes, hand-checked references,
//! shape errors, and dispatches split under a small binding limit.

use webdiffusion::ops::{AvgPool2x, Concat, Upsample2x};
use webdiffusion::{Error, Exec, Tensor};

use crate::common::gpu;
use crate::common::Rng;
use crate::norms::{check_report, check_split, dispatches, small_binding_gpu};

fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape, v).unwrap()
}

#[test]
fn resample_reference_hand_computed() {
    let x = t(&[1, 1, 2, 2], vec![1., 2., 3., 4.]);
    let up = Exec::cpu().run(&Upsample2x, &[&x]).unwrap();
    assert_eq!(up.shape(), [1, 1, 4, 4]);
    #[rustfmt::skip]
    let want = [1., 1., 2., 2.,
                1., 1., 2., 2.,
                3., 3., 4., 4.,
                3., 3., 4., 4.];
    assert_eq!(up.cpu_data().unwrap(), want);
    // 3×5 → 1×2: the odd last row and column are dropped (floor mode).
    #[rustfmt::skip]
    let x = t(&[1, 1, 3, 5], vec![1., 2., 3., 4., 100.,
                                  5., 6., 7., 8., 100.,
                                  100., 100., 100., 100., 100.]);
    let p = Exec::cpu().run(&AvgPool2x, &[&x]).unwrap();
    assert_eq!(p.shape(), [1, 1, 1, 2]);
    assert_eq!(p.cpu_data().unwrap(), [3.5, 5.5]);
}

#[test]
fn resample_matches_cpu() {
    let mut rng = Rng::new(21);
    for shape in [[2, 3, 13, 17], [1, 5, 1, 1], [3, 7, 2, 3], [1, 2, 33, 8]] {
        let x = rng.tensor(&shape);
        // Both are exact on the GPU (a copy; a sum in PyTorch's order times 0.25).
        check_report(
            &format!("upsample2x {shape:?}"),
            &Upsample2x,
            &[&x],
            0.0,
            0.0,
        );
        if shape[2] >= 2 && shape[3] >= 2 {
            check_report(
                &format!("avg_pool2x {shape:?}"),
                &AvgPool2x,
                &[&x],
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn concat_reference_hand_computed() {
    let a = t(&[2, 1, 2], vec![1., 2., 3., 4.]);
    let b = t(&[2, 2, 2], vec![5., 6., 7., 8., 9., 10., 11., 12.]);
    let c = Exec::cpu().run(&Concat::channels(), &[&a, &b]).unwrap();
    assert_eq!(c.shape(), [2, 3, 2]);
    assert_eq!(
        c.cpu_data().unwrap(),
        [1., 2., 5., 6., 7., 8., 3., 4., 9., 10., 11., 12.]
    );
    let c = Exec::cpu().run(&Concat::new(-1), &[&a, &a]).unwrap();
    assert_eq!(c.shape(), [2, 1, 4]);
    assert_eq!(c.cpu_data().unwrap(), [1., 2., 1., 2., 3., 4., 3., 4.]);
}

#[test]
fn concat_matches_cpu() {
    let mut rng = Rng::new(22);
    // UNet skip connection: few blocks, recorded as buffer copies.
    let a = rng.tensor(&[2, 5, 13, 17]);
    let b = rng.tensor(&[2, 11, 13, 17]);
    let out = check_report(
        "concat channels NCHW",
        &Concat::channels(),
        &[&a, &b],
        0.0,
        0.0,
    );
    assert_eq!(out.len(), 2 * 16 * 13 * 17);
    if let Some(ctx) = gpu() {
        assert_eq!(
            dispatches(&ctx, &Concat::channels(), &[&a, &b]),
            0,
            "copies only"
        );
    }
    let a = rng.tensor(&[3, 4, 29]);
    let b = rng.tensor(&[3, 9, 29]);
    check_report(
        "concat channels NCL",
        &Concat::channels(),
        &[&a, &b],
        0.0,
        0.0,
    );
    // Along the last axis: 111 blocks per input, the concat kernel.
    let a = rng.tensor(&[3, 37, 13]);
    let b = rng.tensor(&[3, 37, 6]);
    check_report("concat last dim", &Concat::new(-1), &[&a, &b], 0.0, 0.0);
    if let Some(ctx) = gpu() {
        assert_eq!(
            dispatches(&ctx, &Concat::new(-1), &[&a, &b]),
            2,
            "one per input"
        );
    }
    // Three inputs along the batch axis, one of them with a single sample.
    let c = rng.tensor(&[1, 37, 6]);
    let d = rng.tensor(&[4, 37, 6]);
    check_report("concat dim 0", &Concat::new(0), &[&b, &c, &d], 0.0, 0.0);
    // The same tensor twice, through the kernel (many blocks).
    let e = rng.tensor(&[40, 7]);
    check_report("concat x with x", &Concat::new(1), &[&e, &e], 0.0, 0.0);
}

#[test]
fn resample_and_concat_reject_bad_shapes() {
    let mut rng = Rng::new(23);
    let mut cpu = Exec::cpu();
    let e = cpu
        .run(&Upsample2x, &[&rng.tensor(&[3, 4, 5])])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "upsample2x",
                ..
            }
        ),
        "{e}"
    );
    let e = cpu
        .run(&AvgPool2x, &[&rng.tensor(&[1, 2, 1, 5])])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "avg_pool2x",
                ..
            }
        ),
        "{e}"
    );
    let a = rng.tensor(&[2, 5, 13, 17]);
    let b = rng.tensor(&[2, 11, 13, 16]);
    let e = cpu.run(&Concat::channels(), &[&a, &b]).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "concat", .. }), "{e}");
    assert!(e.to_string().contains("(2, *, 13, 17)"), "{e}");
    let e = cpu
        .run(&Concat::channels(), &[&a, &rng.tensor(&[2, 5, 13])])
        .unwrap_err();
    assert!(matches!(e, Error::Shape { op: "concat", .. }), "{e}");
    let e = cpu.run(&Concat::new(4), &[&a, &a]).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { op: "concat", .. }),
        "{e}"
    );
    let e = cpu.run(&Concat::new(0), &[]).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { op: "concat", .. }),
        "{e}"
    );
}

#[test]
fn resample_and_concat_split_dispatches_under_a_small_binding_limit() {
    let mut rng = Rng::new(24);
    // 32 planes; output planes of 64·68·4 = 17,408 bytes, 557,056 in all > 256 KiB.
    let x = rng.tensor(&[2, 16, 32, 34]);
    check_split("upsample2x split", &Upsample2x, &[&x], 0.0, 0.0);
    if let Some(ctx) = small_binding_gpu() {
        assert_eq!(
            dispatches(&ctx, &Upsample2x, &[&x]),
            3,
            "15 + 15 + 2 planes"
        );
    }
    let x = rng.tensor(&[2, 16, 64, 68]);
    check_split("avg_pool2x split", &AvgPool2x, &[&x], 0.0, 0.0);
    // Kernel path (1024 blocks); output rows of 384 bytes, 393,216 in all.
    let a = rng.tensor(&[1024, 64]);
    let b = rng.tensor(&[1024, 32]);
    check_split("concat split", &Concat::new(1), &[&a, &b], 0.0, 0.0);
    if let Some(ctx) = small_binding_gpu() {
        assert!(
            dispatches(&ctx, &Concat::new(1), &[&a, &b]) >= 4,
            "two parts per input"
        );
    }
    // Copy path: no binding at all, so no limit applies.
    let a = rng.tensor(&[2, 40, 32, 32]);
    let b = rng.tensor(&[2, 24, 32, 32]);
    check_split("concat copies", &Concat::channels(), &[&a, &b], 0.0, 0.0);
}

/// Parts whose first plane or block is not at an aligned byte offset: bound from the aligned
/// offset below it, the shader skipping the rest. (With parts starting only at aligned
/// offsets these shapes could not be split under this limit at all.)
#[test]
fn resample_and_concat_split_at_unaligned_offsets() {
    let mut rng = Rng::new(25);
    // Planes of 33·35 and 66·70 floats: 14 per part, the second part 168 and 160 bytes past
    // an aligned offset.
    let up = rng.tensor(&[3, 7, 33, 35]);
    check_split("upsample2x unaligned parts", &Upsample2x, &[&up], 0.0, 0.0);
    let x = rng.tensor(&[3, 7, 66, 70]);
    check_split("avg_pool2x unaligned parts", &AvgPool2x, &[&x], 0.0, 0.0);
    // Output rows of 57 floats: 1,148 per part, the second part 112 bytes past.
    let a = rng.tensor(&[1500, 37]);
    let b = rng.tensor(&[1500, 20]);
    check_split(
        "concat unaligned parts",
        &Concat::new(1),
        &[&a, &b],
        0.0,
        0.0,
    );
    if let Some(ctx) = small_binding_gpu() {
        assert_eq!(dispatches(&ctx, &Upsample2x, &[&up]), 2);
        assert_eq!(dispatches(&ctx, &AvgPool2x, &[&x]), 2);
        assert_eq!(dispatches(&ctx, &Concat::new(1), &[&a, &b]), 4);
    }
}
