//! The terrain consistency model (adaptive-terrain-diffusion 0.4.2, a guided-diffusion
//! `UNetModel` in an EDM wrapper) against onnxruntime on the original ONNX graph.
//!
//! `tests/goldens/terrain/denoised.npy` was written by
//! `scripts/goldens/make_terrain_goldens.py` (onnxruntime 1.31.1, CPU, float32) for a batch
//! of three at σ = 80, 2, 0.1; the inputs are regenerated here from the script's seed.
//! Target: per sample, max |ours − onnxruntime| / max |onnxruntime| ≤ 1e-4.
//!
//! The converted weights (45 MB, not in git) come from `scripts/setup-terrain.sh` into
//! `models/terrain/` (or `$WEBDIFFUSION_TERRAIN_DIR`). Without them the weight-dependent
//! tests skip, unless `WEBDIFFUSION_REQUIRE_TERRAIN=1` (CI sets it), which fails them.

#[path = "ops/common.rs"]
mod common;

use std::path::PathBuf;

use webdiffusion::models::GuidedUNet;
use webdiffusion::sampling::edm::{consistency_sample, SigmaDenoiser};
use webdiffusion::sampling::solvers::{Control, Noise};
use webdiffusion::{Error, Exec, Tensor};

const TOL: f64 = 1e-4;
const SEED: u64 = 7;
const SIGMAS: [f64; 3] = [80.0, 2.0, 0.1];
const DIFFICULTY: [f32; 3] = [0.5, 0.0, 1.0];
const SIZE: usize = 128;

fn terrain_dir() -> Option<PathBuf> {
    let dir = match std::env::var("WEBDIFFUSION_TERRAIN_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/terrain"),
    };
    if dir.join("model.safetensors").is_file() && dir.join("config.json").is_file() {
        return Some(dir);
    }
    if std::env::var("WEBDIFFUSION_REQUIRE_TERRAIN").as_deref() == Ok("1") {
        panic!(
            "WEBDIFFUSION_REQUIRE_TERRAIN=1 but the converted terrain model is not in {} \
             (model.safetensors + config.json): run scripts/setup-terrain.sh first",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no converted terrain model in {} (run scripts/setup-terrain.sh)",
        dir.display()
    );
    None
}

/// The golden script's inputs: a smooth surface plus σ·√3·u, u from the splitmix stream.
fn inputs() -> Vec<f32> {
    let mut rng = common::Rng::new(SEED);
    let n = SIZE * SIZE;
    let u = rng.vec(SIGMAS.len() * n, -1.0, 1.0);
    let mut x = vec![0f32; u.len()];
    let tau = 2.0 * std::f64::consts::PI;
    for (b, &s) in SIGMAS.iter().enumerate() {
        for i in 0..SIZE {
            for j in 0..SIZE {
                let k = b * n + i * SIZE + j;
                let base = 0.5
                    * (tau * i as f64 / SIZE as f64).sin()
                    * (tau * j as f64 / SIZE as f64).cos();
                x[k] = (base + s * 3f64.sqrt() * u[k] as f64) as f32;
            }
        }
    }
    x
}

fn golden() -> Vec<f32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/terrain/denoised.npy");
    let t = webdiffusion::npy::read_tensor(&path).expect("golden");
    assert_eq!(t.shape(), &[3, 1, SIZE, SIZE]);
    t.cpu_data().unwrap().to_vec()
}

/// Per sample: max |got − want| / max |want|.
fn rel_errors(got: &[f32], want: &[f32]) -> Vec<f64> {
    let n = SIZE * SIZE;
    (0..got.len() / n)
        .map(|b| {
            let (g, w) = (&got[b * n..(b + 1) * n], &want[b * n..(b + 1) * n]);
            let err = g
                .iter()
                .zip(w)
                .map(|(a, b)| (*a as f64 - *b as f64).abs())
                .fold(0.0, f64::max);
            let scale = w.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
            err / scale
        })
        .collect()
}

