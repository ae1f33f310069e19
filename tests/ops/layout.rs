//! Transpose, batch slicing and the per-sample std reduction.

use webdiffusion::ops::{SampleStd, SliceBatch, Transpose};
use webdiffusion::{Error, Exec, Tensor};

use crate::common::{check_op, Rng};

#[test]
fn transpose_matches_cpu_and_moves_each_element() {
    let mut rng = Rng::new(31);
    // (B, R, C) with odd sizes: the map of a 6×10 image with 17 channels, and a long one.
    for shape in [[2usize, 60, 17], [3, 7, 301], [1, 1, 5]] {
        let x = rng.tensor(&shape);
        let out = check_op(&format!("transpose {shape:?}"), &Transpose, &[&x], 0.0, 0.0);
        let xs = x.cpu_data().unwrap();
        let (r, c) = (shape[1], shape[2]);
        for b in 0..shape[0] {
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(out[b * r * c + j * r + i], xs[b * r * c + i * c + j]);
                }
            }
        }
    }
    assert!(matches!(
        Exec::cpu().run(&Transpose, &[&rng.tensor(&[2, 3])]),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn slice_batch_matches_cpu() {
    let mut rng = Rng::new(32);
    let x = rng.tensor(&[5, 3, 7, 9]);
    for (start, len) in [(0, 2), (2, 3), (4, 1)] {
        let out = check_op(
            &format!("slice {start}+{len}"),
            &SliceBatch::new(start, len),
            &[&x],
            0.0,
            0.0,
        );
        let m = 3 * 7 * 9;
        assert_eq!(out, x.cpu_data().unwrap()[start * m..(start + len) * m]);
    }
    for (start, len) in [(4, 2), (0, 0), (6, 1)] {
        let err = Exec::cpu()
            .run(&SliceBatch::new(start, len), &[&x])
            .expect_err("out of range");
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }
}

#[test]
fn sample_std_matches_cpu_and_known_values() {
    // torch.tensor([[1., 2., 3., 4.], [2., 2., 2., 2.]]).std(dim=1) = [1.2909944, 0.]
    let x = Tensor::from_vec(&[2, 4], vec![1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 2.0, 2.0]).unwrap();
    let out = check_op("std known", &SampleStd, &[&x], 1e-6, 1e-7);
    assert!(
        (out[0] - 1.290_994_4).abs() < 1e-6 && out[1] == 0.0,
        "{out:?}"
    );

    let mut rng = Rng::new(33);
    // Odd sizes, a sample longer than the 256-wide workgroup, and a large common offset
    // (the two-pass, shifted sums lose nothing to it).
    for shape in [vec![3usize, 4, 5, 7], vec![2, 3001], vec![7, 2]] {
        let x = rng.tensor(&shape);
        check_op(&format!("std {shape:?}"), &SampleStd, &[&x], 1e-5, 1e-6);
        let shifted: Vec<f32> = x.cpu_data().unwrap().iter().map(|v| v + 1000.0).collect();
        let xs = Tensor::from_vec(&shape, shifted).unwrap();
        let a = check_op("std offset", &SampleStd, &[&xs], 2e-4, 1e-5);
        let b = Exec::cpu().run(&SampleStd, &[&x]).unwrap();
        for (u, v) in a.iter().zip(b.cpu_data().unwrap()) {
            // Shifting by 1000 rounds each input to its ulp there (6e-5): the only error.
            assert!((u - v).abs() <= 1e-4 * v.abs() + 1e-4, "{u} vs {v}");
        }
    }
    for bad in [vec![3usize], vec![3, 1], vec![0, 4]] {
        let x = Tensor::from_vec(&bad, vec![0.0; bad.iter().product()]).unwrap();
        assert!(matches!(
            Exec::cpu().run(&SampleStd, &[&x]),
            Err(Error::Shape { .. })
        ));
    }
}

#[test]
fn resize_nearest_matches_cpu_and_pytorch() {
    use webdiffusion::ops::ResizeNearest;
    // F.interpolate(torch.arange(4.).view(1, 1, 1, 4), size=(1, 7), mode="nearest")
    //   = [0, 0, 1, 1, 2, 2, 3]  (source ⌊d·4/7⌋)
    let x = Tensor::from_vec(&[1, 1, 1, 4], vec![0.0, 1.0, 2.0, 3.0]).unwrap();
    let out = check_op("resize 4→7", &ResizeNearest::new(1, 7), &[&x], 0.0, 0.0);
    assert_eq!(out, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0]);
    // ... size=(1, 9) from 4: ⌊d·4/9⌋ = [0, 0, 0, 1, 1, 2, 2, 3, 3]
    let out = check_op("resize 4→9", &ResizeNearest::new(1, 9), &[&x], 0.0, 0.0);
    assert_eq!(out, [0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    let mut rng = Rng::new(34);
    let x = rng.tensor(&[2, 3, 4, 5]);
    for (h, w) in [(7, 9), (8, 10), (3, 2), (13, 5)] {
        check_op(
            &format!("resize to {h}×{w}"),
            &ResizeNearest::new(h, w),
            &[&x],
            0.0,
            0.0,
        );
    }
    assert!(Exec::cpu().run(&ResizeNearest::new(0, 3), &[&x]).is_err());
    assert!(Exec::cpu()
        .run(&ResizeNearest::new(3, 3), &[&rng.tensor(&[2, 3, 4])])
        .is_err());
}
