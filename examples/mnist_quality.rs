//! Measures the bundled digit model as this engine samples it: for each solver and step
//! count, the share of samples the digit classifier assigns to the requested class, and the
//! Fréchet distance between classifier features of the samples and of the 1,000 held-out
//! real digits (see `webdiffusion::eval`). Prints a markdown table for BENCHMARKS.md.
//!
//!     cargo run --release --example mnist_quality -- --samples 1000 \
//!         --solvers dpmpp_2m,unipc,euler,ddim --steps 5,10,20,50
//!
//! Labels cycle 0, 1, …, 9; seeds are fixed (`--seed`, batch k uses seed + k), so a run is
//! reproducible on one adapter.

use std::time::Instant;

use anyhow::{bail, Context};
use webdiffusion::eval::{
    argmax_rows, frechet_distance, gaussian_fit, heldout_digits, DigitClassifier, FEATURES,
};
use webdiffusion::models::{Conditioning, UNet2DModel};
use webdiffusion::platform::block_on;
use webdiffusion::sampling::solvers::{
    initial_noise, sample, solver_from_name, Control, Denoiser, Noise, SolverOptions,
};
use webdiffusion::sampling::{Guided, SchedulerConfig};
use webdiffusion::weights::{LoadOptions, Weights};
use webdiffusion::{bundled, Exec, GpuContext, GpuOptions, Tensor};

struct Opts {
    samples: usize,
    batch: usize,
    solvers: Vec<String>,
    steps: Vec<usize>,
    seed: u64,
    cpu: bool,
    guidance: f64,
    /// A model folder of the same family (null class 10) instead of the bundled weights,
    /// e.g. a training run's output before it replaces `models/mnist`.
    model: Option<std::path::PathBuf>,
    /// A scheduler_config.json instead of the bundled one (e.g. with `thresholding`).
    scheduler_config: Option<std::path::PathBuf>,
}

fn parse() -> anyhow::Result<Opts> {
    let mut o = Opts {
        samples: 200,
        batch: 50,
        solvers: vec!["dpmpp_2m".into()],
        steps: vec![20],
        seed: 0,
        cpu: false,
        guidance: 1.0,
        model: None,
        scheduler_config: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--samples" => o.samples = val()?.parse()?,
            "--batch" => o.batch = val()?.parse()?,
            "--solvers" => o.solvers = val()?.split(',').map(String::from).collect(),
            "--steps" => {
                o.steps = val()?
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            }
            "--seed" => o.seed = val()?.parse()?,
            "--cpu" => o.cpu = true,
            "--guidance" => o.guidance = val()?.parse()?,
            "--model" => o.model = Some(val()?.into()),
            "--scheduler-config" => o.scheduler_config = Some(val()?.into()),
            other => bail!("unknown argument {other}"),
        }
    }
    if o.samples == 0 || o.batch == 0 {
        bail!("--samples and --batch must be positive");
    }
    Ok(o)
}

fn eval_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist/eval")
}

/// The held-out real digits, padded as in training, and their labels.
fn heldout() -> anyhow::Result<(Tensor, Vec<usize>)> {
    let path = eval_dir().join("heldout.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(heldout_digits(&bytes)?)
}

fn features(
    exec: &mut Exec,
    clf: &DigitClassifier,
    x: &Tensor,
) -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
    let x = exec.upload(x)?;
    let f = clf.features(exec, &x)?;
    let l = clf.logits(exec, &f)?;
    let mut v = block_on(exec.read_many(&[&f, &l]))?;
    let logits = v.pop().unwrap_or_default();
    let feats = v.pop().unwrap_or_default();
    Ok((feats, argmax_rows(&logits, 10)))
}

