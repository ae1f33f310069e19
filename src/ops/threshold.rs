//! x̂₀ processing for the samplers (diffusers' `clip_sample` and `thresholding`):
//!
//! * [`Clamp`]: `clamp(x, lo, hi)` elementwise (torch.clamp: NaN stays NaN).
//! * [`AbsQuantile`]: per row (first axis), the q-quantile of |x| over the rest, exactly as
//!   `torch.quantile(x.abs(), q, dim=1)` with its default linear interpolation: in float32,
//!   r = q·(n − 1), the order statistics at ⌊r⌋ and ⌈r⌉, and `torch.lerp` between them with
//!   weight r − ⌊r⌋ (a row with a NaN gives NaN). Shapes: (rows, …) → (rows).
//! * [`ThresholdRows`]: `clamp(x, −s', s')/s'` with s' = clamp(s_row, lo, hi) per row:
//!   dynamic thresholding's last line given the quantiles. Shapes: (rows, …), (rows) →
//!   (rows, …).
//!
//! Shader: `shaders/threshold.wgsl` (the quantile is a radix select, one workgroup per row).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, BufferSlice, CachedPipeline, GpuContext, PipelineKey, Recorder};
use crate::tensor::numel;

pub const SHADER: &str = "threshold";
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ThresholdParams {
    pub n: u32,
    pub rows: u32,
    pub rank_lo: u32,
    pub rank_hi: u32,
    pub weight: f32,
    pub lo: f32,
    pub hi: f32,
    pub total: u32,
}

/// torch.clamp on one value.
pub fn clamp_torch(x: f32, lo: f32, hi: f32) -> f32 {
    if x.is_nan() {
        x
    } else {
        x.max(lo).min(hi)
    }
}

