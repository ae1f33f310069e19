//! Noise schedules against diffusers' own, from `tests/goldens/schedules/` (written by
//! `scripts/goldens/make_schedule_goldens.py`: diffusers 0.42.1, torch 2.9.1, numpy 2.3.5,
//! scipy 1.16.3 on x86-64 with MKL). Every golden case is a scheduler config as diffusers
//! saves it, so each one also goes through the `scheduler_config.json` loader.
//!
//! Tolerances. Zero wherever diffusers' arithmetic is deterministic IEEE arithmetic; the
//! exceptions come from torch's MKL `sqrt`/`log`/`exp` and numpy's SIMD `log`, which are not
//! correctly rounded on x86 (see `src/sampling/mod.rs`). Measured on the goldens (diffusers
//! on x86-64 with AVX-512 and MKL):
//! * betas, ᾱ, DDIM/DDPM/DPM-Solver/UniPC integer timesteps (interpolated *and* Karras,
//!   exponential, beta, Lu, flow), Euler's interpolated float32 timesteps: **bit-exact**.
//!   Exceptions: DDPM's `sigmoid` betas (torch's vectorized `exp`): ≤ [`SIGMOID_ULPS`].
//! * sigmas and `init_noise_sigma`: ≤ [`SIGMA_ULPS`] (1 for DPM-Solver/UniPC/EDM, 2 for
//!   Euler); all derive from the training σ = torch `((1−ᾱ)/ᾱ) ** 0.5`, an MKL `sqrt`.
//! * Euler's float32 timesteps of converted schedules (Karras, exponential, beta) and
//!   continuous ones, EDM's `c_noise` timesteps: ≤ [`CONVERTED_T_ULPS`] (33 measured), from
//!   `_sigma_to_t` on numpy's SIMD float32 log-sigmas and on σ ends that carry the MKL ulp.
//! * `rescale_betas_zero_snr` schedules: relative [`RESCALED_REL`]. Algorithm 1 of Lin et
//!   al. takes a torch (MKL) `sqrt` of ᾱ, which moves α by up to 68 ulps (ᾱ by 47); σ₀ =
//!   √(β₀/(1−β₀)) with β₀ ≈ 4·10⁻⁵ then amplifies an ulp of α₀ to 1.4·10⁻³ relative, and
//!   every converted σ/timestep inherits that through σ_min. Integer timesteps of those
//!   converted schedules may be off by one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;
use webdiffusion::sampling::special::beta_ppf;
use webdiffusion::sampling::{
    Edm, Schedule, SchedulerClass, SchedulerConfig, SigmaSchedule, TimestepType,
};
use webdiffusion::Error;

/// Sigmas: 1 ulp from the training σ's torch `sqrt`, and one more where that σ is
/// interpolated or feeds a conversion (σ_min/σ_max of Karras and friends).
const SIGMA_ULPS: u32 = 2;
/// Euler float32 timesteps from `_sigma_to_t` or `0.25·log σ` (33 measured).
const CONVERTED_T_ULPS: u32 = 40;
/// Rescaled (zero terminal SNR) schedules, relative (1.4e-3 measured): see the module docs.
const RESCALED_REL: f64 = 2e-3;
/// Rescaled schedules' float timesteps, in training steps on top of [`RESCALED_REL`]: the
/// shifted σ range moves the lowest converted timesteps by up to 0.02 steps (measured).
const RESCALED_T_ABS: f64 = 0.05;
/// DDPM's sigmoid betas.
const SIGMOID_ULPS: u32 = 4;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/schedules")
}

fn read_json(name: &str) -> Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    // diffusers writes -Infinity for infinite floats (DPM-Solver's lambda_min_clipped);
    // serde_json rejects it, so quote it as the config loader does.
    let text = text.replace("-Infinity", "\"-Infinity\"");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hex_f32(s: &str) -> Vec<f32> {
    (0..s.len() / 8)
        .map(|i| f32::from_bits(u32::from_str_radix(&s[8 * i..8 * i + 8], 16).expect("hex")))
        .collect()
}

fn hex_f64(s: &str) -> Vec<f64> {
    (0..s.len() / 16)
        .map(|i| f64::from_bits(u64::from_str_radix(&s[16 * i..16 * i + 16], 16).expect("hex")))
        .collect()
}

