//! x̂₀ processing ops (clamp, per-row |x| quantile, per-row threshold) and the GMS step on
//! the GPU against their CPU references, on shapes that are not multiples of any tile.

use webdiffusion::ops::gms_update::gms_element;
use webdiffusion::ops::threshold::abs_quantile_row;
use webdiffusion::ops::{AbsQuantile, Clamp, GmsUpdate, ThresholdRows};
use webdiffusion::{Exec, Tensor};

use crate::common::{check_op, gpu, run_gpu, Rng};

#[test]
fn clamp_matches_cpu() {
    let mut rng = Rng::new(31);
    let x = rng.tensor(&[3, 7, 129]);
    check_op("clamp", &Clamp { lo: -0.4, hi: 0.7 }, &[&x], 0.0, 0.0);
    let mut exec = Exec::cpu();
    let nan = Tensor::from_vec(&[3], vec![f32::NAN, 2.0, -3.0]).unwrap();
    let out = exec.run(&Clamp { lo: -1.0, hi: 1.0 }, &[&nan]).unwrap();
    let v = out.cpu_data().unwrap();
    assert!(v[0].is_nan() && v[1] == 1.0 && v[2] == -1.0, "{v:?}");
    assert!(exec.run(&Clamp { lo: 1.0, hi: -1.0 }, &[&nan]).is_err());
}

#[test]
fn abs_quantile_matches_cpu_exactly() {
    let mut rng = Rng::new(32);
    // Rows of 1, 2, 3·67, and 5·37·11 values (one row spans many histogram passes), with
    // ties (a value repeated) so the order statistics land on duplicates.
    for shape in [vec![5, 1], vec![3, 2], vec![4, 3, 67], vec![2, 5, 37, 11]] {
        let mut x = rng.tensor(&shape);
        if let Some(d) = x.cpu_data() {
            let mut d = d.to_vec();
            let n = d.len();
            for i in (0..n).step_by(7) {
                d[i] = d[0];
            }
            x = Tensor::from_vec(&shape, d).unwrap();
        }
        for q in [0.0, 0.3, 0.5, 0.9, 0.995, 1.0] {
            // Selection returns input values and the lerp is the same f32 arithmetic.
            check_op(
                &format!("abs_quantile {shape:?} q={q}"),
                &AbsQuantile { q },
                &[&x],
                0.0,
                0.0,
            );
        }
    }
    let mut exec = Exec::cpu();
    let x = Tensor::from_vec(
        &[2, 5],
        vec![3.0, -1.0, 2.0, -5.0, 4.0, 0.0, f32::NAN, 1.0, 1.0, 1.0],
    )
    .unwrap();
    let s = exec.run(&AbsQuantile { q: 0.625 }, &[&x]).unwrap();
    let s = s.cpu_data().unwrap();
    assert_eq!(s[0], 3.5);
    assert!(s[1].is_nan());
    assert_eq!(abs_quantile_row(&[-2.0, 1.0], 0.25), 1.25);
    if let Some(ctx) = gpu() {
        // A row with a NaN gives NaN on the GPU too (torch.quantile), the other row its value.
        let (_, got) = run_gpu(&ctx, &AbsQuantile { q: 0.625 }, &[&x]).unwrap();
        assert!(got[0] == 3.5 && got[1].is_nan(), "{got:?}");
    }
    assert!(exec.run(&AbsQuantile { q: 1.5 }, &[&x]).is_err());
}

#[test]
fn threshold_rows_matches_cpu() {
    let mut rng = Rng::new(33);
    let x = rng.tensor(&[3, 2, 41]);
    let s = Tensor::from_vec(&[3], vec![0.5, 0.8, 3.0]).unwrap();
    // s' = clamp(s, 0.6, 1.7): clamped below, inside and above.
    check_op(
        "threshold_rows",
        &ThresholdRows { lo: 0.6, hi: 1.7 },
        &[&x, &s],
        3e-7,
        1e-7,
    );
    let mut exec = Exec::cpu();
    let bad = Tensor::from_vec(&[2], vec![1.0, 1.0]).unwrap();
    assert!(exec
        .run(&ThresholdRows { lo: 1.0, hi: 2.0 }, &[&x, &bad])
        .is_err());
}

#[test]
fn gms_update_matches_cpu() {
    let mut rng = Rng::new(34);
    let shape = [2, 3, 37, 5]; // 1,110 elements: not a multiple of 4
    let x = rng.tensor(&shape);
    let m1 = rng.tensor(&shape);
    // Variances ≥ 0 and third central moments of either sign and size, so the fit takes
    // both the exact branch and the clipped-skewness fallback.
    let var = Tensor::from_vec(&shape, rng.vec(x.numel(), 0.0, 1.0)).unwrap();
    let k3 = Tensor::from_vec(&shape, rng.vec(x.numel(), -0.6, 0.6)).unwrap();
    let op = GmsUpdate {
        c_x: 1.02,
        c_eps: -0.31,
        lambda2: 0.004,
        seed: 77,
        step: 3,
        stream: 0,
    };
    check_op("gms_update", &op, &[&x, &m1, &var, &k3], 1e-5, 1e-5);
}

/// The closed-form fit reproduces the moments it was given (where the skewness is
/// representable) and falls back to the largest representable skew otherwise.
#[test]
fn gms_fit_matches_moments() {
    let c = [1.0f32, 0.8, 0.01];
    // ε moments: mean 0.1, variance 0.5, third central 0.1 (skewness 0.28: representable).
    let (m, v, k3) = (0.1f32, 0.5f32, 0.1f32);
    // Mixture moments by integrating over u (component) and z (Gauss–Hermite would do; a
    // fine grid over z is enough here).
    let mut mom = [0f64; 3];
    let (x, steps) = (0.3f32, 4000);
    for (u, w) in [(0.0f32, 1.0 / 3.0), (0.5, 2.0 / 3.0)] {
        for i in 0..steps {
            let z = -8.0 + 16.0 * (i as f32 + 0.5) / steps as f32;
            let pz = (-(z as f64).powi(2) / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * 16.0
                / steps as f64;
            let y = gms_element(c, x, m, v, k3, z, u) as f64;
            mom[0] += w * pz * y;
            mom[1] += w * pz * y * y;
            mom[2] += w * pz * y * y * y;
        }
    }
    let mean = 1.0 * 0.3 + 0.8 * 0.1;
    let var = 0.64 * 0.5 + 0.01;
    let third = 0.512 * 0.1;
    let got_var = mom[1] - mom[0] * mom[0];
    let got_third = mom[2] - 3.0 * mom[0] * mom[1] + 2.0 * mom[0].powi(3);
    assert!((mom[0] - mean).abs() < 1e-4, "mean {} vs {mean}", mom[0]);
    assert!((got_var - var).abs() < 1e-4, "variance {got_var} vs {var}");
    assert!(
        (got_third - third).abs() < 1e-3,
        "third {got_third} vs {third}"
    );
}
