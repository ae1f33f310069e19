//! Solvers against diffusers' own trajectories, from `tests/goldens/solvers/` (written by
//! `scripts/goldens/make_solver_goldens.py`: diffusers 0.42.1, torch 2.9.1 on x86-64 CPU).
//!
//! Each golden runs a diffusers scheduler for 1–20 steps on x_T of shape (1, 2, 5, 7) with
//! the fake model `a(t)·x + b(t)·c` ([`FakeModel`], implemented identically here with the
//! solver-update op so it runs on either backend) and records every step's `prev_sample` and
//! `pred_original_sample` (or, for classes that return none, the x̂₀ the solver previews:
//! LCM's `denoised`, the consistency model's denoised sample, the multistep solvers' and
//! PNDM's converted output). A step is one of our solver's steps: two of diffusers' `step()`
//! calls for Heun and DPM2, one call (one model evaluation) for everything else, PNDM's
//! Runge–Kutta stages included. Stochastic solvers (DDIM η > 0, DDPM, Euler ancestral, DPM2
//! ancestral, SDE-DPM-Solver++, LCM, consistency): torch's
//! noise cannot be reproduced by Philox, so the golden records each noise tensor diffusers
//! drew and the test feeds the same tensors through [`Noise::Given`]; this checks the
//! deterministic coefficients *and* the noise scale of every step exactly. That Philox noise
//! itself is the same on both backends is checked separately (`philox_cpu_gpu_same`).
//! `<case>_begin<k>` goldens start at step k as diffusers' image-to-image pipeline does
//! (`set_begin_index`, `add_noise` to the step's level, the scheduler's fresh state): the
//! solver runs from [`Solver::begin`]`(k)` and its `add_noise_coefficients` are checked too.
//!
//! Tolerances, relative to the largest |value| of the step's golden tensor (elementwise
//! relative error is meaningless where a value crosses zero): [`CPU_REL`] on the CPU
//! backend, [`GPU_REL`] on the GPU (f32 coefficients, possibly FMA-contracted shader math).

#[path = "ops/common.rs"]
mod common;

use std::collections::VecDeque;
use std::path::PathBuf;

use common::gpu;
use serde_json::Value;
use webdiffusion::ops::SolverUpdate;
use webdiffusion::sampling::solvers::{
    initial_noise, sample, scale_initial_noise, schedule_class_for, solver_from_name, Control,
    Denoiser, Noise, SolverOptions, StepContext,
};
use webdiffusion::sampling::{SchedulerClass, SchedulerConfig};
use webdiffusion::{Error, Exec, Tensor};

const CPU_REL: f64 = 1e-6;
const GPU_REL: f64 = 1e-5;
/// Goldens where diffusers' own float32 step is itself this far from the same step evaluated
/// in float64 (sigmas, samples and coefficients in float64, measured with the golden script's
/// inputs: 1.5e-6, 2.5e-6 and 0.9e-6): ill-conditioned steps (third order onto σ_min after
/// a long last step, ε-form SDE), where two float32 evaluations in different operation orders
/// cannot agree to 1e-6. Ours differ from diffusers by 1.9e-6, 5.4e-6 and 1.4e-6.
///
/// DEIS order 3: diffusers evaluates the log-ρ antiderivatives in float32 and subtracts them;
/// its float32 run is 1.9e-5 and 6.0e-6 from the same run in float64. Those float64 runs are
/// goldens too (`*_f64.json`, held to [`CPU_REL`]): ours is 3.5e-7 and 6.3e-7 from them.
///
/// Clipped or thresholded x̂₀ at the first step: x̂₀ = (x − σ·out)/α with α ≈ 0.006–0.02 has
/// |values| up to ~150, where one float32 ulp is 1.5·10⁻⁵, so an element that cancels down
/// into the clip range carries that absolute error (measured 8.5e-6, 5.7e-6, 7.3e-6, 5.5e-6,
/// 3.5e-6) while the golden's scale is the clip range (1 or 1.5).
const F32_LIMITED: &[(&str, f64)] = &[
    ("deis_3_v_karras.json", 3e-5),
    ("deis_3_eps_leading_nolof.json", 1e-5),
    ("ddim_clip.json", 2e-5),
    ("ddpm_clip.json", 2e-5),
    ("lcm_clip_4.json", 5e-6),
    ("dpmpp_2m_threshold.json", 2e-5),
    ("dpms_2s_threshold.json", 2e-5),
    ("deis_2_threshold.json", 2e-5),
    ("dpm_2m_sde_eps.json", 1e-5),
    ("dpmpp_3m_sample_sigmamin.json", 1e-5),
    ("dpmpp_3m_sde_eps.json", 1e-5),
];
/// Model times: 40 float32 ulps (the schedules' `CONVERTED_T_ULPS`).
const T_REL: f64 = 40.0 * f32::EPSILON as f64;

