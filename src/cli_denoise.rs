//! `webdiffusion denoise` and `webdiffusion info --model`, plus the pieces other subcommands
//! share: choosing a backend, loading any diffusers UNet folder, reading conditioning inputs
//! from `.npy` files and parsing comma-separated lists.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use webdiffusion::models::config::ModelConfig;
use webdiffusion::models::{info, Conditioning, UNet};
use webdiffusion::npy::{self, Npy};
use webdiffusion::weights::{LoadOptions, Weights};
use webdiffusion::{platform::block_on, Exec, GpuContext, GpuOptions, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Gpu,
    Cpu,
}

/// An executor on the chosen backend (the GPU one prints nothing; errors say what to do).
pub fn make_exec(backend: BackendArg) -> Result<Exec> {
    Ok(match backend {
        BackendArg::Cpu => Exec::cpu(),
        BackendArg::Gpu => Exec::gpu(block_on(GpuContext::new(&GpuOptions::default()))?),
    })
}

/// Loads a diffusers model folder of either UNet class (by `config.json`'s `_class_name`).
pub fn load_model(exec: &mut Exec, dir: &Path) -> Result<UNet> {
    UNet::load_dir(exec, dir).with_context(|| format!("loading the model in {}", dir.display()))
}

/// Reads a floating-point `.npy` file (`<f4`, or `<f2`/`<f8` converted) as a tensor, checking
/// its rank; `what` names it in errors.
pub fn read_float_npy(path: &Path, what: &str, layout: &str) -> Result<Tensor> {
    let a: Npy = npy::read(path)?;
    if !matches!(a.descr.as_str(), "<f4" | "<f2" | "<f8") {
        bail!(
            "{}: {what} has dtype '{}'; expected float32 ('<f4', or '<f2'/'<f8') {layout}",
            path.display(),
            a.descr
        );
    }
    let rank = layout.matches(',').count() + 1;
    if a.shape.len() != rank || a.shape.contains(&0) {
        bail!(
            "{}: {what} has shape {:?}; expected {layout}",
            path.display(),
            a.shape
        );
    }
    Ok(a.into_tensor()?)
}

/// `"1,2.5"` → `[1.0, 2.5]`.
pub fn parse_list<T: std::str::FromStr>(text: &str, what: &str) -> Result<Vec<T>> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|_| anyhow!("{what}: cannot parse {s:?} in {text:?}"))
        })
        .collect()
}

#[derive(Args)]
pub struct DenoiseArgs {
    /// A diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// The noisy sample, float32 .npy of shape (N, in_channels, H, W).
    #[arg(long)]
    input: PathBuf,
    /// One timestep for the batch, or one per sample, comma-separated.
    #[arg(long)]
    timestep: String,
    /// Class labels, one per sample, comma-separated (class-conditional models).
    #[arg(long)]
    class_labels: Option<String>,
    /// Encoder hidden states, float32 .npy of shape (N, L, cross_attention_dim).
    #[arg(long)]
    encoder_hidden_states: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "gpu")]
    backend: BackendArg,
    /// Where to write the model output (float32 .npy).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn denoise(a: DenoiseArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!("{} exists; pass --force to overwrite it", a.out.display());
    }
    let timesteps: Vec<f64> = parse_list(&a.timestep, "--timestep")?;
    let labels: Option<Vec<usize>> = a
        .class_labels
        .as_deref()
        .map(|s| parse_list(s, "--class-labels"))
        .transpose()?;
    let mut exec = make_exec(a.backend)?;
    let model = load_model(&mut exec, &a.model)?;
    let arch = model.arch();
    let layout = format!("(N, {}, H, W)", arch.in_channels);
    let x = read_float_npy(&a.input, "--input", &layout)?;
    if x.shape()[1] != arch.in_channels {
        bail!(
            "{}: --input has shape {:?}; expected {layout} (the model's in_channels is {})",
            a.input.display(),
            x.shape(),
            arch.in_channels
        );
    }
    let ehs = match &a.encoder_hidden_states {
        Some(p) => {
            let dim = arch
                .cross_attention_dim
                .map_or("D".to_string(), |d| d.to_string());
            Some(read_float_npy(
                p,
                "--encoder-hidden-states",
                &format!("(N, L, {dim})"),
            )?)
        }
        None => None,
    };
    let x = exec.upload(&x)?;
    let cond = Conditioning {
        class_labels: labels.as_deref(),
        encoder_hidden_states: ehs.as_ref(),
        timestep_cond: None,
    };
    let y = model.run(&mut exec, &x, &timesteps, cond)?;
    let data = block_on(exec.read(&y))?;
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!(
            "the model output holds a non-finite value ({} at flat index {i}); nothing written",
            data[i]
        );
    }
    npy::write(&a.out, y.shape(), &data)?;
    eprintln!(
        "wrote {} {:?} ({} backend)",
        a.out.display(),
        y.shape(),
        exec.backend_name()
    );
    Ok(())
}

