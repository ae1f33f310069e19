//! Empirical convergence orders and few-step sample quality of the solvers, on the exact
//! Gaussian-mixture denoiser of `sampling::analytic` (CPU backend; a few seconds).
//!
//! # Convergence order
//!
//! Each deterministic solver maps the same fixed initial noise x_T (256 points in 4-D) to
//! x₀ with N and 2N steps; the error is the RMS distance to a reference solution of the
//! same probability-flow ODE, integrated independently here in f64 (classical RK4 in
//! u = log σ̄ with 4000 steps, on dx̄/du = σ̄·E[ε|x_t], x̄ = x/α, σ̄ = σ/α: the ODE every
//! solver here discretises). The order is the least-squares slope of log error against
//! log N.
//!
//! Why this schedule and time range: with diffusers' default linear betas, uniform integer
//! timesteps crowd the high-noise end (λ = log α/σ moves by ~10⁻³ per timestep there and by
//! ~10⁻¹ near t = 0), so even 80 steps leave the last steps with h ≈ 1 in λ, where the
//! mixture's x̂₀ changes fastest, and the measured slopes are pre-asymptotic. Here the
//! betas are `trained_betas` chosen so that λ is linear in t, from λ = +4 at t = 0 to
//! λ = −4 at t = 999: uniform timesteps are then uniform steps in λ, the variable the
//! DPM-Solver and UniPC updates are exact polynomials in. The last step ends at σ_min
//! (`final_sigmas_type = sigma_min`) so every N integrates the same interval (onto σ = 0 the
//! final step is a plain x̂₀ jump whose error is O(σ_last²), first order in 1/N), and
//! `lower_order_final` is off so the order is the nominal one to the end.
//!
//! The mixture here ([`smooth_mixture`]) has wide, overlapping components: with the sharply
//! separated one of the quality test, the posterior over components switches so fast that
//! even 80 steps are pre-asymptotic for orders 2 and 3 (slopes ≈ 2 for both).
//!
//! # DPM-Solver-3M is second order
//!
//! diffusers' third-order multistep update (`multistep_dpm_solver_third_order_update`, the
//! same in the DPM-Solver reference code and k-diffusion's 3M samplers) uses
//! D₂ = (D1₀ − D1₁)/(r₀ + r₁), which by Taylor expansion is h²·x̂₀''/2 + O(h³), with the
//! coefficient −α_t·((e^{−h} − 1 + h)/h² − ½) ≈ α_t·h/6; the exact integral
//! α_t·∫₀ʰ e^{−(h−τ)}·τ²/2 dτ·x̂₀'' = α_t·(h³/6 + O(h⁴))·x̂₀'' needs twice that (α_t·h³/12
//! vs h³/6). The local error is then O(h³) and the global order 2, which is what this test
//! measures (1.95–2.0 asymptotically, both forms). Doubling that coefficient (an experiment,
//! not committed: it would break parity with diffusers) gave fitted orders 3.4 in both forms
//! on the same grid (local slopes 3.1–4.2 up to 113 steps, then the f32 floor), with errors
//! 10–40× smaller from 40 steps on. The test therefore expects 2 for `solver_order = 3`.

#[path = "ops/common.rs"]
mod common;

use webdiffusion::ops::SolverUpdate;
use webdiffusion::sampling::analytic::{sliced_wasserstein, AnalyticDenoiser, GaussianMixture};
use webdiffusion::sampling::solvers::{
    sample, Control, Ddpm, DpmPreset, DpmSolverMultistep, Noise, Solver, UniPc,
};
use webdiffusion::sampling::{PredictionType, Schedule, SchedulerClass, SchedulerConfig};
use webdiffusion::{Exec, Tensor};

const DIM: usize = 4;
const POINTS: usize = 256;
/// λ at t = 0 and at t = 999 of the order-test schedule.
const LAMBDA_RANGE: (f64, f64) = (4.0, -4.0);

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.25, 0.45, 0.3],
        vec![
            vec![-1.0, 0.6, 0.2, -0.5],
            vec![0.8, -0.7, 0.5, 0.3],
            vec![0.1, 0.9, -0.9, 0.8],
        ],
        vec![
            vec![0.05, 0.08, 0.04, 0.1],
            vec![0.09, 0.03, 0.06, 0.05],
            vec![0.04, 0.06, 0.1, 0.02],
        ],
    )
    .unwrap()
}