/// model(x, t) = a(t)·x + b(t)·c, as the golden script computes it (a, b in f64, then f32).
struct FakeModel {
    c: Tensor,
}

impl Denoiser for FakeModel {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, t: f64) -> webdiffusion::Result<Tensor> {
        let a = 0.6 + 0.3 * (t / 170.0).cos();
        let b = 0.5 * (t / 90.0 + 0.3).sin();
        let c = exec.upload(&self.c)?;
        exec.run(&SolverUpdate::linear(&[a, b]), &[x, &c])
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn golden_names() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/solvers");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

fn read_golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/goldens/solvers")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("golden");
    serde_json::from_str(&text).expect("json")
}

fn class_of(g: &Value) -> SchedulerClass {
    // Classes without a schedule of their own load as the class whose keys they share.
    let name = g["class"].as_str().unwrap();
    schedule_class_for(name).unwrap_or_else(|| panic!("{name}: no schedule class"))
}

/// Runs one golden on `exec`; returns the largest step error relative to the step's max |value|.
fn run_golden(g: &Value, exec: &mut Exec) -> f64 {
    let name = g["name"].as_str().unwrap();
    let config =
        SchedulerConfig::from_json_value(&g["config"], name, Some(class_of(g))).expect("config");
    let steps = g["steps"].as_u64().unwrap() as usize;
    let eta = g["eta"].as_f64().unwrap();
    let mut solver = solver_from_name(
        g["solver"].as_str().unwrap(),
        &config,
        steps,
        SolverOptions { eta },
    )
    .expect("solver");
    let shape: Vec<usize> = g["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    // σ_max comes from torch's float32 √ (MKL on x86, within 1 ulp but not correctly
    // rounded), so Euler-family sigmas are within 2 ulp of diffusers (see tests/schedules.rs).
    let (got, want) = (
        solver.init_noise_sigma(),
        g["init_noise_sigma"].as_f64().unwrap(),
    );
    assert!(
        (got - want).abs() <= 2.0 * f32::EPSILON as f64 * want.abs(),
        "{name}: init_noise_sigma {got}, diffusers {want}"
    );
    let traj = g["trajectory"].as_array().unwrap();
    // `<case>_begin<k>`: an image-to-image start at step k, from diffusers' add_noise.
    let first = g["begin"].as_u64().unwrap_or(0) as usize;
    let mut noise = VecDeque::new();
    for (i, s) in traj.iter().enumerate() {
        // Euler's converted (Karras) float32 timesteps come from numpy's SIMD log and differ
        // by a few ulps (see tests/schedules.rs, CONVERTED_T_ULPS); all others are exact.
        let (got, want) = (solver.timestep(first + i), s["t"].as_f64().unwrap());
        assert!(
            (got - want).abs() <= T_REL * want.abs(),
            "{name}: t[{i}] = {got}, diffusers {want}"
        );
        if let Some(zs) = s["noise"].as_array() {
            for z in zs {
                noise.push_back(Tensor::from_vec(&shape, floats(z)).unwrap());
            }
        }
    }
    let mut noise = Noise::Given(noise);
    let mut model = FakeModel {
        c: Tensor::from_vec(&shape, floats(&g["c"])).unwrap(),
    };
    let mut got = Vec::new();
    if first == 0 {
        let unit = Tensor::from_vec(&shape, floats(&g["x_unit"])).unwrap();
        let x_t = scale_initial_noise(exec, solver.as_ref(), &unit).unwrap();
        let res = sample(
            exec,
            solver.as_mut(),
            &mut model,
            &x_t,
            &mut noise,
            |_, info| {
                got.push((info.x.clone(), info.x0.clone()));
                Control::Continue
            },
        )
        .unwrap();
        assert_eq!(res.steps, traj.len());
    } else {
        // The solver's own add_noise coefficients, where it has them, are diffusers'.
        if let Some((a, b)) = solver.add_noise_coefficients(first) {
            let want = floats(&g["add_noise"]);
            for (got, want) in [(a, want[0]), (b, want[1])] {
                assert!(
                    (got - want as f64).abs() <= 4.0 * f32::EPSILON as f64 * got.abs(),
                    "{name}: add_noise coefficient {got}, diffusers {want}"
                );
            }
        }
        solver.begin(first).unwrap();
        let mut x = exec
            .upload(&Tensor::from_vec(&shape, floats(&g["x_start"])).unwrap())
            .unwrap();
        for i in first..solver.num_steps() {
            let mut ctx = StepContext {
                exec,
                noise: &mut noise,
                step: i as u32,
            };
            let out = solver.step(&mut ctx, &mut model, i, &x).unwrap();
            x = out.prev_sample;
            got.push((x.clone(), out.x0));
            exec.submit().unwrap();
        }
        assert_eq!(got.len(), traj.len(), "{name}: steps from {first}");
    }
    let mut worst = 0f64;
    for (i, (s, (x, x0))) in traj.iter().zip(&got).enumerate() {
        let xs = webdiffusion::platform::block_on(exec.read_many(&[x, x0])).unwrap();
        for (what, key, v) in [("prev_sample", "prev", &xs[0]), ("x0", "x0", &xs[1])] {
            let want = floats(&s[key]);
            let scale = want.iter().fold(0f64, |m, &w| m.max(w.abs() as f64));
            let err = v
                .iter()
                .zip(&want)
                .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
            let rel = err / scale.max(1e-30);
            assert!(rel.is_finite(), "{name} step {i} {what}: not finite");
            worst = worst.max(rel);
        }
    }
    worst
}

fn check_all(exec_for: impl Fn() -> Exec, tol: f64, backend: &str) {
    let mut report = Vec::new();
    for name in golden_names() {
        let g = read_golden(&name);
        let mut exec = exec_for();
        let err = run_golden(&g, &mut exec);
        eprintln!("{backend} {name}: max step error {err:.3e} (relative to max |value|)");
        report.push((name, err));
    }
    let bad: Vec<_> = report
        .iter()
        .filter(|(n, e)| {
            let limit = F32_LIMITED
                .iter()
                .find(|(f, _)| f == n)
                .map_or(tol, |(_, t)| t.max(tol));
            *e > limit
        })
        .collect();
    assert!(bad.is_empty(), "{backend}: over {tol:e}: {bad:?}");
}

#[test]
fn trajectories_match_diffusers_cpu() {
    check_all(Exec::cpu, CPU_REL, "cpu");
}

#[test]
fn trajectories_match_diffusers_gpu() {
    let Some(ctx) = gpu() else { return };
    check_all(|| Exec::gpu(ctx.clone()), GPU_REL, "gpu");
}

/// Philox noise: the same seed gives the same stochastic sample on both backends.
#[test]
fn philox_cpu_gpu_same() {
    let Some(ctx) = gpu() else { return };
    let mut config = SchedulerConfig::new(SchedulerClass::EulerDiscrete);
    config.prediction_type = webdiffusion::sampling::PredictionType::Epsilon;
    let shape = [1, 3, 9, 11];
    let mut outs = Vec::new();
    for mut exec in [Exec::cpu(), Exec::gpu(ctx)] {
        let mut solver =
            solver_from_name("euler_ancestral", &config, 8, SolverOptions::default()).unwrap();
        let x_t = initial_noise(&mut exec, solver.as_ref(), &shape, 7).unwrap();
        let c: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let mut model = FakeModel {
            c: Tensor::from_vec(&shape, c).unwrap(),
        };
        let res = sample(
            &mut exec,
            solver.as_mut(),
            &mut model,
            &x_t,
            &mut Noise::Philox { seed: 7 },
            |_, _| Control::Continue,
        )
        .unwrap();
        outs.push(webdiffusion::platform::block_on(exec.read(&res.sample)).unwrap());
    }
    let scale = outs[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in outs[0].iter().zip(&outs[1]) {
        assert!((a - b).abs() <= 1e-5 * scale.max(1.0), "{a} vs {b}");
    }
    // The sample is not trivially zero.
    assert!(scale > 0.0);
}

/// On the GPU each step is submitted after its callback: the work pending when a callback
/// runs is that one step's, not the whole trajectory so far.
#[test]
fn gpu_sampling_submits_once_per_step() {
    let Some(ctx) = gpu() else { return };
    let config = SchedulerConfig::new(SchedulerClass::EulerDiscrete);
    let shape = [1, 2, 5, 7];
    let mut exec = Exec::gpu(ctx);
    let mut solver = solver_from_name("euler", &config, 8, SolverOptions::default()).unwrap();
    let x_t = initial_noise(&mut exec, solver.as_ref(), &shape, 3).unwrap();
    exec.submit().unwrap();
    let mut model = FakeModel {
        c: Tensor::from_vec(&shape, vec![0.25; 70]).unwrap(),
    };
    let mut pending = Vec::new();
    sample(
        &mut exec,
        solver.as_mut(),
        &mut model,
        &x_t,
        &mut Noise::Philox { seed: 3 },
        |ex, _| {
            pending.push(ex.pending_dispatches());
            Control::Continue
        },
    )
    .unwrap();
    assert_eq!(pending.len(), 8);
    assert!(pending[0] > 0, "{pending:?}");
    assert!(
        pending.iter().all(|&p| p == pending[0]),
        "pending work grows: {pending:?}"
    );
    assert_eq!(exec.pending_dispatches(), 0, "the last step was submitted");
}

#[test]
fn callback_stops() {
    let config = SchedulerConfig::new(SchedulerClass::EulerDiscrete);
    let mut exec = Exec::cpu();
    let mut solver = solver_from_name("euler", &config, 10, SolverOptions::default()).unwrap();
    let x_t = initial_noise(&mut exec, solver.as_ref(), &[1, 1, 2, 3], 1).unwrap();
    let mut model = FakeModel {
        c: Tensor::from_vec(&[1, 1, 2, 3], vec![0.5; 6]).unwrap(),
    };
    let mut seen = 0;
    let res = sample(
        &mut exec,
        solver.as_mut(),
        &mut model,
        &x_t,
        &mut Noise::Philox { seed: 1 },
        |_, info| {
            seen += 1;
            assert_eq!(info.total, 10);
            if info.index == 3 {
                Control::Stop
            } else {
                Control::Continue
            }
        },
    )
    .unwrap();
    assert!(res.stopped);
    assert_eq!((res.steps, seen), (4, 4));
}

#[test]
fn bad_input_errors() {
    let config = SchedulerConfig::new(SchedulerClass::Ddim);
    let err = solver_from_name("dpm++9", &config, 10, SolverOptions::default())
        .err()
        .expect("unknown solver");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::InvalidArgument { .. })
            && msg.contains("ddim")
            && msg.contains("euler"),
        "{msg}"
    );
    // diffusers' DDIM default clip_sample = true is supported; bad thresholding options
    // are errors naming the key.
    assert!(solver_from_name("ddim", &config, 10, SolverOptions::default()).is_ok());
    let mut bad = config.clone();
    bad.other.insert("thresholding".into(), Value::Bool(true));
    bad.other
        .insert("dynamic_thresholding_ratio".into(), Value::from(1.5));
    let msg = solver_from_name("ddim", &bad, 10, SolverOptions::default())
        .err()
        .expect("ratio 1.5")
        .to_string();
    assert!(msg.contains("dynamic_thresholding_ratio"), "{msg}");
    bad.other
        .insert("dynamic_thresholding_ratio".into(), Value::from(0.9));
    bad.other
        .insert("sample_max_value".into(), Value::from(-1.0));
    let msg = solver_from_name("dpmpp_2m", &bad, 10, SolverOptions::default())
        .err()
        .expect("negative sample_max_value")
        .to_string();
    assert!(msg.contains("sample_max_value"), "{msg}");
    let mut cfg = config.clone();
    cfg.other.insert("clip_sample".into(), Value::Bool(false));
    assert!(solver_from_name("ddim", &cfg, 0, SolverOptions::default()).is_err());
    assert!(solver_from_name("ddim", &cfg, 10, SolverOptions { eta: -1.0 }).is_err());
    // Multistep options: the errors list the valid values.
    let mut dpm = SchedulerConfig::new(SchedulerClass::DpmSolverMultistep);
    dpm.other.insert("solver_order".into(), Value::from(4));
    let msg = solver_from_name("dpm_multistep", &dpm, 10, SolverOptions::default())
        .err()
        .expect("order 4")
        .to_string();
    assert!(msg.contains("1, 2, 3"), "{msg}");
    dpm.other.insert("solver_order".into(), Value::from(2));
    dpm.other
        .insert("algorithm_type".into(), Value::String("dpm9".into()));
    let msg = solver_from_name(
        "DPMSolverMultistepScheduler",
        &dpm,
        10,
        SolverOptions::default(),
    )
    .err()
    .expect("algorithm_type")
    .to_string();
    assert!(
        msg.contains("dpmsolver++") && msg.contains("sde-dpmsolver++"),
        "{msg}"
    );
    dpm.other
        .insert("algorithm_type".into(), Value::String("dpmsolver".into()));
    let msg = solver_from_name("dpm_multistep", &dpm, 10, SolverOptions::default())
        .err()
        .expect("dpmsolver onto sigma 0")
        .to_string();
    assert!(msg.contains("sigma_min"), "{msg}");
    let mut uni = SchedulerConfig::new(SchedulerClass::UniPcMultistep);
    uni.other
        .insert("solver_type".into(), Value::String("bh3".into()));
    let msg = solver_from_name("unipc", &uni, 10, SolverOptions::default())
        .err()
        .expect("solver_type")
        .to_string();
    assert!(msg.contains("bh1") && msg.contains("bh2"), "{msg}");
    let msg = solver_from_name("unipc_bh1", &uni, 10, SolverOptions::default())
        .err()
        .expect("bh1 onto sigma 0")
        .to_string();
    assert!(msg.contains("NaN"), "{msg}");
    uni.other.insert("solver_order".into(), Value::from(5));
    assert!(solver_from_name("unipc_bh2", &uni, 10, SolverOptions::default()).is_err());
    cfg.other
        .insert("variance_type".into(), Value::String("learned".into()));
    let msg = solver_from_name("ddpm", &cfg, 10, SolverOptions::default())
        .err()
        .expect("variance_type")
        .to_string();
    assert!(
        msg.contains("fixed_small") && msg.contains("fixed_large"),
        "{msg}"
    );
}

