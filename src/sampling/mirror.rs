//! Bit-for-bit models of the numpy and torch (CPU) primitives diffusers builds its schedules
//! from. Each function names the call it mirrors and the dtype that call computes in; the
//! findings behind them are collected in the [`super`] module docs.

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU.
///
/// ATen's `linspace_kernel` (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp) casts both
/// ends to float32, takes `step = (end − start) / (steps − 1)` in float32, and fills the
/// first half from the start and the second half from the end:
/// `i < steps/2 ? start + step·i : end − step·(steps − 1 − i)`. The release wheels are built
/// by GCC, which contracts both expressions into one fused multiply-add, so each element is
/// rounded once: `fma(step, i, start)` / `fma(−step, steps−1−i, end)`. Plain two-rounding
/// arithmetic differs in ~20% of the 1000 betas (checked against torch 2.9.1).
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let start = start as f32;
    let end = end as f32;
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < halfway {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((steps - 1 - i) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// `torch.linspace(start, end, steps, dtype=torch.float64)`: the same two-sided fused
/// algorithm in float64.
pub fn torch_linspace_f64(start: f64, end: f64, steps: usize) -> Vec<f64> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f64;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < halfway {
                        step.mul_add(i as f64, start)
                    } else {
                        (-step).mul_add((steps - 1 - i) as f64, end)
                    }
                })
                .collect()
        }
    }
}

/// `torch.cumprod(x, 0)` for a float32 tensor on the CPU: ATen's `cumprod_cpu_kernel`
/// accumulates in `acc_type<float, /*is_cuda=*/false>`, which is `double`, and rounds each
/// running product to float32 only when storing it. (A float32 running product differs from
/// torch in 944 of the 1000 `alphas_cumprod` of Stable Diffusion's schedule.)
pub fn torch_cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0_f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// `np.linspace(start, stop, num)` in float64 (numpy/_core/function_base.py): `i·step + start`
/// with `step = (stop − start)/(num − 1)`, two roundings, and the last element set to `stop`.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let div = num - 1;
    let delta = stop - start;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            for v in &mut y {
                *v = *v / div as f64 * delta;
            }
        } else {
            for v in &mut y {
                *v *= step;
            }
        }
    } else {
        for v in &mut y {
            *v *= delta;
        }
    }
    for v in &mut y {
        *v += start;
    }
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// `np.arange(start, stop, step)` for float64 arguments. numpy takes the length as
/// `ceil((stop − start)/step)` (so `np.arange(1000, 0, -1000/n)` can have `n + 1` elements),
/// stores `start` and `start + step`, and fills the rest from the *rounded* difference of
/// those two: `start + i·((start + step) − start)` (`DOUBLE_fill` in arraytypes.c.src).
pub fn np_arange_f64(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if !len.is_finite() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, np.arange(len(fp)), fp)`: piecewise-linear interpolation on the integer grid,
/// as numpy's `arr_interp` computes it in float64: exact grid points return the table value,
/// others `slope·(x − x_j) + f_j` with `slope = (f_{j+1} − f_j)/(x_{j+1} − x_j)`; values
/// outside the grid clamp to the ends.
pub fn np_interp_unit_grid(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x.is_nan() || n == 0 {
        return f64::NAN;
    }
    if x < 0.0 {
        return fp[0];
    }
    let last = (n - 1) as f64;
    if x >= last {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    let xj = j as f64;
    if xj == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / ((j + 1) as f64 - xj);
    let y = slope * (x - xj) + fp[j];
    if y.is_nan() {
        // numpy retries from the right end before giving up.
        let y2 = slope * (x - (j + 1) as f64) + fp[j + 1];
        if y2.is_nan() && fp[j] == fp[j + 1] {
            return fp[j];
        }
        return y2;
    }
    y
}

/// numpy's `.round()` / `np.round`: round half to even.
#[inline]
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `astype(np.int64)` / `.to(torch.int64)` of a float: truncation toward zero.
#[inline]
pub fn to_int64(x: f64) -> i64 {
    x.trunc() as i64
}

/// Correctly rounded float32 square root. torch on x86 Linux routes float32 `sqrt` (and
/// `** 0.5`) through MKL's VML in its "high accuracy" mode, which is within 1 ulp but not
/// correctly rounded (about 17% of results differ from IEEE `sqrt`); macOS builds have no
/// MKL and round correctly. This crate uses the IEEE result, so sigmas built from a torch
/// square root may differ from an x86 torch by 1 ulp.
#[inline]
pub fn sqrt_f32(x: f32) -> f32 {
    x.sqrt()
}

/// float32 natural logarithm, correctly rounded (through f64) except in vanishingly rare
/// double-rounding cases. numpy's float32 `np.log` on AVX2/AVX-512 machines uses its own
/// SIMD polynomial (up to a few ulp off: 197 of the 1000 log-sigmas of SD's schedule differ
/// from the correctly rounded value), and torch's float32 `log` uses MKL; both feed only
/// the interpolation weights of `_sigma_to_t`, where a 1-ulp change moves a timestep by a
/// fraction of an f32 ulp at most times a small factor.
#[inline]
pub fn ln_f32(x: f32) -> f32 {
    (x as f64).ln() as f32
}

/// float32 exponential, correctly rounded (through f64) except in rare double-rounding cases.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    (x as f64).exp() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_length_follows_numpy_ceil() {
        // 1000/7 steps from 1000: ceil(1000 / (1000/7)) = 7 elements.
        assert_eq!(np_arange_f64(1000.0, 0.0, -1000.0 / 7.0).len(), 7);
        assert_eq!(np_arange_f64(0.0, 5.0, 1.0), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert!(np_arange_f64(0.0, -1.0, 1.0).is_empty());
    }

    #[test]
    fn linspace_edges() {
        assert_eq!(np_linspace(0.0, 1.0, 1), vec![0.0]);
        assert_eq!(np_linspace(0.0, 999.0, 2), vec![0.0, 999.0]);
        assert_eq!(torch_linspace_f32(0.25, 1.0, 1), vec![0.25]);
        assert_eq!(torch_linspace_f32(0.0, 1.0, 3), vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn interp_matches_grid_and_clamps() {
        let fp = [1.0, 2.0, 4.0];
        assert_eq!(np_interp_unit_grid(1.0, &fp), 2.0);
        assert_eq!(np_interp_unit_grid(1.5, &fp), 3.0);
        assert_eq!(np_interp_unit_grid(-3.0, &fp), 1.0);
        assert_eq!(np_interp_unit_grid(7.0, &fp), 4.0);
    }

    #[test]
    fn round_half_even() {
        assert_eq!(np_round(0.5), 0.0);
        assert_eq!(np_round(1.5), 2.0);
        assert_eq!(np_round(2.5), 2.0);
    }
}
