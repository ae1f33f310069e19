//! `webdiffusion bench`: engine timings on the current adapter, as a table and as JSON.
//!
//! Wall times are medians over repeats after a warm-up, measured around recording, submit
//! and completion (a readback of the output, so the GPU has finished). Per-kernel GPU times
//! come from timestamp queries, one compute pass per dispatch; on an adapter without
//! `TIMESTAMP_QUERY` that table is left out and said so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use webdiffusion::exec::Exec;
use webdiffusion::models::{ModelConfig, UNet};
use webdiffusion::platform::block_on;
use webdiffusion::sampling::solvers::{
    initial_noise, sample, solver_from_name, Control, Denoiser, Noise, SolverOptions, StepContext,
};
use webdiffusion::sampling::{SchedulerClass, SchedulerConfig};
use webdiffusion::tensor::Tensor;
use webdiffusion::weights::WeightDtype;
use webdiffusion::{bundled, GpuContext, GpuOptions};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A diffusers UNet folder to benchmark instead of the bundled digit model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// How Linear and Conv2d weights are stored on the GPU: `f32` or `f16` (packed pairs).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    weights: String,
    /// Do not request `shader-f16`: packed f16 weights are then unpacked from u32 words
    /// (`unpack2x16float`, the browser path) instead of read as `f16`.
    #[arg(long)]
    no_shader_f16: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A short run: batch 1 only, fewer repeats and steps.
    #[arg(long)]
    quick: bool,
    /// Batch sizes of the UNet forward timing (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    batch: Vec<usize>,
    /// Solvers of the sampling timing (comma-separated names as `sample --solver` takes).
    #[arg(long, value_delimiter = ',', default_values_t = ["dpmpp_2m".to_string(), "ddim".to_string(), "unipc".to_string()])]
    solvers: Vec<String>,
    /// Sampling steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Timed repeats of each UNet forward (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn wait(ctx: &GpuContext) -> Result<()> {
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("waiting for the GPU: {e}"))
}

/// A deterministic input in [-1, 1): the timing does not depend on the values.
fn input(n: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Loaded {
    name: String,
    unet: UNet,
    sched: SchedulerConfig,
    weight_bytes: u64,
    /// What the weights occupy on the GPU (half for packed f16 Linear/Conv2d weights).
    device_bytes: u64,
    load_ms: f64,
}

fn load(
    exec: &mut Exec,
    ctx: &GpuContext,
    model: Option<&PathBuf>,
    dtype: WeightDtype,
) -> Result<Loaded> {
    let t = Instant::now();
    let device_bytes;
    let (name, unet, sched, weight_bytes) = match model {
        None => {
            let (unet, dev) = bundled::load_with(exec, dtype)?;
            let unet = unet.into_inner();
            device_bytes = dev;
            let bytes = bundled::weight_bytes() as u64;
            (
                bundled::NAME.to_string(),
                unet,
                bundled::scheduler_config()?,
                bytes,
            )
        }
        Some(dir) => {
            if !dir.is_dir() {
                bail!(
                    "model folder {} does not exist; give a diffusers UNet folder holding \
                     config.json and safetensors weights, or leave out --model",
                    dir.display()
                );
            }
            let (unet, dev) = UNet::load_dir_with(exec, dir, dtype)
                .with_context(|| format!("loading the model in {}", dir.display()))?;
            device_bytes = dev;
            let mut bytes = 0;
            for e in std::fs::read_dir(dir)? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "safetensors") {
                    bytes += std::fs::metadata(&p)?.len();
                }
            }
            let sched = [
                dir.join("scheduler_config.json"),
                dir.join("../scheduler/scheduler_config.json"),
            ]
            .into_iter()
            .find(|p| p.is_file())
            .map(|p| SchedulerConfig::from_file(p, None))
            .transpose()?
            .unwrap_or_else(|| SchedulerConfig::new(SchedulerClass::Ddpm));
            (dir.display().to_string(), unet, sched, bytes)
        }
    };
    wait(ctx)?;
    let load_ms = ms(t);
    Ok(Loaded {
        name,
        unet,
        sched,
        weight_bytes,
        device_bytes,
        load_ms,
    })
}