/// A smoother mixture for the order measurements: wider, closer components, so the
/// posterior over components (and hence x̂₀ along the trajectory) changes on a λ-scale of
/// order one and the solvers reach their asymptotic regime within ~100 steps. The mixture
/// of [`mixture`] switches components so sharply that even 80 steps are pre-asymptotic
/// for second- and third-order methods (measured slopes ≈ 2 for both).
fn smooth_mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.7],
        vec![vec![-0.5, 0.3, 0.2, -0.3], vec![0.4, -0.2, 0.1, 0.3]],
        vec![vec![0.3, 0.4, 0.35, 0.5], vec![0.45, 0.3, 0.4, 0.35]],
    )
    .unwrap()
}

/// Betas whose ᾱ = sigmoid(2λ) has λ linear in t from λ₀ (t = 0) to λ_T (t = n − 1).
fn lambda_linear_betas(n: usize, (l0, lt): (f64, f64)) -> Vec<f64> {
    let abar = |t: usize| {
        let l = l0 + (lt - l0) * t as f64 / (n - 1) as f64;
        1.0 / (1.0 + (-2.0 * l).exp())
    };
    (0..n)
        .map(|t| {
            if t == 0 {
                1.0 - abar(0)
            } else {
                1.0 - abar(t) / abar(t - 1)
            }
        })
        .collect()
}

fn config(class: SchedulerClass, opts: &[(&str, serde_json::Value)]) -> SchedulerConfig {
    let mut c = SchedulerConfig::new(class);
    c.trained_betas = Some(lambda_linear_betas(1000, LAMBDA_RANGE));
    c.final_sigmas_type = webdiffusion::sampling::FinalSigmas::SigmaMin;
    c.other.insert("lower_order_final".into(), false.into());
    for (k, v) in opts {
        c.other.insert((*k).into(), v.clone());
    }
    c
}

fn initial_noise(seed: u64) -> Tensor {
    let mut exec = Exec::cpu();
    let op = SolverUpdate::noise(&[POINTS, DIM], 1.0, seed, u32::MAX, 0);
    exec.run(&op, &[]).unwrap()
}

/// f64 RK4 reference of the probability-flow ODE from σ̄_start to σ̄_end.
fn reference(g: &GaussianMixture, x_t: &[f32], sbar_start: f64, sbar_end: f64) -> Vec<f64> {
    let steps = 4000;
    let (u0, u1) = (sbar_start.ln(), sbar_end.ln());
    let h = (u1 - u0) / steps as f64;
    let alpha0 = 1.0 / (1.0 + sbar_start * sbar_start).sqrt();
    let mut xb: Vec<f64> = x_t.iter().map(|&v| v as f64 / alpha0).collect();
    let f = |u: f64, xb: &[f64]| -> Vec<f64> {
        let sb = u.exp();
        let alpha = 1.0 / (1.0 + sb * sb).sqrt();
        let x: Vec<f64> = xb.iter().map(|v| v * alpha).collect();
        let e = g.eps_moments_f64(&x, alpha, sb * alpha).m1;
        e.iter().map(|v| sb * v).collect()
    };
    let axpy = |x: &[f64], k: &[f64], c: f64| -> Vec<f64> {
        x.iter().zip(k).map(|(a, b)| a + c * b).collect()
    };
    for i in 0..steps {
        let u = u0 + h * i as f64;
        let k1 = f(u, &xb);
        let k2 = f(u + h / 2.0, &axpy(&xb, &k1, h / 2.0));
        let k3 = f(u + h / 2.0, &axpy(&xb, &k2, h / 2.0));
        let k4 = f(u + h, &axpy(&xb, &k3, h));
        for j in 0..xb.len() {
            xb[j] += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j]);
        }
    }
    let alpha1 = 1.0 / (1.0 + sbar_end * sbar_end).sqrt();
    xb.iter().map(|v| v * alpha1).collect()
}