fn parity(exec: &mut Exec, dir: &PathBuf, what: &str) {
    let model = GuidedUNet::load_dir(exec, dir).expect("load the converted terrain model");
    let x = exec.tensor(&[3, 1, SIZE, SIZE], &inputs()).expect("upload");
    let t0 = std::time::Instant::now();
    let y = model
        .denoise_sigmas(exec, &x, &SIGMAS, Some(&DIFFICULTY))
        .expect("forward");
    let got = webdiffusion::platform::block_on(exec.read(&y)).expect("read");
    let dt = t0.elapsed();
    let errs = rel_errors(&got, &golden());
    eprintln!("{what}: batch 3 forward {dt:.2?}; relative error per σ {SIGMAS:?}: {errs:?}");
    for (e, s) in errs.iter().zip(SIGMAS) {
        assert!(
            *e <= TOL,
            "{what}: σ = {s}: max |ours − onnxruntime| / max |onnxruntime| = {e:.3e} > {TOL}"
        );
    }
}

#[test]
fn terrain_matches_onnxruntime_on_gpu() {
    let Some(dir) = terrain_dir() else { return };
    let Some(ctx) = common::gpu() else { return };
    parity(&mut Exec::gpu(ctx), &dir, "gpu");
}

/// The CPU reference backend is slow on a 10 M-parameter model at 128²: opt-in.
#[test]
#[ignore]
fn terrain_matches_onnxruntime_on_cpu() {
    let Some(dir) = terrain_dir() else { return };
    parity(&mut Exec::cpu(), &dir, "cpu");
}

#[test]
fn missing_difficulty_is_a_clear_error() {
    let Some(dir) = terrain_dir() else { return };
    let mut exec = Exec::cpu();
    let mut model = GuidedUNet::load_dir(&mut exec, &dir).expect("load");
    let x = Tensor::from_vec(&[1, 1, 16, 16], vec![0.0; 256]).unwrap();
    let err = model.denoise_sigma(&mut exec, &x, 80.0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("difficulty") && msg.contains("--difficulty"),
        "{msg}"
    );
    let err = model.set_condition(&[1.5]).unwrap_err().to_string();
    assert!(err.contains("outside") && err.contains("[0, 1]"), "{err}");
}

/// One step from 80·z is a smooth heightmap (onnxruntime's one-step samples have lag-1
/// correlation ≈ 0.998); re-noising to σ = 2 and denoising again keeps it finite and
/// clipped (the distilled model adds texture there: onnxruntime ≈ 0.8).
#[test]
fn two_step_sampling_gives_a_clipped_finite_heightmap() {
    let Some(dir) = terrain_dir() else { return };
    let Some(ctx) = common::gpu() else { return };
    let mut exec = Exec::gpu(ctx);
    let mut model = GuidedUNet::load_dir(&mut exec, &dir).expect("load");
    model.set_condition(&[0.5]).unwrap();
    let mut seen = Vec::new();
    let mut first = Vec::new();
    // 64², a quarter of the cost: the network is fully convolutional.
    let out = consistency_sample(
        &mut exec,
        &mut model,
        &[1, 1, 64, 64],
        &[80.0, 2.0],
        &mut Noise::Philox { seed: 3 },
        |exec, info| {
            seen.push(info.timestep);
            if info.index == 0 {
                first = webdiffusion::platform::block_on(exec.read(info.x0)).unwrap();
            }
            Control::Continue
        },
    )
    .expect("sample");
    assert_eq!(seen, vec![80.0, 2.0]);
    let lag1 = |v: &[f32]| {
        let mean = v.iter().map(|&a| a as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>();
        let mut cov = 0.0;
        for i in 0..64 {
            for j in 0..63 {
                cov += (v[i * 64 + j] as f64 - mean) * (v[i * 64 + j + 1] as f64 - mean);
            }
        }
        (var, cov / var)
    };
    let (var, corr) = lag1(&first);
    assert!(
        var > 0.0 && corr > 0.95,
        "one-step lag-1 correlation {corr}"
    );
    let v = webdiffusion::platform::block_on(exec.read(&out.sample)).unwrap();
    assert!(v.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)));
    assert!(v != first, "the second step changed nothing");
}

