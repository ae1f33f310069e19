//! Discrete noise schedules exactly as diffusers 0.42.1 builds them: betas, ᾱ
//! (`alphas_cumprod`), inference timesteps and sigmas per scheduler class. The dtype of every
//! step follows diffusers (see the table in the [`super`] module docs); the primitives that
//! reproduce numpy's and torch's arithmetic are in [`super::mirror`].

use super::config::SchedulerConfig;
use super::mirror::{
    np_arange_f64, np_interp_unit_grid, np_linspace, np_round, sqrt_f32, to_int64,
    torch_cumprod_f32, torch_linspace_f32, torch_linspace_f64,
};
use super::special::beta_ppf;
use crate::error::{Error, Result};

/// A choice that a config names by a string, with its valid spellings.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value with its diffusers spelling.
            pub const OPTIONS: &'static [(&'static str, $name)] = &[$(($text, $name::$variant)),+];

            /// The diffusers spelling.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

named_enum! {
    /// How betas are laid out over the training steps (`beta_schedule`).
    BetaSchedule {
        /// `torch.linspace(beta_start, beta_end, N)` (Ho et al. 2020).
        Linear = "linear",
        /// `torch.linspace(√beta_start, √beta_end, N)²` (Stable Diffusion).
        ScaledLinear = "scaled_linear",
        /// The cosine ᾱ of Nichol & Dhariwal (2021), eq. 17, with β capped at 0.999.
        SquaredcosCapV2 = "squaredcos_cap_v2",
        /// DDPMScheduler only: ᾱ from a Laplace-distributed log-SNR.
        Laplace = "laplace",
        /// DDPMScheduler only: GeoDiff's sigmoid betas.
        Sigmoid = "sigmoid",
    }
}

named_enum! {
    /// How inference timesteps are picked from the training range (`timestep_spacing`),
    /// Table 2 of Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"
    /// (arXiv:2305.08891).
    TimestepSpacing {
        Linspace = "linspace",
        Leading = "leading",
        Trailing = "trailing",
    }
}

named_enum! {
    /// What the network predicts (`prediction_type`).
    PredictionType {
        /// The noise ε.
        Epsilon = "epsilon",
        /// v = α ε − σ x₀ (Salimans & Ho 2022, "Progressive Distillation", §4).
        VPrediction = "v_prediction",
        /// The clean sample x₀.
        Sample = "sample",
        /// Flow matching velocity ε − x₀ with α = 1 − σ (DPM-Solver/UniPC only).
        FlowPrediction = "flow_prediction",
    }
}

named_enum! {
    /// EulerDiscrete's `interpolation_type`.
    InterpolationType {
        /// σ interpolated linearly in t between the training sigmas.
        Linear = "linear",
        /// σ geometric between σ_max and σ_min (ignores the timesteps).
        LogLinear = "log_linear",
    }
}

named_enum! {
    /// EulerDiscrete's `timestep_type`: the model's time input.
    TimestepType {
        Discrete = "discrete",
        /// `0.25·ln σ` in place of t (with v-prediction; the EDM c_noise).
        Continuous = "continuous",
    }
}

named_enum! {
    /// The sigma after the last step (`final_sigmas_type`).
    FinalSigmas {
        Zero = "zero",
        /// σ of the first training step, √((1 − ᾱ₀)/ᾱ₀).
        SigmaMin = "sigma_min",
    }
}

/// How the inference sigmas are made from the training ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigmaSchedule {
    /// The training sigmas at the inference timesteps (`np.interp`).
    Interpolated,
    /// `use_karras_sigmas`: Karras et al. (2022) eq. 5 with ρ = 7.
    Karras,
    /// `use_exponential_sigmas`: geometric from σ_max to σ_min.
    Exponential,
    /// `use_beta_sigmas`: Beta(0.6, 0.6) quantiles (Lee et al. 2024, arXiv:2407.12173).
    Beta,
    /// `use_lu_lambdas` (DPM-Solver): uniform in log σ between the training ends, as
    /// diffusers implements it (it ramps `log σ`, not λ, despite the name).
    LuLambdas,
    /// `use_flow_sigmas`: rectified-flow sigmas 1 → 1/N, shifted by `flow_shift`.
    Flow,
}

