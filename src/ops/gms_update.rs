//! The GMS step (Guo et al. 2023, "Gaussian Mixture Solvers for Diffusion Models",
//! arXiv:2311.00941): per element, fit a two-component Gaussian mixture to the first three
//! moments of the reverse transition q(x_s | x_t) and draw from it. Inputs are x_t and the
//! model's E[ε], Var[ε] and third central moment κ₃[ε] (central, not raw: κ₃ = E[ε³] −
//! 3E[ε]E[ε²] + 2E[ε]³ cancels badly in float32, and the fit takes its cube root, which is
//! not Lipschitz at 0, so rounding noise in κ₃ would become visible noise in samples); see `sampling::solvers::gms` for where the
//! coefficients come from and `shaders/solver_update.wgsl` (`gms_update`) for the GPU twin.
//!
//! The transition is x_s = c_x·x_t + c_ε·ε + λ·z (the DDPM posterior with x₀ written
//! through ε, z ~ N(0, 1) independent of ε), so its mean, central variance and central
//! third moment are
//!   M₁ = c_x·x_t + c_ε·E[ε],  M₂ = c_ε²·Var[ε] + λ²,  M₃ = c_ε³·κ₃[ε],
//!
//! The mixture is ⅓·N(M₁ + d, v) + ⅔·N(M₁ − d/2, v): fixed weights and one shared variance
//! leave three unknowns (d, v and the mean, fixed by the weights' balance) for three
//! moments, so the method-of-moments fit is exact and closed-form:
//!   mean: ⅓d − ⅔·d/2 = 0;  variance: v + ⅓d² + ⅔·d²/4 = v + d²/2 = M₂;
//!   third: ⅓d³ − ⅔·d³/8 = d³/4 = M₃  ⇒  d = ∛(4M₃), v = M₂ − d²/2.
//! (Unequal weights are what let a two-component mixture be skewed; with equal weights and
//! variances the third central moment would be 0.) The fit needs v ≥ λ²: each component
//! still carries the posterior's own noise. When the predicted skewness is larger than the
//! family can express, d is shrunk to ±√(2(M₂ − λ²)), which keeps the mean and variance
//! exact and matches the third moment as far as the family allows; with c_ε·Var[ε] = 0 the
//! step is the plain Gaussian DDPM step.
//!
//! Randomness: z is the Philox Gaussian of `SolverUpdate` at (seed, step, stream); the
//! component is picked by the 24-bit uniform of word e mod 4 of the Philox block
//! (e/4, 0, step, stream + 1), component 1 when u < ⅓.

use super::{grid_1d, philox, solver_update, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, BufferSlice, GpuContext, PipelineKey, Recorder};

const WG: u32 = 256;

#[derive(Clone, Debug, Default)]
pub struct GmsUpdate {
    pub c_x: f64,
    pub c_eps: f64,
    /// λ², the posterior noise variance of the transition.
    pub lambda2: f64,
    pub seed: u64,
    pub step: u32,
    pub stream: u32,
}

/// One element of the GMS step in f32, the same operations as the shader.
pub fn gms_element(c: [f32; 3], x: f32, m1: f32, var: f32, k3: f32, z: f32, u: f32) -> f32 {
    let [c_x, c_e, lambda2] = c;
    let mean = c_x * x + c_e * m1;
    let var_e = var.max(0.0);
    let spread = c_e * c_e * var_e;
    let m3c = c_e * c_e * c_e * k3;
    let t = 4.0 * m3c;
    // ∛|t| as the shader computes it (WGSL has no cbrt).
    let mut d = if t != 0.0 {
        (t.abs().log2() * (1.0 / 3.0)).exp2()
    } else {
        0.0
    };
    let d_max = (2.0 * spread).sqrt();
    d = d.min(d_max);
    if t < 0.0 {
        d = -d;
    }
    let v = (spread + lambda2 - 0.5 * d * d).max(0.0);
    let mu = if u < 1.0 / 3.0 {
        mean + d
    } else {
        mean - 0.5 * d
    };
    mu + v.sqrt() * z
}

impl Op for GmsUpdate {
    fn name(&self) -> &'static str {
        "gms_update"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        if inputs.len() != 4 {
            return Err(Error::invalid(
                op,
                format!(
                    "takes x_t, E[ε], Var[ε], κ₃[ε]; got {} inputs",
                    inputs.len()
                ),
            ));
        }
        let names = ["x_t", "E[ε]", "Var[ε]", "κ₃[ε]"];
        for (i, s) in inputs.iter().enumerate().skip(1) {
            if *s != inputs[0] {
                return Err(Error::shape(
                    op,
                    names[i],
                    format!("{:?} like x_t", inputs[0]),
                    s,
                ));
            }
        }
        super::elementwise::check_u32(op, inputs[0])?;
        Ok(inputs[0].to_vec())
    }

    fn cpu(&self, _shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let c = [self.c_x as f32, self.c_eps as f32, self.lambda2 as f32];
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        for (block, chunk) in out.chunks_mut(4).enumerate() {
            let z = philox::gaussian4(self.seed, self.step, self.stream, block as u32);
            let w = philox::philox4x32_10(
                [block as u32, 0, self.step, self.stream.wrapping_add(1)],
                key,
            );
            for (j, o) in chunk.iter_mut().enumerate() {
                let e = block * 4 + j;
                *o = gms_element(
                    c,
                    inputs[0][e],
                    inputs[1][e],
                    inputs[2][e],
                    inputs[3][e],
                    z[j],
                    philox::uniform_closed0(w[j]),
                );
            }
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let n = crate::tensor::numel(out.shape);
        let mut coef = [0f32; 8];
        coef[0] = self.c_x as f32;
        coef[1] = self.c_eps as f32;
        coef[2] = self.lambda2 as f32;
        let params = solver_update::SolverUpdateParams {
            n: n as u32,
            num_inputs: 4,
            seed_lo: self.seed as u32,
            seed_hi: (self.seed >> 32) as u32,
            step: self.step,
            stream: self.stream,
            noise_scale: 1.0,
            _pad: 0,
            coef,
        };
        let mut slots: Vec<BufferSlice<'_>> = inputs
            .iter()
            .map(|a| BufferSlice::whole(a.buffer))
            .collect();
        // The fifth input slot of the shared layout is unused: bind x_t there (read-only).
        slots.push(BufferSlice::whole(inputs[0].buffer));
        let pipeline = ctx.pipeline(
            &PipelineKey::new(solver_update::SHADER, "gms_update").with("WG", WG as f64),
            BindingLayout {
                inputs: solver_update::MAX_INPUTS as u32,
                outputs: 1,
            },
        )?;
        rec.dispatch(
            ctx,
            &pipeline,
            bytemuck::bytes_of(&params),
            &slots,
            &[BufferSlice::whole(out.buffer)],
            grid_1d(ctx, n.div_ceil(4), WG),
        )?;
        Ok(())
    }
}
