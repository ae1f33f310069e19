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
    use ops::{
        Attention, AvgPool2x, Binary, BinaryOp, Concat, Conv2d, ConvTranspose2d, Geglu, GroupNorm,
        LayerNorm, Matmul, SolverUpdate, TimestepEmbedding, Unary, UnaryOp, Upsample2x,
    };
    let x = data(&[2, 5, 13, 11], 1);
    let y = data(&[2, 5, 13, 11], 2);
    let mut out = Vec::new();
    for op in [UnaryOp::Silu, UnaryOp::GeluErf, UnaryOp::GeluTanh] {
        let inputs = std::slice::from_ref(&x);
        out.push(compare(ctx, &format!("unary {op:?}"), &Unary::new(op), inputs, 1e-5).await?);
    }
    let add = Binary::new(BinaryOp::Add);
    out.push(
        compare(
            ctx,
            "binary add (broadcast)",
            &add,
            &[x.clone(), data(&[5, 1, 1], 3)],
            1e-6,
        )
        .await?,
    );
    out.push(compare(ctx, "geglu", &Geglu, &[data(&[3, 7, 22], 4)], 1e-5).await?);
    let update = SolverUpdate::linear(&[0.7, -0.3]).with_noise(0.5, 7, 3, 0);
    out.push(
        compare(
            ctx,
            "solver_update + noise",
            &update,
            &[x.clone(), y.clone()],
            2e-6,
        )
        .await?,
    );

    // x̂₀ processing and the GMS step (Tint must accept their atomics, barriers and bit casts).
    let clamp = ops::Clamp { lo: -0.4, hi: 0.6 };
    out.push(compare(ctx, "clamp", &clamp, std::slice::from_ref(&x), 0.0).await?);
    let q = ops::AbsQuantile { q: 0.995 };
    out.push(compare(ctx, "abs_quantile", &q, std::slice::from_ref(&x), 0.0).await?);
    let thr = ops::ThresholdRows { lo: 0.5, hi: 0.9 };
    let s = data(&[2], 9);
    out.push(compare(ctx, "threshold_rows", &thr, &[x.clone(), s], 1e-6).await?);
    let (xv, yv) = (x.cpu_data().unwrap_or(&[]), y.cpu_data().unwrap_or(&[]));
    // Variances ≥ 0 and third central moments of both signs.
    let var: Vec<f32> = yv
        .iter()
        .zip(xv)
        .map(|(m, e)| 0.5 * m.abs() + e.abs())
        .collect();
    let k3: Vec<f32> = xv.iter().map(|e| 0.3 * e).collect();
    let gms_in = [
        x.clone(),
        y.clone(),
        Tensor::from_vec(x.shape(), var)?,
        Tensor::from_vec(x.shape(), k3)?,
    ];
    let gms = ops::GmsUpdate {
        c_x: 1.02,
        c_eps: -0.3,
        lambda2: 0.004,
        seed: 7,
        step: 3,
        stream: 0,
    };
    out.push(compare(ctx, "gms_update", &gms, &gms_in, 1e-5).await?);

    let conv = Conv2d::new(1, 1).with_bias().with_residual();
    let conv_in = [
        x.clone(),
        data(&[7, 5, 3, 3], 5),
        data(&[7], 6),
        data(&[2, 7, 13, 11], 7),
    ];
    out.push(compare(ctx, "conv2d 3x3 + bias + residual", &conv, &conv_in, 1e-4).await?);
    let conv_s2 = Conv2d::new(2, 1).with_bias();
    let conv_in = [x.clone(), data(&[6, 5, 3, 3], 8), data(&[6], 9)];
    out.push(compare(ctx, "conv2d 3x3 stride 2", &conv_s2, &conv_in, 1e-4).await?);
    let convt = ConvTranspose2d::new(2).with_bias();
    let convt_in = [x.clone(), data(&[5, 3, 2, 2], 10), data(&[3], 11)];
    out.push(compare(ctx, "conv_transpose2d k=s=2", &convt, &convt_in, 1e-4).await?);

    let gn = GroupNorm::new(5, 1e-5).with_silu();
    let gn_in = [x.clone(), data(&[5], 12), data(&[5], 13)];
    out.push(compare(ctx, "group_norm + silu", &gn, &gn_in, 1e-5).await?);
    let ln = LayerNorm::new(&[11], 1e-5);
    let ln_in = [x.clone(), data(&[11], 14), data(&[11], 15)];
    out.push(compare(ctx, "layer_norm", &ln, &ln_in, 1e-5).await?);
    out.push(
        compare(
            ctx,
            "upsample 2x",
            &Upsample2x,
            std::slice::from_ref(&x),
            0.0,
        )
        .await?,
    );
    out.push(
        compare(
            ctx,
            "avg_pool 2x",
            &AvgPool2x,
            std::slice::from_ref(&x),
            1e-6,
        )
        .await?,
    );
    let ts = Tensor::from_vec(&[4], vec![0.0, 1.0, 999.0, 981.25]).expect("4 values");
    let temb = TimestepEmbedding::diffusers(33, true, 1.0);
    out.push(compare(ctx, "timestep_embedding", &temb, &[ts], 2e-6).await?);
    out.push(
        compare(
            ctx,
            "concat (channels)",
            &Concat::new(1),
            &[x.clone(), y],
            0.0,
        )
        .await?,
    );

    let mm_in = [data(&[3, 17, 29], 16), data(&[3, 29, 9], 17)];
    out.push(compare(ctx, "matmul (batched)", &Matmul::new(), &mm_in, 1e-4).await?);
    let lin_in = [data(&[2, 7, 29], 18), data(&[13, 29], 19), data(&[13], 20)];
    out.push(compare(ctx, "linear + bias", &Matmul::linear(true), &lin_in, 1e-4).await?);
    let attn = Attention::new(3);
    let attn_in = [
        data(&[2, 19, 24], 21),
        data(&[2, 7, 24], 22),
        data(&[2, 7, 24], 23),
    ];
    out.push(compare(ctx, "attention (cross, 3 heads)", &attn, &attn_in, 1e-4).await?);
    out.push(
        compare(
            ctx,
            "transpose",
            &ops::Transpose,
            &[data(&[2, 15, 7], 30)],
            0.0,
        )
        .await?,
    );
    out.push(
        compare(
            ctx,
            "sample_std",
            &ops::SampleStd,
            &[data(&[3, 5, 67], 31)],
            1e-5,
        )
        .await?,
    );
    let resize = ops::ResizeNearest::new(7, 9);
    out.push(
        compare(
            ctx,
            "resize_nearest",
            &resize,
            &[data(&[2, 3, 4, 5], 32)],
            0.0,
        )
        .await?,
    );
    Ok(out)
}

/// Native convenience wrapper.
#[cfg(not(target_arch = "wasm32"))]
pub fn run(ctx: &Arc<GpuContext>) -> Result<Vec<CheckResult>> {
    crate::platform::block_on(run_async(ctx))
}
