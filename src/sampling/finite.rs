//! Finding the step where a trajectory stopped being finite, without a readback per step.
//!
//! After each step [`FiniteWatch::record`] records one per-sample standard deviation of x
//! (N floats; NaN or ±inf anywhere in a sample makes its statistic NaN). [`FiniteWatch::check`]
//! reads them all back at once after the loop and names the first step whose sample went
//! non-finite, so a diverging model or solver is reported as "step k of N" instead of a
//! silently black (or garbage) image.

use super::solvers::StepInfo;
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::{SampleStd, SolverUpdate};
use crate::tensor::Tensor;

/// See the module docs.
#[derive(Default)]
pub struct FiniteWatch {
    /// (step index, total steps, model time, per-sample statistic).
    stats: Vec<(usize, usize, f64, Tensor)>,
}

impl FiniteWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the statistic of the step's sample (call from the step callback).
    pub fn record(&mut self, exec: &mut Exec, info: &StepInfo<'_>) -> Result<()> {
        let x = info.x;
        let n = x.shape().first().copied().unwrap_or(0);
        // The statistic needs two elements per sample; a 1-element sample is checked as is.
        let stat = if n > 0 && x.numel() / n >= 2 {
            // Scaled by 2⁻⁸⁰ (exact) so the squares of large but finite values cannot
            // overflow: the statistic is non-finite only when x is.
            let scaled = exec.run(&SolverUpdate::linear(&[2f64.powi(-80)]), &[x])?;
            exec.run(&SampleStd, &[&scaled])?
        } else {
            x.clone()
        };
        self.stats
            .push((info.index, info.total, info.timestep, stat));
        Ok(())
    }

    /// Reads every recorded statistic (one submit, one map) and errors at the first step
    /// whose sample holds NaN or ±inf.
    pub async fn check(&mut self, exec: &mut Exec) -> Result<()> {
        let tensors: Vec<&Tensor> = self.stats.iter().map(|s| &s.3).collect();
        let values = exec.read_many(&tensors).await?;
        for ((step, total, t, _), v) in self.stats.iter().zip(values) {
            if let Some(sample) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::invalid(
                    "sample",
                    format!(
                        "sample {sample} became non-finite (NaN or inf) at step {} of {total} \
                         (model time {t}); the model or the solver diverged there. Nothing was \
                         written: try another solver, more steps, or check the model's weights",
                        step + 1
                    ),
                ));
            }
        }
        self.stats.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::block_on;
    use crate::sampling::solvers::{
        initial_noise, sample, solver_from_name, Control, Noise, SolverOptions,
    };
    use crate::sampling::{SchedulerClass, SchedulerConfig};

    #[test]
    fn names_the_step_where_nan_appears() {
        let mut exec = Exec::cpu();
        let cfg = SchedulerConfig::new(SchedulerClass::Ddim);
        let mut solver = solver_from_name("ddim", &cfg, 10, SolverOptions::default()).unwrap();
        let x = initial_noise(&mut exec, solver.as_ref(), &[2, 1, 3, 3], 7).unwrap();
        // A "model" that returns NaN for the second sample from the 4th call on.
        let mut calls = 0;
        let mut model = |_: &mut Exec, x: &Tensor, _t: f64| -> Result<Tensor> {
            calls += 1;
            let mut v = x.cpu_data().unwrap().to_vec();
            if calls >= 4 {
                v[9 + 4] = f32::NAN;
            }
            Tensor::from_vec(x.shape(), v.iter().map(|a| 0.1 * a).collect())
        };
        let mut watch = FiniteWatch::new();
        sample(
            &mut exec,
            solver.as_mut(),
            &mut model,
            &x,
            &mut Noise::Philox { seed: 1 },
            |e, info| {
                watch.record(e, info).unwrap();
                Control::Continue
            },
        )
        .unwrap();
        let err = block_on(watch.check(&mut exec)).unwrap_err().to_string();
        assert!(
            err.contains("sample 1") && err.contains("step 4 of 10"),
            "{err}"
        );
        // A finite run passes.
        let mut solver = solver_from_name("ddim", &cfg, 10, SolverOptions::default()).unwrap();
        let mut fine = |_: &mut Exec, x: &Tensor, _t: f64| -> Result<Tensor> {
            Tensor::from_vec(
                x.shape(),
                x.cpu_data().unwrap().iter().map(|a| 0.1 * a).collect(),
            )
        };
        let mut watch = FiniteWatch::new();
        sample(
            &mut exec,
            solver.as_mut(),
            &mut fine,
            &x,
            &mut Noise::Philox { seed: 1 },
            |e, info| {
                watch.record(e, info).unwrap();
                Control::Continue
            },
        )
        .unwrap();
        block_on(watch.check(&mut exec)).unwrap();
    }
}
