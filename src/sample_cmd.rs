//! `webdiffusion sample`: runs a solver from noise to an image (PNG) or array (.npy), with
//! an optional live preview window.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use webdiffusion::image::{batch_to_images, encode_png, grid, prepare_output, write_atomic};
use webdiffusion::models::{Conditioning, ModelConfig, UNet};
use webdiffusion::ops::SolverUpdate;
use webdiffusion::platform::block_on;
use webdiffusion::preview::{self, PreviewOptions};
use webdiffusion::sampling::solvers::{
    initial_noise, sample, sample_adaptive, scale_initial_noise, schedule_class_for,
    solver_from_name, AdaptiveOptions, AdaptiveOrder, Control, Denoiser, MomentChannels, Noise,
    Solver, SolverOptions, StepInfo, ALIASES, SOLVERS,
};
use webdiffusion::sampling::{
    FiniteWatch, Guided, PredictionType, Schedule, SchedulerClass, SchedulerConfig,
};
use webdiffusion::weights::WeightDtype;
use webdiffusion::{bundled, npy, Exec, Tensor};

use crate::cli_denoise::{make_exec, read_float_npy, BackendArg};
use crate::sample_research::{
    self as research, research_name, GammaSetup, RESEARCH, RESEARCH_ALIASES,
};

#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:
  webdiffusion sample --batch 16 --grid --out digits.png
  webdiffusion sample --class-labels 3 --batch 8 --grid --guidance 2 --seed 7 --out threes.png
  webdiffusion sample --solver unipc --steps 10 --preview --out digit.png
  webdiffusion sample --model path/to/unet --solver ddim --eta 1 --out x.png
  webdiffusion sample --model sd/unet --encoder-hidden-states cond.npy \\
      --uncond-encoder-hidden-states uncond.npy --guidance 7.5 --out latents.npy
  webdiffusion sample --solver analytic_dpm --steps 10 --guidance 1 --out a.png
  webdiffusion sample --model gmm:mixture.json --solver gms --steps 10 --batch 500 --out g.npy

