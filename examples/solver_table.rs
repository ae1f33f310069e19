//! The results table of docs/research-solvers.md ("Every solver"): each solver the CLI
//! offers, on the exact Gaussian-mixture denoiser (`sampling::analytic`, CPU backend).
//!
//! * Deterministic solvers: error (RMS over 256 points in 4-D) against an independent f64
//!   RK4 solution of the probability-flow ODE at N = 10 … 100 steps, and the order fitted
//!   over N = 20 … 100. The schedule is the one of `tests/convergence.rs` (λ = log α/σ
//!   linear in t from +4 to −4, so uniform timesteps are uniform in λ), `trailing` spacing
//!   so every solver starts at t = 999 with integer timesteps, `lower_order_final` off. The
//!   reference ends where the solver ends: σ_min (DDIM/PNDM with `set_alpha_to_one =
//!   false`, DPM-Solver, UniPC, DEIS with `final_sigmas_type = sigma_min`) or σ = 0 (the
//!   Euler family, whose last step is an x̂₀ jump).
//! * Stochastic and research solvers: sliced 2-Wasserstein distance (64 directions) of 2000
//!   samples to 2000 fresh samples of a well-separated three-component mixture, standard
//!   linear-β schedule, at 10, 20 and 50 steps; the noise floor is two independent samples
//!   of the true mixture.
//!
//! Run: `cargo run --example solver_table` (about a minute).

use serde_json::{json, Value};
use webdiffusion::ops::SolverUpdate;
use webdiffusion::platform::block_on;
use webdiffusion::sampling::analytic::{sliced_wasserstein, AnalyticDenoiser, GaussianMixture};
use webdiffusion::sampling::solvers::{
    estimate_gamma, sample, schedule_class_for, solver_from_name, AnalyticDpm, AnalyticVariant,
    Control, Gms, Noise, Solver, SolverOptions,
};
use webdiffusion::sampling::{PredictionType, Schedule, SchedulerConfig};
use webdiffusion::{Exec, Tensor};

const DIM: usize = 4;

fn smooth_mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.7],
        vec![vec![-0.5, 0.3, 0.2, -0.3], vec![0.4, -0.2, 0.1, 0.3]],
        vec![vec![0.3, 0.4, 0.35, 0.5], vec![0.45, 0.3, 0.4, 0.35]],
    )
    .expect("valid mixture")
}

fn separated_mixture() -> GaussianMixture {
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
    .expect("valid mixture")
}

/// Betas whose ᾱ = sigmoid(2λ) has λ linear in t from +4 (t = 0) to −4 (t = 999).
fn lambda_linear_betas() -> Vec<f64> {
    let abar = |t: usize| {
        let l = 4.0 - 8.0 * t as f64 / 999.0;
        1.0 / (1.0 + (-2.0 * l).exp())
    };
    (0..1000)
        .map(|t| {
            if t == 0 {
                1.0 - abar(0)
            } else {
                1.0 - abar(t) / abar(t - 1)
            }
        })
        .collect()
}

/// f64 RK4 (4000 steps in u = log σ̄) of dx̄/du = σ̄·E[ε|x_t], x̄ = x/α.
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

fn run(
    solver: &mut dyn Solver,
    model: &mut AnalyticDenoiser,
    unit: &Tensor,
    seed: u64,
) -> anyhow::Result<Vec<f32>> {
    let mut exec = Exec::cpu();
    let x = exec.run(&SolverUpdate::linear(&[solver.init_noise_sigma()]), &[unit])?;
    let out = sample(
        &mut exec,
        solver,
        model,
        &x,
        &mut Noise::Philox { seed },
        |_, _| Control::Continue,
    )?;
    Ok(out.sample.cpu_data().unwrap_or_default().to_vec())
}

fn rms(a: &[f32], b: &[f64]) -> f64 {
    (a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).powi(2))
        .sum::<f64>()
        / a.len() as f64)
        .sqrt()
}

fn fitted_order(ns: &[usize], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = ns.iter().map(|&n| (n as f64).ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| -e.ln()).collect();
    let mx = xs.iter().sum::<f64>() / xs.len() as f64;
    let my = ys.iter().sum::<f64>() / ys.len() as f64;
    let num: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    num / den
}

/// A scheduler config for `solver` with the class defaults plus `base` and `over`.
fn config(solver: &str, base: &Value, over: &Value) -> anyhow::Result<SchedulerConfig> {
    let mut v = base.clone();
    for (k, x) in over.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    // Keys a class does not take land in `other`, where its solver ignores them.
    Ok(SchedulerConfig::from_json_value(
        &v,
        "solver_table",
        schedule_class_for(solver),
    )?)
}

