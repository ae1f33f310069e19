//! `webdiffusion sample`: runs a solver from noise to an image (PNG) or array (.npy).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use webdiffusion::image::{batch_to_images, encode_png, grid, prepare_output, write_atomic};
use webdiffusion::models::{ModelConfig, UNet2DModel};
use webdiffusion::platform::block_on;
use webdiffusion::sampling::solvers::{
    initial_noise, sample, solver_from_name, Control, Noise, SolverOptions, SOLVERS,
};
use webdiffusion::sampling::SchedulerConfig;
use webdiffusion::{bundled, Exec, GpuContext, GpuOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// WebGPU through wgpu (Vulkan, Metal, DX12 or GL; lavapipe without a GPU).
    Gpu,
    /// The plain-Rust reference backend (slow; for checking).
    Cpu,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  webdiffusion sample --batch 16 --grid --out digits.png
  webdiffusion sample --class-labels 3 --seed 7 --solver unipc --steps 10 --out three.png
  webdiffusion sample --model path/to/unet --solver ddim --eta 1 --out x.png

Solvers: see `webdiffusion solvers`.")]
pub struct SampleArgs {
    /// A diffusers UNet2DModel folder (config.json + *.safetensors). Default: the bundled
    /// MNIST digit model (32×32, classes 0–9).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The scheduler config (diffusers scheduler_config.json). Default: the one in the model
    /// folder, or in ../scheduler/ next to it (a pipeline folder).
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// Solver name (diffusers class names and k-diffusion names work too).
    #[arg(long, default_value = "dpmpp_2m")]
    pub solver: String,
    /// Number of sampling steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Seed of the noise; random when not given (the seed used is printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Class labels for a class-conditional model, one per sample (comma separated); a single
    /// label applies to the whole batch. Default: 0, 1, 2, … cycling over the classes.
    #[arg(long, value_delimiter = ',')]
    pub class_labels: Vec<usize>,
    /// Number of samples. Default: the number of --class-labels, else 1.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Write the whole batch as one PNG grid (otherwise one PNG per sample: OUT-0.png, …).
    #[arg(long)]
    pub grid: bool,
    /// η of stochastic solvers that take it (DDIM): 0 deterministic, 1 DDPM-like.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Output file. Default: sample-<seed>.png in the current folder.
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
    pub backend: Backend,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The loaded model, from a folder or the bundled one.
struct Loaded {
    name: String,
    config: ModelConfig,
    model: UNet2DModel,
    scheduler: SchedulerConfig,
}

fn load_model(exec: &mut Exec, args: &SampleArgs) -> anyhow::Result<Loaded> {
    let (name, config, model, folder_scheduler) = match &args.model {
        None => (
            bundled::NAME.to_string(),
            bundled::config()?,
            bundled::load(exec)?,
            Some(bundled::scheduler_config()?),
        ),
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
            let mut weights = webdiffusion::weights::Weights::load_model_dir(
                dir,
                &Default::default(),
                |_| {},
            )?;
            let model = UNet2DModel::from_weights(exec, &config.arch, &mut weights, false)?;
            let found = [
                dir.join("scheduler_config.json"),
                dir.join("../scheduler/scheduler_config.json"),
            ]
            .into_iter()
            .find(|p| p.is_file());
            let sched = found
                .map(|p| SchedulerConfig::from_file(p, None))
                .transpose()?;
            (dir.display().to_string(), config, model, sched)
        }
    };
    let scheduler = match (&args.scheduler_config, folder_scheduler) {
        (Some(p), _) => SchedulerConfig::from_file(p, None)?,
        (None, Some(s)) => s,
        (None, None) => bail!(
            "no scheduler_config.json next to the model ({name}); pass --scheduler-config FILE \
             (the file diffusers saves with the scheduler the model was trained with)"
        ),
    };
    Ok(Loaded {
        name,
        config,
        model,
        scheduler,
    })
}

/// Labels for the batch, or None for an unconditional model.
fn class_labels(args: &SampleArgs, model: &UNet2DModel) -> anyhow::Result<Option<Vec<usize>>> {
    let classes = model.arch().num_class_embeds;
    let batch = args.batch;
    match classes {
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
                bail!("class label {bad} is out of range: this model has classes 0..={}", drawable - 1);
            }
            let labels = match (args.class_labels.len(), batch) {
                (0, b) => (0..b.unwrap_or(1)).map(|i| i % drawable).collect(),
                (1, Some(b)) => vec![args.class_labels[0]; b],
                (k, Some(b)) if k != b => bail!(
                    "{k} class labels for a batch of {b}: give one label, or one per sample"
                ),
                _ => args.class_labels.clone(),
            };
            Ok(Some(labels))
        }
    }
}

