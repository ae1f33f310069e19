//! The MLP-Mixer score network of galaxygrad 0.2.1 (`galaxygrad/models_eqx.py`, equinox;
//! Adam et al. 2024, arXiv:2401.07313), under equinox's parameter names, and the continuous
//! VP-SDE it was trained with, as a [`Denoiser`] for the solver menu.
//!
//! ```text
//! h = conv_in(cat([y, t/t1 plane]))            4×4 stride-4 patches: (C, P), P = (H/4)(W/4)
//! per block: h = h + patch_mixer(LN₁(h))       LayerNorm over the whole (C, P) slab, MLP along P
//!            h = hᵀ + hidden_mixer(LN₂(hᵀ)); h = hᵀ      (P, C) slab, MLP along C
//! score = conv_out(LN(h))                      4×4 stride-4 transposed convolution
//! ```
//! The MLPs are equinox's `MLP(depth=1)`: Linear, ReLU, Linear. Equinox's `ConvTranspose2d`
//! cross-correlates the stride-dilated input with the kernel as stored, where PyTorch's (and
//! our [`ConvTranspose2d`] op's) scatter uses it flipped: the kernel is flipped spatially and
//! its in/out axes swapped at load. (`scripts/goldens/make_galaxy_goldens.py` computes both
//! orientations: only the unflipped equinox one gives corr(score, −x/σ) ≈ 1 on noise.)
//!
//! The network outputs the score ∇_y log p_t(y) in its data space y = ln(1 + x)/s (s = 0.1,
//! galaxygrad's HSC/ZTF wrappers), for the VP-SDE with β(t) = 1 (Song et al. 2021, eq. 11:
//! ᾱ(t) = e^(−t), t ∈ [0, t1 = 10]). Since x_t = α_t y + σ_t ε has score −ε/σ_t, the
//! ε-prediction the solvers take is ε = −σ_t·score (σ_t = √(1 − e^(−t))).
//!
//! The solvers are diffusers' discrete-time schedulers, so the continuous schedule is laid on
//! a grid of [`TRAIN_STEPS`] times t_k = t_min + (t1 − t_min)·k/(N − 1) with ᾱ_k = e^(−t_k)
//! (as `trained_betas` β_k = 1 − ᾱ_k/ᾱ_{k−1}); a (possibly fractional, for Euler) timestep k
//! maps back to t_k linearly. [`MixerScoreNet::scheduler_config`] builds that config.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::nn::{Conv2d, Linear};
use crate::ops::{Concat, ConvTranspose2d, LayerNorm, SolverUpdate, Transpose, Unary, UnaryOp};
use crate::sampling::continuous::VpSde;
use crate::sampling::solvers::Denoiser;
use crate::sampling::{SchedulerClass, SchedulerConfig, TimestepSpacing};
use crate::tensor::Tensor;
use crate::weights::{LoadOptions, Weights};

/// The class name our config carries (written by `scripts/convert_galaxygrad.py`).
pub const CLASS_NAME: &str = "GalaxyScoreNet";
/// The weights file next to `config.json`.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Grid size of the discrete schedule the solvers see.
pub const TRAIN_STEPS: usize = 1000;
/// The smallest time on that grid (t = 0 has σ = 0 and an unbounded score).
pub const T_MIN: f64 = 1e-3;

const OP: &str = "galaxy_scorenet";
const HINT: &str = "regenerate it with scripts/setup-galaxy.sh (scripts/convert_galaxygrad.py)";

/// The network's constructor arguments plus the schedule and data transform.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct MixerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub in_channels: usize,
    pub sample_size: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub mix_patch_size: usize,
    pub mix_hidden_size: usize,
    pub num_blocks: usize,
    pub norm_eps: f64,
    /// The end of the time interval; the network sees t/t1.
    pub t1: f64,
    /// The VP-SDE's constant β.
    pub beta: f64,
    /// s of the data space y = ln(1 + x)/s.
    pub transform_scale: f64,
    /// How a PNG shows a sample by default (`"asinh"`).
    #[serde(default)]
    pub render: Option<String>,
}

fn bad(file: &str, key: &str, expected: &str, got: impl std::fmt::Display) -> Error {
    Error::Config {
        file: file.to_string(),
        key: key.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
        hint: HINT.into(),
    }
}

