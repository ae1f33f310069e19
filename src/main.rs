//! The `webdiffusion` command-line tool.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod bench_cmd;
#[cfg(not(target_arch = "wasm32"))]
mod cli_denoise;
#[cfg(not(target_arch = "wasm32"))]
mod galaxy_cmd;
#[cfg(not(target_arch = "wasm32"))]
mod guided_cmd;
#[cfg(not(target_arch = "wasm32"))]
mod sample_cmd;
#[cfg(not(target_arch = "wasm32"))]
mod sample_research;
#[cfg(not(target_arch = "wasm32"))]
mod sd_cmd;

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use clap::{Parser, Subcommand};
    use webdiffusion::{platform::block_on, GpuContext, GpuOptions};

    #[derive(Parser)]
    #[command(
        name = "webdiffusion",
        version,
        about = "Diffusion sampling on the GPU through WebGPU"
    )]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    // Parsed once per run; boxing the large `sample` arguments would buy nothing.
    #[allow(clippy::large_enum_variant)]
    enum Cmd {
        /// Print the GPU adapter, the optional features granted and the limits that matter.
        Info {
            /// Use a low-power adapter where there is a choice.
            #[arg(long)]
            low_power: bool,
            /// Also describe this diffusers UNet folder: parameters, weight bytes, blocks and
            /// an estimate of the activation memory.
            #[arg(long)]
            model: Option<std::path::PathBuf>,
            /// Resolution (height width) for the activation estimate; default: the config's
            /// sample_size.
            #[arg(long, num_args = 2, value_names = ["H", "W"])]
            resolution: Option<Vec<usize>>,
            /// Batch size for the activation estimate.
            #[arg(long, default_value_t = 1)]
            batch: usize,
            /// A Stable Diffusion repository (model_index.json): print the peak GPU memory
            /// its pipeline needs at --width × --height and check it against this adapter.
            repo: Option<std::path::PathBuf>,
            /// Image width for the Stable Diffusion memory plan.
            #[arg(long, default_value_t = 512)]
            width: usize,
            /// Image height for the Stable Diffusion memory plan.
            #[arg(long, default_value_t = 512)]
            height: usize,
            /// VAE tiling for the Stable Diffusion memory plan: `auto` (tiles only when the
            /// whole pass does not fit), `off`, or a tile size in pixels.
            #[arg(long, default_value = "auto")]
            vae_tiling: String,
        },
        /// Run a diffusers UNet once on a .npy input and write its output as .npy.
        Denoise(crate::cli_denoise::DenoiseArgs),
        /// Run every kernel on the GPU against the CPU reference on small odd shapes and
        /// report the largest error of each: a quick check that this adapter computes right.
        Check,
        /// Sample images from a diffusion model (default: the bundled digit model).
        Sample(crate::sample_cmd::SampleArgs),
        /// Generate an image with a Stable Diffusion repository (diffusers layout): text to
        /// image, or image to image with --init; writes a PNG.
        Sd(crate::sd_cmd::SdArgs),
        /// List the solvers `sample --solver` takes.
        Solvers,
        /// Time the engine on this adapter: UNet forward per batch, per-kernel GPU time,
        /// sampling per solver, peak buffer bytes, weight load and CPU encode time.
        Bench(crate::bench_cmd::BenchArgs),
    }

    pub fn main() -> anyhow::Result<()> {
        env_logger_init();
        let cli = Cli::parse();
        match cli.cmd {
            Cmd::Denoise(args) => crate::cli_denoise::denoise(args)?,
            Cmd::Info {
                low_power,
                model,
                resolution,
                batch,
                repo,
                width,
                height,
                vae_tiling,
            } => {
                let sd_dir = repo.clone().or_else(|| {
                    model
                        .clone()
                        .filter(|d| d.join("model_index.json").is_file())
                });
                if let Some(dir) = &sd_dir {
                    return crate::cli_denoise::print_sd_plan(
                        dir,
                        (width, height, batch),
                        &vae_tiling,
                        low_power,
                    );
                }
                if let Some(dir) = &model {
                    let res = resolution.map(|r| (r[0], r[1]));
                    crate::cli_denoise::print_model_info(dir, res, batch)?;
                }
                let ctx = match block_on(GpuContext::new(&GpuOptions {
                    high_performance: !low_power,
                    ..Default::default()
                })) {
                    Ok(ctx) => ctx,
                    // The model report stands on its own; say why the adapter part is missing.
                    Err(e) if model.is_some() => {
                        println!("adapter: none ({e})");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                };
                println!("{}", ctx.caps.summary());
                let shaders: Vec<_> = webdiffusion::shaders::names().collect();
                println!(
                    "shaders: {} embedded ({})",
                    shaders.len(),
                    shaders.join(", ")
                );
            }
            Cmd::Sample(args) => crate::sample_cmd::run(args)?,
            Cmd::Sd(args) => crate::sd_cmd::run(args)?,
            Cmd::Solvers => crate::sample_cmd::list_solvers(),
            Cmd::Bench(args) => crate::bench_cmd::run(args)?,
            Cmd::Check => {
                let ctx = block_on(GpuContext::new(&GpuOptions::default()))?;
                println!("{}", ctx.caps.summary());
                let report = webdiffusion::selfcheck::run(&ctx)?;
                let mut failed = 0;
                for r in &report {
                    println!(
                        "{:<28} max |gpu - cpu| = {:.3e}  (tolerance {:.1e})  {}",
                        r.name,
                        r.max_abs_err,
                        r.tolerance,
                        if r.ok() { "ok" } else { "FAILED" }
                    );
                    failed += usize::from(!r.ok());
                }
                if failed > 0 {
                    anyhow::bail!(
                        "{failed} kernel(s) disagree with the CPU reference on this adapter"
                    );
                }
            }
        }
        Ok(())
    }

    fn env_logger_init() {
        struct Stderr;
        impl log::Log for Stderr {
            fn enabled(&self, m: &log::Metadata) -> bool {
                m.level() <= log::max_level()
            }
            fn log(&self, r: &log::Record) {
                if self.enabled(r.metadata()) && r.target().starts_with("webdiffusion") {
                    eprintln!("[{}] {}", r.level(), r.args());
                }
            }
            fn flush(&self) {}
        }
        static LOGGER: Stderr = Stderr;
        let level = match std::env::var("WEBDIFFUSION_LOG").as_deref() {
            Ok("debug") => log::LevelFilter::Debug,
            Ok("info") => log::LevelFilter::Info,
            _ => log::LevelFilter::Warn,
        };
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level);
        }
    }
}
