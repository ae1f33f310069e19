//! Sinusoidal timestep embedding: diffusers' `get_timestep_embedding` (used by its
//! `Timesteps` projection; not diffusers' `TimestepEmbedding`, the MLP that follows) and
//! guided-diffusion's `timestep_embedding`.
//!
//! Shapes: t (N) timesteps as f32 (integer or fractional, one per sample) → out (N, dim).
//!
//! With `half = dim / 2` (diffusers, `src/diffusers/models/embeddings.py`):
//! ```text
//! exponent = -ln(max_period) · arange(half) / (half − downscale_freq_shift)   # float32
//! freq     = exp(exponent)                                                    # float32
//! arg      = scale · (t[:, None] · freq[None, :])                             # float32
//! out      = cat(sin(arg), cos(arg))  → cat(cos, sin) if flip_sin_to_cos; zero column if dim odd
//! ```
//! guided-diffusion computes `exp(-ln(max_period) · arange(half) / half)` and outputs
//! `cat(cos, sin)`: that is `flip_sin_to_cos = true, downscale_freq_shift = 0`
//! (`TimestepEmbedding::guided_diffusion`).
//!
//! Rounding: the frequencies are computed here exactly as PyTorch's CPU float32 code
//! rounds them (the scalar −ln(max_period) rounded to f32, an f32 multiply, an f32 true
//! division, exp rounded to f32) and passed to the shader, whose `exp` is too loose
//! (3 + 2|x| ulp in WebGPU); `t·freq` and `·scale` are f32 multiplies on both sides, so
//! the GPU sees PyTorch's float32 argument bit for bit. PyTorch's own exp and sin/cos are
//! within ~1 ulp of correctly rounded, as are ours (the CPU reference evaluates sin/cos in
//! f64 of the f32 argument; the shader reduces the argument with a 4-part Cody–Waite π/2).
//! At t ≈ 1000 one ulp of the argument is 6e-5 rad, so embeddings from different float32
//! implementations (PyTorch CPU vs CUDA, which divides by multiplying with a reciprocal)
//! legitimately differ by up to ~1e-4; ours differ from PyTorch CPU only by the final
//! sin/cos rounding and the rare 1-ulp differences of exp.

use bytemuck::{Pod, Zeroable};

use super::{expect_inputs, expect_rank, grid_1d, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, BufferSlice, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "timestep";
const WG: u32 = 256;
/// Frequencies per dispatch: the size of the params table.
const TABLE: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct TimestepParams {
    pub n: u32,
    pub dim: u32,
    pub half: u32,
    pub flip: u32,
    pub freq0: u32,
    pub count: u32,
    pub scale: f32,
    pub _pad: u32,
    pub freqs: [[f32; 4]; TABLE / 4],
}

/// The sinusoidal embedding of timesteps.
#[derive(Clone, Copy, Debug)]
pub struct TimestepEmbedding {
    pub dim: usize,
    /// Output `cat(cos, sin)` instead of `cat(sin, cos)`.
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f64,
    pub scale: f64,
    pub max_period: f64,
}

impl TimestepEmbedding {
    /// diffusers' `Timesteps(dim, flip_sin_to_cos, downscale_freq_shift)`; UNet2DConditionModel
    /// (SD 1.x/2.x/XL) uses `flip_sin_to_cos = true, shift = 0`, UNet2DModel (DDPM) its
    /// config's values (`true, 0` or `false, 1`).
    pub fn diffusers(dim: usize, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Self {
        Self {
            dim,
            flip_sin_to_cos,
            downscale_freq_shift,
            scale: 1.0,
            max_period: 10000.0,
        }
    }

    /// guided-diffusion's `timestep_embedding(timesteps, dim, max_period=10000)`.
    pub fn guided_diffusion(dim: usize) -> Self {
        Self::diffusers(dim, true, 0.0)
    }

    /// `freq(j)` for `j < dim / 2`, rounded as PyTorch's float32 CPU code rounds it.
    pub fn frequencies(&self) -> Vec<f32> {
        let half = self.dim / 2;
        // Python float → f32 when it meets a float32 tensor.
        let neg_log = (-self.max_period.ln()) as f32;
        let denom = (half as f64 - self.downscale_freq_shift) as f32;
        (0..half)
            .map(|j| {
                let exponent = (neg_log * j as f32) / denom;
                (exponent as f64).exp() as f32
            })
            .collect()
    }
}

impl Op for TimestepEmbedding {
    fn name(&self) -> &'static str {
        "timestep_embedding"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        expect_inputs(op, inputs, 1)?;
        expect_rank(op, "timesteps", inputs[0], 1, "(N)")?;
        if self.dim == 0 {
            return Err(Error::invalid(op, "dim must be at least 1"));
        }
        if !(self.max_period > 0.0 && self.max_period.is_finite()) {
            return Err(Error::invalid(
                op,
                format!("max_period must be positive, got {}", self.max_period),
            ));
        }
        let half = self.dim / 2;
        if half > 0 && (half as f64 - self.downscale_freq_shift) == 0.0 {
            return Err(Error::invalid(
                op,
                format!(
                    "dim / 2 - downscale_freq_shift is 0 (dim = {}, shift = {}): the exponent divides by it",
                    self.dim, self.downscale_freq_shift
                ),
            ));
        }
        if !self.scale.is_finite() || !self.downscale_freq_shift.is_finite() {
            return Err(Error::invalid(
                op,
                "scale and downscale_freq_shift must be finite",
            ));
        }
        let out = vec![inputs[0][0], self.dim];
        super::elementwise::check_u32(op, &out)?;
        Ok(out)
    }

    fn cpu(&self, _shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let freqs = self.frequencies();
        let half = freqs.len();
        let scale = self.scale as f32;
        for (&t, row) in inputs[0].iter().zip(out.chunks_mut(self.dim)) {
            for (j, &f) in freqs.iter().enumerate() {
                let arg = ((t * f) * scale) as f64;
                let (s, c) = (arg.sin() as f32, arg.cos() as f32);
                let (a, b) = if self.flip_sin_to_cos { (c, s) } else { (s, c) };
                row[j] = a;
                row[half + j] = b;
            }
            if self.dim % 2 == 1 {
                row[self.dim - 1] = 0.0;
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
        let n = inputs[0].shape[0];
        if n == 0 {
            return Ok(());
        }
        let freqs = self.frequencies();
        let pipeline = ctx.pipeline(
            &PipelineKey::new(SHADER, "timestep_embedding").with("WG", WG as f64),
            BindingLayout {
                inputs: 1,
                outputs: 1,
            },
        )?;
        // dim 1 has no frequencies but still one dispatch, for the zero column.
        let mut freq0 = 0;
        loop {
            let count = (freqs.len() - freq0).min(TABLE);
            let mut params = TimestepParams {
                n: n as u32,
                dim: self.dim as u32,
                half: freqs.len() as u32,
                flip: self.flip_sin_to_cos as u32,
                freq0: freq0 as u32,
                count: count as u32,
                scale: self.scale as f32,
                _pad: 0,
                freqs: [[0.0; 4]; TABLE / 4],
            };
            for (k, &f) in freqs[freq0..freq0 + count].iter().enumerate() {
                params.freqs[k / 4][k % 4] = f;
            }
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[BufferSlice::whole(inputs[0].buffer)],
                &[BufferSlice::whole(out.buffer)],
                grid_1d(ctx, n * count.max(1), WG),
            )?;
            freq0 += count;
            if freq0 >= freqs.len() {
                return Ok(());
            }
        }
    }
}