impl MixerConfig {
    pub fn from_json(file: &str, text: &str) -> Result<Self> {
        let c: MixerConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            file: file.to_string(),
            key: String::new(),
            expected: "a GalaxyScoreNet config".into(),
            got: e.to_string(),
            hint: HINT.into(),
        })?;
        c.validate(file)?;
        Ok(c)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            file: file.clone(),
            message: e.to_string(),
            hint: "run scripts/setup-galaxy.sh to fetch and convert the galaxy models",
        })?;
        Self::from_json(&file, &text)
    }

    fn validate(&self, file: &str) -> Result<()> {
        if self.class_name != CLASS_NAME {
            return Err(bad(file, "_class_name", CLASS_NAME, &self.class_name));
        }
        let p = self.patch_size;
        if p == 0 || self.sample_size == 0 || !self.sample_size.is_multiple_of(p) {
            return Err(bad(
                file,
                "sample_size/patch_size",
                "a positive sample_size that patch_size divides",
                format!("{}/{}", self.sample_size, p),
            ));
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("hidden_size", self.hidden_size),
            ("mix_patch_size", self.mix_patch_size),
            ("mix_hidden_size", self.mix_hidden_size),
            ("num_blocks", self.num_blocks),
        ] {
            if v == 0 {
                return Err(bad(file, key, "positive", v));
            }
        }
        for (key, v) in [
            ("t1", self.t1),
            ("beta", self.beta),
            ("transform_scale", self.transform_scale),
            ("norm_eps", self.norm_eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(file, key, "a positive finite number", v));
            }
        }
        if self.t1 <= T_MIN {
            return Err(bad(file, "t1", &format!("greater than {T_MIN}"), self.t1));
        }
        Ok(())
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        (self.sample_size / self.patch_size).pow(2)
    }

    /// The SDE.
    pub fn sde(&self) -> VpSde {
        VpSde::Constant { beta: self.beta }
    }

    /// The continuous time of (possibly fractional) grid timestep `k`.
    pub fn time_of(&self, k: f64) -> f64 {
        T_MIN + (self.t1 - T_MIN) * k / (TRAIN_STEPS - 1) as f64
    }

    /// A diffusers-style scheduler config for the grid (see the module doc): ε-prediction,
    /// `linspace` spacing (the first step at t1, DDIM's last at t_min), ᾱ from the SDE.
    pub fn scheduler_config(&self, class: SchedulerClass) -> SchedulerConfig {
        let sde = self.sde();
        let mut prev = 1.0;
        let betas = (0..TRAIN_STEPS)
            .map(|k| {
                let ab = sde.alpha_bar(self.time_of(k as f64));
                let b = 1.0 - ab / prev;
                prev = ab;
                b
            })
            .collect();
        let mut c = SchedulerConfig::new(class);
        c.num_train_timesteps = TRAIN_STEPS;
        c.trained_betas = Some(betas);
        c.timestep_spacing = TimestepSpacing::Linspace;
        // DDIM/DDPM default to clipping x̂₀ to [−1, 1]; this data space spans ≈ [0, 10].
        c.other
            .insert("clip_sample".into(), serde_json::Value::Bool(false));
        c
    }

    /// Data space (the sample) → image: x = exp(s·y) − 1, galaxygrad's inverse transform.
    pub fn to_flux(&self, y: f32) -> f32 {
        ((self.transform_scale as f32) * y).exp_m1()
    }
}

fn host(t: &Tensor) -> Result<&[f32]> {
    t.cpu_data()
        .ok_or_else(|| Error::invalid("weights", "a freshly taken weight is not on the CPU"))
}

/// `eqx.nn.LayerNorm(shape)`: normalises a whole trailing slab with a per-element affine.
struct SlabNorm {
    op: LayerNorm,
    weight: Tensor,
    bias: Tensor,
}

impl SlabNorm {
    fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        shape: [usize; 2],
        eps: f64,
    ) -> Result<Self> {
        let weight = w.take(&format!("{prefix}.weight"), &shape)?;
        let bias = w.take(&format!("{prefix}.bias"), &shape)?;
        Ok(Self {
            op: LayerNorm::new(&shape, eps as f32),
            weight: exec.upload(&weight)?,
            bias: exec.upload(&bias)?,
        })
    }

    fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        exec.run(&self.op, &[x, &self.weight, &self.bias])
    }
}

/// `eqx.nn.MLP(depth=1)`: Linear, ReLU, Linear, applied to the last dimension, with the
/// residual added by the second Linear.
struct Mlp(Linear, Linear);

impl Mlp {
    fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        io: usize,
        width: usize,
    ) -> Result<Self> {
        Ok(Self(
            Linear::load(exec, w, &format!("{prefix}.layers.0"), io, width, true)?,
            Linear::load(exec, w, &format!("{prefix}.layers.1"), width, io, true)?,
        ))
    }

    fn forward_residual(&self, exec: &mut Exec, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = self.0.forward(exec, x)?;
        let h = exec.run(&Unary::new(UnaryOp::Relu), &[&h])?;
        self.1.forward_residual(exec, &h, residual)
    }
}

