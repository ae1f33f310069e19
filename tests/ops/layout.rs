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

#[test]
fn crop2d_matches_cpu_on_odd_shapes() {
    use webdiffusion::ops::Crop2d;
    let x = Tensor::from_vec(&[1, 1, 3, 4], (0..12).map(|v| v as f32).collect()).unwrap();
    let out = check_op(
        "crop 2×2 at (1, 1)",
        &Crop2d::new(1, 1, 2, 2),
        &[&x],
        0.0,
        0.0,
    );
    assert_eq!(out, [5.0, 6.0, 9.0, 10.0]);
    let mut rng = Rng::new(35);
    let x = rng.tensor(&[2, 3, 7, 11]);
    for (top, left, h, w) in [(0, 0, 7, 11), (3, 5, 4, 6), (6, 10, 1, 1), (0, 4, 5, 7)] {
        check_op(
            &format!("crop {h}×{w} at ({top}, {left})"),
            &Crop2d::new(top, left, h, w),
            &[&x],
            0.0,
            0.0,
        );
    }
    for bad in [
        Crop2d::new(5, 0, 3, 1),
        Crop2d::new(0, 9, 1, 3),
        Crop2d::new(0, 0, 0, 1),
    ] {
        let msg = Exec::cpu().run(&bad, &[&x]).err().unwrap().to_string();
        assert!(
            msg.contains("crop2d") && msg.contains("(2, 3, 7, 11)"),
            "{msg}"
        );
    }
}

#[test]
fn blend_edge_matches_cpu_and_diffusers_formula() {
    use webdiffusion::ops::BlendEdge;
    // blend_v(a, b, 2) of a = rows [0, 1, 2] and b = rows [10, 20, 30] (one column):
    // b[0] = a[1]·1 + b[0]·0 = 1, b[1] = a[2]·0.5 + b[1]·0.5 = 11, b[2] = 30.
    let a = Tensor::from_vec(&[1, 1, 3, 1], vec![0.0, 1.0, 2.0]).unwrap();
    let b = Tensor::from_vec(&[1, 1, 3, 1], vec![10.0, 20.0, 30.0]).unwrap();
    let out = check_op("blend_v 3 rows", &BlendEdge::top(2), &[&a, &b], 0.0, 0.0);
    assert_eq!(out, [1.0, 11.0, 30.0]);
    // The extent shrinks to the thinner tile: a 1-row b takes a's last row whole.
    let b1 = Tensor::from_vec(&[1, 1, 1, 1], vec![10.0]).unwrap();
    let out = check_op("blend_v thin b", &BlendEdge::top(2), &[&a, &b1], 0.0, 0.0);
    assert_eq!(out, [2.0]);
    let mut rng = Rng::new(36);
    for (sa, sb, top, e) in [
        ([2, 3, 7, 5], [2, 3, 6, 5], true, 3),
        ([2, 3, 2, 5], [2, 3, 6, 5], true, 4),
        ([1, 5, 9, 13], [1, 5, 9, 7], false, 5),
        ([1, 5, 9, 13], [1, 5, 9, 2], false, 5),
        ([3, 2, 4, 4], [3, 2, 4, 4], false, 1),
    ] {
        let (a, b) = (rng.tensor(&sa), rng.tensor(&sb));
        let op = if top {
            BlendEdge::top(e)
        } else {
            BlendEdge::left(e)
        };
        let out = check_op(
            &format!("blend {sa:?} {sb:?} {op:?}"),
            &op,
            &[&a, &b],
            1e-6,
            1e-6,
        );
        // Rows/columns past the extent are b's, untouched.
        let (bd, (h, w)) = (b.cpu_data().unwrap(), (sb[2], sb[3]));
        let e = e.min(if top { sa[2].min(h) } else { sa[3].min(w) });
        for (i, (&o, &v)) in out.iter().zip(bd).enumerate() {
            let (y, x) = ((i / w) % h, i % w);
            if (top && y >= e) || (!top && x >= e) {
                assert_eq!(o, v, "blend {sa:?} {sb:?}: element {i}");
            }
        }
    }
    let (a, b) = (rng.tensor(&[1, 2, 4, 5]), rng.tensor(&[1, 2, 4, 6]));
    let msg = Exec::cpu()
        .run(&BlendEdge::top(2), &[&a, &b])
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("blend_edge") && msg.contains("W equal"),
        "{msg}"
    );
    assert!(Exec::cpu().run(&BlendEdge::left(2), &[&a, &b]).is_ok());
}
