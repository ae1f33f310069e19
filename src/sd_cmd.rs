//! `webdiffusion sd`: text-to-image and image-to-image with a Stable Diffusion repository
//! (diffusers layout) through [`SdPipeline`], writing a PNG; `--preview` shows the linear
//! latent preview of every step in the live window.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use webdiffusion::image::{decode_png, prepare_output};

use crate::sample_cmd::{output_paths, write_pngs};
use webdiffusion::pipeline::sd_run::{InitImage, Request, SdPipeline, SdStep};
use webdiffusion::pipeline::SdRepo;
use webdiffusion::platform::block_on;
use webdiffusion::preview::{self, PreviewOptions};
use webdiffusion::sampling::solvers::{schedule_class_for, Control};
use webdiffusion::Exec;

use crate::cli_denoise::{make_exec, BackendArg};

#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:
  webdiffusion sd --model stable-diffusion-v1-5 --prompt \"a photo of a cat\" --seed 7 --out cat.png
  webdiffusion sd --model sd-turbo --prompt \"a red fox\" --steps 1 --guidance 0 \\
      --solver euler_ancestral --timestep-spacing trailing --out fox.png
  webdiffusion sd --model stable-diffusion-v1-5 --prompt \"an oil painting\" --init photo.png \\
      --strength 0.6 --out painting.png")]
pub struct SdArgs {
    /// The repository folder (holding model_index.json, unet/, vae/, text_encoder/,
    /// tokenizer/, scheduler/).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// The negative prompt (used when --guidance is above 1).
    #[arg(long, default_value = "")]
    pub negative: String,
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale; 1 or less runs the prompt alone (as diffusers).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Solver (`webdiffusion solvers`). Default: the repository's scheduler, for --init too
    /// (e.g. SD 1.5's PNDM, as diffusers' img2img pipeline: multistep solvers start with a
    /// fresh history at the first step run).
    #[arg(long)]
    pub solver: Option<String>,
    /// Replace the scheduler's timestep_spacing (`leading`, `trailing`, `linspace`):
    /// `trailing` for SD-Turbo-style one-step sampling.
    #[arg(long)]
    pub timestep_spacing: Option<String>,
    /// Leave out the last N text-encoder layers (diffusers' clip_skip).
    #[arg(long, default_value_t = 0)]
    pub clip_skip: usize,
    /// Seed of the noise; random when not given (the seed used is printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image width in pixels (a multiple of the VAE factor, 8 for SD). Default: the model's
    /// (or the --init image's).
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// A PNG to start from (image-to-image); its size is the output size.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// How much of the --init image to change, 0 to 1 (default 0.8).
    #[arg(long)]
    pub strength: Option<f64>,
    /// Output PNG. Default: sd-<seed>.png. With --batch N (and no --grid): OUT-0.png … OUT-(N-1).png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images per run from the one prompt (diffusers' num_images_per_prompt): one batched
    /// UNet pass per step; each image has its own noise from the seed.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// With --batch: write the images as one PNG grid instead of one file each.
    #[arg(long)]
    pub grid: bool,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Open a window showing the linear latent preview after every step, then the image
    /// until the window is closed (GPU backend only; needs a display).
    #[arg(long)]
    pub preview: bool,
    /// With --preview: a tiny autoencoder folder (diffusers `AutoencoderTiny`, e.g.
    /// madebyollin/taesd: config.json + safetensors) whose decode replaces the linear preview.
    #[arg(long, value_name = "DIR")]
    pub preview_decoder: Option<PathBuf>,
    /// VAE decode/encode in overlapping tiles (diffusers' enable_tiling): `auto` (only when
    /// the whole pass would exceed the adapter's limits), `off`, or a tile size in pixels (a
    /// multiple of 32 for SD).
    #[arg(long, default_value = "auto", value_name = "auto|off|PIXELS")]
    pub vae_tiling: String,
    /// How Linear/Conv2d weights are kept on the GPU: `auto` (packed f16 for weights the
    /// checkpoint stores in f16, which is lossless; f32 otherwise), `f16` (pack them all:
    /// half the memory, f16 precision) or `f32`.
    #[arg(long, default_value = "auto", value_name = "auto|f16|f32")]
    pub weights: String,
    /// Where to run.
    #[arg(long, value_enum, default_value = "gpu")]
    pub backend: BackendArg,
    /// No per-step progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (t >> 29)) % 1_000_000_000
}

