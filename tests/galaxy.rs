//! The galaxygrad 0.2.1 score networks (MLP-Mixer, equinox) against an independent numpy
//! forward of the original .eqx leaves.
//!
//! `tests/goldens/galaxy/*.npy` were written by `scripts/goldens/make_galaxy_goldens.py`
//! (numpy 2.3.5, float64, read straight from the wheel) for a batch of three at t = 0.01, 1,
//! 10; the inputs are regenerated here from the script's seed. Target: per sample,
//! max |ours − numpy| / max |numpy| ≤ 1e-4.
//!
//! The converted weights (not in git: the package declares no licence) come from
//! `scripts/setup-galaxy.sh` into `models/galaxy/` (or `$WEBDIFFUSION_GALAXY_DIR`). Without
//! them the weight-dependent tests skip, unless `WEBDIFFUSION_REQUIRE_GALAXY=1` (CI sets it),
//! which fails them.

#[path = "ops/common.rs"]
mod common;

use std::path::PathBuf;

use webdiffusion::models::MixerScoreNet;
use webdiffusion::platform::block_on;
use webdiffusion::sampling::solvers::{
    initial_noise, sample, solver_from_name, Control, Noise, SolverOptions,
};
use webdiffusion::{Exec, Tensor};

const TOL: f64 = 1e-4;
const SEED: u64 = 11;
const TIMES: [f64; 3] = [0.01, 1.0, 10.0];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn galaxy_dir(name: &str) -> Option<PathBuf> {
    let base = match std::env::var("WEBDIFFUSION_GALAXY_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => root().join("models/galaxy"),
    };
    let dir = base.join(name);
    if dir.join("model.safetensors").is_file() && dir.join("config.json").is_file() {
        return Some(dir);
    }
    if std::env::var("WEBDIFFUSION_REQUIRE_GALAXY").as_deref() == Ok("1") {
        panic!(
            "WEBDIFFUSION_REQUIRE_GALAXY=1 but the converted galaxy model is not in {} \
             (model.safetensors + config.json): run scripts/setup-galaxy.sh first",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no converted galaxy model in {} (run scripts/setup-galaxy.sh)",
        dir.display()
    );
    None
}

/// The golden script's inputs: a smooth positive image diffused to each t (see its doc).
fn inputs(size: usize) -> Vec<f32> {
    let mut rng = common::Rng::new(SEED);
    let n = size * size;
    let u = rng.vec(TIMES.len() * n, -1.0, 1.0);
    let mut x = vec![0f32; u.len()];
    let tau = 2.0 * std::f64::consts::PI;
    for (b, &t) in TIMES.iter().enumerate() {
        let (a, s) = ((-t / 2.0).exp(), (-(-t).exp_m1()).sqrt());
        for i in 0..size {
            for j in 0..size {
                let k = b * n + i * size + j;
                let base = 4.0
                    * (1.0
                        + (tau * i as f64 / size as f64).sin()
                            * (tau * j as f64 / size as f64).cos());
                x[k] = (a * base + s * 3f64.sqrt() * u[k] as f64) as f32;
            }
        }
    }
    x
}

fn golden(name: &str) -> (Vec<usize>, Vec<f32>) {
    let path = root().join(format!("tests/goldens/galaxy/{name}_score.npy"));
    let t = webdiffusion::npy::read_tensor(&path).expect("golden");
    (t.shape().to_vec(), t.cpu_data().unwrap().to_vec())
}

/// Our scores for the three golden inputs, subsampled like the golden.
fn ours(exec: &mut Exec, model: &MixerScoreNet, size: usize, sub: usize) -> Vec<f32> {
    let x = inputs(size);
    let n = size * size;
    let mut out = Vec::new();
    for (b, &t) in TIMES.iter().enumerate() {
        let xb = exec
            .tensor(&[1, 1, size, size], &x[b * n..(b + 1) * n])
            .unwrap();
        let y = model.score(exec, &xb, t).expect("forward");
        let v = block_on(exec.read(&y)).expect("read");
        for i in (0..size).step_by(sub) {
            for j in (0..size).step_by(sub) {
                out.push(v[i * size + j]);
            }
        }
    }
    out
}

fn parity(exec: &mut Exec, name: &str, size: usize, sub: usize, what: &str) {
    let Some(dir) = galaxy_dir(name) else { return };
    let model = MixerScoreNet::load_dir(exec, &dir).expect("load the converted model");
    let (shape, want) = golden(name);
    assert_eq!(shape, [3, 1, size / sub, size / sub]);
    let t0 = std::time::Instant::now();
    let got = ours(exec, &model, size, sub);
    let dt = t0.elapsed();
    let m = want.len() / 3;
    for (b, &t) in TIMES.iter().enumerate() {
        let (g, w) = (&got[b * m..(b + 1) * m], &want[b * m..(b + 1) * m]);
        let err = g
            .iter()
            .zip(w)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .fold(0.0, f64::max);
        let scale = w.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
        eprintln!(
            "{what} {name} t={t}: max |ours − numpy| / max |numpy| = {:.2e}",
            err / scale
        );
        assert!(
            err / scale <= TOL,
            "{what} {name}: t = {t}: relative error {:.3e} > {TOL}",
            err / scale
        );
    }
    eprintln!("{what} {name}: three forwards in {dt:.2?}");
}

#[test]
fn hsc32_matches_numpy_on_gpu() {
    let Some(ctx) = common::gpu() else { return };
    parity(&mut Exec::gpu(ctx), "hsc32", 32, 1, "gpu");
}

#[test]
fn hsc64_matches_numpy_on_gpu() {
    let Some(ctx) = common::gpu() else { return };
    parity(&mut Exec::gpu(ctx), "hsc64", 64, 4, "gpu");
}

#[test]
fn hsc32_matches_numpy_on_cpu() {
    parity(&mut Exec::cpu(), "hsc32", 32, 1, "cpu");
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// On pure noise at t = t1 the data term is gone (α = e^(−5)), so the score is −x/σ; a
/// wrong kernel orientation or patch order drops the correlation to ≈ 0.
#[test]
fn score_of_noise_is_minus_x_over_sigma() {
    let Some(dir) = galaxy_dir("hsc64") else {
        return;
    };
    let Some(ctx) = common::gpu() else { return };
    let mut exec = Exec::gpu(ctx);
    let model = MixerScoreNet::load_dir(&mut exec, &dir).expect("load");
    let mut rng = common::Rng::new(5);
    // Unit-variance uniform noise (√3·u); batch 2 checks the per-sample slab norms.
    let x: Vec<f32> = rng
        .vec(2 * 64 * 64, -1.0, 1.0)
        .iter()
        .map(|u| u * 3f32.sqrt())
        .collect();
    let xt = exec.tensor(&[2, 1, 64, 64], &x).unwrap();
    let st = model.score(&mut exec, &xt, 10.0).unwrap();
    let s = block_on(exec.read(&st)).unwrap();
    let sigma = (-(-10f64).exp_m1()).sqrt() as f32;
    let target: Vec<f32> = x.iter().map(|v| -v / sigma).collect();
    for b in 0..2 {
        let r = b * 4096..(b + 1) * 4096;
        let c = correlation(&s[r.clone()], &target[r]);
        assert!(c > 0.999, "sample {b}: corr(score, −x/σ) = {c}");
    }
    // The ε the solvers see is −σ·score ≈ x.
    let et = model.eps(&mut exec, &xt, 10.0).unwrap();
    let eps = block_on(exec.read(&et)).unwrap();
    let c = correlation(&eps, &x);
    assert!(c > 0.999, "corr(ε, x) = {c}");
}

/// Four solvers at 20 steps from the same noise end near each other (a deterministic ODE
/// solution; DDIM is first order so it is allowed more), in the data range of the HSC
/// transform (x = e^(0.1·y) − 1 ≥ −1 means y is bounded below), and not at the noise.
#[test]
fn solvers_agree_on_hsc32() {
    let Some(dir) = galaxy_dir("hsc32") else {
        return;
    };
    let Some(ctx) = common::gpu() else { return };
    let mut exec = Exec::gpu(ctx);
    let mut model = MixerScoreNet::load_dir(&mut exec, &dir).expect("load");
    let shape = [2, 1, 32, 32];
    let mut results = Vec::new();
    for name in ["dpmpp_2m", "unipc", "euler", "ddim"] {
        let class = webdiffusion::sampling::solvers::schedule_class_for(name).unwrap();
        let cfg = model.scheduler_config(class);
        let mut solver = solver_from_name(name, &cfg, 20, SolverOptions::default()).unwrap();
        let x = initial_noise(&mut exec, solver.as_ref(), &shape, 4).unwrap();
        let out = sample(
            &mut exec,
            solver.as_mut(),
            &mut model,
            &x,
            &mut Noise::Philox { seed: 4 },
            |_, _| Control::Continue,
        )
        .expect(name);
        let v = block_on(exec.read(&out.sample)).unwrap();
        assert!(v.iter().all(|a| a.is_finite()), "{name}: non-finite sample");
        let noise = block_on(exec.read(&x)).unwrap();
        let c = correlation(&v, &noise);
        eprintln!(
            "{name}: corr(sample, initial noise) {c:.3}, y range {:?}",
            v.iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &y| (a.min(y), b.max(y)))
        );
        results.push((name, v));
    }
    let (_, reference) = &results[0];
    let spread = {
        let m = reference.iter().map(|&a| a as f64).sum::<f64>() / reference.len() as f64;
        (reference
            .iter()
            .map(|&a| (a as f64 - m).powi(2))
            .sum::<f64>()
            / reference.len() as f64)
            .sqrt()
    };
    for (name, v) in &results[1..] {
        let rms = (v
            .iter()
            .zip(reference)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            / v.len() as f64)
            .sqrt();
        let allowed = if *name == "ddim" { 0.5 } else { 0.2 };
        eprintln!("{name} vs dpmpp_2m: rms {rms:.4} (sample std {spread:.4})");
        assert!(
            rms < allowed * spread,
            "{name} vs dpmpp_2m: rms {rms} vs std {spread}"
        );
    }
    let min = reference.iter().cloned().fold(f32::INFINITY, f32::min);
    let to_flux = |y: f32| model.config.to_flux(y);
    assert!(to_flux(min) > -1.0, "min y {min}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let Some(dir) = galaxy_dir("hsc32") else {
        return;
    };
    let mut exec = Exec::cpu();
    let model = MixerScoreNet::load_dir(&mut exec, &dir).expect("load");
    let x = Tensor::from_vec(&[1, 1, 16, 16], vec![0.0; 256]).unwrap();
    let err = model.score(&mut exec, &x, 1.0).unwrap_err().to_string();
    assert!(err.contains("(N, 1, 32, 32)"), "{err}");
    let x = Tensor::from_vec(&[1, 1, 32, 32], vec![0.0; 1024]).unwrap();
    let err = model.score(&mut exec, &x, 11.0).unwrap_err().to_string();
    assert!(err.contains("outside") && err.contains("[0, 10]"), "{err}");
    // The 64 px weights under a 32 px config: the first tensor whose shape differs is named.
    let tmp = std::env::temp_dir().join(format!("wd-galaxy-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(dir.join("config.json"), tmp.join("config.json")).unwrap();
    if let Some(d64) = galaxy_dir("hsc64") {
        std::fs::copy(d64.join("model.safetensors"), tmp.join("model.safetensors")).unwrap();
        let err = MixerScoreNet::load_dir(&mut exec, &tmp)
            .err()
            .expect("mismatch")
            .to_string();
        assert!(err.contains("blocks.0"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let err = MixerScoreNet::load_dir(&mut exec, tmp.join("nowhere"))
        .err()
        .expect("missing")
        .to_string();
    assert!(err.contains("setup-galaxy.sh"), "{err}");
}

/// The setup script refuses a wheel whose hash is not the published 0.2.1 wheel's.
#[test]
fn setup_refuses_a_wheel_with_another_hash() {
    let tmp = std::env::temp_dir().join(format!("wd-galaxy-setup-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        tmp.join("galaxygrad-0.2.1-py3-none-any.whl"),
        b"PK not the real wheel",
    )
    .unwrap();
    let venv = root().join(".cache/galaxy-venv");
    if !venv.join("bin/python").is_file() {
        eprintln!(
            "skipping: no {} (run scripts/setup-galaxy.sh)",
            venv.display()
        );
        let _ = std::fs::remove_dir_all(&tmp);
        return;
    }
    let out = std::process::Command::new(root().join("scripts/setup-galaxy.sh"))
        .env("GALAXY_CACHE", &tmp)
        .env("GALAXY_DIR", tmp.join("out"))
        .output()
        .expect("run setup-galaxy.sh");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(!out.status.success(), "accepted a fake wheel: {err}");
    assert!(
        err.contains("sha256") && err.contains("not the published"),
        "{err}"
    );
}