/// LMS's integrated coefficients against diffusers' `scipy.integrate.quad` values (recorded
/// in the LMS goldens), and an exact property of any Lagrange basis: Σ_j c_j = σ_{i+1} − σ_i.
#[test]
fn lms_coefficients_match_scipy() {
    use webdiffusion::sampling::solvers::Lms;
    let mut worst = 0f64;
    let mut checked = 0;
    for name in golden_names().iter().filter(|n| n.starts_with("lms_")) {
        let g = read_golden(name);
        let config =
            SchedulerConfig::from_json_value(&g["config"], name, Some(class_of(&g))).unwrap();
        let steps = g["steps"].as_u64().unwrap() as usize;
        let lms = Lms::new(&config, steps).unwrap();
        for (i, want) in g["lms_coeffs"].as_array().unwrap().iter().enumerate() {
            let want: Vec<f64> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = lms.coefficients(i);
            assert_eq!(got.len(), want.len(), "{name} step {i}: order");
            let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
            for (a, b) in got.iter().zip(&want) {
                worst = worst.max((a - b).abs() / scale);
            }
            let sum: f64 = got.iter().sum();
            let dsigma = lms.sigma(i + 1) - lms.sigma(i);
            assert!(
                (sum - dsigma).abs() <= 1e-12 * dsigma.abs(),
                "{name} step {i}: Σc = {sum}, Δσ = {dsigma}"
            );
            checked += 1;
        }
    }
    eprintln!(
        "LMS coefficients: {checked} steps, max error {worst:.3e} relative to the step's max |c|"
    );
    assert!(checked > 30);
    // scipy integrates a float32 integrand (torch sigmas), so agreement is float32-level.
    assert!(worst <= 1e-6, "LMS coefficients off by {worst:e}");
}