`webdiffusion solvers` lists the solver names.")]
pub struct SampleArgs {
    /// A diffusers model folder (config.json + *.safetensors; UNet2DModel or
    /// UNet2DConditionModel), or `gmm:FILE.json`: the exact denoiser of a Gaussian mixture
    /// ({"weights": [...], "means": [...], "variances": [...], "shape": [C, H, W]}; see
    /// docs/research-solvers.md), which every solver, GMS included, can sample. A UNet with
    /// out_channels = 3 × in_channels is a moment model (ε, E[ε²], E[ε³] on the channels).
    /// Default: the bundled MNIST digit model (32×32, classes 0–9).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// How Linear and Conv2d weights are stored on the GPU: `f32`, or `f16` (packed pairs
    /// unpacked in the shaders: half the weight memory, outputs within ~1e-3 of f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    pub weights: String,
    /// The scheduler config (diffusers scheduler_config.json). Default: the one in the model
    /// folder, or in ../scheduler/ next to it (a pipeline folder).
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// Solver name (diffusers class names and k-diffusion names work too). Default:
    /// dpmpp_2m, or dpmpp_2m_sde for the bundled model (its best measured quality at few
    /// steps: see BENCHMARKS.md).
    #[arg(long)]
    pub solver: Option<String>,
    /// Number of sampling steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Data samples (K, C, H, W) in the model's range, .npy or .safetensors, over which
    /// analytic_dpm / analytic_ddim estimate Γ_t by Monte Carlo. Default: the held-out digits
    /// for the bundled model, draws of the mixture for a gmm model.
    #[arg(long)]
    pub moment_data: Option<PathBuf>,
    /// How many data samples the Γ estimate averages over (once per run, before sampling).
    #[arg(long, default_value_t = 100)]
    pub moment_samples: usize,
    /// Relative error tolerance of the adaptive solvers (dpm_adaptive_12, dpm_adaptive_23).
    #[arg(long, default_value_t = 0.05)]
    pub rtol: f64,
    /// Absolute error tolerance of the adaptive solvers.
    #[arg(long, default_value_t = 0.0078)]
    pub atol: f64,
    /// Seed of the noise; random when not given (the seed used is printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Class labels for a class-conditional model, one per sample (comma separated); a single
    /// label applies to the whole batch. Default: 0, 1, 2, … cycling over the classes.
    #[arg(long, value_delimiter = ',')]
    pub class_labels: Vec<usize>,
    /// The label of the unconditional pass of classifier-free guidance for a class-conditional
    /// model (the bundled model's is 10).
    #[arg(long)]
    pub uncond_class_label: Option<usize>,
    /// Encoder hidden states (N, L, D) as float32 .npy, for cross-attention models.
    #[arg(long)]
    pub encoder_hidden_states: Option<PathBuf>,
    /// The unconditional encoder hidden states for classifier-free guidance (same shape).
    #[arg(long)]
    pub uncond_encoder_hidden_states: Option<PathBuf>,
    /// Classifier-free guidance scale w (ε̃ = ε_u + w·(ε_c − ε_u)); 1 runs the conditional
    /// model alone. Default: 1, or 2 for the bundled model.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Guidance rescale φ in [0, 1] (arXiv:2305.08891).
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// Number of samples. Default: the number of --class-labels, else 1.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Unit-variance initial noise (N, C, H, W) as .npy, scaled by the scheduler's
    /// init_noise_sigma as diffusers pipelines do (instead of the seeded noise).
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Write the whole batch as one PNG grid (otherwise one PNG per sample: OUT-0.png, …).
    #[arg(long)]
    pub grid: bool,
    /// η of stochastic solvers that take it (DDIM): 0 deterministic, 1 DDPM-like.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Output file, .png or .npy (float32, the raw sample). Default: sample-<seed>.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
    /// Also write x_t and the x₀ prediction after every step as PNGs into this folder
    /// (reads each step back: slower).
    #[arg(long)]
    pub save_steps: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value = "gpu")]
    pub backend: BackendArg,
    /// Open a window showing x_t and the x₀ prediction after every step, then the result
    /// until the window is closed (GPU backend only; needs a display).
    #[arg(long)]
    pub preview: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// The scalar condition of a consistency model that has one (the terrain model's
    /// difficulty, 0 to 1): one value for the batch or one per sample, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub difficulty: Vec<f32>,
    /// σ points of a consistency model (GuidedUNetModel), decreasing, comma separated: one
    /// (default σ_max = 80) is one-step generation; more re-noise and denoise again
    /// (consistency multistep sampling, e.g. 80,2).
    #[arg(long, value_delimiter = ',')]
    pub sigmas: Vec<f64>,
    /// How a PNG shows a consistency model's sample: `relief` (shaded relief: hillshade
    /// and elevation tint, the terrain model's default) or `image` (grey); a galaxy
    /// model's: `asinh` (its default: flux x = e^(0.1·y) − 1, asinh stretch) or `image`.
    #[arg(long, value_enum)]
    pub render: Option<RenderArg>,
}

/// `--render`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderArg {
    Image,
    Relief,
    /// A galaxy model's default: the data transform inverted, asinh stretch.
    Asinh,
}

impl SampleArgs {
    /// The solver name (defaults resolved at the start of [`run`]).
    fn solver(&self) -> &str {
        self.solver.as_deref().unwrap_or("dpmpp_2m")
    }

    fn guidance(&self) -> f64 {
        self.guidance.unwrap_or(1.0)
    }
}

/// The model and what it is conditioned on, ready to sample.
struct Prepared {
    name: String,
    denoiser: Box<dyn Denoiser>,
    scheduler: SchedulerConfig,
    shape: [usize; 4],
    labels: Option<Vec<usize>>,
    /// The model is conditioned per sample (labels or encoder states): batches of N only.
    fixed_batch: bool,
    guided: bool,
    /// Default data for Γ (bundled digits, mixture draws), when there is one.
    moment_data: Option<research::MomentData>,
    /// (b − a)/2 of the data range, when known (Analytic-DPM's variance clip).
    data_half_range: Option<f64>,
}

/// The schedule class a solver name loads the scheduler config as.
fn class_for(name: &str) -> Option<SchedulerClass> {
    if research_name(name).is_some() {
        return Some(SchedulerClass::Ddpm);
    }
    schedule_class_for(name)
}

