//! Classifier-free guidance: the combine and rescale against an independent f64 computation
//! of diffusers' formulas, on the CPU and the GPU; the batched (uncond, cond) forward order;
//! guidance around a real cross-attention UNet; bad inputs.

#[path = "ops/common.rs"]
mod common;

use std::path::Path;

use common::{assert_close, Rng};
use webdiffusion::models::{Conditioning, UNet};
use webdiffusion::sampling::solvers::Denoiser;
use webdiffusion::sampling::{guidance_combine, Guided};
use webdiffusion::{platform::block_on, Exec, Tensor};

/// diffusers: `noise_cfg = u + w·(c − u)`; `rescale_noise_cfg`: per sample
/// `std_c = c.std(dims 1..)`, `std_g = cfg.std(dims 1..)` (unbiased),
/// `out = φ·cfg·std_c/std_g + (1 − φ)·cfg`; in f64 here.
fn reference(out2: &[f32], n: usize, w: f64, phi: f64) -> Vec<f32> {
    let m = out2.len() / (2 * n);
    let std = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    let mut out = Vec::with_capacity(n * m);
    for i in 0..n {
        let u: Vec<f64> = out2[i * m..(i + 1) * m].iter().map(|&x| x as f64).collect();
        let c: Vec<f64> = out2[(n + i) * m..(n + i + 1) * m]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let g: Vec<f64> = u.iter().zip(&c).map(|(u, c)| u + w * (c - u)).collect();
        let f = phi * std(&c) / std(&g) + (1.0 - phi);
        out.extend(g.iter().map(|g| (g * f) as f32));
    }
    out
}

fn execs() -> Vec<Exec> {
    let mut v = vec![Exec::cpu()];
    if let Some(ctx) = common::gpu() {
        v.push(Exec::gpu(ctx));
    }
    v
}

#[test]
fn combine_and_rescale_match_diffusers_formulas() {
    let mut rng = Rng::new(7);
    let n = 3;
    let shape = [2 * n, 4, 5, 7];
    let out2 = rng.tensor(&shape);
    for mut exec in execs() {
        let t = exec.upload(&out2).unwrap();
        for (w, phi) in [(7.5, 0.0), (7.5, 0.7), (1.0, 0.0), (3.0, 1.0), (0.0, 0.5)] {
            let got = guidance_combine(&mut exec, &t, w, phi).unwrap();
            assert_eq!(got.shape(), [n, 4, 5, 7]);
            let got = block_on(exec.read(&got)).unwrap();
            let want = reference(out2.cpu_data().unwrap(), n, w, phi);
            assert_close(
                &format!("cfg w={w} φ={phi} on {}", exec.backend_name()),
                &got,
                &want,
                2e-5,
                2e-5,
            );
        }
    }
    // w = 1 is the conditional output itself; w = 0 the unconditional one.
    let mut cpu = Exec::cpu();
    let m = 4 * 5 * 7;
    let c = guidance_combine(&mut cpu, &out2, 1.0, 0.0).unwrap();
    assert_eq!(c.cpu_data().unwrap(), &out2.cpu_data().unwrap()[n * m..]);
    let u = guidance_combine(&mut cpu, &out2, 0.0, 0.0).unwrap();
    assert_eq!(u.cpu_data().unwrap(), &out2.cpu_data().unwrap()[..n * m]);
}