/// Bad input for the solvers added after the first set: each error names the option and the
/// valid values, or the step count allowed.
#[test]
fn more_solvers_bad_input() {
    let opts = SolverOptions::default();
    let err = |name: &str, cfg: &SchedulerConfig, steps: usize| -> String {
        match solver_from_name(name, cfg, steps, opts) {
            Ok(_) => panic!("{name} with {steps} steps accepted"),
            Err(e) => e.to_string(),
        }
    };
    let with = |class, kv: &[(&str, Value)]| {
        let mut c = SchedulerConfig::new(class);
        for (k, v) in kv {
            c.other.insert(k.to_string(), v.clone());
        }
        c
    };
    let ddim_like = with(SchedulerClass::Ddim, &[("clip_sample", Value::Bool(false))]);
    let euler_like = SchedulerConfig::new(SchedulerClass::EulerDiscrete);
    let dpm_like = SchedulerConfig::new(SchedulerClass::DpmSolverMultistep);
    let cm = with(
        SchedulerClass::EdmEuler,
        &[("clip_denoised", Value::Bool(false))],
    );
    // steps = 0 and more than the training steps, for every new solver.
    for (name, cfg) in [
        ("ddim_inverse", &ddim_like),
        ("pndm", &ddim_like),
        ("plms", &ddim_like),
        ("lms", &euler_like),
        ("dpm2", &euler_like),
        ("dpm2_ancestral", &euler_like),
        ("dpm_singlestep", &dpm_like),
        ("dpmpp_2s", &dpm_like),
        ("dpmpp_3s", &dpm_like),
        ("deis", &dpm_like),
        ("lcm", &ddim_like),
        ("consistency", &cm),
    ] {
        let msg = err(name, cfg, 0);
        assert!(
            msg.contains("at least 1") || msg.contains("1 to"),
            "{name}: {msg}"
        );
        let msg = err(name, cfg, 1001);
        assert!(msg.contains("1000"), "{name}: {msg}");
        assert!(
            solver_from_name(name, cfg, 8, opts).is_ok(),
            "{name} rejects 8 steps"
        );
    }
    // Order too high for the step count: PNDM's Runge–Kutta warm-up needs 4 steps.
    let msg = err("pndm", &ddim_like, 3);
    assert!(
        msg.contains("at least 4 steps") && msg.contains("skip_prk_steps"),
        "{msg}"
    );
    assert!(solver_from_name("plms", &ddim_like, 3, opts).is_ok());
    // LCM's steps are a subset of its distillation schedule.
    let msg = err("lcm", &ddim_like, 51);
    assert!(msg.contains("original_inference_steps = 50"), "{msg}");
    // Unsupported option values name the option and the valid values.
    let mut c = euler_like.clone();
    c.other.insert("solver_order".into(), Value::from(5));
    assert!(err("lms", &c, 10).contains("1, 2, 3, 4"));
    let mut c = dpm_like.clone();
    c.other.insert("solver_order".into(), Value::from(4));
    assert!(err("dpm_singlestep", &c, 10).contains("1, 2, 3"));
    assert!(err("deis", &c, 10).contains("1, 2, 3"));
    let mut c = dpm_like.clone();
    c.other
        .insert("algorithm_type".into(), Value::from("sde-dpmsolver"));
    let msg = err("dpm_singlestep", &c, 10);
    assert!(
        msg.contains("algorithm_type") && msg.contains("sde-dpmsolver++"),
        "{msg}"
    );
    let msg = err("deis", &c, 10);
    assert!(
        msg.contains("algorithm_type") && msg.contains("deis"),
        "{msg}"
    );
    let mut c = dpm_like.clone();
    c.other.insert("solver_type".into(), Value::from("rk4"));
    let msg = err("dpm_singlestep", &c, 10);
    assert!(msg.contains("midpoint") && msg.contains("heun"), "{msg}");
    let msg = err("deis", &c, 10);
    assert!(msg.contains("logrho"), "{msg}");
    let mut c = dpm_like.clone();
    c.other
        .insert("algorithm_type".into(), Value::from("dpmsolver"));
    assert!(err("dpm_singlestep", &c, 10).contains("sigma_min"));
    let mut c = ddim_like.clone();
    c.timestep_spacing = webdiffusion::sampling::TimestepSpacing::Linspace;
    let msg = err("ddim_inverse", &c, 10);
    assert!(msg.contains("leading, trailing"), "{msg}");
    let mut c = ddim_like.clone();
    c.prediction_type = webdiffusion::sampling::PredictionType::Sample;
    assert!(err("pndm", &c, 10).contains("epsilon, v_prediction"));
    let mut c = euler_like.clone();
    c.prediction_type = webdiffusion::sampling::PredictionType::Sample;
    assert!(err("dpm2", &c, 10).contains("epsilon, v_prediction"));
    let mut c = euler_like.clone();
    c.rescale_betas_zero_snr = true;
    for name in ["lms", "dpm2", "dpm2_ancestral", "deis", "dpm_singlestep"] {
        assert!(
            err(name, &c, 10).contains("rescale_betas_zero_snr"),
            "{name}"
        );
    }
    let mut c = ddim_like.clone();
    c.rescale_betas_zero_snr = true;
    assert!(err("pndm", &c, 10).contains("rescale_betas_zero_snr"));
    assert!(solver_from_name("ddim_inverse", &c, 10, opts).is_ok());
    assert!(solver_from_name("lcm", &c, 10, opts).is_ok());
    // Every solver name and diffusers class name has a schedule class to load its config.
    for (name, class) in webdiffusion::sampling::solvers::SOLVERS {
        assert!(schedule_class_for(name).is_some(), "{name}");
        assert!(schedule_class_for(class).is_some(), "{class}");
    }
    assert!(schedule_class_for("k_euler_9").is_none());
    // Their diffusers defaults clamp (clip_denoised, clip_sample): accepted and applied
    // (the cm_40_4_clip and ddim_inv_clip goldens).
    for (name, class) in [
        ("consistency", SchedulerClass::EdmEuler),
        ("ddim_inverse", SchedulerClass::Ddim),
    ] {
        assert!(
            solver_from_name(name, &SchedulerConfig::new(class), 4, opts).is_ok(),
            "{name} with its default config"
        );
    }
}

/// A model folder's scheduler_config.json is written for one class (the bundled digit
/// model's is a DDPMScheduler config with `clip_sample` and `thresholding` on) and reused
/// for every solver, as diffusers users do with `from_config`: keys a class does not take are
/// dropped, the ones it has apply. Every solver must accept it.
#[test]
fn every_solver_takes_the_bundled_models_scheduler_config() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/mnist/scheduler_config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"clip_sample\": true") && text.contains("\"thresholding\": true"),
        "the test relies on a config with both options on"
    );
    for (name, _) in webdiffusion::sampling::solvers::SOLVERS {
        // UniPC bh1 onto σ = 0 divides by zero in diffusers too; it asks for another
        // final_sigmas_type (tested in the CLI error tests).
        if *name == "unipc_bh1" {
            continue;
        }
        let config = SchedulerConfig::from_json_str(
            &text,
            "scheduler_config.json",
            schedule_class_for(name),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = solver_from_name(name, &config, 10, SolverOptions::default()) {
            panic!("{name} rejects the bundled model's scheduler config: {e}");
        }
    }
}
