//! `webdiffusion check` (the on-device self-check) and `info`, as a user runs them; the README's run command (`sample`) is tested in tests/bundled.rs.

use std::process::Command;

fn gpu_required() -> bool {
    std::env::var("WEBDIFFUSION_REQUIRE_GPU").as_deref() == Ok("1")
}

#[test]
fn check_command_passes_on_this_adapter() {
    let out = Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .arg("check")
        .output()
        .expect("run webdiffusion");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("no WebGPU adapter") && !gpu_required() {
        eprintln!("skipping: no adapter");
        return;
    }
    assert!(out.status.success(), "check failed:\n{stdout}\n{stderr}");
    let kernels = stdout.lines().filter(|l| l.ends_with(" ok")).count();
    assert!(
        kernels >= 18,
        "expected every kernel to be checked, got {kernels}:\n{stdout}"
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn info_reports_limits_and_shaders() {
    let out = Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .arg("info")
        .output()
        .expect("run webdiffusion");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !gpu_required() {
        eprintln!("skipping: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("maxStorageBufferBindingSize="), "{stdout}");
    assert!(stdout.contains("solver_update"), "{stdout}");
}

#[test]
fn unknown_subcommand_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .arg("frobnicate")
        .output()
        .expect("run webdiffusion");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("frobnicate"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// `denoise` and `info --model` on the golden model folders (tests/goldens/unet).

use std::path::{Path, PathBuf};

use webdiffusion::npy;
use webdiffusion::weights::{LoadOptions, Weights};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/goldens/unet")
        .join(case)
}

fn golden_tensor(case: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let mut io =
        Weights::load_file(golden(case).join("io.safetensors"), &LoadOptions::default()).unwrap();
    let shape = io.shape(name).unwrap().to_vec();
    let t = io.take(name, &shape).unwrap();
    (shape, t.cpu_data().unwrap().to_vec())
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("webdiffusion-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn webdiffusion(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .args(args)
        .output()
        .expect("run webdiffusion")
}

/// Writes the golden inputs of `case` as .npy, runs `denoise` on `backend` and compares the
/// output with diffusers' (max |diff| / max |want| ≤ 1e-4).
fn denoise_matches_golden(case: &str, backend: &str) {
    let dir = temp_dir(&format!("{case}-{backend}"));
    let (xs, x) = golden_tensor(case, "sample");
    let input = dir.join("x.npy");
    npy::write(&input, &xs, &x).unwrap();
    let (_, t) = golden_tensor(case, "timestep");
    let ts: Vec<String> = t.iter().map(|v| v.to_string()).collect();
    let ts = ts.join(",");
    let out = dir.join("out.npy");
    let mut args: Vec<String> = [
        "denoise",
        "--model",
        golden(case).to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--timestep",
        &ts,
        "--backend",
        backend,
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let io =
        Weights::load_file(golden(case).join("io.safetensors"), &LoadOptions::default()).unwrap();
    if io.contains("encoder_hidden_states") {
        let (es, e) = golden_tensor(case, "encoder_hidden_states");
        let p = dir.join("ehs.npy");
        npy::write(&p, &es, &e).unwrap();
        args.extend(["--encoder-hidden-states".into(), p.to_str().unwrap().into()]);
    }
    if io.contains("class_labels") {
        let (_, l) = golden_tensor(case, "class_labels");
        let l: Vec<String> = l.iter().map(|v| (*v as usize).to_string()).collect();
        args.extend(["--class-labels".into(), l.join(",")]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = webdiffusion(&argv);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if backend == "gpu"
        && !o.status.success()
        && stderr.contains("no WebGPU adapter")
        && !gpu_required()
    {
        eprintln!("skipping: no adapter");
        return;
    }
    assert!(o.status.success(), "denoise failed: {stderr}");
    let got = npy::read(&out).unwrap();
    let (ws, want) = golden_tensor(case, "output");
    assert_eq!(got.shape, ws);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .data
        .iter()
        .zip(&want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    eprintln!(
        "denoise {case} on {backend}: relative error {:.2e}",
        err / scale
    );
    assert!(err / scale <= 1e-4, "{case} on {backend}: {}", err / scale);

    // The output exists now: a second run refuses to overwrite it without --force.
    let o = webdiffusion(&argv);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn denoise_cross_attn_cpu_matches_diffusers() {
    denoise_matches_golden("cross_attn", "cpu");
}

#[test]
fn denoise_cross_attn_gpu_matches_diffusers() {
    denoise_matches_golden("cross_attn", "gpu");
}

#[test]
fn denoise_class_cond_cpu_matches_diffusers() {
    denoise_matches_golden("class_cond", "cpu");
}

#[test]
fn denoise_class_cond_gpu_matches_diffusers() {
    denoise_matches_golden("class_cond", "gpu");
}

#[test]
fn denoise_uncond_gpu_matches_diffusers() {
    denoise_matches_golden("uncond_attn", "gpu");
}

#[test]
fn denoise_rejects_bad_npy_inputs() {
    let dir = temp_dir("bad");
    let model = golden("cross_attn");
    let good_ehs = dir.join("ehs.npy");
    npy::write(&good_ehs, &[1, 7, 24], &[0.1; 168]).unwrap();
    let run = |input: &Path, ehs: &Path| {
        webdiffusion(&[
            "denoise",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--timestep",
            "10",
            "--encoder-hidden-states",
            ehs.to_str().unwrap(),
            "--backend",
            "cpu",
            "--out",
            dir.join("out.npy").to_str().unwrap(),
        ])
    };
    // Wrong channel count: names the expected layout and what the file holds.
    let three = dir.join("three.npy");
    npy::write(&three, &[1, 3, 4, 6], &[0.0; 72]).unwrap();
    let o = run(&three, &good_ehs);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("(N, 4, H, W)") && e.contains("[1, 3, 4, 6]"),
        "{e}"
    );
    // Wrong dtype: int64 (numpy's default integer), written by hand.
    let ints = dir.join("ints.npy");
    let mut b =
        b"\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (1, 4, 2, 2), }"
            .to_vec();
    b.resize(127, b' ');
    b.push(b'\n');
    b.extend(std::iter::repeat_n(0u8, 16 * 8));
    std::fs::write(&ints, b).unwrap();
    let o = run(&ints, &good_ehs);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("'<i8'") && e.contains("float32"), "{e}");
    // Encoder hidden states of the wrong width: names cross_attention_dim and the shape.
    let x = dir.join("x.npy");
    npy::write(&x, &[1, 4, 4, 6], &[0.0; 96]).unwrap();
    let wide = dir.join("wide.npy");
    npy::write(&wide, &[1, 7, 20], &[0.0; 140]).unwrap();
    let o = run(&x, &wide);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("cross_attention_dim 24") && e.contains("(1, 7, 20)"),
        "{e}"
    );
    // Not a .npy at all.
    let junk = dir.join("junk.npy");
    std::fs::write(&junk, b"hello").unwrap();
    let o = run(&junk, &good_ehs);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("junk.npy"));
    assert!(!dir.join("out.npy").exists(), "nothing is written on error");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_describes_a_model() {
    let o = webdiffusion(&[
        "info",
        "--model",
        golden("cross_linear").to_str().unwrap(),
        "--resolution",
        "64",
        "48",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // diffusers counts 94,860 parameters (make_unet_cond_goldens.py prints it).
    assert!(stdout.contains("parameters: 94860"), "{stdout}");
    assert!(stdout.contains("UNet2DConditionModel"), "{stdout}");
    assert!(stdout.contains("CrossAttnDownBlock2D"), "{stdout}");
    assert!(stdout.contains("64×48"), "{stdout}");
    let peak: u64 = stdout
        .lines()
        .find(|l| l.starts_with("peak activations"))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("a peak activation line");
    // At least the output map and the first skip (16 + 4 channels of 64×48 f32) …
    assert!(peak >= (8 + 4) * 64 * 48 * 4, "{peak}");
    // … and less than a naive sum of every tensor of the forward pass.
    assert!(peak < 400 * 64 * 48 * 4, "{peak}");
}

// ---------------------------------------------------------------------------------------
// `sample` with the research solvers and the exact mixture model (`--model gmm:FILE`): all on
// the CPU backend, so they need no adapter and take well under a second each.

/// A 4-D two-component mixture (weights 0.3 / 0.7) as the `gmm:` JSON.
const MIXTURE: &str = r#"{"weights": [0.3, 0.7],
  "means": [[-2, 1, 0, 0.5], [1.5, -1, 0.5, 0]], "variances": [0.1, 0.2]}"#;

fn sample_npy(dir: &Path, name: &str, args: &[&str]) -> (Vec<usize>, Vec<f32>) {
    let out = dir.join(format!("{name}.npy"));
    let mut all = vec!["sample", "--backend", "cpu", "--quiet", "--force", "--out"];
    let out_s = out.to_str().unwrap().to_string();
    all.push(&out_s);
    all.extend_from_slice(args);
    let o = webdiffusion(&all);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let a = npy::read(&out).unwrap();
    let shape = a.shape.clone();
    (shape, a.into_tensor().unwrap().cpu_data().unwrap().to_vec())
}

fn sample_err(args: &[&str]) -> String {
    let mut all = vec!["sample", "--backend", "cpu", "--quiet"];
    all.extend_from_slice(args);
    let o = webdiffusion(&all);
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_research_solver_samples_the_mixture_from_the_cli() {
    let dir = temp_dir("gmm");
    let json = dir.join("mix.json");
    std::fs::write(&json, MIXTURE).unwrap();
    let model = format!("gmm:{}", json.display());
    for solver in ["gms", "analytic_dpm", "analytic_ddim", "dpmpp_2m", "unipc"] {
        let (shape, x) = sample_npy(
            &dir,
            solver,
            &[
                "--model",
                &model,
                "--solver",
                solver,
                "--steps",
                "20",
                "--batch",
                "400",
                "--seed",
                "3",
                "--moment-samples",
                "200",
            ][..if solver.starts_with("analytic") {
                12
            } else {
                10
            }],
        );
        assert_eq!(shape, [400, 4, 1, 1], "{solver}");
        // Component 0 has x₀[0] ≈ −2, component 1 ≈ 1.5: the split and the per-component
        // means are the mixture's (400 draws: weight ± 0.07, means ± 0.2).
        let rows: Vec<&[f32]> = x.chunks(4).collect();
        let first: Vec<&&[f32]> = rows.iter().filter(|r| r[0] < 0.0).collect();
        let w = first.len() as f64 / 400.0;
        assert!((w - 0.3).abs() < 0.07, "{solver}: weight {w}");
        let mean = |rs: &[&&[f32]], j: usize| {
            rs.iter().map(|r| r[j] as f64).sum::<f64>() / rs.len() as f64
        };
        let second: Vec<&&[f32]> = rows.iter().filter(|r| r[0] >= 0.0).collect();
        for (j, (m0, m1)) in [(-2.0, 1.5), (1.0, -1.0), (0.0, 0.5), (0.5, 0.0)]
            .iter()
            .enumerate()
        {
            assert!(
                (mean(&first, j) - m0).abs() < 0.2,
                "{solver}: dim {j} of component 0: {}",
                mean(&first, j)
            );
            assert!(
                (mean(&second, j) - m1).abs() < 0.2,
                "{solver}: dim {j} of component 1: {}",
                mean(&second, j)
            );
        }
    }
    // Γ from a given data file: the mixture's own draws as .npy give Γ like the default.
    let data: Vec<f32> = (0..64 * 4).map(|i| [-2.0, 1.0, 0.0, 0.5][i % 4]).collect();
    let file = dir.join("data.npy");
    npy::write(&file, &[64, 4, 1, 1], &data).unwrap();
    let f = file.to_str().unwrap();
    sample_npy(
        &dir,
        "given",
        &[
            "--model",
            &model,
            "--solver",
            "analytic_dpm",
            "--steps",
            "5",
            "--moment-data",
            f,
            "--moment-samples",
            "64",
        ],
    );
    // Wrong data shape, data for a solver that does not use it, GMS without moments.
    npy::write(&file, &[8, 2, 2, 1], &data[..32]).unwrap();
    let e = sample_err(&[
        "--model",
        &model,
        "--solver",
        "analytic_ddim",
        "--moment-data",
        f,
        "--out",
        "/tmp/x.npy",
    ]);
    assert!(e.contains("(K, 4, 1, 1)"), "{e}");
    let e = sample_err(&[
        "--model",
        &model,
        "--solver",
        "ddim",
        "--moment-data",
        f,
        "--out",
        "/tmp/x.npy",
    ]);
    assert!(
        e.contains("only used by") && e.contains("analytic_dpm"),
        "{e}"
    );
    std::fs::write(&json, r#"{"weights": [1], "means": [0], "variances": [1]}"#).unwrap();
    let e = sample_err(&["--model", &model, "--out", "/tmp/x.npy"]);
    assert!(e.contains("shape"), "{e}");
    std::fs::write(
        &json,
        r#"{"weights": [1], "means": [[0, 1]], "variances": [-1]}"#,
    )
    .unwrap();
    let e = sample_err(&["--model", &model, "--out", "/tmp/x.npy"]);
    assert!(e.contains("positive"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The golden `plain` UNet (2 → 4 channels) rebuilt with `conv_out` giving `rows` of its
/// original output channels plus, for a moment model, E[ε²] = 4 and E[ε³] = 0 blocks.
fn unet_variant(dir: &Path, moments: bool) -> PathBuf {
    use safetensors::tensor::TensorView;
    let src = golden("plain");
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let w = f32s(st.tensor("conv_out.weight").unwrap().data());
    let b = f32s(st.tensor("conv_out.bias").unwrap().data());
    let per = w.len() / 4; // (4, 8, 3, 3)
    let out_c = if moments { 6 } else { 2 };
    let mut nw = w[..2 * per].to_vec();
    let mut nb = b[..2].to_vec();
    if moments {
        nw.extend(vec![0.0; 4 * per]);
        nb.extend([4.0, 4.0, 0.0, 0.0]);
    }
    let to_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (wb, bb) = (to_bytes(&nw), to_bytes(&nb));
    let wshape = vec![out_c, 8, 3, 3];
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    for (name, t) in st.tensors() {
        if name.starts_with("conv_out.") {
            continue;
        }
        views.push((
            name.clone(),
            TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap(),
        ));
    }
    views.push((
        "conv_out.weight".into(),
        TensorView::new(safetensors::Dtype::F32, wshape, &wb).unwrap(),
    ));
    views.push((
        "conv_out.bias".into(),
        TensorView::new(safetensors::Dtype::F32, vec![out_c], &bb).unwrap(),
    ));
    let d = dir.join(if moments { "moments" } else { "plain2" });
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("diffusion_pytorch_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let cfg = cfg.replace("\"out_channels\": 4", &format!("\"out_channels\": {out_c}"));
    std::fs::write(d.join("config.json"), cfg).unwrap();
    std::fs::write(
        d.join("scheduler_config.json"),
        r#"{"_class_name": "DDPMScheduler", "clip_sample": false, "prediction_type": "epsilon"}"#,
    )
    .unwrap();
    d
}

#[test]
fn a_unet_with_three_times_the_channels_is_a_moment_model() {
    let dir = temp_dir("moments");
    let m = unet_variant(&dir, true);
    let p = unet_variant(&dir, false);
    let (m, p) = (m.to_str().unwrap(), p.to_str().unwrap());
    // Its ε block is the network's first C channels: DDIM on it equals DDIM on the same
    // network cut to C outputs (batch 1: a plain slice; batch 3: the transpose path).
    for batch in ["1", "3"] {
        let args = |model| {
            vec![
                "--model", model, "--solver", "ddim", "--steps", "4", "--seed", "5", "--batch",
                batch,
            ]
        };
        let (sm, xm) = sample_npy(&dir, "m", &args(m));
        let (sp, xp) = sample_npy(&dir, "p", &args(p));
        assert_eq!(sm, sp);
        let d = xm
            .iter()
            .zip(&xp)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d <= 1e-6,
            "batch {batch}: moment model's ε block differs by {d}"
        );
    }
    // GMS runs on it, and not on the network without moments.
    let (_, x) = sample_npy(
        &dir,
        "g",
        &[
            "--model", m, "--solver", "gms", "--steps", "4", "--batch", "2",
        ],
    );
    assert!(x.iter().all(|v| v.is_finite()));
    let e = sample_err(&["--model", p, "--solver", "gms", "--out", "/tmp/x.npy"]);
    assert!(e.contains("E[ε²]") && e.contains("3 × in_channels"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sample_bad_inputs_are_clear_errors() {
    let dir = temp_dir("badinput");
    let json = dir.join("mix.json");
    std::fs::write(&json, MIXTURE).unwrap();
    let model = format!("gmm:{}", json.display());
    let out = dir.join("x.npy");
    let out = out.to_str().unwrap();
    let sched = |text: &str| {
        let p = dir.join("sched.json");
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    // Unknown solver: every valid name is listed, the research and adaptive ones included.
    let e = sample_err(&["--model", &model, "--solver", "dpm++9", "--out", out]);
    assert!(
        e.contains("unknown solver")
            && e.contains("gms")
            && e.contains("dpm_adaptive_23")
            && e.contains("unipc"),
        "{e}"
    );
    // Unknown option value: the valid ones are named.
    let s = sched(r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "magic"}"#);
    let e = sample_err(&[
        "--model",
        &model,
        "--solver",
        "dpm_multistep",
        "--scheduler-config",
        &s,
        "--out",
        out,
    ]);
    assert!(
        e.contains("algorithm_type") && e.contains("dpmsolver++"),
        "{e}"
    );
    // Steps: 0, and more than the training steps.
    let e = sample_err(&["--model", &model, "--steps", "0", "--out", out]);
    assert!(e.contains("at least 1"), "{e}");
    let e = sample_err(&[
        "--model", &model, "--solver", "ddim", "--steps", "1001", "--out", out,
    ]);
    assert!(e.contains("1001") && e.contains("1000"), "{e}");
    // Order too high for the step count: PNDM's Runge–Kutta warm-up takes 4 steps.
    let e = sample_err(&[
        "--model", &model, "--solver", "pndm", "--steps", "3", "--out", out,
    ]);
    assert!(e.contains("at least 4 steps"), "{e}");
    // Incompatible options: Karras sigmas on a scheduler that has none.
    let s = sched(r#"{"_class_name": "DDIMScheduler", "use_karras_sigmas": true}"#);
    let e = sample_err(&[
        "--model",
        &model,
        "--solver",
        "ddim",
        "--scheduler-config",
        &s,
        "--out",
        out,
    ]);
    assert!(e.contains("use_karras_sigmas"), "{e}");
    // Overflow mid-trajectory: data of standard deviation 100 grows x a hundredfold from T
    // to 0, so an x_T element of 1e37 passes float32's largest value (3.4e38) part way
    // (DDIM without x̂₀ clipping); the step is named and nothing is written.
    std::fs::write(
        &json,
        r#"{"weights": [1], "means": [[0, 0]], "variances": [[10000, 10000]]}"#,
    )
    .unwrap();
    let s = sched(r#"{"_class_name": "DDIMScheduler", "clip_sample": false}"#);
    let init = dir.join("init.npy");
    npy::write(&init, &[1, 2, 1, 1], &[1e37, 0.5]).unwrap();
    let init = init.to_str().unwrap();
    let e = sample_err(&[
        "--model",
        &model,
        "--solver",
        "ddim",
        "--scheduler-config",
        &s,
        "--steps",
        "10",
        "--init-noise",
        init,
        "--out",
        out,
    ]);
    let step = e
        .split("at step ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no step named: {e}"));
    assert!(
        (2..10).contains(&step),
        "expected a step in the middle: {e}"
    );
    assert!(!Path::new(out).exists(), "a non-finite sample was written");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn analytic_dpm_reads_safetensors_data_and_defaults_to_the_held_out_digits() {
    let dir = temp_dir("analytic");
    let json = dir.join("mix.json");
    std::fs::write(&json, MIXTURE).unwrap();
    let model = format!("gmm:{}", json.display());
    // A float32 "data" tensor among others in a .safetensors file.
    let data: Vec<u8> = (0..16 * 4)
        .flat_map(|i| [-2.0f32, 1.0, 0.0, 0.5][i % 4].to_le_bytes())
        .collect();
    let other = 1.0f32.to_le_bytes();
    let views = vec![
        (
            "data".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![16, 4, 1, 1], &data)
                .unwrap(),
        ),
        (
            "note".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &other).unwrap(),
        ),
    ];
    let file = dir.join("data.safetensors");
    std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
    let out = dir.join("a.npy");
    let o = webdiffusion(&[
        "sample",
        "--backend",
        "cpu",
        "--quiet",
        "--model",
        &model,
        "--solver",
        "analytic_dpm",
        "--steps",
        "4",
        "--moment-data",
        file.to_str().unwrap(),
        "--moment-samples",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("Γ estimated from 16 data samples"), "{err}");

    // The bundled model: Γ from its held-out digits, compiled into the binary.
    let png = dir.join("d.png");
    let o = webdiffusion(&[
        "sample",
        "--solver",
        "analytic_ddim",
        "--steps",
        "2",
        "--moment-samples",
        "2",
        "--guidance",
        "1",
        "--seed",
        "1",
        "--quiet",
        "--out",
        png.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() && err.contains("adapter") && !gpu_required() {
        eprintln!("skipping the bundled run: no adapter");
    } else {
        assert!(o.status.success(), "{err}");
        assert!(err.contains("held-out digits"), "{err}");
        assert!(png.exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