/// Distance in float32 ulps (0 for equal values, including both zeros).
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u32::MAX;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i32::MIN - i
        } else {
            i
        }
    };
    (key(a) as i64 - key(b) as i64)
        .unsigned_abs()
        .min(u32::MAX as u64) as u32
}

struct Arrays {
    f32: BTreeMap<String, Vec<f32>>,
    trained_betas: Vec<f64>,
}

fn arrays() -> Arrays {
    let v = read_json("arrays.json");
    let f32 = v["f32"]
        .as_object()
        .expect("f32 map")
        .iter()
        .map(|(k, s)| (k.clone(), hex_f32(s.as_str().expect("hex string"))))
        .collect();
    Arrays {
        f32,
        trained_betas: hex_f64(v["trained_betas"].as_str().expect("trained_betas")),
    }
}

/// What one comparison found, kept per quantity for the summary.
#[derive(Default)]
struct Stats {
    values: usize,
    exact: usize,
    max_ulps: u32,
    max_rel: f64,
}

/// How close a float32 value must be: in ulps, or (for the ill-conditioned rescaled
/// schedules) relative.
#[derive(Clone, Copy, Debug)]
enum Tol {
    Ulps(u32),
    /// |a − b| ≤ rel·|b| + abs.
    Rel {
        rel: f64,
        abs: f64,
    },
}

impl Tol {
    fn accepts(self, a: f32, b: f32) -> bool {
        match self {
            Tol::Ulps(n) => ulps(a, b) <= n,
            Tol::Rel { rel, abs } => (a as f64 - b as f64).abs() <= rel * (b as f64).abs() + abs,
        }
    }
}

struct Checker {
    class: &'static str,
    failures: Vec<String>,
    stats: BTreeMap<&'static str, Stats>,
}

impl Checker {
    fn new(class: &'static str) -> Self {
        Checker {
            class,
            failures: Vec::new(),
            stats: BTreeMap::new(),
        }
    }

    fn fail(&mut self, msg: String) {
        if self.failures.len() < 40 {
            self.failures.push(msg);
        }
    }

    fn floats(&mut self, what: &'static str, ctx: &str, ours: &[f32], want: &[f32], tol: Tol) {
        if ours.len() != want.len() {
            self.fail(format!(
                "{ctx}: {what} has {} values, diffusers {}",
                ours.len(),
                want.len()
            ));
            return;
        }
        let st = self.stats.entry(what).or_default();
        let mut bad = None;
        for (i, (&a, &b)) in ours.iter().zip(want).enumerate() {
            let d = ulps(a, b);
            st.values += 1;
            st.exact += (d == 0) as usize;
            st.max_ulps = st.max_ulps.max(d);
            if a != b {
                st.max_rel = st
                    .max_rel
                    .max((a as f64 - b as f64).abs() / (b as f64).abs());
            }
            if bad.is_none() && !tol.accepts(a, b) {
                bad = Some(i);
            }
        }
        if let Some(i) = bad {
            self.fail(format!(
                "{ctx}: {what}[{i}] = {:e} ({:08x}), diffusers {:e} ({:08x}): {} ulp, beyond {tol:?}",
                ours[i],
                ours[i].to_bits(),
                want[i],
                want[i].to_bits(),
                ulps(ours[i], want[i])
            ));
        }
    }

    fn ints(&mut self, what: &'static str, ctx: &str, ours: &[f64], want: &[i64], flips: usize) {
        if ours.len() != want.len() {
            self.fail(format!(
                "{ctx}: {} timesteps, diffusers {}: {ours:?} vs {want:?}",
                ours.len(),
                want.len()
            ));
            return;
        }
        let st = self.stats.entry(what).or_default();
        let mut off = 0;
        for (i, (&a, &b)) in ours.iter().zip(want).enumerate() {
            let d = (a - b as f64).abs();
            st.values += 1;
            st.exact += (d == 0.0) as usize;
            st.max_ulps = st.max_ulps.max(d as u32);
            if d > 1.0
                || (d == 1.0 && {
                    off += 1;
                    off > flips
                })
            {
                self.fail(format!("{ctx}: timestep[{i}] = {a}, diffusers {b}"));
                return;
            }
        }
    }

