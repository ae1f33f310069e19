//! A quick on-device check: every kernel runs on the GPU and on the CPU reference on small
//! odd shapes, and the largest difference is reported. Used by `webdiffusion check` and by
//! the browser front end to tell a user whether their adapter computes correctly.

use std::sync::Arc;

use crate::error::Result;
use crate::exec::Exec;
use crate::gpu::GpuContext;
use crate::ops::{self, Op};
use crate::tensor::Tensor;

/// One kernel's agreement with the CPU reference.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub max_abs_err: f32,
    /// Largest allowed `|gpu − cpu| / max(1, |cpu|)`.
    pub tolerance: f32,
    pub max_rel_err: f32,
}

impl CheckResult {
    pub fn ok(&self) -> bool {
        self.max_rel_err <= self.tolerance
    }
}

/// Deterministic inputs in [-1, 1) (a 64-bit LCG; quality is irrelevant here).
fn data(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape, v).expect("shape and data agree")
}

async fn compare<O: Op>(
    ctx: &Arc<GpuContext>,
    name: &str,
    op: &O,
    inputs: &[Tensor],
    tolerance: f32,
) -> Result<CheckResult> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let want = Exec::cpu().run(op, &refs)?;
    let mut ex = Exec::gpu(ctx.clone());
    let ins = inputs
        .iter()
        .map(|t| ex.upload(t))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = ins.iter().collect();
    let out = ex.run(op, &refs)?;
    let got = ex.read(&out).await?;
    let want = want.cpu_data().unwrap_or(&[]);
    let mut max_abs_err = 0f32;
    let mut max_rel_err = 0f32;
    for (g, w) in got.iter().zip(want) {
        let e = (g - w).abs();
        let e = if e.is_nan() { f32::INFINITY } else { e };
        max_abs_err = max_abs_err.max(e);
        max_rel_err = max_rel_err.max(e / w.abs().max(1.0));
    }
    Ok(CheckResult {
        name: name.to_string(),
        max_abs_err,
        tolerance,
        max_rel_err,
    })
}

/// Run every kernel once (async: works in the browser).
pub async fn run_async(ctx: &Arc<GpuContext>) -> Result<Vec<CheckResult>> {
    use ops::{Binary, BinaryOp, Geglu, SolverUpdate, Unary, UnaryOp};
    let x = data(&[2, 5, 13, 11], 1);
    let y = data(&[2, 5, 13, 11], 2);
    let bias = data(&[5, 1, 1], 3);
    let mut out = Vec::new();
    for op in [UnaryOp::Silu, UnaryOp::GeluErf, UnaryOp::GeluTanh] {
        out.push(
            compare(
                ctx,
                &format!("unary {op:?}"),
                &Unary::new(op),
                std::slice::from_ref(&x),
                1e-5,
            )
            .await?,
        );
    }
    out.push(
        compare(
            ctx,
            "binary add (broadcast)",
            &Binary::new(BinaryOp::Add),
            &[x.clone(), bias],
            1e-6,
        )
        .await?,
    );
    out.push(compare(ctx, "geglu", &Geglu, &[data(&[3, 7, 22], 4)], 1e-5).await?);
    let update = SolverUpdate::linear(&[0.7, -0.3]).with_noise(0.5, 7, 3, 0);
    out.push(compare(ctx, "solver_update + noise", &update, &[x, y], 2e-5).await?);
    Ok(out)
}

/// Native convenience wrapper.
#[cfg(not(target_arch = "wasm32"))]
pub fn run(ctx: &Arc<GpuContext>) -> Result<Vec<CheckResult>> {
    crate::platform::block_on(run_async(ctx))
}
