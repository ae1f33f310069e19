use webdiffusion::ops::philox;
use webdiffusion::ops::SolverUpdate;
use webdiffusion::{Error, Exec};

use crate::common::{check_op, gpu, run_gpu, Rng};

#[test]
fn linear_combination_matches_cpu() {
    let mut rng = Rng::new(10);
    let shape = [3, 5, 67, 45]; // 45,225 elements: not a multiple of 4 or of the workgroup
    let ins: Vec<_> = (0..5).map(|_| rng.tensor(&shape)).collect();
    for k in 1..=5 {
        let coefs: Vec<f64> = (0..k).map(|i| 0.3 - 0.17 * i as f64).collect();
        let op = SolverUpdate::linear(&coefs);
        let refs: Vec<_> = ins[..k].iter().collect();
        check_op(&format!("solver_update k={k}"), &op, &refs, 1e-6, 1e-6);
    }
}

#[test]
fn noisy_update_matches_cpu_noise_stream() {
    let mut rng = Rng::new(11);
    let shape = [2, 3, 31, 29];
    let a = rng.tensor(&shape);
    let b = rng.tensor(&shape);
    let op = SolverUpdate::linear(&[0.9, -0.1]).with_noise(0.35, 0xDEAD_BEEF_1234_5678, 17, 2);
    // The Philox integers are identical; the shader's own ln/cos/sin (not WGSL's loosely
    // specified built-ins) agree with Rust's libm to a few ulps, so the noise does too.
    check_op("solver_update with noise", &op, &[&a, &b], 2e-6, 1e-6);
}

#[test]
fn pure_noise_matches_philox_and_has_unit_moments() {
    let shape = [4, 4, 127, 129]; // 262,128 elements
    let op = SolverUpdate::noise(&shape, 1.0, 42, 0, 0);
    let cpu = check_op("noise", &op, &[], 2e-6, 1e-6);
    let mut want = vec![0f32; cpu.len()];
    philox::fill_gaussian(42, 0, 0, &mut want);
    assert_eq!(cpu, want, "CPU op and philox::fill_gaussian agree exactly");
    if let Some(ctx) = gpu() {
        let (_, z) = run_gpu(&ctx, &op, &[]).unwrap();
        let n = z.len() as f64;
        let mean = z.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = z.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "GPU noise mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "GPU noise variance {var}");
        // A different step gives different noise.
        let (_, z2) = run_gpu(&ctx, &SolverUpdate::noise(&shape, 1.0, 42, 1, 0), &[]).unwrap();
        let corr = z.iter().zip(&z2).map(|(a, b)| (a * b) as f64).sum::<f64>() / n;
        assert!(
            corr.abs() < 0.01,
            "noise of consecutive steps correlates: {corr}"
        );
    }
}

#[test]
fn mismatched_inputs_are_errors() {
    let mut rng = Rng::new(12);
    let a = rng.tensor(&[2, 3]);
    let b = rng.tensor(&[3, 2]);
    let err = Exec::cpu()
        .run(&SolverUpdate::linear(&[1.0, 1.0]), &[&a, &b])
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = Exec::cpu()
        .run(&SolverUpdate::linear(&[1.0]), &[&a, &a])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let six: Vec<_> = (0..6).map(|_| &a).collect();
    assert!(Exec::cpu()
        .run(&SolverUpdate::linear(&[1.0; 6]), &six)
        .is_err());
}