struct MixerBlock {
    norm1: SlabNorm,
    patch_mixer: Mlp,
    norm2: SlabNorm,
    hidden_mixer: Mlp,
}

/// A loaded galaxygrad `ScoreNet`.
pub struct MixerScoreNet {
    pub config: MixerConfig,
    conv_in: Conv2d,
    blocks: Vec<MixerBlock>,
    norm: SlabNorm,
    conv_out: ConvTranspose2d,
    conv_out_weight: Tensor,
    conv_out_bias: Tensor,
}

impl MixerScoreNet {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = MixerConfig::from_file(dir.join("config.json"))?;
        let file = dir.join(WEIGHTS_FILE);
        if !file.is_file() {
            return Err(Error::Io {
                file: file.display().to_string(),
                message: "not found".into(),
                hint: "run scripts/setup-galaxy.sh to fetch and convert the galaxy models",
            });
        }
        let mut weights = Weights::load_file(&file, &LoadOptions::default())?;
        Self::from_weights(exec, config, &mut weights)
    }

    /// Builds the model, taking every tensor it needs; leftovers are an error.
    pub fn from_weights(exec: &mut Exec, cfg: MixerConfig, w: &mut Weights) -> Result<Self> {
        let (c, p, k) = (cfg.hidden_size, cfg.num_patches(), cfg.patch_size);
        let cin = cfg.in_channels;
        let eps = cfg.norm_eps;
        let conv_in = Conv2d::load(exec, w, "conv_in", cin + 1, c, k, k, 0)?;
        let mut blocks = Vec::with_capacity(cfg.num_blocks);
        for b in 0..cfg.num_blocks {
            let pre = |s: &str| format!("blocks.{b}.{s}");
            blocks.push(MixerBlock {
                norm1: SlabNorm::load(exec, w, &pre("norm1"), [c, p], eps)?,
                patch_mixer: Mlp::load(exec, w, &pre("patch_mixer"), p, cfg.mix_patch_size)?,
                norm2: SlabNorm::load(exec, w, &pre("norm2"), [p, c], eps)?,
                hidden_mixer: Mlp::load(exec, w, &pre("hidden_mixer"), c, cfg.mix_hidden_size)?,
            });
        }
        let norm = SlabNorm::load(exec, w, "norm", [c, p], eps)?;
        // equinox (out, in, kh, kw), applied unflipped → PyTorch (in, out, kh, kw), flipped.
        let eq = w.take("conv_out.weight", &[cin, c, k, k])?;
        let eq = host(&eq)?;
        let mut flipped = vec![0f32; eq.len()];
        for o in 0..cin {
            for i in 0..c {
                for a in 0..k {
                    for b in 0..k {
                        flipped[((i * cin + o) * k + a) * k + b] =
                            eq[((o * c + i) * k + (k - 1 - a)) * k + (k - 1 - b)];
                    }
                }
            }
        }
        let conv_out_weight = exec.tensor(&[c, cin, k, k], &flipped)?;
        let bias = w.take("conv_out.bias", &[cin])?;
        let conv_out_bias = exec.upload(&bias)?;
        w.finish_unused(false)?;
        Ok(Self {
            config: cfg,
            conv_in,
            blocks,
            norm,
            conv_out: ConvTranspose2d::new(k).with_bias(),
            conv_out_weight,
            conv_out_bias,
        })
    }

    /// The raw network: the score of y (N, in, H, W) at time `t` (the same for the batch).
    pub fn score(&self, exec: &mut Exec, y: &Tensor, t: f64) -> Result<Tensor> {
        let cfg = &self.config;
        let s = y.shape();
        let size = cfg.sample_size;
        if s.len() != 4 || s[1] != cfg.in_channels || s[2] != size || s[3] != size {
            return Err(Error::shape(
                OP,
                "y",
                format!("(N, {}, {size}, {size})", cfg.in_channels),
                s,
            ));
        }
        if !(t.is_finite() && t >= 0.0 && t <= cfg.t1) {
            return Err(Error::invalid(
                OP,
                format!("time {t} is outside the model's [0, {}]", cfg.t1),
            ));
        }
        let n = s[0];
        let (c, p) = (cfg.hidden_size, cfg.num_patches());
        let side = size / cfg.patch_size;
        let plane = exec.tensor(
            &[n, 1, size, size],
            &vec![(t / cfg.t1) as f32; n * size * size],
        )?;
        let h = exec.run(&Concat::channels(), &[y, &plane])?;
        let mut h = self.conv_in.forward(exec, &h)?.reshape(&[n, c, p])?;
        for b in &self.blocks {
            let z = b.norm1.forward(exec, &h)?;
            h = b.patch_mixer.forward_residual(exec, &z, &h)?;
            let ht = exec.run(&Transpose, &[&h])?;
            let z = b.norm2.forward(exec, &ht)?;
            let ht = b.hidden_mixer.forward_residual(exec, &z, &ht)?;
            h = exec.run(&Transpose, &[&ht])?;
        }
        let h = self.norm.forward(exec, &h)?.reshape(&[n, c, side, side])?;
        exec.run(
            &self.conv_out,
            &[&h, &self.conv_out_weight, &self.conv_out_bias],
        )
    }

    /// The ε-prediction at time t: −σ_t·score.
    pub fn eps(&self, exec: &mut Exec, x: &Tensor, t: f64) -> Result<Tensor> {
        let score = self.score(exec, x, t)?;
        let sigma = self.config.sde().sigma(t);
        exec.run(&SolverUpdate::linear(&[-sigma]), &[&score])
    }

    /// See [`MixerConfig::scheduler_config`].
    pub fn scheduler_config(&self, class: SchedulerClass) -> SchedulerConfig {
        self.config.scheduler_config(class)
    }
}