impl SigmaSchedule {
    /// EDMEulerScheduler's `sigma_schedule` values.
    pub const EDM_OPTIONS: &'static [(&'static str, SigmaSchedule)] = &[
        ("karras", SigmaSchedule::Karras),
        ("exponential", SigmaSchedule::Exponential),
    ];

    /// The config switch that selects it.
    pub fn name(self) -> &'static str {
        match self {
            SigmaSchedule::Interpolated => "interpolated (default)",
            SigmaSchedule::Karras => "use_karras_sigmas",
            SigmaSchedule::Exponential => "use_exponential_sigmas",
            SigmaSchedule::Beta => "use_beta_sigmas",
            SigmaSchedule::LuLambdas => "use_lu_lambdas",
            SigmaSchedule::Flow => "use_flow_sigmas",
        }
    }
}

/// The diffusers scheduler classes whose schedules this module reproduces. Solvers that
/// share one of these schedules (Euler ancestral, Heun, LMS, DEIS, …) map onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerClass {
    Ddim,
    Ddpm,
    EulerDiscrete,
    DpmSolverMultistep,
    UniPcMultistep,
    EdmEuler,
}

const BETA_KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
];

const COMMON_BETAS: &[(&str, BetaSchedule)] = &[
    ("linear", BetaSchedule::Linear),
    ("scaled_linear", BetaSchedule::ScaledLinear),
    ("squaredcos_cap_v2", BetaSchedule::SquaredcosCapV2),
];

const DDPM_BETAS: &[(&str, BetaSchedule)] = &[
    ("linear", BetaSchedule::Linear),
    ("scaled_linear", BetaSchedule::ScaledLinear),
    ("squaredcos_cap_v2", BetaSchedule::SquaredcosCapV2),
    ("laplace", BetaSchedule::Laplace),
    ("sigmoid", BetaSchedule::Sigmoid),
];

const PRED_BASIC: &[(&str, PredictionType)] = &[
    ("epsilon", PredictionType::Epsilon),
    ("sample", PredictionType::Sample),
    ("v_prediction", PredictionType::VPrediction),
];

const PRED_FLOW: &[(&str, PredictionType)] = &[
    ("epsilon", PredictionType::Epsilon),
    ("sample", PredictionType::Sample),
    ("v_prediction", PredictionType::VPrediction),
    ("flow_prediction", PredictionType::FlowPrediction),
];

const PRED_EDM: &[(&str, PredictionType)] = &[
    ("epsilon", PredictionType::Epsilon),
    ("v_prediction", PredictionType::VPrediction),
];

impl SchedulerClass {
    pub const ALL: &'static [SchedulerClass] = &[
        SchedulerClass::Ddim,
        SchedulerClass::Ddpm,
        SchedulerClass::EulerDiscrete,
        SchedulerClass::DpmSolverMultistep,
        SchedulerClass::UniPcMultistep,
        SchedulerClass::EdmEuler,
    ];

    /// The diffusers class name (`_class_name`).
    pub fn name(self) -> &'static str {
        match self {
            SchedulerClass::Ddim => "DDIMScheduler",
            SchedulerClass::Ddpm => "DDPMScheduler",
            SchedulerClass::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerClass::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerClass::UniPcMultistep => "UniPCMultistepScheduler",
            SchedulerClass::EdmEuler => "EDMEulerScheduler",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Whether `set_timesteps` makes sigmas (k-diffusion-style schedulers and the multistep
    /// solvers), as opposed to DDIM/DDPM which index ᾱ by integer timestep.
    pub fn has_sigmas(self) -> bool {
        !matches!(self, SchedulerClass::Ddim | SchedulerClass::Ddpm)
    }

    /// The `__init__` keys of this class that shape the schedule.
    pub fn init_keys(self) -> &'static [&'static str] {
        match self {
            SchedulerClass::Ddim => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
                "set_alpha_to_one",
            ],
            SchedulerClass::Ddpm => BETA_KEYS,
            SchedulerClass::EulerDiscrete => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
                "interpolation_type",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "sigma_min",
                "sigma_max",
                "timestep_type",
                "final_sigmas_type",
            ],
            SchedulerClass::DpmSolverMultistep => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
                "use_flow_sigmas",
                "flow_shift",
                "final_sigmas_type",
                "lambda_min_clipped",
                "use_dynamic_shifting",
            ],
            SchedulerClass::UniPcMultistep => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_flow_sigmas",
                "flow_shift",
                "final_sigmas_type",
                "sigma_min",
                "sigma_max",
                "shift_terminal",
                "use_dynamic_shifting",
            ],
            SchedulerClass::EdmEuler => &[
                "sigma_min",
                "sigma_max",
                "sigma_data",
                "sigma_schedule",
                "num_train_timesteps",
                "prediction_type",
                "rho",
                "final_sigmas_type",
            ],
        }
    }

    /// Valid `beta_schedule` values.
    pub fn beta_schedules(self) -> &'static [(&'static str, BetaSchedule)] {
        match self {
            SchedulerClass::Ddpm => DDPM_BETAS,
            SchedulerClass::EdmEuler => &[("linear", BetaSchedule::Linear)],
            _ => COMMON_BETAS,
        }
    }

    /// Valid `prediction_type` values.
    pub fn prediction_types(self) -> &'static [(&'static str, PredictionType)] {
        match self {
            SchedulerClass::DpmSolverMultistep | SchedulerClass::UniPcMultistep => PRED_FLOW,
            SchedulerClass::EdmEuler => PRED_EDM,
            _ => PRED_BASIC,
        }
    }

    /// Sigma schedules the class implements.
    pub fn sigma_schedules(self) -> &'static [SigmaSchedule] {
        use SigmaSchedule::*;
        match self {
            SchedulerClass::Ddim | SchedulerClass::Ddpm => &[Interpolated],
            SchedulerClass::EulerDiscrete => &[Interpolated, Karras, Exponential, Beta],
            SchedulerClass::DpmSolverMultistep => {
                &[Interpolated, Karras, Exponential, Beta, LuLambdas, Flow]
            }
            SchedulerClass::UniPcMultistep => &[Interpolated, Karras, Exponential, Beta, Flow],
            SchedulerClass::EdmEuler => &[Karras, Exponential],
        }
    }
}