fn main() -> anyhow::Result<()> {
    let o = parse()?;
    let mut exec = if o.cpu {
        Exec::cpu()
    } else {
        Exec::gpu(block_on(GpuContext::new(&GpuOptions::default()))?)
    };
    let mut w = Weights::from_bytes(
        "classifier.safetensors",
        &std::fs::read(eval_dir().join("classifier.safetensors"))?,
        &LoadOptions::default(),
    )?;
    let clf = DigitClassifier::from_weights(&mut exec, &mut w)?;
    let (real, real_labels) = heldout()?;
    let (real_f, real_pred) = features(&mut exec, &clf, &real)?;
    let acc = real_pred
        .iter()
        .zip(&real_labels)
        .filter(|(a, b)| a == b)
        .count() as f64
        / real_labels.len() as f64;
    let (m_real, c_real) = gaussian_fit(&real_f, FEATURES)?;
    println!(
        "classifier on {} held-out real digits (this engine, {}): accuracy {:.2} %",
        real_labels.len(),
        exec.backend_name(),
        acc * 100.0
    );

    let sched = match &o.scheduler_config {
        Some(path) => SchedulerConfig::from_file(path, None)?,
        None => bundled::scheduler_config()?,
    };
    let mut unet = Some(match &o.model {
        Some(dir) => UNet2DModel::load_dir(&mut exec, dir)?.into_inner(),
        None => bundled::load(&mut exec)?.into_inner(),
    });
    println!(
        "model: {}; scheduler config: {}",
        o.model
            .as_ref()
            .map_or("bundled".into(), |p| p.display().to_string()),
        o.scheduler_config
            .as_ref()
            .map_or("bundled".into(), |p| p.display().to_string())
    );
    println!(
        "\n| solver | steps | guidance | samples | class accuracy | Fréchet distance | seconds |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for solver_name in &o.solvers {
        for &steps in &o.steps {
            let t0 = Instant::now();
            let mut feats = Vec::new();
            let (mut right, mut total) = (0usize, 0usize);
            let mut done = 0;
            let mut k = 0u64;
            while done < o.samples {
                let n = o.batch.min(o.samples - done);
                let labels: Vec<usize> = (done..done + n).map(|i| i % 10).collect();
                let mut solver =
                    solver_from_name(solver_name, &sched, steps, SolverOptions::default())?;
                let x_t = initial_noise(&mut exec, solver.as_ref(), &[n, 1, 32, 32], o.seed + k)?;
                let mut run = |exec: &mut Exec, model: &mut dyn Denoiser| {
                    sample(
                        exec,
                        solver.as_mut(),
                        model,
                        &x_t,
                        &mut Noise::Philox { seed: o.seed + k },
                        |_, _| Control::Continue,
                    )
                };
                // The model is loaded once; each batch conditions it on its own labels.
                let mut m = unet
                    .take()
                    .context("the model was lost by an earlier error")?;
                let out = if o.guidance == 1.0 {
                    m.set_class_labels(Some(labels.clone()));
                    let out = run(&mut exec, &mut m);
                    unet = Some(m);
                    out?
                } else {
                    let null = vec![bundled::NULL_CLASS; n];
                    let cond = Conditioning {
                        class_labels: Some(&labels),
                        encoder_hidden_states: None,
                        timestep_cond: None,
                    };
                    let uncond = Conditioning {
                        class_labels: Some(&null),
                        encoder_hidden_states: None,
                        timestep_cond: None,
                    };
                    let mut g = Guided::for_unet(&mut exec, m, cond, uncond, o.guidance)?;
                    let out = run(&mut exec, &mut g);
                    unet = Some(g.into_inner());
                    out?
                };
                let (f, pred) = features(&mut exec, &clf, &out.sample)?;
                if f.iter().any(|v| !v.is_finite()) {
                    bail!("{solver_name} at {steps} steps produced non-finite samples");
                }
                right += pred.iter().zip(&labels).filter(|(a, b)| a == b).count();
                total += n;
                feats.extend(f);
                done += n;
                k += 1;
            }
            let (m, c) = gaussian_fit(&feats, FEATURES)?;
            let fd = frechet_distance(&m, &c, &m_real, &c_real);
            println!(
                "| {solver_name} | {steps} | {} | {total} | {:.1} % | {fd:.2} | {:.0} |",
                o.guidance,
                100.0 * right as f64 / total as f64,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
