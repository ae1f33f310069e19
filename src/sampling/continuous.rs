//! Continuous-time noise schedules and the parameterizations models are trained in, in f64.
//!
//! * [`VpSde`]: the variance-preserving SDE of Song et al. (2021), "Score-Based Generative
//!   Modeling through Stochastic Differential Equations", eq. 11 and Appendix B:
//!   dx = −½β(t)x dt + √β(t) dw, so x_t = α_t x₀ + σ_t ε with
//!   α_t = exp(−½∫₀ᵗβ), σ_t² = 1 − α_t² (ᾱ(t) = α_t²).
//!   Linear β(t) = β_min + t(β_max − β_min) gives log α_t = −¼t²(β_max − β_min) − ½tβ_min
//!   (eq. 33 of the paper); constant β(t) = β gives ᾱ(t) = e^(−βt) (β = 1: ᾱ(t) = e^(−t), the
//!   schedule of the galaxy score models).
//! * [`Edm`]: σ-space models of Karras et al. (2022), "Elucidating the Design Space of
//!   Diffusion-Based Generative Models", Table 1: D(x; σ) = c_skip x + c_out F(c_in x; c_noise).
//! * [`PredictionType`] conversions between what a network predicts and x₀ / ε given
//!   x_t = α_t x₀ + σ_t ε.

use super::schedule::PredictionType;
use crate::error::{Error, Result};

/// The variance-preserving SDE's β(t) on t ∈ [0, 1] (or [0, T] for the constant one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VpSde {
    /// β(t) = β_min + t(β_max − β_min); Song et al. use β_min = 0.1, β_max = 20 (the
    /// continuous limit of DDPM's linear betas times N = 1000).
    Linear { beta_min: f64, beta_max: f64 },
    /// β(t) = β, so ᾱ(t) = e^(−βt).
    Constant { beta: f64 },
}

impl VpSde {
    /// Song et al.'s DDPM-equivalent linear schedule.
    pub const DDPM: VpSde = VpSde::Linear {
        beta_min: 0.1,
        beta_max: 20.0,
    };

    /// β(t) = 1 (ᾱ(t) = e^(−t)).
    pub const UNIT: VpSde = VpSde::Constant { beta: 1.0 };

    /// Checks the parameters (β > 0 and, for the linear one, β_max ≥ β_min).
    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            VpSde::Linear { beta_min, beta_max } => {
                beta_min >= 0.0 && beta_max >= beta_min && beta_max > 0.0
            }
            VpSde::Constant { beta } => beta > 0.0 && beta.is_finite(),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "VpSde",
                format!("{self:?}: needs 0 ≤ β_min ≤ β_max with β_max > 0, or a finite β > 0"),
            ))
        }
    }

    /// β(t).
    pub fn beta(&self, t: f64) -> f64 {
        match *self {
            VpSde::Linear { beta_min, beta_max } => beta_min + t * (beta_max - beta_min),
            VpSde::Constant { beta } => beta,
        }
    }

    /// ∫₀ᵗ β(s) ds.
    pub fn integrated_beta(&self, t: f64) -> f64 {
        match *self {
            VpSde::Linear { beta_min, beta_max } => {
                0.5 * t * t * (beta_max - beta_min) + t * beta_min
            }
            VpSde::Constant { beta } => beta * t,
        }
    }

    /// log α_t = −½∫₀ᵗβ.
    pub fn log_alpha(&self, t: f64) -> f64 {
        -0.5 * self.integrated_beta(t)
    }

    /// α_t (the signal scale, √ᾱ).
    pub fn alpha(&self, t: f64) -> f64 {
        self.log_alpha(t).exp()
    }

    /// ᾱ(t) = α_t².
    pub fn alpha_bar(&self, t: f64) -> f64 {
        (-self.integrated_beta(t)).exp()
    }

    /// σ_t = √(1 − ᾱ(t)), computed as √(−expm1(−∫β)) so small t keeps full precision.
    pub fn sigma(&self, t: f64) -> f64 {
        (-(-self.integrated_beta(t)).exp_m1()).sqrt()
    }

    /// The half log-SNR λ_t = log(α_t/σ_t) (DPM-Solver, Lu et al. 2022, §3.1).
    pub fn lambda(&self, t: f64) -> f64 {
        let b = self.integrated_beta(t);
        // log α − log σ = −b/2 − ½ log(1 − e^(−b)).
        -0.5 * b - 0.5 * (-(-b).exp_m1()).ln()
    }

    /// The time t with λ_t = `lambda` (DPM-Solver's `inverse_lambda`). λ is decreasing in
    /// t, and ∫β = log(1 + e^(−2λ)) inverts in closed form for both β(t).
    pub fn inverse_lambda(&self, lambda: f64) -> f64 {
        // ∫₀ᵗβ = b  ⇔  e^(−b) = 1/(1 + e^(−2λ)).
        let b = (-2.0 * lambda).exp().ln_1p();
        match *self {
            VpSde::Linear { beta_min, beta_max } => {
                let d = beta_max - beta_min;
                if d == 0.0 {
                    return b / beta_min;
                }
                // ½d t² + β_min t − b = 0, the positive root in the cancellation-free form.
                2.0 * b / (beta_min + (beta_min * beta_min + 2.0 * d * b).sqrt())
            }
            VpSde::Constant { beta } => b / beta,
        }
    }

    /// The equivalent discrete σ (k-diffusion's σ = σ_t/α_t).
    pub fn k_sigma(&self, t: f64) -> f64 {
        (self.integrated_beta(t).exp_m1()).sqrt()
    }
}