fn load_unet(
    exec: &mut Exec,
    args: &SampleArgs,
) -> Result<(String, ModelConfig, UNet, Option<SchedulerConfig>)> {
    let dtype = WeightDtype::parse(&args.weights)?;
    match &args.model {
        None => Ok((
            bundled::NAME.to_string(),
            bundled::config()?,
            bundled::load_with(exec, dtype)?.0.into_inner(),
            Some(bundled::scheduler_config()?),
        )),
        Some(dir) => {
            if !dir.is_dir() {
                bail!(
                    "model folder {} does not exist (or is not a folder); give a diffusers \
                     model folder holding config.json and the safetensors weights, or leave \
                     out --model to use the bundled digit model",
                    dir.display()
                );
            }
            let config = ModelConfig::from_file(dir.join("config.json"))?;
            let unet = UNet::load_dir_with(exec, dir, dtype)
                .with_context(|| format!("loading the model in {}", dir.display()))?
                .0;
            let class = class_for(args.solver());
            let sched = [
                dir.join("scheduler_config.json"),
                dir.join("../scheduler/scheduler_config.json"),
            ]
            .into_iter()
            .find(|p| p.is_file())
            .map(|p| SchedulerConfig::from_file(p, class))
            .transpose()?;
            Ok((dir.display().to_string(), config, unet, sched))
        }
    }
}

/// Labels for the batch, or None for a model without class embedding.
fn class_labels(args: &SampleArgs, unet: &UNet) -> Result<Option<Vec<usize>>> {
    match unet.arch().num_class_embeds {
        None => {
            if !args.class_labels.is_empty() {
                bail!("--class-labels given, but the model is not class-conditional (its config has no num_class_embeds)");
            }
            Ok(None)
        }
        Some(n) => {
            // The bundled model's last embedding is its "no class" label, not a class to draw.
            let drawable = if args.model.is_none() {
                bundled::CLASSES
            } else {
                n
            };
            if let Some(bad) = args.class_labels.iter().find(|&&l| l >= drawable) {
                bail!(
                    "class label {bad} is out of range: this model has classes 0..={}",
                    drawable - 1
                );
            }
            // The default cycle skips the unconditional label: it is no class to draw.
            let cycle: Vec<usize> = (0..drawable)
                .filter(|&l| Some(l) != args.uncond_class_label)
                .collect();
            if cycle.is_empty() {
                bail!("the model's only class label is the unconditional one (--uncond-class-label); give --class-labels");
            }
            Ok(Some(match (args.class_labels.len(), args.batch) {
                (0, b) => (0..b.unwrap_or(1))
                    .map(|i| cycle[i % cycle.len()])
                    .collect(),
                (1, Some(b)) => vec![args.class_labels[0]; b],
                (k, Some(b)) if k != b => {
                    bail!("{k} class labels for a batch of {b}: give one label, or one per sample")
                }
                _ => args.class_labels.clone(),
            }))
        }
    }
}

/// `--model gmm:FILE.json`: the exact mixture denoiser, unconditioned.
fn prepare_gmm(file: &Path, args: &SampleArgs, seed: u64) -> Result<Prepared> {
    let class = class_for(args.solver());
    let scheduler = match &args.scheduler_config {
        Some(p) => SchedulerConfig::from_file(p, class)?,
        // diffusers' defaults for the solver's class (DDPM's linear β for the research ones).
        None => SchedulerConfig::new(class.unwrap_or(SchedulerClass::Ddpm)),
    };
    if !args.class_labels.is_empty()
        || args.encoder_hidden_states.is_some()
        || args.uncond_encoder_hidden_states.is_some()
        || args.guidance() != 1.0
        || args.guidance_rescale != 0.0
    {
        bail!("--model gmm: is an unconditional model: class labels, encoder hidden states and guidance do not apply");
    }
    let (model, sample_shape) = research::gmm_model(file, &scheduler)?;
    let batch = args.batch.unwrap_or(1);
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let shape = [batch, sample_shape[0], sample_shape[1], sample_shape[2]];
    let k = args.moment_samples;
    let draws = model.mixture.sample(k, seed ^ 0x9e37_79b9_7f4a_7c15);
    let moment_data = research::MomentData {
        data: Tensor::from_vec(&[k, shape[1], shape[2], shape[3]], draws)?,
        labels: None,
        source: format!("{k} draws of the mixture"),
    };
    Ok(Prepared {
        name: format!("Gaussian mixture {}", file.display()),
        denoiser: Box::new(model),
        scheduler,
        shape,
        labels: None,
        fixed_batch: false,
        guided: false,
        moment_data: Some(moment_data),
        data_half_range: None,
    })
}