/// Betas (float32, as diffusers' `self.betas`) for a config, before any rescaling.
///
/// * `linear`, `scaled_linear`, `sigmoid`: `torch.linspace(..., dtype=float32)`
///   ([`torch_linspace_f32`]); `scaled_linear` squares in float32 (`** 2` is `x·x`).
/// * `squaredcos_cap_v2`, `laplace`: `betas_for_alpha_bar`, a Python loop in float64
///   (`math.cos`, `math.exp`, …) turned into float32 by `torch.tensor(..., float32)`.
/// * `trained_betas`: `torch.tensor(trained_betas, dtype=float32)`, a float64→float32 cast.
pub fn betas(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    if let Some(b) = &config.trained_betas {
        return b.iter().map(|&x| x as f32).collect();
    }
    match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
        BetaSchedule::ScaledLinear => {
            // `beta_start**0.5` is a Python float power (C `pow`), not `math.sqrt`.
            torch_linspace_f32(config.beta_start.powf(0.5), config.beta_end.powf(0.5), n)
                .into_iter()
                .map(|x| x * x)
                .collect()
        }
        BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(n, 0.999, |t| {
            // Nichol & Dhariwal (2021) eq. 17 with s = 0.008; Python evaluates
            // `(t + 0.008) / 1.008 * math.pi / 2` left to right.
            let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
            c.powi(2)
        }),
        BetaSchedule::Laplace => betas_for_alpha_bar(n, 0.999, |t| {
            // diffusers' "laplace": λ = −½·sign(½ − t)·ln(1 − 2|½ − t| + 1e−6), ᾱ-ish = √(snr/(1+snr)).
            let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
            let snr = lmb.exp();
            (snr / (1.0 + snr)).sqrt()
        }),
        BetaSchedule::Sigmoid => {
            // GeoDiff (Xu et al. 2022): sigmoid(linspace(−6, 6)) · (β_end − β_start) + β_start,
            // all in float32 torch ops. torch's sigmoid is a vectorized approximation, so this
            // one matches diffusers to an ulp or two rather than exactly.
            let scale = (config.beta_end - config.beta_start) as f32;
            let start = config.beta_start as f32;
            torch_linspace_f32(-6.0, 6.0, n)
                .into_iter()
                .map(|x| {
                    let s = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
                    s * scale + start
                })
                .collect()
        }
    }
}

/// `betas_for_alpha_bar` (diffusers, after Nichol & Dhariwal 2021 §3.2):
/// β_i = min(1 − ᾱ((i+1)/N)/ᾱ(i/N), max_beta), in float64, then rounded to float32.
fn betas_for_alpha_bar(n: usize, max_beta: f64, alpha_bar: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            // Python's min(a, b) returns a unless b < a.
            let b = 1.0 - alpha_bar(t2) / alpha_bar(t1);
            (if max_beta < b { max_beta } else { b }) as f32
        })
        .collect()
}