#[test]
fn config_errors_name_the_key() {
    let bad = r#"{"_class_name":"GuidedUNetModel","in_channels":1,"out_channels":1,
        "model_channels":32,"channel_mult":[1,2],"num_res_blocks":1,"attention_resolutions":[],
        "time_embed_dim":128,"num_head_channels":32,"use_scale_shift_norm":true,
        "resblock_updown":true,"use_new_attention_order":true,"norm_groups":24,
        "norm_eps":1e-5,"sample_size":64}"#;
    let err = webdiffusion::models::GuidedConfig::from_json("c.json", bad).unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "norm_groups"),
        "{err}"
    );
    let other = bad
        .replace("GuidedUNetModel", "UNet2DModel")
        .replace("24", "32");
    let err = webdiffusion::models::GuidedConfig::from_json("c.json", &other).unwrap_err();
    assert!(err.to_string().contains("_class_name"), "{err}");
}

/// The python venv of scripts/setup-terrain.sh, if set up (CI: required).
fn terrain_venv() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".cache/terrain-venv/bin/python");
    let onnx = root.join(".cache/terrain/terrain.onnx");
    if py.is_file() && onnx.is_file() {
        return Some(py);
    }
    if std::env::var("WEBDIFFUSION_REQUIRE_TERRAIN").as_deref() == Ok("1") {
        panic!(
            "WEBDIFFUSION_REQUIRE_TERRAIN=1 but {} or {} is missing: run scripts/setup-terrain.sh",
            py.display(),
            onnx.display()
        );
    }
    eprintln!("skipping: no terrain venv (run scripts/setup-terrain.sh)");
    None
}

/// The converter stops at graphs it does not recognise and names the node
/// (scripts/test_convert_terrain.py mutates the real graph three ways).
#[test]
fn converter_names_unrecognised_nodes() {
    let Some(py) = terrain_venv() else { return };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(py)
        .arg(root.join("scripts/test_convert_terrain.py"))
        .arg(root.join(".cache/terrain/terrain.onnx"))
        .output()
        .expect("run the converter checks");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("unrecognised ONNX structure at node").count(),
        3,
        "{text}"
    );
}

/// A wheel whose hash is not the published 0.4.2 wheel's is refused before it is opened.
#[test]
fn setup_refuses_a_wheel_with_another_hash() {
    if terrain_venv().is_none() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = std::env::temp_dir().join(format!("wd-terrain-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        tmp.join("adaptive_terrain_diffusion-0.4.2-py3-none-any.whl"),
        b"PK not the real wheel",
    )
    .unwrap();
    let out = std::process::Command::new(root.join("scripts/setup-terrain.sh"))
        .env("TERRAIN_CACHE", &tmp)
        .env("TERRAIN_DIR", tmp.join("out"))
        .output()
        .expect("run setup-terrain.sh");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(!out.status.success(), "accepted a fake wheel: {err}");
    assert!(
        err.contains("sha256") && err.contains("not the published"),
        "{err}"
    );
    assert!(!tmp.join("out/model.safetensors").exists());
}

/// The CLI's bad inputs for a consistency model: no difficulty, σ points in the wrong order,
/// a diffusers-only option. Each fails before sampling, with the flag to fix.
#[test]
fn cli_refuses_bad_terrain_arguments() {
    let Some(dir) = terrain_dir() else { return };
    let out_dir = std::env::temp_dir().join(format!("wd-terrain-cli-{}", std::process::id()));
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
            .args(["sample", "--backend", "cpu", "--quiet", "--model"])
            .arg(&dir)
            .arg("--out")
            .arg(out_dir.join("t.png"))
            .args(extra)
            .output()
            .expect("run webdiffusion");
        assert!(!out.status.success(), "{extra:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&[]);
    assert!(
        err.contains("--difficulty") && err.contains("[0, 1]"),
        "{err}"
    );
    let err = run(&["--difficulty", "0.5", "--sigmas", "2,80"]);
    assert!(err.contains("strictly decrease"), "{err}");
    let err = run(&["--difficulty", "0.5", "--solver", "ddim"]);
    assert!(err.contains("--solver ddim"), "{err}");
    let err = run(&["--difficulty", "7"]);
    assert!(err.contains("outside"), "{err}");
    assert!(!out_dir.join("t.png").exists());
    let _ = std::fs::remove_dir_all(&out_dir);
}