/// Stand-in conditioning for a batch of `batch`: class 0 for a class-conditional model, and
/// 8 tokens of fixed values for a cross-attention model (the timing does not depend on
/// what they say).
fn condition(exec: &mut Exec, unet: &mut UNet, batch: usize) -> Result<()> {
    let arch = unet.arch().clone();
    unet.set_class_labels(arch.num_class_embeds.map(|_| vec![0usize; batch]));
    if let Some(dim) = arch.cross_attention_dim {
        let shape = [batch, 8, dim];
        let states = Tensor::from_vec(&shape, input(shape.iter().product()))?;
        unet.set_encoder_hidden_states(exec, Some(&states))?;
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (batches, repeats, steps, sample_repeats) = if args.quick {
        (vec![1], 2, 4.min(args.steps), 1)
    } else {
        (args.batch.clone(), args.repeats.max(1), args.steps, 2)
    };
    if batches.contains(&0) || steps == 0 {
        bail!("--batch sizes and --steps must be at least 1");
    }
    let opts = GpuOptions {
        want_f16: !args.no_shader_f16,
        ..GpuOptions::default()
    };
    let ctx = block_on(GpuContext::new(&opts))?;
    println!("{}", ctx.caps.summary());
    let mut exec = Exec::gpu(ctx.clone());

    let dtype = WeightDtype::parse(&args.weights)?;
    let mut m = load(&mut exec, &ctx, args.model.as_ref(), dtype)?;
    let arch = m.unet.arch().clone();
    let config_size = match &args.model {
        None => bundled::config()?.sample_size(),
        Some(d) => ModelConfig::from_file(d.join("config.json"))?.sample_size(),
    };
    let (h, w) = config_size.unwrap_or((64, 64));
    let mb_s = m.weight_bytes as f64 / 1e6 / (m.load_ms / 1e3);
    println!(
        "model: {} ({h}×{w}, {} weight bytes)\nweight load: {:.1} ms, {:.1} MB/s (safetensors → GPU buffers, finished on the GPU)",
        m.name, m.weight_bytes, m.load_ms, mb_s
    );
    let path = match (dtype, ctx.caps.shader_f16) {
        (WeightDtype::F16Packed, true) => ", read as f16 (shader-f16)",
        (WeightDtype::F16Packed, false) => ", unpacked with unpack2x16float (no shader-f16)",
        _ => "",
    };
    println!(
        "weights on the GPU: {} bytes ({}{path})",
        m.device_bytes, args.weights
    );
    let mut report = json!({
        "adapter": ctx.caps.summary(),
        "timestamp_query": ctx.caps.timestamp_query,
        "model": m.name,
        "resolution": [h, w],
        "weight_bytes": m.weight_bytes,
        "weight_dtype": args.weights,
        "shader_f16": ctx.caps.shader_f16,
        "weight_device_bytes": m.device_bytes,
        "weight_load_ms": m.load_ms,
        "weight_load_mb_per_s": mb_s,
    });

    // UNet forward per batch size.
    println!("\nUNet forward (median of {repeats} after a warm-up; wall time = record + submit + GPU + readback)");
    println!(
        "{:>5} {:>12} {:>12} {:>13} {:>10} {:>10}",
        "batch", "wall ms", "record ms", "GPU sum ms", "dispatch", "ms/image"
    );
    let mut forwards = Vec::new();
    let mut kernel_table: Option<Vec<(String, usize, f64)>> = None;
    for &b in &batches {
        condition(&mut exec, &mut m.unet, b)?;
        let shape = [b, arch.in_channels, h, w];
        let x = exec.tensor(&shape, &input(shape.iter().product()))?;
        let mut forward = |exec: &mut Exec| m.unet.denoise(exec, &x, 500.0);
        let y = forward(&mut exec)?;
        block_on(exec.read(&y))?;
        let mut wall = Vec::new();
        let mut record = Vec::new();
        let mut dispatches = 0;
        for _ in 0..repeats {
            let d0 = exec.dispatches();
            let t = Instant::now();
            let y = forward(&mut exec)?;
            record.push(ms(t));
            dispatches = exec.dispatches() - d0;
            block_on(exec.read(&y))?;
            wall.push(ms(t));
        }
        let _ = forward(&mut exec)?;
        let timed = block_on(exec.submit_timed())?;
        let gpu_sum = timed
            .as_ref()
            .map(|t| t.iter().map(|o| o.nanos).sum::<f64>() / 1e6);
        let (wall, record) = (median(wall), median(record));
        println!(
            "{b:>5} {wall:>12.2} {record:>12.2} {:>13} {dispatches:>10} {:>10.2}",
            gpu_sum.map_or("n/a".into(), |g| format!("{g:.2}")),
            wall / b as f64
        );
        let mut by_kernel: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for o in timed.iter().flatten() {
            let e = by_kernel.entry(o.kernel.clone()).or_default();
            e.0 += 1;
            e.1 += o.nanos / 1e6;
        }
        let mut kernels: Vec<(String, usize, f64)> =
            by_kernel.into_iter().map(|(k, (n, t))| (k, n, t)).collect();
        kernels.sort_by(|a, b| b.2.total_cmp(&a.2));
        forwards.push(json!({
            "batch": b,
            "wall_ms_median": wall,
            "record_ms_median": record,
            "dispatches": dispatches,
            "gpu_ms_sum_of_kernels": gpu_sum,
            "kernels": kernels.iter().map(|(k, n, t)| json!({"kernel": k, "dispatches": n, "gpu_ms": t})).collect::<Vec<_>>(),
        }));
        if kernel_table.is_none() && timed.is_some() {
            kernel_table = Some(kernels);
        }
    }
    report["unet_forward"] = Value::Array(forwards);
    match &kernel_table {
        Some(k) => {
            let total: f64 = k.iter().map(|e| e.2).sum();
            println!(
                "\nGPU time per kernel, batch {} (timestamp queries, one pass per dispatch)",
                batches[0]
            );
            println!(
                "{:<40} {:>9} {:>10} {:>7}",
                "kernel", "dispatch", "GPU ms", "share"
            );
            for (name, n, t) in k.iter().take(12) {
                println!(
                    "{name:<40} {n:>9} {t:>10.3} {:>6.1}%",
                    100.0 * t / total.max(1e-12)
                );
            }
        }
        None => println!("\nper-kernel GPU time: n/a (the adapter has no TIMESTAMP_QUERY)"),
    }

    // Full sampling per solver, batch 1.
    println!(
        "\nsampling, batch 1, {steps} steps (median of {sample_repeats}; per-step split from a separate run that waits after every step)"
    );
    println!(
        "{:<12} {:>12} {:>10} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "solver", "ms/image", "ms/step", "record ms", "submit ms", "wait ms", "disp/st", "subm/st"
    );
    condition(&mut exec, &mut m.unet, 1)?;
    let shape = [1, arch.in_channels, h, w];
    let mut sampling = Vec::new();
    let solvers: &[String] = if arch.out_channels == arch.in_channels {
        &args.solvers
    } else {
        // The solvers take the output as x's prediction; a model with more output channels
        // (learned variance, moments) needs the handling `webdiffusion sample` has.
        println!(
            "(skipped: the model has {} output channels for {} input channels)",
            arch.out_channels, arch.in_channels
        );
        &[]
    };
    for name in solvers {
        let make = |n| solver_from_name(name, &m.sched, n, SolverOptions::default());
        // Warm-up: compiles the solver's kernels.
        {
            let mut s = make(steps.min(2))?;
            let x = initial_noise(&mut exec, s.as_ref(), &shape, 1)?;
            let mut noise = Noise::Philox { seed: 1 };
            let r = sample(
                &mut exec,
                s.as_mut(),
                &mut m.unet,
                &x,
                &mut noise,
                |_, _| Control::Continue,
            )?;
            block_on(exec.read(&r.sample))?;
        }
        let mut totals = Vec::new();
        for rep in 0..sample_repeats {
            let mut s = make(steps)?;
            let t = Instant::now();
            let x = initial_noise(&mut exec, s.as_ref(), &shape, rep as u64)?;
            let mut noise = Noise::Philox { seed: rep as u64 };
            let r = sample(
                &mut exec,
                s.as_mut(),
                &mut m.unet,
                &x,
                &mut noise,
                |_, _| Control::Continue,
            )?;
            block_on(exec.read(&r.sample))?;
            totals.push(ms(t));
        }
        // The split: recording on the CPU, encoding + queue submit, and waiting on the GPU.
        let mut s = make(steps)?;
        let mut x = initial_noise(&mut exec, s.as_ref(), &shape, 7)?;
        exec.submit()?;
        wait(&ctx)?;
        let mut noise = Noise::Philox { seed: 7 };
        let (mut rec, mut sub, mut wt) = (Vec::new(), Vec::new(), Vec::new());
        let (d0, s0) = (exec.dispatches(), exec.submits());
        for i in 0..steps {
            let t0 = Instant::now();
            let out = {
                let mut sc = StepContext {
                    exec: &mut exec,
                    noise: &mut noise,
                    step: i as u32,
                };
                s.step(&mut sc, &mut m.unet, i, &x)?
            };
            x = out.prev_sample;
            rec.push(ms(t0));
            let t1 = Instant::now();
            exec.submit()?;
            sub.push(ms(t1));
            let t2 = Instant::now();
            wait(&ctx)?;
            wt.push(ms(t2));
        }
        let disp = (exec.dispatches() - d0) as f64 / steps as f64;
        let subm = (exec.submits() - s0) as f64 / steps as f64;
        let total = median(totals);
        let (rec, sub, wt) = (median(rec), median(sub), median(wt));
        println!(
            "{name:<12} {total:>12.1} {:>10.2} {rec:>11.3} {sub:>11.3} {wt:>11.2} {disp:>9.1} {subm:>9.1}",
            total / steps as f64
        );
        sampling.push(json!({
            "solver": name,
            "steps": steps,
            "batch": 1,
            "ms_per_image_median": total,
            "ms_per_step": total / steps as f64,
            "record_ms_per_step_median": rec,
            "encode_submit_ms_per_step_median": sub,
            "gpu_wait_ms_per_step_median": wt,
            "dispatches_per_step": disp,
            "submits_per_step": subm,
        }));
    }
    report["sampling"] = Value::Array(sampling);

    let act = exec.pool_stats().unwrap_or_default();
    let uploads = ctx.pool.stats();
    println!(
        "\npeak GPU buffer bytes: activations {} ({:.2} MiB) + weights and uploads {} ({:.2} MiB); at most {:.2} MiB together",
        act.peak_bytes,
        act.peak_bytes as f64 / 1048576.0,
        uploads.peak_bytes,
        uploads.peak_bytes as f64 / 1048576.0,
        (act.peak_bytes + uploads.peak_bytes) as f64 / 1048576.0
    );
    report["peak_activation_bytes"] = json!(act.peak_bytes);
    report["peak_weight_and_upload_bytes"] = json!(uploads.peak_bytes);
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