/// `rescale_zero_terminal_snr` (Lin et al. 2023, arXiv:2305.08891, Algorithm 1), all in
/// float32 torch ops: √ᾱ is shifted so its last value is 0 and scaled so its first is
/// unchanged, then betas are recovered from the ratios. torch's float32 `sqrt` goes through
/// MKL on x86 (see [`sqrt_f32`]), so rescaled schedules can differ from an x86 torch in the
/// last bits.
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let alphas_cumprod = torch_cumprod_f32(&alphas);
    let mut sqrt_ab: Vec<f32> = alphas_cumprod.iter().map(|&a| sqrt_f32(a)).collect();
    let (Some(&first), Some(&last)) = (sqrt_ab.first(), sqrt_ab.last()) else {
        return Vec::new();
    };
    for v in &mut sqrt_ab {
        *v -= last;
    }
    // `alphas_bar_sqrt *= a0 / (a0 − aT)`: the 0-d factor is rounded once, then multiplied.
    let scale = first / (first - last);
    for v in &mut sqrt_ab {
        *v *= scale;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for i in 1..ab.len() {
        out.push(1.0 - ab[i] / ab[i - 1]);
    }
    out
}

/// The training-time quantities of a scheduler: what its `__init__` computes.
#[derive(Debug, Clone)]
pub struct Schedule {
    config: SchedulerConfig,
    /// β_t, float32 values (empty for EDM, which has no discrete training chain).
    pub betas: Vec<f32>,
    /// α_t = 1 − β_t (float32).
    pub alphas: Vec<f32>,
    /// ᾱ_t = ∏ α (float32 values from a float64 running product, like `torch.cumprod`).
    /// Euler/DPM/UniPC set the last one to 2⁻²⁴ under `rescale_betas_zero_snr`, so that
    /// σ_T stays finite; DDIM/DDPM keep the exact 0.
    pub alphas_cumprod: Vec<f32>,
}

/// What `set_timesteps(n)` produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Timesteps {
    /// The model's time input per step, in order. Integer-valued for DDIM, DDPM, DPM-Solver
    /// and UniPC (int64 in diffusers); float32 values for EulerDiscrete and EDM.
    pub timesteps: Vec<f64>,
    /// σ per step plus the final σ (float32 values), for classes with sigmas. Euler with
    /// `interpolation_type = "log_linear"` has two more sigmas than steps, as in diffusers.
    pub sigmas: Option<Vec<f32>>,
    /// Scale of the initial noise: 1 for variance-preserving samplers, σ_max (or
    /// √(σ_max² + 1)) for Euler and EDM. A float32 value except for EDM (float64 in
    /// diffusers).
    pub init_noise_sigma: f64,
}