impl MixerConfig {
    /// How a sample is shown by default (the CLI's PNG and the browser's canvas alike): the
    /// asinh stretch of this network's data transform.
    pub fn render_mode(&self) -> crate::render::RenderMode {
        crate::render::RenderMode::Asinh(crate::render::AsinhStretch {
            transform_scale: self.transform_scale as f32,
            ..crate::render::AsinhStretch::GALAXYGRAD
        })
    }
}

impl Denoiser for MixerScoreNet {
    /// `timestep` is a grid index (fractional for Euler-type solvers), see the module doc.
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let t = self.config.time_of(timestep);
        if !(timestep.is_finite() && (-1e-6..=(TRAIN_STEPS - 1) as f64 + 1e-6).contains(&timestep))
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "timestep {timestep} is outside the schedule's grid [0, {}]",
                    TRAIN_STEPS - 1
                ),
            ));
        }
        self.eps(exec, x, t.clamp(0.0, self.config.t1))
    }
}

/// Whether `dir/config.json` names this class.
pub fn is_galaxy_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("_class_name")?.as_str().map(|s| s == CLASS_NAME))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Schedule;

    fn config() -> MixerConfig {
        MixerConfig::from_json(
            "test",
            r#"{"_class_name": "GalaxyScoreNet", "in_channels": 1, "sample_size": 32,
                "patch_size": 4, "hidden_size": 64, "mix_patch_size": 512,
                "mix_hidden_size": 512, "num_blocks": 4, "norm_eps": 1e-5, "t1": 10.0,
                "beta": 1.0, "transform_scale": 0.1}"#,
        )
        .unwrap()
    }

    #[test]
    fn grid_schedule_is_exponential() {
        let c = config();
        let sched = Schedule::new(&c.scheduler_config(SchedulerClass::Ddim)).unwrap();
        let ab = &sched.alphas_cumprod;
        assert_eq!(ab.len(), TRAIN_STEPS);
        for (k, &a) in ab.iter().enumerate() {
            let want = (-c.time_of(k as f64)).exp();
            // ᾱ is the f32 running product of the betas (as diffusers computes it from
            // `trained_betas`), so its relative error grows with k: ~1e-5 by k = 600.
            assert!(
                ((a as f64) - want).abs() <= 1e-4 * want,
                "k={k}: ᾱ {a} vs e^(−t) {want}"
            );
        }
        assert!((c.time_of(999.0) - 10.0).abs() < 1e-12);
        assert!((c.time_of(0.0) - T_MIN).abs() < 1e-15);
    }

    #[test]
    fn config_rejects_bad_values() {
        let bad = r#"{"_class_name": "GalaxyScoreNet", "in_channels": 1, "sample_size": 30,
            "patch_size": 4, "hidden_size": 64, "mix_patch_size": 512, "mix_hidden_size": 512,
            "num_blocks": 4, "norm_eps": 1e-5, "t1": 10.0, "beta": 1.0, "transform_scale": 0.1}"#;
        let e = MixerConfig::from_json("c.json", bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample_size"), "{e}");
        let other = bad.replace("GalaxyScoreNet", "GuidedUNetModel");
        let e = MixerConfig::from_json("c.json", &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("_class_name"), "{e}");
    }
}
