//! The research solvers from the CLI: Analytic-DPM / Analytic-DDIM (Γ estimated by Monte
//! Carlo over data before sampling), GMS (a model with moment outputs), and the exact
//! Gaussian-mixture "model" (`--model gmm:FILE.json`) that every solver can be compared on.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use webdiffusion::platform::block_on;
use webdiffusion::sampling::analytic::{AnalyticDenoiser, MixtureFile};
pub use webdiffusion::sampling::solvers::MomentData;
use webdiffusion::sampling::solvers::{
    self, AnalyticDpm, AnalyticVariant, Denoiser, GammaRun, Gms, Solver,
};
use webdiffusion::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig};
use webdiffusion::{Exec, Tensor};

use crate::cli_denoise::read_float_npy;

/// Solvers that are not diffusers classes, with what each needs.
pub const RESEARCH: &[(&str, &str)] = &[
    (
        "analytic_dpm",
        "Analytic-DPM (Bao et al. 2022, arXiv:2201.06503); Γ from --moment-data",
    ),
    (
        "analytic_ddim",
        "Analytic-DDIM (same paper, λ = 0); Γ from --moment-data",
    ),
    (
        "gms",
        "Gaussian Mixture Solver (Guo et al. 2023, arXiv:2311.00941); needs a moment model",
    ),
];

/// Other spellings of the research solvers.
pub const RESEARCH_ALIASES: &[(&str, &str)] = &[("analytic_ddpm", "analytic_dpm")];

/// The canonical research solver name, or None.
pub fn research_name(name: &str) -> Option<&'static str> {
    let name = RESEARCH_ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, n)| *n);
    RESEARCH.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)
}

/// `--model gmm:FILE.json` → the file, or None for a model folder.
pub fn gmm_path(model: &Path) -> Option<&Path> {
    model.to_str()?.strip_prefix("gmm:").map(Path::new)
}

/// The exact denoiser of the mixture in `file`, for the schedule of `scheduler` (its ᾱ
/// table maps model times to (α, σ); its prediction type is the output form).
pub fn gmm_model(
    file: &Path,
    scheduler: &SchedulerConfig,
) -> Result<(AnalyticDenoiser, Vec<usize>)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the mixture file {}", file.display()))?;
    let mf = MixtureFile::from_json_str(&text, &file.display().to_string())?;
    if scheduler.class == SchedulerClass::EdmEuler {
        bail!(
            "the gmm model is a discrete-time variance-preserving model (its noise levels come \
             from the DDPM ᾱ table); the consistency sampler's EDM σ-space schedule does not \
             apply to it: pick another solver"
        );
    }
    if scheduler.prediction_type == PredictionType::FlowPrediction {
        bail!(
            "the gmm model follows the variance-preserving process; prediction_type \
             flow_prediction is not one it can give (valid: epsilon, sample, v_prediction)"
        );
    }
    let schedule = Schedule::new(scheduler)?;
    Ok((
        AnalyticDenoiser::new(
            mf.mixture,
            schedule.alphas_cumprod,
            scheduler.prediction_type,
        ),
        mf.sample_shape,
    ))
}

/// The bundled model's held-out digits, compiled into the binary like its weights.
const HELDOUT: &[u8] = include_bytes!("../models/mnist/eval/heldout.safetensors");

pub fn bundled_moment_data() -> Result<MomentData> {
    let (data, labels) = webdiffusion::eval::heldout_digits(HELDOUT)?;
    Ok(MomentData {
        data,
        labels: Some(labels),
        source: "the bundled model's held-out digits (models/mnist/eval/heldout.safetensors)"
            .into(),
    })
}