fn main() -> anyhow::Result<()> {
    // ---- deterministic solvers: error vs the ODE reference and fitted order ----
    let g = smooth_mixture();
    let base = json!({
        "trained_betas": lambda_linear_betas(),
        "timestep_spacing": "trailing",
        "lower_order_final": false,
        "final_sigmas_type": "sigma_min",
        "set_alpha_to_one": false,
        "clip_sample": false,
    });
    let sched = Schedule::new(&config("dpm_multistep", &base, &json!({}))?)?;
    let sig = sched.train_sigmas();
    let (s_start, s_min) = (sig[999] as f64, sig[0] as f64);
    let unit = Exec::cpu().run(&SolverUpdate::noise(&[256, DIM], 1.0, 11, u32::MAX, 0), &[])?;
    let host = unit.cpu_data().unwrap_or_default().to_vec();
    let ref_min = reference(&g, &host, s_start, s_min);
    let ref_zero = reference(&g, &host, s_start, 1e-9);
    // (label, solver, options, ends at σ = 0)
    let o = |k: &str, v: Value| json!({ k: v });
    let cases: Vec<(&str, &str, Value, bool)> = vec![
        ("DDIM", "ddim", json!({}), false),
        ("PNDM (PRK warm-up)", "pndm", json!({}), false),
        ("PLMS", "plms", json!({}), false),
        ("Euler", "euler", json!({}), true),
        ("Heun", "heun", json!({}), true),
        ("DPM2 (KDPM2)", "dpm2", json!({}), true),
        ("LMS (order 4)", "lms", json!({}), true),
        (
            "DPM-Solver-1 (ε)",
            "dpm_multistep",
            json!({"algorithm_type": "dpmsolver", "solver_order": 1}),
            false,
        ),
        (
            "DPM-Solver-2M (ε)",
            "dpm_multistep",
            json!({"algorithm_type": "dpmsolver", "solver_order": 2}),
            false,
        ),
        (
            "DPM-Solver-3M (ε)",
            "dpm_multistep",
            json!({"algorithm_type": "dpmsolver", "solver_order": 3}),
            false,
        ),
        ("DPM-Solver++2M", "dpmpp_2m", json!({}), false),
        ("DPM-Solver++3M", "dpmpp_3m", json!({}), false),
        (
            "DPM-Solver-2S (ε, singlestep)",
            "dpm_singlestep",
            json!({"algorithm_type": "dpmsolver", "solver_order": 2}),
            false,
        ),
        (
            "DPM-Solver-3S (ε, singlestep)",
            "dpm_singlestep",
            json!({"algorithm_type": "dpmsolver", "solver_order": 3}),
            false,
        ),
        ("DPM-Solver++2S", "dpmpp_2s", json!({}), false),
        ("DPM-Solver++3S", "dpmpp_3s", json!({}), false),
        (
            "UniPC-1 bh2",
            "unipc",
            json!({"solver_order": 1, "solver_type": "bh2"}),
            false,
        ),
        (
            "UniPC-2 bh1",
            "unipc",
            json!({"solver_order": 2, "solver_type": "bh1"}),
            false,
        ),
        (
            "UniPC-2 bh2",
            "unipc",
            json!({"solver_order": 2, "solver_type": "bh2"}),
            false,
        ),
        (
            "UniPC-3 bh2",
            "unipc",
            json!({"solver_order": 3, "solver_type": "bh2"}),
            false,
        ),
        ("DEIS-1", "deis", o("solver_order", 1.into()), false),
        ("DEIS-2", "deis", o("solver_order", 2.into()), false),
        ("DEIS-3", "deis", o("solver_order", 3.into()), false),
    ];
    // Divisors of 1000: DDIM and PNDM step back by ⌊1000/N⌋, which only matches trailing
    // timesteps when N divides 1000.
    let ns = [10usize, 20, 25, 40, 50, 100];
    println!("| solver | N=10 | 20 | 25 | 40 | 50 | 100 | fitted order (20–100) | ends at |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, name, over, zero) in &cases {
        let cfg = config(name, &base, over)?;
        let ac = Schedule::new(&cfg)?.alphas_cumprod;
        let mut errs = Vec::new();
        for &n in &ns {
            let mut solver = solver_from_name(name, &cfg, n, SolverOptions::default())?;
            let mut model = AnalyticDenoiser::new(g.clone(), ac.clone(), PredictionType::Epsilon);
            let out = run(solver.as_mut(), &mut model, &unit, 0)?;
            errs.push(rms(&out, if *zero { &ref_zero } else { &ref_min }));
        }
        let order = fitted_order(&ns[1..], &errs[1..]);
        let cells: Vec<String> = errs.iter().map(|e| format!("{e:.2e}")).collect();
        println!(
            "| {label} | {} | {order:.2} | {} |",
            cells.join(" | "),
            if *zero { "σ = 0" } else { "σ_min" }
        );
    }

    // ---- stochastic and research solvers: SW₂ to the true mixture ----
    let g = separated_mixture();
    let n = 2000;
    let truth = g.sample(n, 101);
    let sw = |s: &[f32]| sliced_wasserstein(s, &truth, DIM, 64, 9);
    let unit = Exec::cpu().run(&SolverUpdate::noise(&[n, DIM], 1.0, 5, u32::MAX, 0), &[])?;
    let base = json!({"clip_sample": false});
    let stochastic: Vec<(&str, &str, Value, f64)> = vec![
        ("DDPM (fixed_small)", "ddpm", json!({}), 0.0),
        (
            "DDPM (fixed_large)",
            "ddpm",
            json!({"variance_type": "fixed_large"}),
            0.0,
        ),
        ("DDIM η = 1", "ddim", json!({}), 1.0),
        (
            "DDIM η = 0 (deterministic, for scale)",
            "ddim",
            json!({}),
            0.0,
        ),
        ("Euler ancestral", "euler_ancestral", json!({}), 0.0),
        ("DPM2 ancestral", "dpm2_ancestral", json!({}), 0.0),
        ("DPM-Solver++2M SDE", "dpmpp_2m_sde", json!({}), 0.0),
        ("DPM-Solver++3M SDE", "dpmpp_3m_sde", json!({}), 0.0),
        (
            "SDE-DPM-Solver++2S (singlestep)",
            "dpm_singlestep",
            json!({"algorithm_type": "sde-dpmsolver++"}),
            0.0,
        ),
        (
            "LCM (multistep consistency sampling)",
            "lcm",
            json!({}),
            0.0,
        ),
    ];
    let steps = [10usize, 20, 50];
    println!();
    println!("| solver | SW₂ at 10 steps | 20 | 50 |");
    println!("|---|---|---|---|");
    for (label, name, over, eta) in &stochastic {
        let cfg = config(name, &base, over)?;
        let ac = Schedule::new(&cfg)?.alphas_cumprod;
        let mut cells = Vec::new();
        for &k in &steps {
            let mut solver = solver_from_name(name, &cfg, k, SolverOptions { eta: *eta })?;
            let mut model = AnalyticDenoiser::new(g.clone(), ac.clone(), PredictionType::Epsilon);
            let out = run(solver.as_mut(), &mut model, &unit, 21)?;
            cells.push(format!("{:.4}", sw(&out)?));
        }
        println!("| {label} | {} |", cells.join(" | "));
    }
    let cfg = config("ddpm", &base, &json!({}))?;
    let ac = Schedule::new(&cfg)?.alphas_cumprod;
    let data = Tensor::from_vec(&[n, DIM], g.sample(n, 202))?;
    for (label, variant) in [
        (
            "Analytic-DPM (Γ from 2000 data samples)",
            Some(AnalyticVariant::Ddpm),
        ),
        ("Analytic-DDIM", Some(AnalyticVariant::Ddim)),
        ("GMS", None),
    ] {
        let mut cells = Vec::new();
        for &k in &steps {
            let mut model = AnalyticDenoiser::new(g.clone(), ac.clone(), PredictionType::Epsilon);
            let mut solver: Box<dyn Solver> = match variant {
                Some(v) => {
                    let ts = AnalyticDpm::timesteps_for(&cfg, k)?;
                    let gamma = block_on(estimate_gamma(
                        &mut Exec::cpu(),
                        &mut model,
                        &ts,
                        &ac,
                        PredictionType::Epsilon,
                        &data,
                        33,
                    ))?;
                    Box::new(AnalyticDpm::new(&cfg, k, v, gamma, None)?)
                }
                None => Box::new(Gms::new(&cfg, k)?),
            };
            let out = run(solver.as_mut(), &mut model, &unit, 21)?;
            cells.push(format!("{:.4}", sw(&out)?));
        }
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!(
        "| two independent samples of the true mixture (noise floor) | {:.4} | | |",
        sw(&g.sample(n, 303))?
    );
    Ok(())
}
