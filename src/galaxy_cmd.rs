//! `webdiffusion sample` for galaxygrad's score networks (a folder whose `config.json` says
//! `"_class_name": "GalaxyScoreNet"`, from scripts/setup-galaxy.sh): any solver of the menu on
//! the continuous VP-SDE (see `models::mixer`), PNGs in the asinh stretch of the inverted data
//! transform, or the raw data-space sample as .npy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use webdiffusion::models::MixerScoreNet;
use webdiffusion::platform::block_on;
use webdiffusion::render::RenderMode;
use webdiffusion::sampling::solvers::{
    initial_noise, sample, schedule_class_for, solver_from_name, Control, Noise, SolverOptions,
};

use crate::cli_denoise::make_exec;
use crate::guided_cmd::write_sample;
use crate::sample_cmd::{RenderArg, SampleArgs};

pub use webdiffusion::models::mixer::is_galaxy_dir as is_galaxy;

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
        (args.guidance.is_some_and(|g| g != 1.0), "--guidance"),
        (args.scheduler_config.is_some(), "--scheduler-config"),
        (!args.difficulty.is_empty(), "--difficulty"),
        (!args.sigmas.is_empty(), "--sigmas"),
        (args.render == Some(RenderArg::Relief), "--render relief"),
    ];
    if let Some((_, flag)) = given.iter().find(|(on, _)| *on) {
        bail!(
            "{flag} does not apply to a galaxy score network (GalaxyScoreNet): it is \
             unconditional and samples with --solver/--steps/--seed/--batch on its own VP-SDE \
             schedule"
        );
    }
    Ok(())
}

pub fn run(args: &SampleArgs, dir: &Path, seed: u64, out: &Path) -> Result<()> {
    reject_unsupported(args)?;
    let name = args.solver.clone().unwrap_or_else(|| "dpmpp_2m".into());
    let Some(class) = schedule_class_for(&name) else {
        bail!(
            "--solver {name}: the galaxy models take the solvers of `webdiffusion solvers`' \
             first list (ddim, dpmpp_2m, unipc, euler, …)"
        );
    };
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let batch = args.batch.unwrap_or(1);
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut exec = make_exec(args.backend)?;
    let t_load = Instant::now();
    let mut model = MixerScoreNet::load_dir(&mut exec, dir)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    let cfg = model.config.clone();
    let sched = model.scheduler_config(class);
    let mut solver = solver_from_name(&name, &sched, args.steps, SolverOptions { eta: args.eta })?;
    let size = cfg.sample_size;
    let shape = [batch, cfg.in_channels, size, size];
    eprintln!(
        "model: {} on {}, loaded in {:.2} s",
        dir.display(),
        exec.backend_name(),
        t_load.elapsed().as_secs_f64()
    );
    println!("seed {seed}, {name}, {} steps, batch {batch}", args.steps);
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(solver.num_steps() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  elapsed {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let gpu = exec.gpu_context().cloned();
    let t0 = Instant::now();
    let x = initial_noise(&mut exec, solver.as_ref(), &shape, seed)?;
    let result = sample(
        &mut exec,
        solver.as_mut(),
        &mut model,
        &x,
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
        bail!(
            "the sample contains non-finite values (first at element {i}): try another solver \
             or more steps; nothing was written"
        );
    }
    let mode = match args.render {
        Some(RenderArg::Image) => RenderMode::Image,
        _ => cfg.render_mode(),
    };
    write_sample(
        out,
        gpu.as_deref(),
        (&sampled.sample, &data, &shape),
        mode,
        args.force,
    )?;
    println!(
        "{} steps in {secs:.2} s ({:.2} s per sample) → {}",
        sampled.steps,
        secs / batch as f64,
        out.display()
    );
    Ok(())
}

/// The default output name.
pub fn default_out(seed: u64) -> PathBuf {
    PathBuf::from(format!("galaxy-{seed}.png"))
}