/// Reads `--moment-data`: float .npy (K, C, H, W), or .safetensors holding either one float
/// tensor (or one named `data`) of that shape, or the held-out digit layout (`images` uint8
/// (K, 28, 28) + `labels` int64, padded to 32×32 in [-1, 1] as the bundled model sees them).
pub fn read_moment_data(path: &Path) -> Result<MomentData> {
    let source = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "npy" {
        let data = read_float_npy(path, "--moment-data", "(K, C, H, W)")?;
        return Ok(MomentData {
            data,
            labels: None,
            source,
        });
    }
    if ext != "safetensors" {
        bail!("--moment-data {source}: expected a .npy or .safetensors file");
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading --moment-data {source}"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("--moment-data {source}: not a safetensors file: {e}"))?;
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    if let Ok(im) = st.tensor("images") {
        if im.dtype() == safetensors::Dtype::U8 {
            let (data, labels) = webdiffusion::eval::heldout_digits(&bytes)
                .with_context(|| format!("--moment-data {source}"))?;
            return Ok(MomentData {
                data,
                labels: Some(labels),
                source,
            });
        }
    }
    let name = if names.len() == 1 {
        names[0].clone()
    } else if names.iter().any(|n| n == "data") {
        "data".to_string()
    } else {
        bail!(
            "--moment-data {source}: {} tensors ({}); give one tensor, or name the data \"data\"",
            names.len(),
            names.join(", ")
        );
    };
    let t = st
        .tensor(&name)
        .map_err(|e| anyhow::anyhow!("--moment-data {source}: {e}"))?;
    let shape = t.shape().to_vec();
    if shape.len() != 4 || shape.contains(&0) {
        bail!(
            "--moment-data {source}: tensor \"{name}\" has shape {shape:?}; expected (K, C, H, W)"
        );
    }
    let raw = t.data();
    use safetensors::Dtype;
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        d => bail!("--moment-data {source}: tensor \"{name}\" is {d:?}; expected a float type"),
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("--moment-data {source}: element {i} of \"{name}\" is not finite");
    }
    Ok(MomentData {
        data: Tensor::from_vec(&shape, v)?,
        labels: None,
        source,
    })
}

/// What the Γ estimate needs to know about the model being sampled.
pub struct GammaSetup<'a> {
    /// (N, C, H, W) of the run.
    pub shape: [usize; 4],
    /// The class labels the model is conditioned on, one per sample of the run.
    pub labels: Option<&'a [usize]>,
    /// The model only takes batches of exactly N (it is conditioned per sample).
    pub fixed_batch: bool,
    pub samples: usize,
    pub seed: u64,
    /// (b − a)/2 of the data range, when known (Analytic-DPM's variance clip).
    pub data_half_range: Option<f64>,
}

/// Γ_t at each of `timesteps` for the CLI run ([`solvers::estimate_gamma_for_run`], with the
/// CLI's option names in its errors), reported on stderr with the time it took.
pub fn estimate_gamma_for_run(
    exec: &mut Exec,
    model: &mut dyn Denoiser,
    scheduler: &SchedulerConfig,
    timesteps: &[f64],
    data: &MomentData,
    setup: &GammaSetup<'_>,
) -> Result<Vec<f64>> {
    let run = GammaRun {
        shape: setup.shape,
        labels: setup.labels,
        fixed_batch: setup.fixed_batch,
        samples: setup.samples,
        seed: setup.seed,
        data_option: "--moment-data",
        samples_option: "--moment-samples",
    };
    let t0 = Instant::now();
    let gamma = block_on(solvers::estimate_gamma_for_run(
        exec, model, scheduler, timesteps, data, &run,
    ))?;
    eprintln!(
        "Γ estimated from {} data samples ({}) in {:.2} s: {}",
        setup.samples,
        data.source,
        t0.elapsed().as_secs_f64(),
        gamma
            .iter()
            .map(|g| format!("{g:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(gamma)
}

/// The Analytic-DPM solver with Γ estimated for this run.
pub fn analytic_solver(
    name: &str,
    exec: &mut Exec,
    model: &mut dyn Denoiser,
    scheduler: &SchedulerConfig,
    steps: usize,
    data: &MomentData,
    setup: &GammaSetup<'_>,
) -> Result<Box<dyn Solver>> {
    let variant = if name == "analytic_ddim" {
        AnalyticVariant::Ddim
    } else {
        AnalyticVariant::Ddpm
    };
    let ts = AnalyticDpm::timesteps_for(scheduler, steps)?;
    let gamma = estimate_gamma_for_run(exec, model, scheduler, &ts, data, setup)?;
    Ok(Box::new(AnalyticDpm::new(
        scheduler,
        steps,
        variant,
        gamma,
        setup.data_half_range,
    )?))
}

/// GMS, after checking that the model gives the moments it needs.
pub fn gms_solver(
    model: &mut dyn Denoiser,
    scheduler: &SchedulerConfig,
    steps: usize,
    guided: bool,
) -> Result<Box<dyn Solver>> {
    if guided {
        bail!(
            "--solver gms: classifier-free guidance combines the model's ε, not its higher \
             moments, so GMS cannot run guided; pass --guidance 1"
        );
    }
    if model.as_moments().is_none() {
        bail!(
            "--solver gms needs a model that predicts E[ε²] and E[ε³] as well as ε: a UNet \
             whose out_channels is 3 × in_channels (channels 0..C = ε, C..2C = E[ε²], \
             2C..3C = E[ε³]), or the exact mixture model --model gmm:FILE.json. This model \
             predicts only its output; use another solver (e.g. analytic_dpm)"
        );
    }
    Ok(Box::new(Gms::new(scheduler, steps)?))
}
