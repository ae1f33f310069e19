//! `webdiffusion sample` for σ-space consistency models (a folder whose `config.json` says
//! `"_class_name": "GuidedUNetModel"`, e.g. the terrain model of scripts/setup-terrain.sh):
//! one-step or multistep consistency sampling over `--sigmas`, the scalar condition from
//! `--difficulty`, and shaded relief (or grey) PNGs drawn by the WGSL render pass.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use webdiffusion::image::{encode_png, prepare_output, write_atomic, Image};
use webdiffusion::models::guided::CLASS_NAME;
use webdiffusion::models::GuidedUNet;
use webdiffusion::npy;
use webdiffusion::platform::block_on;
use webdiffusion::render::{self, Layout, RenderMode};
use webdiffusion::sampling::edm::consistency_sample;
use webdiffusion::sampling::solvers::{Control, Noise};

use crate::cli_denoise::make_exec;
use crate::sample_cmd::{RenderArg, SampleArgs};

/// Whether `dir/config.json` names our guided-diffusion class.
pub fn is_guided(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("_class_name")?.as_str().map(|s| s == CLASS_NAME))
        .unwrap_or(false)
}

fn reject_unsupported(args: &SampleArgs) -> Result<()> {
    let given = [
        (args.preview, "--preview"),
        (args.save_steps.is_some(), "--save-steps"),
        (args.init_noise.is_some(), "--init-noise"),
        (!args.class_labels.is_empty(), "--class-labels"),
        (args.uncond_class_label.is_some(), "--uncond-class-label"),
        (
            args.encoder_hidden_states.is_some(),
            "--encoder-hidden-states",
        ),
        (
            args.uncond_encoder_hidden_states.is_some(),
            "--uncond-encoder-hidden-states",
        ),
        (args.guidance.is_some(), "--guidance"),
        (args.scheduler_config.is_some(), "--scheduler-config"),
        (args.render == Some(RenderArg::Asinh), "--render asinh"),
    ];
    if let Some((_, flag)) = given.iter().find(|(on, _)| *on) {
        bail!(
            "{flag} does not apply to a consistency model (GuidedUNetModel); it samples with \
             --sigmas (e.g. --sigmas 80 or --sigmas 80,2) and its condition (--difficulty)"
        );
    }
    if let Some(s) = args.solver.as_deref().filter(|s| *s != "consistency") {
        bail!(
            "--solver {s}: a GuidedUNetModel consistency model samples with its own multistep \
             consistency sampler (--sigmas); leave out --solver or pass --solver consistency"
        );
    }
    Ok(())
}

pub fn run(args: &SampleArgs, dir: &Path, seed: u64, out: &Path) -> Result<()> {
    reject_unsupported(args)?;
    let mut exec = make_exec(args.backend)?;
    let t_load = Instant::now();
    let mut model = GuidedUNet::load_dir(&mut exec, dir)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    let cfg = model.config.clone();
    let edm = cfg.edm.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: config.json has no `edm` section, so it is not a σ-space consistency model",
            dir.display()
        )
    })?;
    let values = &args.difficulty;
    match &cfg.condition {
        Some(spec) if values.is_empty() => bail!(
            "{}: this model is conditioned on `{}` in [{}, {}]; pass --{} VALUE (one for the \
             batch, or one per sample, comma separated)",
            dir.display(),
            spec.name,
            spec.min,
            spec.max,
            spec.name
        ),
        Some(_) => model.set_condition(values)?,
        None if !values.is_empty() => {
            bail!("--difficulty given, but this model has no condition")
        }
        None => {}
    }
    let batch = match (args.batch, values.len()) {
        (Some(b), k) if k > 1 && k != b => {
            bail!("{k} --difficulty values for --batch {b}: give one, or one per sample")
        }
        (Some(b), _) => b,
        (None, k) => k.max(1),
    };
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let sigmas = if args.sigmas.is_empty() {
        vec![edm.sigma_max]
    } else {
        args.sigmas.clone()
    };
    let shape = [batch, cfg.in_channels, cfg.sample_size, cfg.sample_size];
    eprintln!(
        "model: {} on {}, loaded in {:.2} s",
        dir.display(),
        exec.backend_name(),
        t_load.elapsed().as_secs_f64()
    );
    println!(
        "seed {seed}, consistency sampling at σ = {}, batch {batch}{}",
        sigmas
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.condition
            .as_ref()
            .map(|c| format!(
                ", {} {}",
                c.name,
                values
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .unwrap_or_default()
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(sigmas.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} model evaluations  elapsed {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let gpu = exec.gpu_context().cloned();
    let t0 = Instant::now();
    let result = consistency_sample(
        &mut exec,
        &mut model,
        &shape,
        &sigmas,
        &mut Noise::Philox { seed },
        |_, _| {
            if let Some(ctx) = &gpu {
                let _ = ctx.device.poll(wgpu::PollType::wait_indefinitely());
            }
            bar.inc(1);
            Control::Continue
        },
    );
    bar.finish_and_clear();
    let sampled = result?;
    let data = block_on(exec.read(&sampled.sample))?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!("the sample contains non-finite values (first at element {i}); nothing was written");
    }
    let mode = match args.render {
        Some(RenderArg::Image) => RenderMode::Image,
        Some(RenderArg::Relief) => RenderMode::Relief,
        Some(RenderArg::Asinh) => RenderMode::Image,
        None => cfg.render_mode(),
    };
    write_sample(
        out,
        gpu.as_deref(),
        (&sampled.sample, &data, &shape),
        mode,
        args.force,
    )?;
    println!(
        "{} model evaluations in {secs:.2} s → {}",
        sigmas.len(),
        out.display()
    );
    Ok(())
}

/// The default output name, as the diffusers path names it.
pub fn default_out(seed: u64) -> PathBuf {
    PathBuf::from(format!("terrain-{seed}.png"))
}

pub fn check_out(out: &Path, force: bool) -> Result<()> {
    if !out.extension().is_some_and(|e| e == "png" || e == "npy") {
        bail!(
            "--out {}: the file name must end in .png or .npy",
            out.display()
        );
    }
    prepare_output(out, force)?;
    Ok(())
}

/// Writes a sample of the terrain or galaxy commands: the raw data-space values when `out`
/// ends in `.npy`, else a PNG drawn in `mode` (on the GPU that sampled it, or on the CPU).
pub(crate) fn write_sample(
    out: &Path,
    gpu: Option<&webdiffusion::gpu::GpuContext>,
    (sample, data, shape): (&webdiffusion::Tensor, &[f32], &[usize]),
    mode: RenderMode,
    force: bool,
) -> Result<()> {
    if out.extension().is_some_and(|e| e == "npy") {
        return Ok(write_atomic(out, &npy::to_bytes(shape, data)?, force)?);
    }
    let layout = Layout::default();
    let (w, h, rgba) = match gpu {
        Some(ctx) => block_on(render::render_offscreen(ctx, sample, &layout, mode))?,
        None => {
            let (w, h) = layout.natural_size(shape, 1)?;
            let px = render::render_cpu_mode(&[data], shape, &layout, (w, h), mode)?;
            (w, h, px)
        }
    };
    let im = Image {
        width: w as usize,
        height: h as usize,
        channels: 4,
        pixels: rgba,
    };
    write_atomic(out, &encode_png(&im)?, force)?;
    Ok(())
}