/// The request from the arguments, checked as far as it can be before anything is loaded.
fn request(a: &SdArgs, seed: u64) -> Result<Request> {
    let mut req = Request::new(a.prompt.clone());
    req.negative_prompt = a.negative.clone();
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    req.steps = a.steps;
    if !a.guidance.is_finite() {
        bail!("--guidance must be a finite number, got {}", a.guidance);
    }
    req.guidance_scale = a.guidance;
    req.seed = seed;
    req.solver = a.solver.clone();
    req.clip_skip = a.clip_skip;
    req.width = a.width;
    req.height = a.height;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    req.batch = a.batch;
    req.vae_tiling = webdiffusion::pipeline::VaeTiling::parse(&a.vae_tiling)
        .map_err(|e| anyhow::anyhow!("--vae-tiling: {e}"))?;
    if let Some(s) = &a.timestep_spacing {
        req.scheduler_overrides.insert(
            "timestep_spacing".into(),
            serde_json::Value::from(s.as_str()),
        );
    }
    if let Some(name) = &a.solver {
        if schedule_class_for(name).is_none() {
            bail!(
                "--solver {name}: unknown solver; `webdiffusion solvers` lists the names (e.g. ddim, euler_ancestral, dpmpp_2m, lcm)"
            );
        }
    }
    match (&a.init, a.strength) {
        (None, Some(_)) => bail!("--strength applies to image-to-image; give --init IMAGE.png too"),
        (None, None) => {}
        (Some(path), strength) => {
            let strength = strength.unwrap_or(0.8);
            if !(0.0..=1.0).contains(&strength) {
                bail!("--strength must be between 0 and 1, got {strength}");
            }
            let bytes = std::fs::read(path)
                .with_context(|| format!("--init {}: cannot read it", path.display()))?;
            let im = decode_png(&bytes).with_context(|| {
                format!(
                    "--init {}: not a PNG this tool reads (8-bit grey, RGB or RGBA)",
                    path.display()
                )
            })?;
            for (flag, given, has) in [
                ("--width", a.width, im.width),
                ("--height", a.height, im.height),
            ] {
                if let Some(v) = given.filter(|&v| v != has) {
                    bail!(
                        "{flag} {v} differs from the --init image's {has} (it is {}×{}); leave {flag} out or resize the image",
                        im.width,
                        im.height
                    );
                }
            }
            req.width = Some(im.width);
            req.height = Some(im.height);
            req.init = Some(InitImage::from_pixels(
                im.width,
                im.height,
                im.channels,
                &im.pixels,
                strength,
            )?);
        }
    }
    Ok(req)
}

fn progress(quiet: bool, s: &SdStep<'_>) {
    if !quiet {
        eprintln!("step {}/{}  t = {}", s.index + 1, s.total, s.timestep);
    }
}