/// The rescale really changes the output's spread toward the conditional one's: with φ = 1
/// each sample's std equals std(ε_c).
#[test]
fn full_rescale_restores_the_conditional_std() {
    let mut rng = Rng::new(8);
    let out2 = rng.tensor(&[4, 3, 6, 6]);
    let mut cpu = Exec::cpu();
    let g = guidance_combine(&mut cpu, &out2, 9.0, 1.0).unwrap();
    let std = |v: &[f32]| {
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    let m = 3 * 36;
    let (o, g) = (out2.cpu_data().unwrap(), g.cpu_data().unwrap());
    for i in 0..2 {
        let want = std(&o[(2 + i) * m..(3 + i) * m]);
        let got = std(&g[i * m..(i + 1) * m]);
        assert!(
            (got - want).abs() < 1e-5 * want,
            "sample {i}: {got} vs {want}"
        );
    }
}

/// `Guided` feeds `cat([x, x])` to the model once and treats the first half as uncond.
#[test]
fn guided_runs_one_batched_forward_uncond_first() {
    let calls = std::cell::Cell::new(0);
    let inner = |exec: &mut Exec, x: &Tensor, _t: f64| {
        calls.set(calls.get() + 1);
        let s = x.shape().to_vec();
        assert_eq!(s[0], 4, "the batch is doubled");
        let m: usize = s[1..].iter().product();
        let xs = x.cpu_data().unwrap();
        // Uncond half → x, cond half → 3x: the guided result is x·(1 + 2w).
        let v: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| if i < 2 * m { v } else { 3.0 * v })
            .collect();
        exec.tensor(&s, &v)
    };
    let mut g = Guided::new(inner, 2.5).unwrap();
    let mut exec = Exec::cpu();
    let x = Rng::new(9).tensor(&[2, 3, 4, 4]);
    let y = g.denoise(&mut exec, &x, 10.0).unwrap();
    let want: Vec<f32> = x.cpu_data().unwrap().iter().map(|v| v * 6.0).collect();
    assert_close("guided", y.cpu_data().unwrap(), &want, 1e-6, 1e-6);
    assert_eq!(calls.get(), 1);
}

/// Guidance around the cross-attention golden models equals guiding two separate runs
/// (`cross_linear` is also class-conditional: labels are split the same way).
#[test]
fn guided_unet_equals_separate_cond_and_uncond_runs() {
    // (case, tokens, cross_attention_dim, (cond, uncond) labels)
    type Case = (&'static str, usize, usize, Option<(Vec<usize>, Vec<usize>)>);
    let cases: [Case; 2] = [
        ("cross_attn", 7, 24, None),
        ("cross_linear", 5, 12, Some((vec![3, 0], vec![4, 4]))),
    ];
    for (case, tokens, dim, labels) in cases {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/goldens/unet")
            .join(case);
        let mut exec = Exec::cpu();
        let mut rng = Rng::new(10);
        let x = rng.tensor(&[2, 4, 4, 6]);
        let cond = rng.tensor(&[2, tokens, dim]);
        let uncond = rng.tensor(&[2, tokens, dim]);
        let unet = UNet::load_dir(&mut exec, &dir).unwrap();
        let c = |e, l| Conditioning {
            class_labels: l,
            encoder_hidden_states: Some(e),
            timestep_cond: None,
        };
        let (lc, lu) = match &labels {
            Some((a, b)) => (Some(a.as_slice()), Some(b.as_slice())),
            None => (None, None),
        };
        let eps_c = unet.run(&mut exec, &x, &[500.0], c(&cond, lc)).unwrap();
        let eps_u = unet.run(&mut exec, &x, &[500.0], c(&uncond, lu)).unwrap();
        let (w, phi) = (5.0, 0.6);
        let mut both = eps_u.cpu_data().unwrap().to_vec();
        both.extend_from_slice(eps_c.cpu_data().unwrap());
        let want = reference(&both, 2, w, phi);
        let mut g = Guided::for_unet(&mut exec, unet, c(&cond, lc), c(&uncond, lu), w)
            .unwrap()
            .with_rescale(phi)
            .unwrap();
        let got = g.denoise(&mut exec, &x, 500.0).unwrap();
        assert_close(case, got.cpu_data().unwrap(), &want, 1e-4, 1e-5);
    }
}

#[test]
fn bad_guidance_inputs_are_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/unet/cross_attn");
    let mut exec = Exec::cpu();
    let mut rng = Rng::new(11);
    let cond = rng.tensor(&[1, 7, 24]);
    let short = rng.tensor(&[1, 5, 24]);
    let with = |e| Conditioning {
        class_labels: None,
        encoder_hidden_states: Some(e),
        timestep_cond: None,
    };
    let unet = || UNet::load_dir(&mut Exec::cpu(), &dir).unwrap();
    // Different token counts, or only one side conditioned.
    assert!(Guided::for_unet(&mut exec, unet(), with(&cond), with(&short), 5.0).is_err());
    assert!(
        Guided::for_unet(&mut exec, unet(), with(&cond), Conditioning::default(), 5.0).is_err()
    );
    // Width that is not the model's cross_attention_dim (24).
    let wide = rng.tensor(&[1, 7, 25]);
    let err = Guided::for_unet(&mut exec, unet(), with(&wide), with(&wide), 5.0)
        .err()
        .expect("width 25 must fail");
    assert!(err.to_string().contains("cross_attention_dim 24"), "{err}");
    // Scales.
    let id = |_: &mut Exec, x: &Tensor, _: f64| Ok(x.clone());
    assert!(Guided::new(id, f64::NAN).is_err());
    assert!(Guided::new(id, 2.0).unwrap().with_rescale(1.5).is_err());
    // An odd or single batch cannot be split into (uncond, cond).
    let odd = rng.tensor(&[3, 2, 2, 2]);
    assert!(guidance_combine(&mut exec, &odd, 2.0, 0.0).is_err());
    // A model that does not return the doubled batch.
    let halve =
        |e: &mut Exec, x: &Tensor, _: f64| e.run(&webdiffusion::ops::SliceBatch::new(0, 1), &[x]);
    let mut g = Guided::new(halve, 2.0).unwrap();
    assert!(g
        .denoise(&mut exec, &rng.tensor(&[1, 2, 2, 2]), 1.0)
        .is_err());
}

