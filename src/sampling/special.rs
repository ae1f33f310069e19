//! Special functions the schedules need, in f64: the regularized incomplete beta function
//! `I_x(a, b)` and its inverse (the quantile of the Beta(a, b) distribution).
//!
//! diffusers' `use_beta_sigmas` ("Beta Sampling is All You Need", Lee et al. 2024,
//! arXiv:2407.12173) places the steps at `scipy.stats.beta.ppf(1 - i/(n-1), 0.6, 0.6)`;
//! scipy evaluates that with Boost's `ibeta_inv`. Here `I_x` is the continued fraction of
//! Numerical Recipes (3rd ed., §6.4, eq. 6.4.5, evaluated with the modified Lentz method)
//! and the inverse is Halley's method from the starting guess of NR §6.14.10, polished by
//! bisection-safe Newton steps. Against scipy 1.16 the quantile agrees to a few ulps in f64,
//! far below the f32 rounding that diffusers applies to the resulting sigmas
//! (`tests/schedules.rs` measures it).

/// `ln B(a, b) = ln Γ(a) + ln Γ(b) − ln Γ(a + b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// Continued fraction for `I_x(a, b)` (NR eq. 6.4.5), converging fast for
/// `x < (a + 1) / (a + b + 2)`.
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    // Smallest representable magnitude the Lentz method may divide by.
    const TINY: f64 = 1e-300;
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step d_{2m}.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // Odd step d_{2m+1}.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function `I_x(a, b)` for `a, b > 0`, `x ∈ [0, 1]`.
pub fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    // Front factor x^a (1−x)^b / B(a, b), in logs to avoid overflow.
    let front = (a * x.ln() + b * (-x).ln_1p() - ln_beta(a, b)).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        // Symmetry I_x(a, b) = 1 − I_{1−x}(b, a) keeps the fraction in its fast region.
        1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

/// The quantile of Beta(a, b): the `x` with `I_x(a, b) = p` (scipy's `beta.ppf(p, a, b)`).
/// `p` outside `[0, 1]` or a non-positive shape gives NaN, as scipy does.
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) || a.is_nan() || b.is_nan() || a <= 0.0 || b <= 0.0 {
        return f64::NAN;
    }
    if p == 0.0 {
        return 0.0;
    }
    if p == 1.0 {
        return 1.0;
    }
    // The upper tail is solved through the mirrored distribution, so that `1 − x` (small
    // there) carries full relative precision.
    if p > 0.5 {
        return 1.0 - beta_ppf_lower(1.0 - p, b, a);
    }
    beta_ppf_lower(p, a, b)
}

/// Inverse for `p ≤ 0.5` by Halley's method (NR §6.14.10), then Newton steps kept inside a
/// bracket so the last ulps converge even where the density is singular (a or b < 1).
fn beta_ppf_lower(p: f64, a: f64, b: f64) -> f64 {
    let a1 = a - 1.0;
    let b1 = b - 1.0;
    // Initial guess (NR 6.14.10's two regimes).
    let mut x = if a >= 1.0 && b >= 1.0 {
        let pp = if p < 0.5 { p } else { 1.0 - p };
        let t = (-2.0 * pp.ln()).sqrt();
        let mut z = (2.30753 + t * 0.27061) / (1.0 + t * (0.99229 + t * 0.04481)) - t;
        if p < 0.5 {
            z = -z;
        }
        let al = (z * z - 3.0) / 6.0;
        let h = 2.0 / (1.0 / (2.0 * a - 1.0) + 1.0 / (2.0 * b - 1.0));
        let w = (z * (al + h).sqrt() / h)
            - (1.0 / (2.0 * b - 1.0) - 1.0 / (2.0 * a - 1.0)) * (al + 5.0 / 6.0 - 2.0 / (3.0 * h));
        a / (a + b * (2.0 * w).exp())
    } else {
        let lna = (a / (a + b)).ln();
        let lnb = (b / (a + b)).ln();
        let t = (a * lna).exp() / a;
        let u = (b * lnb).exp() / b;
        let w = t + u;
        if p < t / w {
            (a * w * p).powf(1.0 / a)
        } else {
            1.0 - (b * w * (1.0 - p)).powf(1.0 / b)
        }
    };
    let afac = -ln_beta(a, b);
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    for _ in 0..200 {
        if x <= 0.0 || x >= 1.0 {
            break;
        }
        let err = regularized_incomplete_beta(a, b, x) - p;
        if err == 0.0 {
            return x;
        }
        if err < 0.0 {
            lo = lo.max(x);
        } else {
            hi = hi.min(x);
        }
        let density = (a1 * x.ln() + b1 * (-x).ln_1p() + afac).exp();
        let u = err / density;
        // Halley's correction, damped as in NR.
        let step = u / (1.0 - 0.5 * (u * (a1 / x - b1 / (1.0 - x))).min(1.0));
        let mut next = x - step;
        if next <= lo || next >= hi || !next.is_finite() {
            // Outside the bracket the local model is wrong: bisect instead.
            next = 0.5 * (lo + hi);
        }
        if next == x || (next - x).abs() <= f64::EPSILON * x * 0.5 {
            return next;
        }
        x = next;
    }
    x.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_and_closed_forms() {
        // Beta(1, 1) is uniform; Beta(2, 1) has CDF x².
        for &p in &[1e-9, 0.1, 0.25, 0.5, 0.9] {
            assert!((beta_ppf(p, 1.0, 1.0) - p).abs() < 1e-15);
            assert!((beta_ppf(p, 2.0, 1.0) - p.sqrt()).abs() < 1e-14);
        }
        // Beta(0.5, 0.5) is the arcsine law: F(x) = (2/π) asin(√x).
        for &x in &[1e-6_f64, 0.01, 0.3, 0.7, 0.999] {
            let p = 2.0 / std::f64::consts::PI * x.sqrt().asin();
            let got = beta_ppf(p, 0.5, 0.5);
            assert!((got - x).abs() <= 1e-14 * x.max(1e-3), "x={x} got={got}");
        }
    }

    #[test]
    fn symmetric_shape_is_symmetric() {
        for &p in &[0.01, 0.2, 0.4999] {
            let lo = beta_ppf(p, 0.6, 0.6);
            let hi = beta_ppf(1.0 - p, 0.6, 0.6);
            assert!((lo + hi - 1.0).abs() < 1e-14);
        }
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-15);
    }
}