fn prepare(exec: &mut Exec, args: &SampleArgs, seed: u64) -> Result<Prepared> {
    if let Some(file) = args.model.as_deref().and_then(research::gmm_path) {
        return prepare_gmm(file, args, seed);
    }
    let (name, config, mut unet, folder_sched) = load_unet(exec, args)?;
    let class = class_for(args.solver());
    let scheduler = match (&args.scheduler_config, folder_sched) {
        (Some(p), _) => SchedulerConfig::from_file(p, class)?,
        (None, Some(s)) => s,
        (None, None) => bail!(
            "no scheduler_config.json next to the model ({name}); pass --scheduler-config FILE \
             (the file diffusers saves with the scheduler the model was trained with)"
        ),
    };
    let labels = class_labels(args, &unet)?;
    let ehs = args
        .encoder_hidden_states
        .as_deref()
        .map(|p| read_float_npy(p, "--encoder-hidden-states", "(N, L, D)"))
        .transpose()?;
    let uncond_ehs = args
        .uncond_encoder_hidden_states
        .as_deref()
        .map(|p| read_float_npy(p, "--uncond-encoder-hidden-states", "(N, L, D)"))
        .transpose()?;
    let batch = match (&labels, &ehs, args.batch) {
        (Some(l), _, _) => l.len(),
        (None, Some(e), b) => {
            let n = e.shape()[0];
            if b.is_some_and(|b| b != n) {
                bail!(
                    "--batch {} but the encoder hidden states hold {n} samples",
                    b.unwrap_or(0)
                );
            }
            n
        }
        (None, None, b) => b.unwrap_or(1),
    };
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let arch = unet.arch().clone();
    let (h, w) = config.sample_size().ok_or_else(|| {
        anyhow::anyhow!(
            "{name}: config.json gives no usable sample_size, so the resolution is unknown"
        )
    })?;
    let shape = [batch, arch.in_channels, h, w];
    // A moment model (GMS's noise networks): ε, E[ε²], E[ε³] stacked on the channels.
    let moments = arch.out_channels == 3 * arch.in_channels;
    if moments && scheduler.prediction_type != PredictionType::Epsilon {
        bail!(
            "{name}: out_channels = 3 × in_channels makes this a moment model (ε, E[ε²],              E[ε³]), which predicts ε, but its scheduler config says prediction_type {};              set it to epsilon",
            scheduler.prediction_type.name()
        );
    }
    let fixed_batch = labels.is_some() || ehs.is_some();

    let guided = args.guidance() != 1.0 || args.guidance_rescale != 0.0;
    let denoiser: Box<dyn Denoiser> = if guided {
        let uncond_labels = match (&labels, args.uncond_class_label) {
            (None, Some(_)) => {
                bail!("--uncond-class-label given, but the model is not class-conditional")
            }
            (None, None) => None,
            (Some(l), Some(u)) => Some(vec![u; l.len()]),
            (Some(l), None) if args.model.is_none() => Some(vec![bundled::NULL_CLASS; l.len()]),
            (Some(_), None) => bail!(
                "--guidance needs the unconditional label of this class-conditional model: \
                 pass --uncond-class-label K (the \"no class\" label it was trained with)"
            ),
        };
        if ehs.is_some() != uncond_ehs.is_some() {
            bail!("--guidance with a cross-attention model needs both --encoder-hidden-states and --uncond-encoder-hidden-states");
        }
        let cond = Conditioning {
            class_labels: labels.as_deref(),
            encoder_hidden_states: ehs.as_ref(),
            timestep_cond: None,
        };
        let uncond = Conditioning {
            class_labels: uncond_labels.as_deref(),
            encoder_hidden_states: uncond_ehs.as_ref(),
            timestep_cond: None,
        };
        let g = Guided::for_unet(exec, unet, cond, uncond, args.guidance())?;
        if moments {
            // Guide the ε block only: the conditioned UNet inside the moment split.
            let unet = g.into_inner();
            let m = MomentChannels::new(unet, arch.in_channels)?;
            Box::new(Guided::new(m, args.guidance())?.with_rescale(args.guidance_rescale)?)
        } else {
            Box::new(g.with_rescale(args.guidance_rescale)?)
        }
    } else {
        if uncond_ehs.is_some() {
            bail!("--uncond-encoder-hidden-states is only used with --guidance W (W ≠ 1)");
        }
        unet.set_class_labels(labels.clone());
        unet.set_encoder_hidden_states(exec, ehs.as_ref())?;
        if moments {
            Box::new(MomentChannels::new(unet, arch.in_channels)?)
        } else {
            Box::new(unet)
        }
    };
    let bundled_model = args.model.is_none();
    Ok(Prepared {
        name,
        denoiser,
        scheduler,
        shape,
        labels,
        fixed_batch,
        guided,
        moment_data: None,
        // Image models work in [-1, 1]; only the bundled one is known to.
        data_half_range: bundled_model.then_some(1.0),
    })
}