/// Against diffusers' own `rescale_noise_cfg` (goldens by
/// `scripts/goldens/make_guidance_goldens.py`), on the CPU and the GPU.
#[test]
fn combine_matches_diffusers_golden() {
    use webdiffusion::weights::{LoadOptions, Weights};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/guidance.safetensors");
    let mut g = Weights::load_file(&path, &LoadOptions::default()).unwrap();
    let mut get = |name: &str| {
        let shape = g.shape(name).unwrap().to_vec();
        g.take(name, &shape).unwrap()
    };
    let out2 = get("out2");
    let cases: Vec<(Tensor, Tensor)> = (0..4)
        .map(|k| (get(&format!("guided_{k}")), get(&format!("params_{k}"))))
        .collect();
    for mut exec in execs() {
        let t = exec.upload(&out2).unwrap();
        for (want, params) in &cases {
            let p = params.cpu_data().unwrap();
            // Stored as f32; diffusers used the decimal values.
            let round = |v: f32| (v as f64 * 1e6).round() / 1e6;
            let (w, phi) = (round(p[0]), round(p[1]));
            let got = guidance_combine(&mut exec, &t, w, phi).unwrap();
            assert_eq!(got.shape(), want.shape());
            let got = block_on(exec.read(&got)).unwrap();
            let want = want.cpu_data().unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!(
                "w={w} φ={phi} on {}: relative error {:.2e}",
                exec.backend_name(),
                err / scale
            );
            assert!(err / scale <= 1e-6, "w={w} φ={phi}: {}", err / scale);
        }
    }
}

