//! The bundled digit model end to end on the GPU: it loads, and what the engine samples from
//! it is recognised by the digit classifier as the requested class (a cheap version of the
//! quality measurement in BENCHMARKS.md: 30 samples at 10 steps of the CLI's defaults for
//! this model). Plus the `sample` CLI:
//! output files, no clobbering, and clear errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use webdiffusion::eval::{argmax_rows, heldout_digits, DigitClassifier};
use webdiffusion::models::Conditioning;
use webdiffusion::platform::block_on;
use webdiffusion::sampling::solvers::{
    initial_noise, sample, solver_from_name, Control, Noise, SolverOptions,
};
use webdiffusion::sampling::Guided;
use webdiffusion::weights::{LoadOptions, Weights};
use webdiffusion::{bundled, Exec, GpuContext, GpuOptions};

fn gpu_exec() -> Option<Exec> {
    match block_on(GpuContext::new(&GpuOptions::default())) {
        Ok(ctx) => Some(Exec::gpu(ctx)),
        Err(e) => {
            assert!(
                std::env::var_os("WEBDIFFUSION_REQUIRE_GPU").is_none(),
                "WEBDIFFUSION_REQUIRE_GPU is set but no adapter: {e}"
            );
            eprintln!("skipping: no GPU adapter ({e})");
            None
        }
    }
}

fn classifier(exec: &mut Exec) -> DigitClassifier {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist/eval/classifier.safetensors");
    let bytes = std::fs::read(&path).expect("classifier weights are committed");
    let mut w = Weights::from_bytes("classifier.safetensors", &bytes, &LoadOptions::default())
        .expect("classifier weights parse");
    DigitClassifier::from_weights(exec, &mut w).expect("classifier builds")
}

#[test]
fn bundled_model_draws_the_requested_digits() {
    let Some(mut exec) = gpu_exec() else { return };
    // The CLI's defaults for this model: DPM-Solver++(2M) SDE with guidance 2.
    let unet = bundled::load(&mut exec)
        .expect("bundled model loads")
        .into_inner();
    let sched = bundled::scheduler_config().expect("bundled scheduler config parses");
    let labels: Vec<usize> = (0..30).map(|i| i % 10).collect();
    let null = vec![bundled::NULL_CLASS; 30];
    let cond = Conditioning {
        class_labels: Some(&labels),
        encoder_hidden_states: None,
        timestep_cond: None,
    };
    let uncond = Conditioning {
        class_labels: Some(&null),
        encoder_hidden_states: None,
        timestep_cond: None,
    };
    let mut model = Guided::for_unet(&mut exec, unet, cond, uncond, 2.0).unwrap();
    let mut solver =
        solver_from_name("dpmpp_2m_sde", &sched, 10, SolverOptions::default()).unwrap();
    let x_t = initial_noise(&mut exec, solver.as_ref(), &[30, 1, 32, 32], 1234).unwrap();
    let out = sample(
        &mut exec,
        solver.as_mut(),
        &mut model,
        &x_t,
        &mut Noise::Philox { seed: 1234 },
        |_, _| Control::Continue,
    )
    .unwrap();
    let clf = classifier(&mut exec);
    let f = clf.features(&mut exec, &out.sample).unwrap();
    let logits = clf.logits(&mut exec, &f).unwrap();
    let logits = block_on(exec.read(&logits)).unwrap();
    let pred = argmax_rows(&logits, 10);
    let right = pred.iter().zip(&labels).filter(|(a, b)| a == b).count();
    eprintln!("classified as requested: {right}/30 ({pred:?})");
    assert!(
        right >= 24,
        "only {right}/30 samples classified as the requested digit: {pred:?}"
    );
}