/// torch.lerp's scalar formula (from the nearer end).
pub fn lerp_torch(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// (⌊r⌋, ⌈r⌉, r − ⌊r⌋) of r = q·(n − 1) in float32, as torch.quantile computes its ranks.
pub fn quantile_ranks(q: f64, n: usize) -> (usize, usize, f32) {
    let r = q as f32 * (n - 1) as f32;
    let lo = r as usize;
    let hi = (r.ceil() as usize).min(n - 1);
    (lo.min(n - 1), hi, r - lo as f32)
}

/// torch.quantile(|row|, q) of one row.
pub fn abs_quantile_row(row: &[f32], q: f64) -> f32 {
    if row.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    let mut v: Vec<f32> = row.iter().map(|x| x.abs()).collect();
    v.sort_by(f32::total_cmp);
    let (lo, hi, w) = quantile_ranks(q, v.len());
    lerp_torch(v[lo], v[hi], w)
}

fn check_rows(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    let rows = shape.first().copied().unwrap_or(0);
    let n = numel(shape).checked_div(rows).unwrap_or(0);
    if rows == 0 || n == 0 {
        return Err(Error::shape(
            op,
            "x",
            "(rows, …) with at least one row and one value per row",
            shape,
        ));
    }
    super::elementwise::check_u32(op, shape)?;
    Ok((rows, n))
}

fn pipeline(ctx: &GpuContext, entry: &'static str) -> Result<Arc<CachedPipeline>> {
    ctx.pipeline(
        &PipelineKey::new(SHADER, entry).with("WG", WG as f64),
        BindingLayout {
            inputs: 2,
            outputs: 1,
        },
    )
}

/// `clamp(x, lo, hi)` elementwise.
#[derive(Clone, Debug)]
pub struct Clamp {
    pub lo: f32,
    pub hi: f32,
}

impl Op for Clamp {
    fn name(&self) -> &'static str {
        "clamp"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let [x] = inputs else {
            return Err(Error::invalid(
                self.name(),
                format!("takes 1 input, got {}", inputs.len()),
            ));
        };
        if self.lo.is_nan() || self.hi.is_nan() || self.lo > self.hi {
            return Err(Error::invalid(
                self.name(),
                format!("bounds [{}, {}] are empty", self.lo, self.hi),
            ));
        }
        super::elementwise::check_u32(self.name(), x)?;
        Ok(x.to_vec())
    }

    fn cpu(&self, _shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(inputs[0]) {
            *o = clamp_torch(x, self.lo, self.hi);
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let n = numel(out.shape);
        let params = ThresholdParams {
            n: n as u32,
            lo: self.lo,
            hi: self.hi,
            ..Default::default()
        };
        let pl = pipeline(ctx, "clamp_values")?;
        let a = BufferSlice::whole(inputs[0].buffer);
        rec.dispatch(
            ctx,
            &pl,
            bytemuck::bytes_of(&params),
            &[a, a],
            &[BufferSlice::whole(out.buffer)],
            grid_1d(ctx, n, WG),
        )
    }
}

/// Per-row q-quantile of |x| (torch.quantile, linear interpolation).
#[derive(Clone, Debug)]
pub struct AbsQuantile {
    pub q: f64,
}

impl Op for AbsQuantile {
    fn name(&self) -> &'static str {
        "abs_quantile"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let [x] = inputs else {
            return Err(Error::invalid(
                self.name(),
                format!("takes 1 input, got {}", inputs.len()),
            ));
        };
        if !(0.0..=1.0).contains(&self.q) {
            return Err(Error::invalid(
                self.name(),
                format!("q must be in [0, 1], got {}", self.q),
            ));
        }
        let (rows, _) = check_rows(self.name(), x)?;
        Ok(vec![rows])
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let rows = shapes[0][0];
        let n = inputs[0].len() / rows;
        for (o, row) in out.iter_mut().zip(inputs[0].chunks(n)) {
            *o = abs_quantile_row(row, self.q);
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let rows = inputs[0].shape[0];
        let n = numel(inputs[0].shape) / rows;
        let (lo, hi, w) = quantile_ranks(self.q, n);
        let params = ThresholdParams {
            n: n as u32,
            rows: rows as u32,
            rank_lo: lo as u32,
            rank_hi: hi as u32,
            weight: w,
            ..Default::default()
        };
        // One workgroup per row (the entry point is fixed at 256 threads).
        let pl = ctx.pipeline(
            &PipelineKey::new(SHADER, "abs_quantile"),
            BindingLayout {
                inputs: 2,
                outputs: 1,
            },
        )?;
        let a = BufferSlice::whole(inputs[0].buffer);
        rec.dispatch(
            ctx,
            &pl,
            bytemuck::bytes_of(&params),
            &[a, a],
            &[BufferSlice::whole(out.buffer)],
            crate::gpu::fold_workgroups(rows as u32, ctx.caps.max_workgroups()),
        )
    }
}

/// `clamp(x, −s', s')/s'` per row, s' = clamp(s_row, lo, hi).
#[derive(Clone, Debug)]
pub struct ThresholdRows {
    pub lo: f32,
    pub hi: f32,
}

impl Op for ThresholdRows {
    fn name(&self) -> &'static str {
        "threshold_rows"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let [x, s] = inputs else {
            return Err(Error::invalid(
                self.name(),
                format!("takes x and s, got {} inputs", inputs.len()),
            ));
        };
        if !(self.lo > 0.0 && self.lo <= self.hi) {
            return Err(Error::invalid(
                self.name(),
                format!(
                    "bounds on s must satisfy 0 < lo ≤ hi, got [{}, {}]",
                    self.lo, self.hi
                ),
            ));
        }
        let (rows, _) = check_rows(self.name(), x)?;
        if *s != [rows] {
            return Err(Error::shape(self.name(), "s", format!("[{rows}]"), s));
        }
        Ok(x.to_vec())
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let rows = shapes[0][0];
        let n = inputs[0].len() / rows;
        for (e, o) in out.iter_mut().enumerate() {
            let s = clamp_torch(inputs[1][e / n], self.lo, self.hi);
            *o = clamp_torch(inputs[0][e], -s, s) / s;
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let total = numel(out.shape);
        let rows = out.shape[0];
        let params = ThresholdParams {
            n: (total / rows) as u32,
            rows: rows as u32,
            lo: self.lo,
            hi: self.hi,
            total: total as u32,
            ..Default::default()
        };
        let pl = pipeline(ctx, "threshold_rows")?;
        rec.dispatch(
            ctx,
            &pl,
            bytemuck::bytes_of(&params),
            &[
                BufferSlice::whole(inputs[0].buffer),
                BufferSlice::whole(inputs[1].buffer),
            ],
            &[BufferSlice::whole(out.buffer)],
            grid_1d(ctx, total, WG),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of torch.quantile (torch 2.9.1) on small rows, typed in by hand from
    /// `torch.quantile(torch.tensor(row).abs(), q)`: the interpolation and rank rules.
    #[test]
    fn quantile_follows_linear_interpolation() {
        let row = [3.0f32, -1.0, 2.0, -5.0, 4.0];
        // sorted |x| = 1 2 3 4 5; r = q·4.
        assert_eq!(abs_quantile_row(&row, 0.0), 1.0);
        assert_eq!(abs_quantile_row(&row, 1.0), 5.0);
        assert_eq!(abs_quantile_row(&row, 0.5), 3.0);
        assert_eq!(abs_quantile_row(&row, 0.625), 3.5);
        assert!((abs_quantile_row(&row, 0.995) - 4.98).abs() < 1e-6);
        assert!(abs_quantile_row(&[1.0, f32::NAN], 0.5).is_nan());
        assert_eq!(abs_quantile_row(&[-7.0], 0.3), 7.0);
    }
}