/// Classifier-free guidance folded into the solver update (`CfgUpdate`): same trajectory
/// as the separate combine (≤ 1e-6 of each step's largest value, CPU and GPU), four fewer
/// commands per step for the solvers that fuse, none saved where they cannot (noise,
/// rescale).
#[test]
fn fused_guidance_equals_the_separate_combine_with_fewer_commands() {
    use serde_json::json;
    use webdiffusion::ops::SolverUpdate;
    use webdiffusion::sampling::solvers::{
        initial_noise, sample, solver_from_name, Control, Noise, SolverOptions,
    };
    use webdiffusion::sampling::SchedulerConfig;

    let n = 2;
    let shape = [n, 3, 4, 5];
    let mut rng = Rng::new(11);
    // The inner model sees cat([x, x]) and answers a(t)·x + b(t)·c with different c per half.
    let c2 = rng.tensor(&[2 * n, 3, 4, 5]);
    // (solver, config overrides, fusable, extra commands of the fused step besides the
    // concat, the model and the CfgUpdate)
    let cases: &[(&str, serde_json::Value, bool, usize)] = &[
        ("ddim", json!({"clip_sample": false}), true, 0),
        ("dpmpp_2m", json!({}), true, 0),
        ("dpmpp_3m", json!({}), true, 0),
        // The model input is scaled first (one more command either way).
        ("euler", json!({}), true, 1),
        // ε history: x̂₀ for the preview is one more combine.
        ("deis", json!({"solver_order": 3}), true, 1),
        // ε form: x̂₀ for the preview is one more combine.
        (
            "dpm_multistep",
            json!({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
            true,
            1,
        ),
        // Scaled input, and x̂₀ = x − σ·d for the preview.
        ("lms", json!({}), true, 2),
        ("dpm_singlestep", json!({}), true, 0),
        // Fused in some stages only (commands per step vary): checked on the trajectory and
        // on fewer commands in all (`usize::MAX`).
        ("heun", json!({}), true, usize::MAX),
        ("dpm2", json!({}), true, usize::MAX),
        ("unipc", json!({"solver_order": 2}), true, usize::MAX),
        (
            "unipc",
            json!({"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
            true,
            usize::MAX,
        ),
        // Stochastic, and rescaled guidance: the unfused path either way.
        ("dpmpp_2m_sde", json!({}), false, 0),
    ];
    for mut exec in execs() {
        let backend = exec.backend_name();
        for (solver, over, fusable, extra) in cases {
            let mut cfg_json = json!({"_class_name": "DPMSolverMultistepScheduler"});
            for (k, v) in over.as_object().unwrap() {
                cfg_json[k] = v.clone();
            }
            let class = webdiffusion::sampling::solvers::schedule_class_for(solver);
            let cfg = SchedulerConfig::from_json_value(&cfg_json, "test", class).unwrap();
            let run = |exec: &mut Exec, fused: bool, rescale: f64| {
                let c = exec.upload(&c2).unwrap();
                let inner = move |e: &mut Exec, x: &Tensor, t: f64| {
                    let a = 0.6 + 0.3 * (t / 170.0).cos();
                    let b = 0.5 * (t / 90.0 + 0.3).sin();
                    e.run(&SolverUpdate::linear(&[a, b]), &[x, &c])
                };
                let mut g = Guided::new(inner, 4.5)
                    .unwrap()
                    .with_rescale(rescale)
                    .unwrap();
                g.fused = fused;
                let mut s = solver_from_name(solver, &cfg, 6, SolverOptions::default()).unwrap();
                let x = initial_noise(exec, s.as_ref(), &shape, 3).unwrap();
                let mut steps = Vec::new();
                let mut last = exec.ops_run();
                sample(
                    exec,
                    s.as_mut(),
                    &mut g,
                    &x,
                    &mut Noise::Philox { seed: 5 },
                    |e, info| {
                        steps.push((info.x.clone(), info.x0.clone(), e.ops_run() - last));
                        last = e.ops_run();
                        Control::Continue
                    },
                )
                .unwrap();
                steps
            };
            let fused = run(&mut exec, true, 0.0);
            let plain = run(&mut exec, false, 0.0);
            let mut worst = 0f32;
            for (k, ((xf, x0f, nf), (xp, x0p, np))) in fused.iter().zip(&plain).enumerate() {
                for (what, a, b) in [("x", xf, xp), ("x0", x0f, x0p)] {
                    let a = block_on(exec.read(a)).unwrap();
                    let b = block_on(exec.read(b)).unwrap();
                    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let err = a
                        .iter()
                        .zip(&b)
                        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                    worst = worst.max(err / scale);
                    assert!(
                        err <= 1e-6 * scale,
                        "{backend} {solver} step {k} {what}: fused differs by {err} (scale {scale})"
                    );
                }
                if *fusable && *extra != usize::MAX {
                    assert_eq!(
                        *nf,
                        3 + extra,
                        "{backend} {solver} step {k}: fused commands"
                    );
                    assert_eq!(*np, nf + 4, "{backend} {solver} step {k}: unfused commands");
                } else if !*fusable {
                    assert_eq!(nf, np, "{backend} {solver} step {k}");
                }
            }
            assert_eq!(fused.len(), plain.len(), "{backend} {solver}: step count");
            let total = |v: &[(Tensor, Tensor, usize)]| v.iter().map(|s| s.2).sum::<usize>();
            if *fusable {
                assert!(
                    total(&fused) < total(&plain),
                    "{backend} {solver}: fused {} commands in all, unfused {}",
                    total(&fused),
                    total(&plain)
                );
            }
            eprintln!(
                "{backend} {solver}: commands per step fused {} / unfused {}, max rel. difference {worst:.1e}",
                fused[1].2, plain[1].2
            );
            if *fusable {
                // Guidance rescale needs the guided output's std: the unfused path.
                let r = run(&mut exec, true, 0.7);
                let p = run(&mut exec, false, 0.7);
                assert_eq!(r[1].2, p[1].2, "{backend} {solver}: rescale is not fused");
            }
        }
    }
}