#[test]
fn classifier_recognises_real_digits() {
    // A negative control for the test above: the classifier run by this engine on real held-out
    // digits must be right (≥ 95 % of 100), and on pure noise it must not be.
    let Some(mut exec) = gpu_exec() else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist/eval/heldout.safetensors");
    let (all, labels) = heldout_digits(&std::fs::read(path).unwrap()).unwrap();
    // Every tenth digit: 100 across all classes.
    let pick: Vec<usize> = (0..labels.len()).step_by(10).collect();
    let all = all.cpu_data().unwrap();
    let x: Vec<f32> = pick
        .iter()
        .flat_map(|&i| all[i * 1024..(i + 1) * 1024].iter().copied())
        .collect();
    let clf = classifier(&mut exec);
    let mut classify = |x: &[f32]| {
        let t = exec.tensor(&[pick.len(), 1, 32, 32], x).unwrap();
        let f = clf.features(&mut exec, &t).unwrap();
        let l = clf.logits(&mut exec, &f).unwrap();
        let pred = argmax_rows(&block_on(exec.read(&l)).unwrap(), 10);
        pick.iter()
            .zip(&pred)
            .filter(|(&i, &p)| labels[i] == p)
            .count()
    };
    let right = classify(&x);
    // Uniform noise in [-1, 1] carries no digit: agreement with the labels stays near chance.
    let mut state = 12345u32;
    let noise: Vec<f32> = (0..x.len())
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    let by_chance = classify(&noise);
    assert!(
        by_chance <= 30,
        "the classifier matched {by_chance}/100 labels on noise"
    );
    assert!(
        right >= 95,
        "classifier right on only {right}/100 real digits"
    );
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wd-bundled-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn sample_cli_writes_a_grid_and_refuses_to_clobber() {
    if gpu_exec().is_none() {
        return;
    }
    let dir = tmp("cli");
    let out = dir.join("nested/digits.png");
    let run = || {
        bin()
            .args([
                "sample", "--batch", "4", "--grid", "--steps", "3", "--seed", "5", "--quiet",
            ])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("seed 5"), "the seed is printed: {stdout}");
    let png = webdiffusion::image::decode_png(&std::fs::read(&out).unwrap()).unwrap();
    // Four 32×32 tiles in a 2×2 grid with 2-pixel gaps.
    assert_eq!((png.width, png.height, png.channels), (66, 66, 1));
    let before = std::fs::read(&out).unwrap();
    let second = run();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the existing file is untouched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sample_cli_errors_are_clear() {
    let dir = tmp("errors");
    std::fs::create_dir_all(&dir).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--model", "/nonexistent/model"], "does not exist"),
        (&["--solver", "no_such_solver"], "unknown solver"),
        (&["--class-labels", "12"], "out of range"),
        (&["--steps", "0"], "at least 1"),
    ];
    for (args, want) in cases {
        let o = bin()
            .arg("sample")
            .args(*args)
            .arg("--out")
            .arg(dir.join("x.png"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
        assert!(!dir.join("x.png").exists(), "{args:?} wrote an output");
    }
    // An output folder that cannot be created (a file is in the way).
    let blocker = dir.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    if gpu_exec().is_some() {
        let o = bin()
            .args(["sample", "--steps", "1", "--quiet", "--out"])
            .arg(blocker.join("x.png"))
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("cannot create folder"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sample_cli_runs_the_adaptive_solver() {
    if gpu_exec().is_none() {
        return;
    }
    let dir = tmp("adaptive");
    let out = dir.join("a.png");
    let o = bin()
        .args([
            "sample",
            "--solver",
            "dpm_adaptive_23",
            "--rtol",
            "0.1",
            "--atol",
            "0.02",
        ])
        .args(["--guidance", "1", "--seed", "4", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("accepted steps") && err.contains("model evaluations"),
        "{err}"
    );
    let png = webdiffusion::image::decode_png(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!((png.width, png.height), (32, 32));
    // The digit is on a dark background: most pixels are near black.
    let dark = png.pixels.iter().filter(|&&p| p < 64).count();
    assert!(dark > 32 * 32 / 2, "{dark} dark pixels of 1024");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn default_labels_skip_the_unconditional_label() {
    if gpu_exec().is_none() {
        return;
    }
    // The model folder (not the bundled copy) does not say which label is "no class"; given
    // --uncond-class-label, the default 0, 1, 2, … cycle must not draw it.
    let dir = tmp("cycle");
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mnist");
    let o = bin()
        .args(["sample", "--model", model, "--uncond-class-label", "10"])
        .args([
            "--batch", "11", "--steps", "1", "--seed", "2", "--quiet", "--out",
        ])
        .arg(dir.join("x.npy"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with("classes 0,1,2,3,4,5,6,7,8,9,0")),
        "the cycle skips label 10: {stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