/// EDM preconditioning (Karras et al. 2022, Table 1, "Ours" column).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edm {
    /// σ_data, the data standard deviation (0.5 for images in [−1, 1]).
    pub sigma_data: f64,
}

/// The four EDM coefficients at one σ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmCoefficients {
    pub c_skip: f64,
    pub c_out: f64,
    pub c_in: f64,
    pub c_noise: f64,
}

impl Edm {
    /// c_skip = σ_d²/(σ² + σ_d²), c_out = σσ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²),
    /// c_noise = ¼ ln σ.
    pub fn coefficients(&self, sigma: f64) -> EdmCoefficients {
        let sd2 = self.sigma_data * self.sigma_data;
        let total = sigma * sigma + sd2;
        let root = total.sqrt();
        EdmCoefficients {
            c_skip: sd2 / total,
            c_out: sigma * self.sigma_data / root,
            c_in: 1.0 / root,
            c_noise: 0.25 * sigma.ln(),
        }
    }

    /// The denoiser output D = c_skip·x + c_out·F for a raw network output F.
    pub fn denoise(&self, sigma: f64, x: f64, f: f64) -> f64 {
        let c = self.coefficients(sigma);
        c.c_skip * x + c.c_out * f
    }
}

impl PredictionType {
    /// Coefficients (a, b) with x₀ = a·x_t + b·output, for x_t = α x₀ + σ ε.
    /// * ε: x₀ = (x − σ ε)/α.
    /// * v = α ε − σ x₀: x₀ = α x − σ v (using α² + σ² = 1).
    /// * sample: x₀ = output.
    /// * flow (α = 1 − σ, velocity ε − x₀): x₀ = x − σ·output.
    pub fn x0_coefficients(self, alpha: f64, sigma: f64) -> (f64, f64) {
        match self {
            PredictionType::Epsilon => (1.0 / alpha, -sigma / alpha),
            PredictionType::VPrediction => (alpha, -sigma),
            PredictionType::Sample => (0.0, 1.0),
            PredictionType::FlowPrediction => (1.0, -sigma),
        }
    }