    fn finish(self) {
        let mut summary = String::new();
        for (what, st) in &self.stats {
            let _ = writeln!(
                summary,
                "{} {what}: {} values, {} exact, max {} ulp, max relative {:.1e}",
                self.class, st.values, st.exact, st.max_ulps, st.max_rel
            );
        }
        eprint!("{summary}");
        assert!(
            self.failures.is_empty(),
            "{} mismatches against diffusers (first {}):\n{}",
            self.class,
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// A short description of a golden config for failure messages.
fn describe(cfg: &Value) -> String {
    let keys = [
        "beta_schedule",
        "rescale_betas_zero_snr",
        "timestep_spacing",
        "steps_offset",
        "interpolation_type",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "use_lu_lambdas",
        "use_flow_sigmas",
        "final_sigmas_type",
        "timestep_type",
        "lambda_min_clipped",
        "sigma_schedule",
        "num_train_timesteps",
    ];
    let mut out = Vec::new();
    for k in keys {
        match cfg.get(k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(v) => out.push(format!("{k}={v}")),
        }
    }
    if cfg.get("trained_betas").is_some_and(|v| !v.is_null()) {
        out.push("trained_betas".into());
    }
    out.join(" ")
}

fn check_class(file: &str, class: &'static str) {
    let arrays = arrays();
    let golden = read_json(file);
    let cases = golden["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "{file} has no cases");
    let mut ck = Checker::new(class);
    for (ci, case) in cases.iter().enumerate() {
        let mut cfg_json = case["config"].clone();
        if cfg_json["trained_betas"] == "@trained_betas" {
            cfg_json["trained_betas"] = arrays.trained_betas.clone().into();
        }
        let ctx = format!("{class} case {ci} [{}]", describe(&cfg_json));
        let cfg = match SchedulerConfig::from_json_value(&cfg_json, &format!("{file}#{ci}"), None) {
            Ok(c) => c,
            Err(e) => {
                ck.fail(format!("{ctx}: config rejected: {e}"));
                continue;
            }
        };
        assert_eq!(cfg.class.name(), class);
        let schedule = match Schedule::new(&cfg) {
            Ok(s) => s,
            Err(e) => {
                ck.fail(format!("{ctx}: schedule failed: {e}"));
                continue;
            }
        };
        let rescaled = cfg.rescale_betas_zero_snr;
        let sigmoid = cfg.beta_schedule == webdiffusion::sampling::BetaSchedule::Sigmoid;
        // Names the statistics apart for rescaled schedules, which have their own tolerance.
        let name = |plain: &'static str, resc: &'static str| if rescaled { resc } else { plain };
        let rel = Tol::Rel {
            rel: RESCALED_REL,
            abs: 0.0,
        };
        if let Some(key) = case.get("betas").and_then(Value::as_str) {
            if rescaled {
                // β = 1 − ᾱ_t/ᾱ_{t−1} cancels: an ulp of the ratio is thousands of ulps of
                // a small β, so compare α = 1 − β, where the torch-√ difference shows as is.
                let alphas = |b: &[f32]| b.iter().map(|x| 1.0 - x).collect::<Vec<f32>>();
                let want = alphas(&arrays.f32[key]);
                ck.floats(
                    "alphas (rescaled)",
                    &ctx,
                    &alphas(&schedule.betas),
                    &want,
                    rel,
                );
            } else {
                let tol = Tol::Ulps(if sigmoid { SIGMOID_ULPS } else { 0 });
                ck.floats("betas", &ctx, &schedule.betas, &arrays.f32[key], tol);
            }
        }
        if let Some(key) = case.get("alphas_cumprod").and_then(Value::as_str) {
            let tol = if rescaled {
                rel
            } else {
                Tol::Ulps(if sigmoid { SIGMOID_ULPS } else { 0 })
            };
            let what = name("alphas_cumprod", "alphas_cumprod (rescaled)");
            ck.floats(what, &ctx, &schedule.alphas_cumprod, &arrays.f32[key], tol);
        }
        let converted = !matches!(
            cfg.sigma_schedule,
            SigmaSchedule::Interpolated | SigmaSchedule::Flow
        ) && cfg.class != SchedulerClass::EdmEuler;
        for (n, want) in case["steps"].as_object().expect("steps") {
            let n: usize = n.parse().expect("step count");
            let ctx = format!("{ctx} steps={n}");
            let got = schedule.set_timesteps(n);
            if let Some(err) = want.get("error") {
                if got.is_ok() {
                    ck.fail(format!(
                        "{ctx}: diffusers failed ({err}) but this succeeded"
                    ));
                }
                continue;
            }
            let got = match got {
                Ok(t) => t,
                Err(e) => {
                    ck.fail(format!("{ctx}: set_timesteps failed: {e}"));
                    continue;
                }
            };
            match &want["timesteps"] {
                Value::Array(items) => {
                    let want: Vec<i64> = items.iter().map(|v| v.as_i64().expect("int")).collect();
                    let (what, flips) = if rescaled {
                        // Every converted σ moves with the rescaled σ range (see above).
                        ("timesteps (int, rescaled)", usize::MAX)
                    } else if converted {
                        ("timesteps (int, converted)", 0)
                    } else {
                        ("timesteps (int)", 0)
                    };
                    ck.ints(what, &ctx, &got.timesteps, &want, flips);
                }
                Value::String(hex) => {
                    let ours: Vec<f32> = got.timesteps.iter().map(|&t| t as f32).collect();
                    let continuous = cfg.timestep_type == TimestepType::Continuous
                        || cfg.class == SchedulerClass::EdmEuler;
                    let (what, tol) = if rescaled {
                        let tol = Tol::Rel {
                            rel: RESCALED_REL,
                            abs: RESCALED_T_ABS,
                        };
                        ("timesteps (f32, rescaled)", tol)
                    } else if converted || continuous {
                        ("timesteps (f32, converted)", Tol::Ulps(CONVERTED_T_ULPS))
                    } else {
                        ("timesteps (f32)", Tol::Ulps(0))
                    };
                    ck.floats(what, &ctx, &ours, &hex_f32(hex), tol);
                }
                other => panic!("{ctx}: bad timesteps {other}"),
            }
            let tol = if rescaled { rel } else { Tol::Ulps(SIGMA_ULPS) };
            if let Some(hex) = want.get("sigmas").and_then(Value::as_str) {
                let ours = got.sigmas.clone().unwrap_or_default();
                ck.floats(
                    name("sigmas", "sigmas (rescaled)"),
                    &ctx,
                    &ours,
                    &hex_f32(hex),
                    tol,
                );
            } else if got.sigmas.is_some() {
                ck.fail(format!("{ctx}: sigmas where diffusers has none"));
            }
            let init = hex_f32(want["init_noise_sigma"].as_str().expect("init_noise_sigma"));
            let what = name("init_noise_sigma", "init_noise_sigma (rescaled)");
            ck.floats(what, &ctx, &[got.init_noise_sigma as f32], &init, tol);
        }
    }
    ck.finish();
}

#[test]
fn ddim_matches_diffusers() {
    check_class("DDIMScheduler.json", "DDIMScheduler");
}

#[test]
fn ddpm_matches_diffusers() {
    check_class("DDPMScheduler.json", "DDPMScheduler");
}

#[test]
fn euler_discrete_matches_diffusers() {
    check_class("EulerDiscreteScheduler.json", "EulerDiscreteScheduler");
}

#[test]
fn dpm_solver_multistep_matches_diffusers() {
    check_class(
        "DPMSolverMultistepScheduler.json",
        "DPMSolverMultistepScheduler",
    );
}

#[test]
fn unipc_multistep_matches_diffusers() {
    check_class("UniPCMultistepScheduler.json", "UniPCMultistepScheduler");
}

#[test]
fn edm_euler_matches_diffusers() {
    check_class("EDMEulerScheduler.json", "EDMEulerScheduler");
}

/// scipy's `beta.ppf` (Boost's `ibeta_inv`) against ours, in float64 ulps relative to the
/// larger of |x| and 2⁻⁵⁰ (absolute near 0, where the quantile is ~0 and only the f32 sigma
/// matters).
#[test]
fn beta_ppf_matches_scipy() {
    let golden = read_json("special.json");
    let mut worst = (0.0_f64, String::new());
    for set in golden["beta_ppf"].as_array().expect("beta_ppf") {
        let a = set["a"].as_f64().expect("a");
        let b = set["b"].as_f64().expect("b");
        let ps = hex_f64(set["p"].as_str().expect("p"));
        let qs = hex_f64(set["ppf"].as_str().expect("ppf"));
        for (&p, &q) in ps.iter().zip(&qs) {
            let ours = beta_ppf(p, a, b);
            let err = (ours - q).abs() / (q.abs().max(2f64.powi(-50)) * f64::EPSILON);
            if err > worst.0 {
                worst = (
                    err,
                    format!("a={a} b={b} p={p:e}: ours {ours:e}, scipy {q:e}"),
                );
            }
        }
    }
    eprintln!("beta_ppf: max error {:.1} ulp ({})", worst.0, worst.1);
    assert!(
        worst.0 <= 64.0,
        "beta_ppf off by {:.1} ulp: {}",
        worst.0,
        worst.1
    );
}

/// EDM preconditioning against diffusers' float32 `precondition_*` (torch MKL √ and log, so
/// a few float32 ulps).
#[test]
fn edm_preconditioning_matches_diffusers() {
    let golden = read_json("special.json");
    let pre = &golden["edm_precondition"];
    let edm = Edm {
        sigma_data: pre["sigma_data"].as_f64().expect("sigma_data"),
    };
    let sigmas = hex_f32(pre["sigmas"].as_str().expect("sigmas"));
    let field = |k: &str| hex_f32(pre[k].as_str().expect(k));
    let (c_in, c_noise, c_skip, c_out) = (
        field("c_in"),
        field("c_noise"),
        field("c_skip"),
        field("c_out"),
    );
    for (i, &s) in sigmas.iter().enumerate() {
        let c = edm.coefficients(s as f64);
        for (name, ours, want) in [
            ("c_in", c.c_in, c_in[i]),
            ("c_noise", c.c_noise, c_noise[i]),
            ("c_skip", c.c_skip, c_skip[i]),
            ("c_out", c.c_out, c_out[i]),
        ] {
            let d = ulps(ours as f32, want);
            assert!(
                d <= 4,
                "sigma {s}: {name} = {ours}, diffusers {want} ({d} ulp)"
            );
        }
    }
}

fn load(json: &str) -> Result<SchedulerConfig, Error> {
    SchedulerConfig::from_json_str(json, "test.json", None)
}

fn message(r: Result<SchedulerConfig, Error>) -> String {
    match r {
        Ok(c) => panic!("accepted a bad config: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_key_and_valid_values() {
    let m = message(load(
        r#"{"_class_name": "DDIMScheduler", "beta_schedule": "cosine"}"#,
    ));
    assert!(
        m.contains("test.json") && m.contains("`beta_schedule`"),
        "{m}"
    );
    assert!(
        m.contains("\"cosine\"") && m.contains("\"squaredcos_cap_v2\""),
        "{m}"
    );

    let m = message(load(
        r#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "middle"}"#,
    ));
    assert!(m.contains("\"linspace\", \"leading\", \"trailing\""), "{m}");

    let m = message(load(
        r#"{"_class_name": "DDIMScheduler", "prediction_type": "flow_prediction"}"#,
    ));
    assert!(
        m.contains("`prediction_type`") && m.contains("\"v_prediction\""),
        "{m}"
    );

    let m = message(load(
        r#"{"_class_name": "EulerDiscreteScheduler", "final_sigmas_type": "none"}"#,
    ));
    assert!(m.contains("\"zero\", \"sigma_min\""), "{m}");

    let m = message(load(
        r#"{"_class_name": "EulerDiscreteScheduler", "interpolation_type": "cubic"}"#,
    ));
    assert!(m.contains("\"log_linear\""), "{m}");

    // Wrong types say what was expected and what was found.
    let m = message(load(
        r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": "1000"}"#,
    ));
    assert!(m.contains("integer") && m.contains("\"1000\""), "{m}");
    let m = message(load(
        r#"{"_class_name": "DDIMScheduler", "beta_start": true}"#,
    ));
    assert!(m.contains("number") && m.contains("true"), "{m}");
    let m = message(load(
        r#"{"_class_name": "DDIMScheduler", "rescale_betas_zero_snr": 1}"#,
    ));
    assert!(m.contains("true or false"), "{m}");

    // Conflicting sigma switches.
    let m = message(load(
        r#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true, "use_beta_sigmas": true}"#,
    ));
    assert!(
        m.contains("use_karras_sigmas") && m.contains("use_beta_sigmas"),
        "{m}"
    );

    // Unknown or missing class.
    let m = message(load(r#"{"_class_name": "PNDMScheduler"}"#));
    assert!(
        m.contains("PNDMScheduler") && m.contains("EulerDiscreteScheduler"),
        "{m}"
    );
    let m = message(load(r#"{"beta_schedule": "linear"}"#));
    assert!(m.contains("_class_name"), "{m}");
    let m = message(load("[1, 2]"));
    assert!(m.contains("object"), "{m}");
    let m = message(load("{not json"));
    assert!(m.contains("not valid JSON"), "{m}");

    // trained_betas must match the training length.
    let m = message(load(
        r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#,
    ));
    assert!(m.contains("trained_betas") && m.contains('3'), "{m}");
}

#[test]
fn config_loading_follows_diffusers() {
    // Stable Diffusion 1.5's file (PNDM) loaded as another class, as pipelines do with
    // `EulerDiscreteScheduler.from_config(pipe.scheduler.config)`.
    let sd15 = r#"{
      "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
      "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
      "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
      "steps_offset": 1, "trained_betas": null, "clip_sample": false
    }"#;
    let euler = SchedulerConfig::from_json_str(sd15, "sd15", Some(SchedulerClass::EulerDiscrete))
        .expect("loads as Euler");
    assert_eq!(euler.steps_offset, 1);
    assert_eq!(
        euler.timestep_spacing.name(),
        "linspace",
        "Euler's own default"
    );
    assert!(
        euler.other.contains_key("skip_prk_steps") && euler.other.contains_key("set_alpha_to_one")
    );
    let ddim =
        SchedulerConfig::from_json_str(sd15, "sd15", Some(SchedulerClass::Ddim)).expect("DDIM");
    assert!(!ddim.set_alpha_to_one);
    assert_eq!(ddim.timestep_spacing.name(), "leading");
    assert!(
        ddim.other.contains_key("clip_sample"),
        "solver keys are kept for the solvers"
    );

    // `_use_default_values` keys fall back to the target class's defaults.
    let cfg = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DDIMScheduler", "timestep_spacing": "trailing",
            "_use_default_values": ["timestep_spacing"]}"#,
        "t",
        None,
    )
    .expect("loads");
    assert_eq!(cfg.timestep_spacing.name(), "leading");

    // Python's -Infinity, and karras switches on a class without sigmas are ignored (as
    // diffusers' from_config does) rather than rejected.
    let cfg = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
            "solver_order": 2}"#,
        "t",
        Some(SchedulerClass::Ddim),
    )
    .expect("loads");
    assert_eq!(cfg.sigma_schedule, SigmaSchedule::Interpolated);
    let cfg = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
            "use_karras_sigmas": true}"#,
        "t",
        None,
    )
    .expect("loads");
    assert_eq!(cfg.lambda_min_clipped, f64::NEG_INFINITY);
    assert_eq!(cfg.sigma_schedule, SigmaSchedule::Karras);
}

#[test]
fn bad_step_counts_and_options_are_errors() {
    let schedule =
        Schedule::new(&SchedulerConfig::new(SchedulerClass::Ddim)).expect("default DDIM");
    let e = schedule.set_timesteps(0).expect_err("0 steps").to_string();
    assert!(e.contains("at least 1"), "{e}");
    let e = schedule
        .set_timesteps(1001)
        .expect_err("too many")
        .to_string();
    assert!(e.contains("1001") && e.contains("1000"), "{e}");

    // Karras sigmas on a class that has none: an error from the builder API.
    let mut cfg = SchedulerConfig::new(SchedulerClass::Ddim);
    cfg.sigma_schedule = SigmaSchedule::Karras;
    let e = Schedule::new(&cfg).expect_err("karras on DDIM").to_string();
    assert!(
        e.contains("DDIMScheduler") && e.contains("use_karras_sigmas"),
        "{e}"
    );

    let mut cfg = SchedulerConfig::new(SchedulerClass::EulerDiscrete);
    cfg.sigma_schedule = SigmaSchedule::LuLambdas;
    assert!(
        Schedule::new(&cfg).is_err(),
        "Lu lambdas are DPM-Solver only"
    );

    let mut cfg = SchedulerConfig::new(SchedulerClass::Ddpm);
    cfg.trained_betas = Some(vec![0.5; 999]);
    assert!(Schedule::new(&cfg).is_err(), "999 betas for 1000 steps");
}