fn run(solver: &mut dyn Solver, model: &mut AnalyticDenoiser, x_t: &Tensor, seed: u64) -> Vec<f32> {
    let mut exec = Exec::cpu();
    let mut noise = Noise::Philox { seed };
    let out = sample(&mut exec, solver, model, x_t, &mut noise, |_, _| {
        Control::Continue
    })
    .unwrap();
    out.sample.cpu_data().unwrap().to_vec()
}

fn rms(a: &[f32], b: &[f64]) -> f64 {
    (a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).powi(2))
        .sum::<f64>()
        / a.len() as f64)
        .sqrt()
}

/// Least-squares slope of −log(err) against log(N).
fn fitted_order(ns: &[usize], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = ns.iter().map(|&n| (n as f64).ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| -e.ln()).collect();
    let (mx, my) = (
        xs.iter().sum::<f64>() / xs.len() as f64,
        ys.iter().sum::<f64>() / ys.len() as f64,
    );
    let num: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    num / den
}

struct Case {
    label: &'static str,
    /// The fitted order must lie in this range.
    expected: (f64, f64),
    build: Box<dyn Fn(usize) -> Box<dyn Solver>>,
}

fn dpm_case(label: &'static str, algorithm: &'static str, order: usize) -> Case {
    Case {
        label,
        expected: if order == 3 {
            // diffusers' (and the reference implementation's) third-order multistep update
            // is second order: see the module docs.
            (1.7, 2.3)
        } else {
            (order as f64 - 0.3, order as f64 + 0.3)
        },
        build: Box::new(move |n| {
            let c = config(
                SchedulerClass::DpmSolverMultistep,
                &[
                    ("algorithm_type", algorithm.into()),
                    ("solver_order", order.into()),
                ],
            );
            Box::new(DpmSolverMultistep::new(&c, n, "dpm_multistep", DpmPreset::default()).unwrap())
        }),
    }
}

fn unipc_case(
    label: &'static str,
    variant: &'static str,
    order: usize,
    expected: (f64, f64),
) -> Case {
    Case {
        label,
        expected,
        build: Box::new(move |n| {
            let c = config(
                SchedulerClass::UniPcMultistep,
                &[
                    ("solver_type", variant.into()),
                    ("solver_order", order.into()),
                ],
            );
            Box::new(UniPc::new(&c, n, "unipc", None).unwrap())
        }),
    }
}