/// Prints what `info --model` reports: parameters, weight bytes, blocks, and the estimated
/// peak activation memory at `resolution` (default: the config's `sample_size`, else 64).
pub fn print_model_info(
    dir: &Path,
    resolution: Option<(usize, usize)>,
    batch: usize,
) -> Result<()> {
    let config = ModelConfig::from_file(dir.join("config.json"))?;
    let arch = &config.arch;
    let w = Weights::load_model_dir(dir, &LoadOptions::default(), |_| {})?;
    let params: u64 = w
        .names()
        .filter_map(|n| w.shape(n))
        .map(|s| s.iter().product::<usize>() as u64)
        .sum();
    println!("model: {} ({})", dir.display(), arch.class.name());
    println!(
        "parameters: {params} ({:.2} M); weights on the device: {} bytes ({:.1} MiB as f32)",
        params as f64 / 1e6,
        params * 4,
        (params * 4) as f64 / (1 << 20) as f64
    );
    if let Some(d) = arch.cross_attention_dim {
        println!("cross_attention_dim: {d}");
    }
    if let Some(k) = arch.num_class_embeds {
        println!("class labels: 0 to {}", k - 1);
    }
    println!("blocks:");
    for line in info::block_list(arch) {
        println!("  {line}");
    }
    let (h, wd) = resolution.unwrap_or_else(|| {
        let s = match &config.config {
            webdiffusion::models::config::UNetConfig::UNet2D(c) => c.sample_size.clone(),
            webdiffusion::models::config::UNetConfig::UNet2DCondition(c) => c.sample_size.clone(),
        };
        match s {
            Some(webdiffusion::models::config::OneOrMany::One(v)) => (v, v),
            Some(webdiffusion::models::config::OneOrMany::Many(v)) if v.len() == 2 => (v[0], v[1]),
            _ => (64, 64),
        }
    });
    let tokens = 77;
    let peak = info::peak_activation_bytes(arch, batch, h, wd, tokens);
    println!(
        "peak activations (estimate, batch {batch}, {h}×{wd}{}): {peak} bytes ({:.1} MiB)",
        if arch.cross_attention_dim.is_some() {
            format!(", {tokens} encoder tokens")
        } else {
            String::new()
        },
        peak as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// `webdiffusion info <repo> --width W --height H`: the Stable Diffusion memory plan, checked
/// against this adapter's limits when there is one.
pub fn print_sd_plan(
    dir: &Path,
    (width, height, batch): (usize, usize, usize),
    vae_tiling: &str,
    low_power: bool,
) -> Result<()> {
    use webdiffusion::pipeline::plan::{PlanLimits, VaeTiling};
    let tiling = VaeTiling::parse(vae_tiling)?;
    let inputs = webdiffusion::pipeline::sd::plan_inputs_for_dir(dir)?;
    println!("stable diffusion repository: {}", dir.display());
    let ctx = webdiffusion::platform::block_on(webdiffusion::GpuContext::new(
        &webdiffusion::GpuOptions {
            high_performance: !low_power,
            ..Default::default()
        },
    ));
    let (limits, name) = match &ctx {
        Ok(ctx) => (PlanLimits::from_caps(&ctx.caps), "this adapter's limits"),
        Err(_) => (
            PlanLimits::WEBGPU_DEFAULT,
            "WebGPU's default limits (no adapter)",
        ),
    };
    // Classifier-free guidance doubles the UNet batch, except for LCM-distilled UNets (a
    // guidance embedding instead; diffusers never runs CFG with them).
    let cfg = inputs.unet.time_cond_proj_dim.is_none();
    match inputs.plan_checked(width, height, batch, cfg, false, tiling, Some(&limits)) {
        Ok(plan) => {
            for line in plan.report() {
                println!("{line}");
            }
            println!("fits {name}");
        }
        Err(e) => {
            let tile = match tiling {
                VaeTiling::Tile(t) => Some(t),
                _ => None,
            };
            let plan = inputs.plan_tiled(width, height, batch, cfg, false, tile)?;
            for line in plan.report() {
                println!("{line}");
            }
            println!("does not fit {name}: {e}");
        }
    }
    Ok(())
}