pub(crate) fn output_paths(out: &Path, n: usize, grid: bool) -> Vec<PathBuf> {
    if n == 1 || grid || out.extension().is_some_and(|e| e == "npy") {
        return vec![out.to_path_buf()];
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sample".into());
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (0..n)
        .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

pub(crate) fn write_pngs(
    paths: &[PathBuf],
    shape: &[usize],
    data: &[f32],
    as_grid: bool,
    force: bool,
) -> Result<()> {
    let images = batch_to_images(shape, data)?;
    if as_grid || images.len() == 1 {
        let im = if images.len() == 1 {
            images[0].clone()
        } else {
            grid(&images, 2, 0)?
        };
        write_atomic(&paths[0], &encode_png(&im)?, force)?;
    } else {
        for (p, im) in paths.iter().zip(&images) {
            write_atomic(p, &encode_png(im)?, force)?;
        }
    }
    Ok(())
}

fn write_outputs(
    args: &SampleArgs,
    paths: &[PathBuf],
    shape: &[usize],
    data: &[f32],
) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!(
            "the sample contains non-finite values (first at element {i}): the model or solver \
             diverged; nothing was written. Try another solver or more steps."
        );
    }
    if paths[0].extension().is_some_and(|e| e == "npy") {
        write_atomic(&paths[0], &npy::to_bytes(shape, data)?, args.force)?;
    } else {
        write_pngs(paths, shape, data, args.grid, args.force)?;
    }
    Ok(())
}

/// What a run produced.
struct Sampled {
    shape: Vec<usize>,
    sample: Tensor,
    /// Steps taken (accepted steps for the adaptive solvers).
    steps: usize,
    /// Sampling time (after loading).
    secs: f64,
}

/// The adaptive DPM-Solvers (Lu et al. 2022, arXiv:2206.00927, Sec. 4): not `Solver`s,
/// their step count is decided at run time from an error norm.
const ADAPTIVE: &[(&str, AdaptiveOrder)] = &[
    ("dpm_adaptive_12", AdaptiveOrder::O12),
    ("dpm_adaptive_23", AdaptiveOrder::O23),
];

fn adaptive_order(name: &str) -> Option<AdaptiveOrder> {
    ADAPTIVE.iter().find(|(n, _)| *n == name).map(|(_, o)| *o)
}