fn output_paths(out: &Path, n: usize, grid: bool) -> Vec<PathBuf> {
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

fn write_pngs(
    paths: &[PathBuf],
    shape: &[usize],
    data: &[f32],
    as_grid: bool,
    force: bool,
) -> anyhow::Result<()> {
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

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let seed = args.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Keep printed seeds short enough to retype.
        (t ^ (t >> 29)) % 1_000_000_000
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("sample-{seed}.png")));
    let is_npy = out.extension().is_some_and(|e| e == "npy");
    if is_npy {
        bail!(".npy output is not available yet: write a .png");
    }
    if out.extension().is_none_or(|e| e != "png") {
        bail!("--out {}: the file name must end in .png", out.display());
    }

    let mut exec = match args.backend {
        Backend::Gpu => {
            let ctx = block_on(GpuContext::new(&GpuOptions::default()))?;
            Exec::gpu(ctx)
        }
        Backend::Cpu => Exec::cpu(),
    };
    let t_load = Instant::now();
    let mut loaded = load_model(&mut exec, &args)?;
    let labels = class_labels(&args, &loaded.model)?;
    let batch = labels
        .as_ref()
        .map_or(args.batch.unwrap_or(1), |l| l.len());
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let paths = output_paths(&out, batch, args.grid);
    for p in &paths {
        prepare_output(p, args.force)?;
    }
    if let Some(dir) = &args.save_steps {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --save-steps folder {}", dir.display()))?;
    }

    let mut solver = solver_from_name(
        &args.solver,
        &loaded.scheduler,
        args.steps,
        SolverOptions { eta: args.eta },
    )?;
    let arch = loaded.model.arch().clone();
    let (h, w) = loaded.config.sample_size().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: config.json gives no usable sample_size, so the resolution is unknown",
            loaded.name
        )
    })?;
    let shape = [batch, arch.in_channels, h, w];
    loaded.model.set_class_labels(labels.clone());
    eprintln!(
        "model: {} ({} on {}), loaded in {:.2} s",
        loaded.name,
        arch.class.name(),
        exec.backend_name(),
        t_load.elapsed().as_secs_f64()
    );
    println!(
        "seed {seed}, solver {}, {} steps, batch {batch}{}",
        solver.name(),
        args.steps,
        labels
            .as_ref()
            .map(|l| format!(
                ", classes {}",
                l.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
            ))
            .unwrap_or_default()
    );

    let x_t = initial_noise(&mut exec, solver.as_ref(), &shape, seed)?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {per_sec}  elapsed {elapsed}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let gpu = exec.gpu_context().cloned();
    let t_sample = Instant::now();
    let mut step_error: Option<anyhow::Error> = None;
    let save_steps = args.save_steps.clone();
    let result = sample(
        &mut exec,
        solver.as_mut(),
        &mut loaded.model,
        &x_t,
        &mut Noise::Philox { seed },
        |exec, info| {
            if let Some(dir) = &save_steps {
                let r = block_on(exec.read_many(&[info.x, info.x0])).map_err(anyhow::Error::from);
                let r = r.and_then(|v| {
                    for (what, data) in [("x", &v[0]), ("x0", &v[1])] {
                        let p = dir.join(format!("step-{:03}-{what}.png", info.index));
                        write_pngs(&[p], info.x.shape(), data, true, true)?;
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    step_error = Some(e);
                    return Control::Stop;
                }
            }
            // Keep the GPU at most one step ahead so the bar shows real progress.
            if let Some(ctx) = &gpu {
                let _ = ctx.device.poll(wgpu::PollType::wait_indefinitely());
            }
            bar.inc(1);
            Control::Continue
        },
    );
    bar.finish_and_clear();
    if let Some(e) = step_error {
        return Err(e.context("writing --save-steps"));
    }
    let result = result?;
    let data = block_on(exec.read(&result.sample))?;
    let secs = t_sample.elapsed().as_secs_f64();
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!(
            "the sample contains non-finite values (first at element {i}): the model or solver \
             diverged; nothing was written. Try another solver or more steps."
        );
    }
    write_pngs(&paths, &shape, &data, args.grid, args.force)?;
    println!(
        "{} steps in {secs:.2} s ({:.2} steps/s) → {}",
        result.steps,
        result.steps as f64 / secs,
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `webdiffusion solvers`: the names `--solver` takes.
pub fn list_solvers() {
    for (name, class) in SOLVERS {
        println!("{name:<20} {class}");
    }
}
