//! Shared test helpers: the GPU context, a seeded generator and a tolerance check.
//! Also included by other test binaries (`#[path = "ops/common.rs"] mod common;`), which
//! use only part of it.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use webdiffusion::ops::Op;
use webdiffusion::{Exec, GpuContext, GpuOptions, Tensor};

/// The shared GPU context, or `None` when no adapter exists and
/// `WEBDIFFUSION_REQUIRE_GPU` is not `1`. With the variable set (CI sets it), a missing
/// adapter fails the test instead of skipping it.
pub fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| {
        // Tests use the kernels' fixed defaults (no timing of candidates) unless the run
        // asks for tuning explicitly, e.g. `WEBDIFFUSION_TUNE=on`.
        if std::env::var_os("WEBDIFFUSION_TUNE").is_none() {
            std::env::set_var("WEBDIFFUSION_TUNE", "off");
        }
        match webdiffusion::platform::block_on(GpuContext::new(&GpuOptions::default())) {
            Ok(ctx) => {
                eprintln!("{}", ctx.caps.summary());
                Some(ctx)
            }
            Err(e) => {
                if std::env::var("WEBDIFFUSION_REQUIRE_GPU").as_deref() == Ok("1") {
                    panic!("WEBDIFFUSION_REQUIRE_GPU=1 but no GPU adapter: {e}");
                }
                eprintln!("skipping GPU checks: {e}");
                None
            }
        }
    })
    .clone()
}

/// SplitMix64: a tiny deterministic generator for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    /// A CPU tensor of uniform values in [-1, 1).
    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape, self.vec(n, -1.0, 1.0)).unwrap()
    }
}

/// `|got − want| ≤ max(rtol·|want|, atol)` elementwise; fails with the first bad index,
/// both values and the worst error.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    let mut first_bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let tol = (rtol * w.abs()).max(atol);
        // NaN fails: `err <= tol` is false for it.
        let ok = err <= tol;
        if !ok && first_bad.is_none() {
            first_bad = Some((i, g, w));
        }
        if err > worst.1 || err.is_nan() {
            worst = (i, err);
        }
    }
    if let Some((i, g, w)) = first_bad {
        panic!(
            "{what}: mismatch at index {i}: got {g}, want {w} (rtol {rtol}, atol {atol}); worst |err| {} at {}",
            worst.1, worst.0
        );
    }
}

/// Run `op` on the CPU reference and, when a GPU is present, on the GPU; compare.
/// Returns the CPU result.
#[track_caller]
pub fn check_op<O: Op>(what: &str, op: &O, inputs: &[&Tensor], rtol: f32, atol: f32) -> Vec<f32> {
    let mut cpu = Exec::cpu();
    let want_t = cpu
        .run(op, inputs)
        .unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let want = want_t.cpu_data().unwrap().to_vec();
    assert!(
        want.iter().all(|x| x.is_finite()),
        "{what}: CPU reference is not finite"
    );
    if let Some(ctx) = gpu() {
        let got = run_gpu(&ctx, op, inputs).unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
        assert_eq!(want_t.shape(), got.0.as_slice(), "{what}: output shape");
        assert_close(what, &got.1, &want, rtol, atol);
    }
    want
}

/// Upload the inputs, run `op` on the GPU, read the output back.
pub fn run_gpu<O: Op>(
    ctx: &Arc<GpuContext>,
    op: &O,
    inputs: &[&Tensor],
) -> webdiffusion::Result<(Vec<usize>, Vec<f32>)> {
    let mut ex = Exec::gpu(ctx.clone());
    let ins: Vec<Tensor> = inputs
        .iter()
        .map(|t| ex.upload(t))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&Tensor> = ins.iter().collect();
    let out = ex.run(op, &refs)?;
    let data = webdiffusion::platform::block_on(ex.read(&out))?;
    Ok((out.shape().to_vec(), data))
}