impl Schedule {
    /// Builds the training schedule of `config` (diffusers' `__init__`).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|m| Error::invalid("Schedule::new", m))?;
        if config.class == SchedulerClass::EdmEuler {
            return Ok(Schedule {
                config: config.clone(),
                betas: Vec::new(),
                alphas: Vec::new(),
                alphas_cumprod: Vec::new(),
            });
        }
        let mut betas = betas(config);
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = torch_cumprod_f32(&alphas);
        if config.rescale_betas_zero_snr && config.class.has_sigmas() {
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2.0_f32.powi(-24);
            }
        }
        Ok(Schedule {
            config: config.clone(),
            betas,
            alphas,
            alphas_cumprod,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// DDIM's ᾱ before the first training step (`final_alpha_cumprod`).
    pub fn final_alpha_cumprod(&self) -> f32 {
        if self.config.set_alpha_to_one {
            1.0
        } else {
            self.alphas_cumprod.first().copied().unwrap_or(1.0)
        }
    }

    /// The training sigmas σ_t = √((1 − ᾱ_t)/ᾱ_t), float32 as torch computes them.
    pub fn train_sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| sqrt_f32((1.0 - a) / a))
            .collect()
    }

    /// diffusers' `set_timesteps(num_inference_steps)`.
    pub fn set_timesteps(&self, num_inference_steps: usize) -> Result<Timesteps> {
        let n = num_inference_steps;
        let train = self.config.num_train_timesteps;
        if n == 0 {
            return Err(Error::invalid(
                "set_timesteps",
                "the number of inference steps must be at least 1",
            ));
        }
        if n > train && self.config.class != SchedulerClass::EdmEuler {
            return Err(Error::invalid(
                "set_timesteps",
                format!(
                    "{n} inference steps is more than the {train} training timesteps of this schedule; use at most {train}"
                ),
            ));
        }
        match self.config.class {
            SchedulerClass::Ddim | SchedulerClass::Ddpm => Ok(Timesteps {
                timesteps: self.ddim_timesteps(n),
                sigmas: None,
                init_noise_sigma: 1.0,
            }),
            SchedulerClass::EulerDiscrete => Ok(self.euler_timesteps(n)),
            SchedulerClass::DpmSolverMultistep => Ok(self.dpm_timesteps(n)),
            SchedulerClass::UniPcMultistep => Ok(self.unipc_timesteps(n)),
            SchedulerClass::EdmEuler => Ok(self.edm_timesteps(n)),
        }
    }

    /// DDIMScheduler/DDPMScheduler `set_timesteps`: integer timesteps in float64 numpy.
    fn ddim_timesteps(&self, n: usize) -> Vec<f64> {
        let train = self.config.num_train_timesteps;
        let ts: Vec<i64> = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|t| to_int64(np_round(t)))
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = (train / n) as i64;
                (0..n as i64)
                    .rev()
                    .map(|i| i * ratio + self.config.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / n as f64;
                np_arange_f64(train as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| to_int64(np_round(t)) - 1)
                    .collect()
            }
        };
        ts.into_iter().map(|t| t as f64).collect()
    }

    /// Training sigmas and their logs as the sigma-based classes use them in
    /// `set_timesteps`: `np.array(((1 − ᾱ)/ᾱ) ** 0.5)` (float32) and `np.log` of it
    /// (float32).
    fn sigma_table(&self) -> (Vec<f32>, Vec<f32>) {
        let sigmas = self.train_sigmas();
        let logs = sigmas.iter().map(|&s| super::mirror::ln_f32(s)).collect();
        (sigmas, logs)
    }

    /// σ of the first training step, `((1 − ᾱ₀)/ᾱ₀) ** 0.5` in float32.
    fn sigma_first(&self) -> f32 {
        let a = self.alphas_cumprod[0];
        sqrt_f32((1.0 - a) / a)
    }

    fn sigma_range(&self, lo_default: f64, hi_default: f64) -> (f64, f64) {
        (
            self.config.sigma_min.unwrap_or(lo_default),
            self.config.sigma_max.unwrap_or(hi_default),
        )
    }

    /// EulerDiscreteScheduler `set_timesteps`.
    fn euler_timesteps(&self, n: usize) -> Timesteps {
        let cfg = &self.config;
        let train = cfg.num_train_timesteps;
        // Timesteps are float32 arrays (from float64 numpy).
        let mut ts: Vec<f64> = match cfg.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|t| t as f32 as f64)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = (train / n) as i64;
                (0..n as i64)
                    .rev()
                    .map(|i| ((i * ratio) as f32 + cfg.steps_offset as f32) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / n as f64;
                np_arange_f64(train as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| (np_round(t) as f32 - 1.0) as f64)
                    .collect()
            }
        };
        let (train_sigmas, log_sigmas) = self.sigma_table();
        let table: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = match cfg.interpolation_type {
            InterpolationType::Linear => {
                ts.iter().map(|&t| np_interp_unit_grid(t, &table)).collect()
            }
            InterpolationType::LogLinear => {
                // torch.linspace(np.log(σ_max), np.log(σ_min), n + 1).exp(): float32 throughout.
                let hi = super::mirror::ln_f32(train_sigmas[train - 1]) as f64;
                let lo = super::mirror::ln_f32(train_sigmas[0]) as f64;
                torch_linspace_f32(hi, lo, n + 1)
                    .into_iter()
                    .map(|x| super::mirror::exp_f32(x) as f64)
                    .collect()
            }
        };
        let converted = match cfg.sigma_schedule {
            SigmaSchedule::Karras => Some(karras_sigmas(
                self.sigma_range(last(&sigmas), sigmas[0]),
                n,
                7.0,
            )),
            SigmaSchedule::Exponential => Some(exponential_sigmas(
                self.sigma_range(last(&sigmas), sigmas[0]),
                n,
            )),
            SigmaSchedule::Beta => Some(beta_sigmas(self.sigma_range(last(&sigmas), sigmas[0]), n)),
            _ => None,
        };
        if let Some(s) = converted {
            ts = s.iter().map(|&x| sigma_to_t(x, &log_sigmas)).collect();
            sigmas = s;
        }
        let sigma_last = match cfg.final_sigmas_type {
            FinalSigmas::SigmaMin => self.sigma_first() as f64,
            FinalSigmas::Zero => 0.0,
        };
        sigmas.push(sigma_last);
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        let timesteps = if cfg.timestep_type == TimestepType::Continuous
            && cfg.prediction_type == PredictionType::VPrediction
        {
            // torch.Tensor([0.25 * sigma.log() for sigma in sigmas[:-1]]): float32.
            sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| (0.25 * super::mirror::ln_f32(s)) as f64)
                .collect()
        } else {
            ts.into_iter().map(|t| t as f32 as f64).collect()
        };
        let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match cfg.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            // `(max_sigma ** 2 + 1) ** 0.5` on a float32 0-d tensor.
            TimestepSpacing::Leading => sqrt_f32(max * max + 1.0),
        };
        Timesteps {
            timesteps,
            sigmas: Some(sigmas),
            init_noise_sigma: init_noise_sigma as f64,
        }
    }

    /// DPMSolverMultistepScheduler `set_timesteps`.
    fn dpm_timesteps(&self, n: usize) -> Timesteps {
        let cfg = &self.config;
        let train = cfg.num_train_timesteps;
        // `clipped_idx = searchsorted(flip(λ_t), lambda_min_clipped)`: λ_t = log α − log σ in
        // float32, increasing once flipped; the first index with λ ≥ the threshold.
        let clipped_idx = if cfg.lambda_min_clipped == f64::NEG_INFINITY {
            0
        } else {
            let lambdas: Vec<f64> = self
                .alphas_cumprod
                .iter()
                .rev()
                .map(|&a| {
                    let alpha = sqrt_f32(a);
                    let sigma = sqrt_f32(1.0 - a);
                    (super::mirror::ln_f32(alpha) - super::mirror::ln_f32(sigma)) as f64
                })
                .collect();
            lambdas
                .iter()
                .position(|&l| l >= cfg.lambda_min_clipped)
                .unwrap_or(lambdas.len())
        };
        let last_timestep = train - clipped_idx;
        let ts = multistep_spacing(cfg, n, last_timestep, train);
        let (train_sigmas, log_sigmas) = self.sigma_table();
        let round_karras = cfg.beta_schedule != BetaSchedule::SquaredcosCapV2;
        let flipped_ends = (train_sigmas[0] as f64, train_sigmas[train - 1] as f64);
        let (sigmas, ts): (Vec<f64>, Vec<f64>) = match cfg.sigma_schedule {
            SigmaSchedule::Karras => {
                let s = karras_sigmas(self.sigma_range(flipped_ends.0, flipped_ends.1), n, 7.0);
                let t = s
                    .iter()
                    .map(|&x| {
                        let t = sigma_to_t(x, &log_sigmas);
                        if round_karras {
                            np_round(t)
                        } else {
                            t
                        }
                    })
                    .collect();
                (s, t)
            }
            SigmaSchedule::LuLambdas => {
                // `_convert_to_lu(flip(log_sigmas))` with ρ = 1, then σ = exp(λ).
                let lo = log_sigmas[0] as f64;
                let hi = log_sigmas[train - 1] as f64;
                let s: Vec<f64> = np_linspace(0.0, 1.0, n)
                    .into_iter()
                    .map(|r| (hi + r * (lo - hi)).exp())
                    .collect();
                let t = s
                    .iter()
                    .map(|&x| {
                        let t = sigma_to_t(x, &log_sigmas);
                        if round_karras {
                            np_round(t)
                        } else {
                            t
                        }
                    })
                    .collect();
                (s, t)
            }
            SigmaSchedule::Exponential => {
                let s = exponential_sigmas(self.sigma_range(flipped_ends.0, flipped_ends.1), n);
                let t = s.iter().map(|&x| sigma_to_t(x, &log_sigmas)).collect();
                (s, t)
            }
            SigmaSchedule::Beta => {
                let s = beta_sigmas(self.sigma_range(flipped_ends.0, flipped_ends.1), n);
                let t = s.iter().map(|&x| sigma_to_t(x, &log_sigmas)).collect();
                (s, t)
            }
            SigmaSchedule::Flow => {
                let shift = cfg.flow_shift;
                let mut s: Vec<f64> = np_linspace(1.0, 1.0 / train as f64, n + 1)
                    .into_iter()
                    .map(|a| {
                        let s = 1.0 - a;
                        shift * s / (1.0 + (shift - 1.0) * s)
                    })
                    .collect();
                s.reverse();
                s.pop();
                let t = s.iter().map(|&x| x * train as f64).collect();
                (s, t)
            }
            SigmaSchedule::Interpolated => {
                let table: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
                let s = ts.iter().map(|&t| np_interp_unit_grid(t, &table)).collect();
                (s, ts)
            }
        };
        let sigma_last = match cfg.final_sigmas_type {
            FinalSigmas::SigmaMin => self.sigma_first() as f64,
            FinalSigmas::Zero => 0.0,
        };
        finish_multistep(sigmas, sigma_last, ts)
    }

    /// UniPCMultistepScheduler `set_timesteps`.
    fn unipc_timesteps(&self, n: usize) -> Timesteps {
        let cfg = &self.config;
        let train = cfg.num_train_timesteps;
        let ts = multistep_spacing(cfg, n, train, train);
        let (train_sigmas, log_sigmas) = self.sigma_table();
        let ends = (train_sigmas[0] as f64, train_sigmas[train - 1] as f64);
        let (sigmas, ts, sigma_last): (Vec<f64>, Vec<f64>, f64) = match cfg.sigma_schedule {
            SigmaSchedule::Karras | SigmaSchedule::Exponential | SigmaSchedule::Beta => {
                let range = self.sigma_range(ends.0, ends.1);
                let s = match cfg.sigma_schedule {
                    SigmaSchedule::Karras => karras_sigmas(range, n, 7.0),
                    SigmaSchedule::Exponential => exponential_sigmas(range, n),
                    _ => beta_sigmas(range, n),
                };
                let t = s
                    .iter()
                    .map(|&x| {
                        let t = sigma_to_t(x, &log_sigmas);
                        // Only the Karras branch rounds (`.round()` on the array).
                        if cfg.sigma_schedule == SigmaSchedule::Karras {
                            np_round(t)
                        } else {
                            t
                        }
                    })
                    .collect();
                let sigma_last = match cfg.final_sigmas_type {
                    FinalSigmas::SigmaMin => last(&s),
                    FinalSigmas::Zero => 0.0,
                };
                (s, t, sigma_last)
            }
            SigmaSchedule::Flow => {
                let shift = cfg.flow_shift;
                let mut s: Vec<f64> = np_linspace(1.0, 1.0 / train as f64, n + 1);
                s.pop();
                for v in &mut s {
                    *v = shift * *v / (1.0 + (shift - 1.0) * *v);
                }
                if let Some(terminal) = cfg.shift_terminal {
                    // `stretch_shift_to_terminal` (LTX-Video): rescale 1 − σ so the last σ
                    // lands on `shift_terminal`.
                    let scale = (1.0 - last(&s)) / (1.0 - terminal);
                    for v in &mut s {
                        *v = 1.0 - (1.0 - *v) / scale;
                    }
                }
                // Keeps σ₀ < 1 so that α = 1 − σ stays positive.
                if (s[0] - 1.0).abs() < 1e-6 {
                    s[0] -= 1e-6;
                }
                let t = s.iter().map(|&x| x * train as f64).collect();
                let sigma_last = match cfg.final_sigmas_type {
                    FinalSigmas::SigmaMin => last(&s),
                    FinalSigmas::Zero => 0.0,
                };
                (s, t, sigma_last)
            }
            _ => {
                let table: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
                let s = ts.iter().map(|&t| np_interp_unit_grid(t, &table)).collect();
                let sigma_last = match cfg.final_sigmas_type {
                    FinalSigmas::SigmaMin => self.sigma_first() as f64,
                    FinalSigmas::Zero => 0.0,
                };
                (s, ts, sigma_last)
            }
        };
        finish_multistep(sigmas, sigma_last, ts)
    }

    /// EDMEulerScheduler `set_timesteps`: σ from a ramp in float64 torch (Karras) or a
    /// float32 torch linspace of log σ (exponential), then float32; t = c_noise(σ) = ¼ ln σ.
    fn edm_timesteps(&self, n: usize) -> Timesteps {
        let cfg = &self.config;
        let (lo, hi) = (
            cfg.sigma_min.unwrap_or(0.002),
            cfg.sigma_max.unwrap_or(80.0),
        );
        let sigmas: Vec<f32> = match cfg.sigma_schedule {
            SigmaSchedule::Exponential => {
                let mut s: Vec<f32> = torch_linspace_f32(lo.ln(), hi.ln(), n)
                    .into_iter()
                    .map(super::mirror::exp_f32)
                    .collect();
                s.reverse();
                s
            }
            _ => {
                let min_inv_rho = lo.powf(1.0 / cfg.rho);
                let max_inv_rho = hi.powf(1.0 / cfg.rho);
                torch_linspace_f64(0.0, 1.0, n)
                    .into_iter()
                    .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(cfg.rho) as f32)
                    .collect()
            }
        };
        let timesteps = sigmas
            .iter()
            .map(|&s| (0.25 * super::mirror::ln_f32(s)) as f64)
            .collect();
        let sigma_last = match cfg.final_sigmas_type {
            FinalSigmas::SigmaMin => sigmas[sigmas.len() - 1],
            FinalSigmas::Zero => 0.0,
        };
        let mut all = sigmas;
        all.push(sigma_last);
        Timesteps {
            timesteps,
            sigmas: Some(all),
            init_noise_sigma: (hi * hi + 1.0).sqrt(),
        }
    }
}