/// Loads, samples and writes the PNG on `exec`; `show` sees each step (the window).
fn run_on(
    exec: &mut Exec,
    a: &SdArgs,
    req: &Request,
    paths: &[PathBuf],
    show: &mut dyn FnMut(&mut Exec, &SdStep<'_>) -> webdiffusion::Result<Control>,
) -> Result<webdiffusion::Tensor> {
    let t_load = Instant::now();
    let dtype = webdiffusion::weights::WeightDtype::parse(&a.weights)?;
    let mut pipe = SdPipeline::load_dir_with(exec, &a.model, dtype).with_context(|| {
        format!(
            "loading the Stable Diffusion repository {}",
            a.model.display()
        )
    })?;
    if let Some(dir) = &a.preview_decoder {
        let d = webdiffusion::models::TinyDecoder::load_dir(exec, dir)
            .with_context(|| format!("loading the --preview-decoder folder {}", dir.display()))?;
        pipe.set_preview_decoder(Some(d))?;
    }
    let (w, h) = (
        req.width.unwrap_or(pipe.default_size().0),
        req.height.unwrap_or(pipe.default_size().1),
    );
    eprintln!(
        "model: {} on {}, loaded in {:.2} s ({:.1} MiB of weights, storage {})",
        a.model.display(),
        exec.backend_name(),
        t_load.elapsed().as_secs_f64(),
        pipe.weight_bytes() as f64 / (1024.0 * 1024.0),
        dtype.name()
    );
    let solver = pipe.solver(req)?;
    println!(
        "seed {}, solver {}, {} steps, guidance {}, {w}×{h}{}{}",
        req.seed,
        solver.name(),
        req.steps,
        req.guidance_scale,
        if req.batch > 1 {
            format!(", batch {}", req.batch)
        } else {
            String::new()
        },
        req.init
            .as_ref()
            .map(|i| format!(", img2img strength {}", i.strength))
            .unwrap_or_default()
    );
    let gpu = exec.gpu_context().cloned();
    let t0 = Instant::now();
    let result = pipe.generate(exec, req, &mut |exec, s| {
        let c = show(exec, s)?;
        if let Some(ctx) = &gpu {
            let _ = ctx.device.poll(wgpu::PollType::wait_indefinitely());
        }
        progress(a.quiet, s);
        Ok(c)
    })?;
    for w in &result.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(t) = result.vae_tile {
        eprintln!(
            "note: the VAE ran in {t}×{t}-pixel tiles overlapping by a quarter (diffusers' enable_tiling){}",
            if a.vae_tiling == "auto" {
                ": the whole pass does not fit this adapter's limits (`webdiffusion info` shows the plan)"
            } else {
                ""
            }
        );
    }
    let Some(image) = result.image else {
        bail!(
            "stopped after {} steps; nothing was written",
            result.steps_run
        );
    };
    let data = block_on(exec.read(&image))?;
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!("the image contains non-finite values (first at element {i}); nothing was written");
    }
    write_pngs(paths, image.shape(), &data, a.grid, a.force)?;
    println!(
        "{} steps in {:.2} s → {}",
        result.steps_run,
        t0.elapsed().as_secs_f64(),
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(image)
}

pub fn run(a: SdArgs) -> Result<()> {
    // A missing component or file is named before anything large is read.
    SdRepo::open_dir(&a.model)?;
    let seed = a.seed.unwrap_or_else(random_seed);
    let req = request(&a, seed)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("sd-{seed}.png")));
    if out.extension().is_none_or(|e| e != "png") {
        bail!("--out {}: the file name must end in .png", out.display());
    }
    if a.grid && a.batch == 1 {
        bail!("--grid lays out a batch; add --batch N");
    }
    let paths = output_paths(&out, a.batch, a.grid);
    for p in &paths {
        prepare_output(p, a.force)?;
    }
    if a.preview && a.backend == BackendArg::Cpu {
        bail!("--preview draws on the GPU; use it with --backend gpu");
    }
    if a.preview_decoder.is_some() && !a.preview {
        bail!("--preview-decoder only changes the --preview window; add --preview");
    }
    if a.preview {
        let opts = PreviewOptions::new(format!("webdiffusion sd — seed {seed}"));
        preview::run(&opts, |ctx, sink| {
            let mut exec = Exec::gpu(ctx);
            let mut show = |exec: &mut Exec, s: &SdStep<'_>| -> webdiffusion::Result<Control> {
                let rgb = s.preview(exec)?;
                sink.show_image(exec, &rgb, &format!("step {}/{}", s.index + 1, s.total))?;
                Ok(Control::Continue)
            };
            let image = run_on(&mut exec, &a, &req, &paths, &mut show).map_err(to_lib)?;
            sink.show_image(&mut exec, &image, "done: close the window to exit")?;
            Ok(())
        })?;
        Ok(())
    } else {
        let mut exec = make_exec(a.backend)?;
        run_on(&mut exec, &a, &req, &paths, &mut |_, _| {
            Ok(Control::Continue)
        })?;
        Ok(())
    }
}

/// An anyhow error carried through the preview's library `Result`.
fn to_lib(e: anyhow::Error) -> webdiffusion::Error {
    webdiffusion::Error::InvalidArgument {
        op: "sd",
        message: format!("{e:#}"),
    }
}
