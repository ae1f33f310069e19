//! The README's run command (`webdiffusion check`) and `info`, as a user runs them.

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