#[test]
fn convergence_orders() {
    let g = smooth_mixture();
    let cfg = config(SchedulerClass::DpmSolverMultistep, &[]);
    let schedule = Schedule::new(&cfg).unwrap();
    let sig = schedule.train_sigmas();
    let (s_start, s_end) = (sig[999] as f64, sig[0] as f64);
    let x_t = initial_noise(11);
    let x_ref = reference(&g, x_t.cpu_data().unwrap(), s_start, s_end);
    let cases = vec![
        dpm_case("DPM-Solver-1 (ε)", "dpmsolver", 1),
        dpm_case("DPM-Solver-2M (ε)", "dpmsolver", 2),
        dpm_case("DPM-Solver-3M (ε)", "dpmsolver", 3),
        dpm_case("DPM-Solver++1 (x₀)", "dpmsolver++", 1),
        dpm_case("DPM-Solver++2M (x₀)", "dpmsolver++", 2),
        dpm_case("DPM-Solver++3M (x₀)", "dpmsolver++", 3),
        // UniPC-p with its corrector: order p + 1 (the paper's Theorem 3.1).
        unipc_case("UniPC-1 bh2", "bh2", 1, (1.7, 2.3)),
        unipc_case("UniPC-2 bh2", "bh2", 2, (2.7, 3.3)),
        unipc_case("UniPC-1 bh1", "bh1", 1, (1.7, 2.3)),
        unipc_case("UniPC-2 bh1", "bh1", 2, (2.7, 3.3)),
        // At p = 3 the warm-up (a corrected first-order step, local error O(h³)) bounds the
        // global order by 3 while UniC-3 is nominally 4; measured: between the two.
        unipc_case("UniPC-3 bh2", "bh2", 3, (2.7, 4.3)),
    ];
    // From 20 steps: below that the higher orders are visibly pre-asymptotic; 160 steps of
    // the third-order solvers stay ~10× above the f32 rounding floor (~10⁻⁶).
    let ns = [20usize, 28, 40, 56, 80, 113, 160];
    let mut failures = Vec::new();
    for case in &cases {
        let mut errs = Vec::new();
        for &n in &ns {
            let mut solver = (case.build)(n);
            let mut model = AnalyticDenoiser::new(
                g.clone(),
                schedule.alphas_cumprod.clone(),
                PredictionType::Epsilon,
            );
            let out = run(solver.as_mut(), &mut model, &x_t, 0);
            errs.push(rms(&out, &x_ref));
        }
        let order = fitted_order(&ns, &errs);
        let local: Vec<String> = (1..ns.len())
            .map(|i| {
                format!(
                    "{:.2}",
                    (errs[i - 1] / errs[i]).ln() / (ns[i] as f64 / ns[i - 1] as f64).ln()
                )
            })
            .collect();
        eprintln!("   local orders {}", local.join(" "));
        let row: Vec<String> = ns
            .iter()
            .zip(&errs)
            .map(|(n, e)| format!("{n}:{e:.2e}"))
            .collect();
        let (lo, hi) = case.expected;
        eprintln!(
            "{:22} order {order:.2} (expect {lo}–{hi}) | {}",
            case.label,
            row.join(" ")
        );
        if !(lo..=hi).contains(&order) {
            failures.push(format!(
                "{} order {order:.2}, expected {lo}–{hi}",
                case.label
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Few-step quality: sliced Wasserstein distance (64 directions) between 2000 samples and
/// 2000 fresh samples of the true mixture, at 10 steps of the standard linear schedule
/// (the regime where the papers compare: Analytic-DPM Table 1, GMS Table 1). Claimed
/// ranking: Analytic-DPM and GMS both beat DDPM's fixed variances.
#[test]
fn few_step_quality_ranks_as_the_papers_claim() {
    use webdiffusion::sampling::solvers::{estimate_gamma, AnalyticDpm, AnalyticVariant, Gms};
    let g = mixture();
    let n = 2000;
    let steps = 10;
    let mut cfg = SchedulerConfig::new(SchedulerClass::Ddpm);
    cfg.other.insert("clip_sample".into(), false.into());
    let schedule = Schedule::new(&cfg).unwrap();
    let truth = g.sample(n, 101);
    let x_t = {
        let mut exec = Exec::cpu();
        exec.run(&SolverUpdate::noise(&[n, DIM], 1.0, 5, u32::MAX, 0), &[])
            .unwrap()
    };
    let model = || {
        AnalyticDenoiser::new(
            g.clone(),
            schedule.alphas_cumprod.clone(),
            PredictionType::Epsilon,
        )
    };
    let sw = |s: &[f32]| sliced_wasserstein(s, &truth, DIM, 64, 9).unwrap();
    let mut results = Vec::new();
    for (name, variance) in [
        ("ddpm fixed_small", "fixed_small"),
        ("ddpm fixed_large", "fixed_large"),
    ] {
        let mut c = cfg.clone();
        c.other.insert("variance_type".into(), variance.into());
        let mut solver = Ddpm::new(&c, steps).unwrap();
        let out = run(&mut solver, &mut model(), &x_t, 21);
        results.push((name, sw(&out)));
    }
    let ts = AnalyticDpm::timesteps_for(&cfg, steps).unwrap();
    let data = Tensor::from_vec(&[n, DIM], g.sample(n, 202)).unwrap();
    let gamma = webdiffusion::platform::block_on(estimate_gamma(
        &mut Exec::cpu(),
        &mut model(),
        &ts,
        &schedule.alphas_cumprod,
        PredictionType::Epsilon,
        &data,
        33,
    ))
    .unwrap();
    // Γ = E‖E[ε|x_t]‖²/d: ≈ 1 where x_t is almost pure noise, falling towards 0 as the
    // data becomes identifiable (the timesteps run from noisy to clean). The Monte Carlo
    // estimate fluctuates by ~0.02 (8000 values), so the checks leave that much room.
    eprintln!("Γ at {ts:?}: {gamma:.4?}");
    assert!(gamma.iter().all(|&g| g > 0.0 && g < 1.05), "{gamma:?}");
    assert!(gamma[0] > 0.95 && gamma[9] < 0.05, "{gamma:?}");
    assert!(
        gamma[9] < gamma[7] && gamma[7] < gamma[5] && gamma[5] < gamma[1],
        "{gamma:?}"
    );
    for (name, variant) in [
        ("analytic-ddpm", AnalyticVariant::Ddpm),
        ("analytic-ddim", AnalyticVariant::Ddim),
    ] {
        let mut solver = AnalyticDpm::new(&cfg, steps, variant, gamma.clone(), None).unwrap();
        let out = run(&mut solver, &mut model(), &x_t, 21);
        results.push((name, sw(&out)));
    }
    let mut gms = Gms::new(&cfg, steps).unwrap();
    let out = run(&mut gms, &mut model(), &x_t, 21);
    results.push(("gms", sw(&out)));
    let floor = sw(&g.sample(n, 303));
    for (name, d) in &results {
        eprintln!("{steps} steps {name:18} SW₂ {d:.4}");
    }
    eprintln!("two samples of the true mixture: SW₂ {floor:.4}");
    let get = |k: &str| results.iter().find(|(n, _)| *n == k).unwrap().1;
    let ddpm_best = get("ddpm fixed_small").min(get("ddpm fixed_large"));
    assert!(get("analytic-ddpm") < ddpm_best, "{results:?}");
    assert!(get("gms") < ddpm_best, "{results:?}");
}

/// Adaptive DPM-Solver-12/23 on the standard linear schedule (where uniform timesteps are
/// badly placed): tighter tolerances give smaller errors, and at a matched number of model
/// calls the adaptive solver beats fixed-step multistep DPM-Solver-2 on diffusers' default
/// `linspace` timesteps.
#[test]
fn adaptive_dpm_solver_controls_its_error() {
    use webdiffusion::sampling::solvers::{sample_adaptive, AdaptiveOptions, AdaptiveOrder};
    let g = mixture();
    let mut cfg = SchedulerConfig::new(SchedulerClass::DpmSolverMultistep);
    cfg.final_sigmas_type = webdiffusion::sampling::FinalSigmas::SigmaMin;
    let schedule = Schedule::new(&cfg).unwrap();
    let abar = schedule.alphas_cumprod.clone();
    let sbar = |t: usize| ((1.0 - abar[t] as f64) / abar[t] as f64).sqrt();
    let x_t = initial_noise(12);
    let x_ref = reference(&g, x_t.cpu_data().unwrap(), sbar(999), sbar(0));
    let mut report = Vec::new();
    for order in [AdaptiveOrder::O12, AdaptiveOrder::O23] {
        let mut errs = Vec::new();
        for (rtol, atol) in [(0.05, 0.0078), (0.01, 0.0016), (0.002, 0.0003)] {
            let mut model = AnalyticDenoiser::new(g.clone(), abar.clone(), PredictionType::Epsilon);
            let opts = AdaptiveOptions {
                order,
                rtol,
                atol,
                ..Default::default()
            };
            let res = webdiffusion::platform::block_on(sample_adaptive(
                &mut Exec::cpu(),
                &mut model,
                &abar,
                PredictionType::Epsilon,
                &x_t,
                opts,
            ))
            .unwrap();
            let err = rms(res.sample.cpu_data().unwrap(), &x_ref);
            assert_eq!(res.model_calls, model.calls);
            // Fixed-step DPM-Solver-2M with as many model calls.
            let mut c = cfg.clone();
            c.other.insert("algorithm_type".into(), "dpmsolver".into());
            let mut fixed =
                DpmSolverMultistep::new(&c, res.model_calls, "dpm_multistep", DpmPreset::default())
                    .unwrap();
            let mut m2 = AnalyticDenoiser::new(g.clone(), abar.clone(), PredictionType::Epsilon);
            let fixed_err = rms(&run(&mut fixed, &mut m2, &x_t, 0), &x_ref);
            let line = format!(
                "adaptive {order:?} rtol {rtol}: {} accepted, {} rejected, NFE {}, error {err:.2e}; DPM-Solver-2M at NFE {}: {fixed_err:.2e}",
                res.timesteps.len(),
                res.rejected,
                res.model_calls,
                m2.calls
            );
            eprintln!("{line}");
            report.push(line);
            errs.push((err, fixed_err));
        }
        assert!(
            errs[0].0 > errs[1].0 && errs[1].0 > errs[2].0,
            "tolerance does not control the error: {report:?}"
        );
        assert!(
            errs.iter().all(|(a, f)| a < f),
            "adaptive loses to fixed steps at equal NFE: {report:?}"
        );
    }
}

/// GMS and Analytic-DPM run the same on the GPU as on the CPU: the same Philox seed picks
/// the same mixture components and noise, so trajectories agree to float32 rounding.
#[test]
fn research_samplers_agree_on_cpu_and_gpu() {
    use webdiffusion::sampling::solvers::{AnalyticDpm, AnalyticVariant, Gms};
    let Some(ctx) = common::gpu() else {
        return;
    };
    let g = mixture();
    let mut cfg = SchedulerConfig::new(SchedulerClass::Ddpm);
    cfg.other.insert("clip_sample".into(), false.into());
    let schedule = Schedule::new(&cfg).unwrap();
    let x_t = {
        let mut exec = Exec::cpu();
        exec.run(&SolverUpdate::noise(&[61, DIM], 1.0, 8, u32::MAX, 0), &[])
            .unwrap()
    };
    let gamma: Vec<f64> = (0..10).map(|i| 0.2 + 0.07 * i as f64).collect();
    type Build<'a> = Box<dyn Fn() -> Box<dyn Solver> + 'a>;
    let builders: Vec<(&str, Build)> = vec![
        ("gms", Box::new(|| Box::new(Gms::new(&cfg, 10).unwrap()))),
        (
            "analytic-ddpm",
            Box::new(|| {
                Box::new(
                    AnalyticDpm::new(&cfg, 10, AnalyticVariant::Ddpm, gamma.clone(), None).unwrap(),
                )
            }),
        ),
    ];
    for (name, build) in &builders {
        let mut outs = Vec::new();
        for mut exec in [Exec::cpu(), Exec::gpu(ctx.clone())] {
            let mut model = AnalyticDenoiser::new(
                g.clone(),
                schedule.alphas_cumprod.clone(),
                PredictionType::Epsilon,
            );
            let mut noise = Noise::Philox { seed: 5 };
            let mut solver = build();
            let out = sample(
                &mut exec,
                solver.as_mut(),
                &mut model,
                &x_t,
                &mut noise,
                |_, _| Control::Continue,
            )
            .unwrap();
            outs.push(webdiffusion::platform::block_on(exec.read(&out.sample)).unwrap());
        }
        let diffs: Vec<f32> = outs[0]
            .iter()
            .zip(&outs[1])
            .map(|(a, b)| (a - b).abs())
            .collect();
        let worst = diffs.iter().fold(0f32, |m, &d| m.max(d));
        let close = diffs.iter().filter(|&&d| d <= 1e-4).count() as f64 / diffs.len() as f64;
        eprintln!(
            "{name}: max |gpu − cpu| after 10 steps {worst:.2e}, {:.1}% within 1e-4",
            100.0 * close
        );
        // (With raw moments E[ε²], E[ε³] as inputs, κ₃'s float32 cancellation under the
        // fit's cube root made these differ by 1.7e-2; hence the central-moment interface.)
        assert!(
            worst < 1e-4,
            "{name}: GPU and CPU trajectories differ by {worst}"
        );
    }
}