fn last(v: &[f64]) -> f64 {
    v.last().copied().unwrap_or(f64::NAN)
}

/// The integer timesteps of DPM-Solver/UniPC before any sigma conversion: n + 1 points of
/// which the last (t = 0) is dropped. `last_timestep` is DPM-Solver's clipped end (else N).
fn multistep_spacing(
    cfg: &SchedulerConfig,
    n: usize,
    last_timestep: usize,
    train: usize,
) -> Vec<f64> {
    let ts: Vec<i64> = match cfg.timestep_spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<i64> = np_linspace(0.0, last_timestep as f64 - 1.0, n + 1)
                .into_iter()
                .rev()
                .map(|t| to_int64(np_round(t)))
                .collect();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (last_timestep / (n + 1)) as i64;
            (1..=n as i64)
                .rev()
                .map(|i| i * ratio + cfg.steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            // The ratio uses N even when λ-clipping shortened the range (as diffusers does).
            let ratio = train as f64 / n as f64;
            np_arange_f64(last_timestep as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| to_int64(np_round(t)) - 1)
                .collect()
        }
    };
    ts.into_iter().map(|t| t as f64).collect()
}

/// `np.concatenate([sigmas, [sigma_last]]).astype(np.float32)` and int64 timesteps.
fn finish_multistep(sigmas: Vec<f64>, sigma_last: f64, ts: Vec<f64>) -> Timesteps {
    let mut s: Vec<f32> = sigmas.into_iter().map(|x| x as f32).collect();
    s.push(sigma_last as f32);
    Timesteps {
        timesteps: ts.into_iter().map(|t| to_int64(t) as f64).collect(),
        sigmas: Some(s),
        init_noise_sigma: 1.0,
    }
}

/// Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative
/// Models", eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, in float64
/// (diffusers `_convert_to_karras`: numpy ramp, Python powers).
pub fn karras_sigmas((sigma_min, sigma_max): (f64, f64), n: usize, rho: f64) -> Vec<f64> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// Geometric sigmas from σ_max to σ_min (diffusers `_convert_to_exponential`, float64).
pub fn exponential_sigmas((sigma_min, sigma_max): (f64, f64), n: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// Beta-quantile sigmas (Lee et al. 2024, "Beta Sampling is All You Need",
/// arXiv:2407.12173; diffusers `_convert_to_beta` with α = β = 0.6):
/// σ_i = σ_min + F⁻¹(1 − i/(n−1))·(σ_max − σ_min), F the Beta(0.6, 0.6) CDF.
pub fn beta_sigmas((sigma_min, sigma_max): (f64, f64), n: usize) -> Vec<f64> {
    const ALPHA: f64 = 0.6;
    const BETA: f64 = 0.6;
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| sigma_min + beta_ppf(1.0 - r, ALPHA, BETA) * (sigma_max - sigma_min))
        .collect()
}

/// diffusers `_sigma_to_t`: the fractional training timestep whose σ is `sigma`, by linear
/// interpolation of log σ between the two bracketing training steps (float64 arithmetic on
/// the float32 log-sigmas, ascending in t).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    // `cumsum(dists >= 0).argmax()`: the last index with log σ_i ≤ log σ (0 if none),
    // clipped so that a bracketing pair exists.
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high = low + 1;
    let lo = log_sigmas[low] as f64;
    let hi = log_sigmas[high] as f64;
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}