    /// Coefficients (a, b) with ε = a·x_t + b·output.
    /// * ε: ε = output.
    /// * v: ε = σ x + α v.
    /// * sample: ε = (x − α x₀)/σ.
    /// * flow: ε = x₀ + v = x + (1 − σ)·output.
    pub fn eps_coefficients(self, alpha: f64, sigma: f64) -> (f64, f64) {
        match self {
            PredictionType::Epsilon => (0.0, 1.0),
            PredictionType::VPrediction => (sigma, alpha),
            PredictionType::Sample => (1.0 / sigma, -alpha / sigma),
            PredictionType::FlowPrediction => (1.0, 1.0 - sigma),
        }
    }

    /// x₀ from one element of the model output.
    pub fn to_x0(self, output: f64, x: f64, alpha: f64, sigma: f64) -> f64 {
        let (a, b) = self.x0_coefficients(alpha, sigma);
        a * x + b * output
    }

    /// ε from one element of the model output.
    pub fn to_eps(self, output: f64, x: f64, alpha: f64, sigma: f64) -> f64 {
        let (a, b) = self.eps_coefficients(alpha, sigma);
        a * x + b * output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_beta_is_exponential() {
        let sde = VpSde::UNIT;
        for &t in &[0.0, 1e-6, 0.3, 2.0, 10.0] {
            assert!((sde.alpha_bar(t) - (-t).exp()).abs() < 1e-15);
            let s = sde.sigma(t);
            assert!((sde.alpha(t).powi(2) + s * s - 1.0).abs() < 1e-14);
        }
    }

    #[test]
    fn linear_matches_song_eq33() {
        let sde = VpSde::DDPM;
        let t: f64 = 0.37;
        let log_mean = -0.25 * t * t * (20.0 - 0.1) - 0.5 * t * 0.1;
        assert!((sde.log_alpha(t) - log_mean).abs() < 1e-15);
    }

    #[test]
    fn inverse_lambda_round_trips() {
        for sde in [VpSde::DDPM, VpSde::UNIT, VpSde::Constant { beta: 3.0 }] {
            for &t in &[1e-4, 0.01, 0.2, 0.5, 0.999] {
                let back = sde.inverse_lambda(sde.lambda(t));
                assert!(
                    (back - t).abs() <= 1e-12 * t.max(1e-3),
                    "{sde:?} t={t} back={back}"
                );
            }
        }
    }

    #[test]
    fn prediction_conversions_agree() {
        let (alpha, sigma) = (0.6_f64, 0.8_f64);
        let (x0, eps) = (0.3, -1.2);
        let x = alpha * x0 + sigma * eps;
        let v = alpha * eps - sigma * x0;
        for (p, out) in [
            (PredictionType::Epsilon, eps),
            (PredictionType::VPrediction, v),
            (PredictionType::Sample, x0),
        ] {
            assert!((p.to_x0(out, x, alpha, sigma) - x0).abs() < 1e-14, "{p:?}");
            assert!(
                (p.to_eps(out, x, alpha, sigma) - eps).abs() < 1e-14,
                "{p:?}"
            );
        }
        // Flow matching: x = (1 − σ) x₀ + σ ε, output ε − x₀.
        let s = 0.3;
        let xf = (1.0 - s) * x0 + s * eps;
        let p = PredictionType::FlowPrediction;
        assert!((p.to_x0(eps - x0, xf, 1.0 - s, s) - x0).abs() < 1e-14);
        assert!((p.to_eps(eps - x0, xf, 1.0 - s, s) - eps).abs() < 1e-14);
    }

    #[test]
    fn edm_identity_at_sigma_data() {
        // At σ = σ_data: c_skip = ½, c_out = c_in·σ² ... = σ_d/√2.
        let edm = Edm { sigma_data: 0.5 };
        let c = edm.coefficients(0.5);
        assert!((c.c_skip - 0.5).abs() < 1e-15);
        assert!((c.c_out - 0.5 / 2f64.sqrt()).abs() < 1e-15);
        assert!((c.c_in - 1.0 / (0.5 * 2f64.sqrt())).abs() < 1e-15);
    }
}
