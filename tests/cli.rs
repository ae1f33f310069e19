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