/// `--solver dpm_adaptive_12|23`: from t = T to 0 with error-controlled steps (`--rtol`,
/// `--atol`; `--steps` does not apply). Each attempted step reads an error norm back, so
/// there is no per-step preview.
fn run_adaptive(
    exec: &mut Exec,
    args: &SampleArgs,
    seed: u64,
    mut p: Prepared,
    order: AdaptiveOrder,
) -> Result<Sampled> {
    if args.preview || args.save_steps.is_some() || args.init_noise.is_some() {
        bail!("--preview, --save-steps and --init-noise are not available with the adaptive solvers (their steps are decided while they run)");
    }
    let schedule = Schedule::new(&p.scheduler)?;
    println!(
        "seed {seed}, solver {} (rtol {}, atol {}), batch {}",
        args.solver(),
        args.rtol,
        args.atol,
        p.shape[0]
    );
    // The same x_T as the other variance-preserving solvers draw for this seed.
    let x_t = exec.run(&SolverUpdate::noise(&p.shape, 1.0, seed, u32::MAX, 0), &[])?;
    let opts = AdaptiveOptions {
        order,
        rtol: args.rtol,
        atol: args.atol,
        ..Default::default()
    };
    let t0 = Instant::now();
    let res = block_on(sample_adaptive(
        exec,
        p.denoiser.as_mut(),
        &schedule.alphas_cumprod,
        p.scheduler.prediction_type,
        &x_t,
        opts,
    ))?;
    eprintln!(
        "adaptive: {} accepted steps, {} rejected, {} model evaluations",
        res.timesteps.len(),
        res.rejected,
        res.model_calls
    );
    Ok(Sampled {
        shape: p.shape.to_vec(),
        sample: res.sample,
        steps: res.timesteps.len(),
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// The solver by name; the research ones get their Γ table or moment check here.
fn make_solver(
    exec: &mut Exec,
    args: &SampleArgs,
    seed: u64,
    p: &mut Prepared,
) -> Result<Box<dyn Solver>> {
    check_sigma_options(&p.scheduler, args.solver())?;
    let research = research_name(args.solver());
    if args.moment_data.is_some() && !matches!(research, Some("analytic_dpm" | "analytic_ddim")) {
        bail!("--moment-data is only used by --solver analytic_dpm / analytic_ddim");
    }
    match research {
        Some("gms") => {
            research::gms_solver(p.denoiser.as_mut(), &p.scheduler, args.steps, p.guided)
        }
        Some(name) => {
            let data = match (&args.moment_data, p.moment_data.take()) {
                (Some(path), _) => research::read_moment_data(path)?,
                (None, Some(d)) => d,
                (None, None) if args.model.is_none() => research::bundled_moment_data()?,
                (None, None) => bail!(
                    "--solver {name} estimates Γ from data samples: pass --moment-data FILE \
                     (.npy or .safetensors, (K, C, H, W) in the model's range)"
                ),
            };
            let setup = GammaSetup {
                shape: p.shape,
                labels: p.labels.as_deref(),
                fixed_batch: p.fixed_batch,
                samples: args.moment_samples,
                seed: seed ^ 0x5bd1_e995,
                data_half_range: p.data_half_range,
            };
            research::analytic_solver(
                name,
                exec,
                p.denoiser.as_mut(),
                &p.scheduler,
                args.steps,
                &data,
                &setup,
            )
        }
        None => Ok(solver_from_name(
            args.solver(),
            &p.scheduler,
            args.steps,
            SolverOptions { eta: args.eta },
        )?),
    }
}

/// Sigma-schedule switches that only some schedulers take. diffusers' `from_config` drops
/// a key its class does not take, so a Karras config quietly gives a non-Karras run on
/// another class; an explicit `true` the chosen solver cannot honour is an error instead.
const SIGMA_KEYS: &[&str] = &[
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
];

fn check_sigma_options(sched: &SchedulerConfig, solver: &str) -> Result<()> {
    for key in SIGMA_KEYS {
        if sched.other.get(*key) != Some(&serde_json::Value::Bool(true)) {
            continue;
        }
        // The solvers whose scheduler class reads the key (it does not land in `other`).
        let json = serde_json::json!({ *key: true });
        let takers: Vec<&str> = SOLVERS
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| {
                class_for(n)
                    .and_then(|c| SchedulerConfig::from_json_value(&json, "probe", Some(c)).ok())
                    .is_some_and(|c| !c.other.contains_key(*key))
            })
            .collect();
        bail!(
            "{key} = true, but the {solver} solver's scheduler has no such sigma schedule \
             (diffusers would ignore it silently); set it to false, or use a solver that takes \
             it: {}",
            takers.join(", ")
        );
    }
    Ok(())
}

/// Every name `--solver` takes, for errors.
fn all_solver_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = SOLVERS.iter().map(|(n, _)| *n).collect();
    v.extend(ADAPTIVE.iter().map(|(n, _)| *n));
    v.extend(RESEARCH.iter().map(|(n, _)| *n));
    v.extend(ALIASES.iter().map(|(a, _)| *a));
    v.extend(RESEARCH_ALIASES.iter().map(|(a, _)| *a));
    v
}

/// Everything from loading to the final sample on `exec`; `show` sees every step (the
/// preview window), after the progress bar and --save-steps.
fn run_on(
    exec: &mut Exec,
    args: &SampleArgs,
    seed: u64,
    show: &mut dyn FnMut(&mut Exec, &StepInfo<'_>) -> Control,
) -> Result<Sampled> {
    let t_load = Instant::now();
    let mut p = prepare(exec, args, seed)?;
    if let Some(order) = adaptive_order(args.solver()) {
        eprintln!(
            "model: {} on {}, loaded in {:.2} s",
            p.name,
            exec.backend_name(),
            t_load.elapsed().as_secs_f64()
        );
        return run_adaptive(exec, args, seed, p, order);
    }
    eprintln!(
        "model: {} on {}, loaded in {:.2} s",
        p.name,
        exec.backend_name(),
        t_load.elapsed().as_secs_f64()
    );
    let mut solver = make_solver(exec, args, seed, &mut p)?;
    println!(
        "seed {seed}, solver {}, {} steps, batch {}{}{}",
        solver.name(),
        solver.num_steps(),
        p.shape[0],
        p.labels
            .as_ref()
            .map(|l| format!(
                ", classes {}",
                l.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .unwrap_or_default(),
        if args.guidance() != 1.0 {
            format!(", guidance {}", args.guidance())
        } else {
            String::new()
        }
    );
    let x_t = match &args.init_noise {
        None => initial_noise(exec, solver.as_ref(), &p.shape, seed)?,
        Some(path) => {
            let z = read_float_npy(path, "--init-noise", "(N, C, H, W)")?;
            if z.shape() != p.shape {
                bail!(
                    "{}: --init-noise has shape {:?}; this run needs {:?} (batch, channels, height, width)",
                    path.display(),
                    z.shape(),
                    p.shape
                );
            }
            scale_initial_noise(exec, solver.as_ref(), &z)?
        }
    };
    let total = solver.num_steps();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {per_sec}  elapsed {elapsed}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let gpu = exec.gpu_context().cloned();
    let mut step_error: Option<anyhow::Error> = None;
    let mut watch = FiniteWatch::new();
    let t0 = Instant::now();
    let result = sample(
        exec,
        solver.as_mut(),
        p.denoiser.as_mut(),
        &x_t,
        &mut Noise::Philox { seed },
        |exec, info| {
            if let Err(e) = watch.record(exec, info) {
                step_error = Some(e.into());
                return Control::Stop;
            }
            if let Some(dir) = &args.save_steps {
                let r = block_on(exec.read_many(&[info.x, info.x0]))
                    .map_err(anyhow::Error::from)
                    .and_then(|v| {
                        for (what, data) in [("x", &v[0]), ("x0", &v[1])] {
                            let p = dir.join(format!("step-{:03}-{what}.png", info.index + 1));
                            write_pngs(&[p], info.x.shape(), data, true, true)?;
                        }
                        Ok(())
                    });
                if let Err(e) = r {
                    step_error = Some(e.context("writing --save-steps"));
                    return Control::Stop;
                }
            }
            let control = show(exec, info);
            // Keep the GPU at most one step ahead so the bar shows real progress.
            if let Some(ctx) = &gpu {
                let _ = ctx.device.poll(wgpu::PollType::wait_indefinitely());
            }
            bar.inc(1);
            control
        },
    );
    bar.finish_and_clear();
    if let Some(e) = step_error {
        return Err(e);
    }
    let out = result?;
    block_on(watch.check(exec))?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Sampled {
        shape: p.shape.to_vec(),
        sample: out.sample,
        steps: solver.num_steps(),
        secs,
    })
}

pub fn run(mut args: SampleArgs) -> Result<()> {
    if let Some(dir) = args
        .model
        .clone()
        .filter(|d| crate::guided_cmd::is_guided(d))
    {
        let seed = args.seed.unwrap_or_else(random_seed);
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| crate::guided_cmd::default_out(seed));
        crate::guided_cmd::check_out(&out, args.force)?;
        return crate::guided_cmd::run(&args, &dir, seed, &out);
    }
    if let Some(dir) = args
        .model
        .clone()
        .filter(|d| crate::galaxy_cmd::is_galaxy(d))
    {
        let seed = args.seed.unwrap_or_else(random_seed);
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| crate::galaxy_cmd::default_out(seed));
        crate::guided_cmd::check_out(&out, args.force)?;
        return crate::galaxy_cmd::run(&args, &dir, seed, &out);
    }
    if !args.difficulty.is_empty() || !args.sigmas.is_empty() || args.render.is_some() {
        bail!(
            "--difficulty, --sigmas and --render apply to consistency models (a --model folder \
             whose config.json is a GuidedUNetModel, e.g. from scripts/setup-terrain.sh)"
        );
    }
    let bundled_model = args.model.is_none();
    args.solver.get_or_insert_with(|| {
        if bundled_model {
            "dpmpp_2m_sde"
        } else {
            "dpmpp_2m"
        }
        .to_string()
    });
    args.guidance
        .get_or_insert(if bundled_model { 2.0 } else { 1.0 });
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let name = args.solver();
    if adaptive_order(name).is_none() && class_for(name).is_none() {
        bail!(
            "unknown solver \"{name}\"; valid: {} (`webdiffusion solvers` describes them)",
            all_solver_names().join(", ")
        );
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("sample-{seed}.png")));
    if !out.extension().is_some_and(|e| e == "png" || e == "npy") {
        bail!(
            "--out {}: the file name must end in .png or .npy",
            out.display()
        );
    }
    if args.preview && args.backend == BackendArg::Cpu {
        bail!("--preview draws on the GPU; use it with --backend gpu");
    }
    if let Some(dir) = &args.save_steps {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --save-steps folder {}", dir.display()))?;
    }
    // The batch is known only once the model is loaded; check the single-file case now so a
    // clobber is refused before anything runs, and the rest before sampling starts.
    prepare_output(&out, args.force)?;

    let finish = |exec: &mut Exec, r: &Sampled| -> Result<()> {
        let (shape, steps, secs) = (&r.shape, r.steps, r.secs);
        let paths = output_paths(&out, shape[0], args.grid);
        for p in &paths {
            prepare_output(p, args.force)?;
        }
        let data = block_on(exec.read(&r.sample))?;
        write_outputs(&args, &paths, shape, &data)?;
        println!(
            "{steps} steps in {secs:.2} s ({:.2} steps/s) → {}",
            steps as f64 / secs,
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    };

    if args.preview {
        let opts = PreviewOptions::new(format!(
            "webdiffusion sample — {}, seed {seed}",
            args.solver()
        ));
        preview::run(&opts, |ctx, sink| {
            let mut exec = Exec::gpu(ctx);
            let mut closed = None;
            let r = {
                let mut cb = sink.step_callback(&mut closed);
                run_on(&mut exec, &args, seed, &mut cb).map_err(to_lib)?
            };
            if let Some(e) = closed {
                return Err(e);
            }
            finish(&mut exec, &r).map_err(to_lib)?;
            sink.show_image(&mut exec, &r.sample, "done: close the window to exit")?;
            Ok(())
        })?;
        Ok(())
    } else {
        let mut exec = make_exec(args.backend)?;
        let r = run_on(&mut exec, &args, seed, &mut |_, _| Control::Continue)?;
        finish(&mut exec, &r)
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Short enough to retype.
    (t ^ (t >> 29)) % 1_000_000_000
}

/// An anyhow error carried through the preview's library `Result`.
fn to_lib(e: anyhow::Error) -> webdiffusion::Error {
    webdiffusion::Error::InvalidArgument {
        op: "sample",
        message: format!("{e:#}"),
    }
}

/// `webdiffusion solvers`: the names `--solver` takes. Write errors (a closed pipe, as in
/// `webdiffusion solvers | head`) end the listing quietly instead of panicking.
pub fn list_solvers() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = (|| -> std::io::Result<()> {
        writeln!(out, "{:<22} diffusers class", "solver")?;
        for (name, class) in SOLVERS {
            writeln!(out, "{name:<22} {class}")?;
        }
        for (name, _) in ADAPTIVE {
            writeln!(
                out,
                "{name:<22} DPM-Solver adaptive step size (Lu et al. 2022, Sec. 4; --rtol, --atol)"
            )?;
        }
        for (name, what) in RESEARCH {
            writeln!(out, "{name:<22} {what}")?;
        }
        writeln!(out, "\naliases:")?;
        for (alias, name) in ALIASES.iter().chain(RESEARCH_ALIASES) {
            writeln!(out, "{alias:<34} → {name}")?;
        }
        Ok(())
    })();
}
