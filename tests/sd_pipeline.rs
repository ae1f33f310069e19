//! Stable Diffusion pipelines: the repository layout, the memory plan, and (with the text
//! encoder and VAE) whole pipelines against diffusers goldens made by
//! scripts/goldens/make_tiny_sd.py on the tiny repository in tests/fixtures/tiny-sd (and
//! make_tiny_lcm.py on tests/fixtures/tiny-lcm, an LCM-distilled UNet with a guidance
//! embedding).

#[path = "ops/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use webdiffusion::pipeline::plan::{self, PlanLimits, VaeTiling};
use webdiffusion::pipeline::sd::{header_tensors, img2img_steps, plan_inputs_for_dir, SdConfigs};
use webdiffusion::Error;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn as_map(list: &plan::TensorList, strip: &str) -> BTreeMap<String, Vec<usize>> {
    list.iter()
        .map(|(n, s)| (n.strip_prefix(strip).unwrap_or(n).to_string(), s.clone()))
        .collect()
}

/// The tensor lists the configs imply equal the tiny repository's safetensors headers,
/// name for name and shape for shape (so the SD-1.5 numbers below rest on the same code).
#[test]
fn tensor_lists_from_configs_match_the_headers() {
    for repo in ["tiny-sd", "tiny-lcm"] {
        tensor_lists_match(&fixture(repo));
    }
}

fn tensor_lists_match(dir: &Path) {
    let (cfg, files) = SdConfigs::open_dir(dir).unwrap();
    let from_cfg = cfg.plan_inputs();
    let unet = header_tensors(&dir.join(&files.unet)).unwrap();
    let vae = header_tensors(&dir.join(&files.vae)).unwrap();
    let clip = header_tensors(&dir.join(&files.text_encoder)).unwrap();
    assert_eq!(as_map(&from_cfg.unet_tensors, ""), as_map(&unet, ""));
    assert_eq!(as_map(&from_cfg.vae_tensors, ""), as_map(&vae, ""));
    // transformers 5 saves the CLIP text model without the `text_model.` prefix.
    assert_eq!(
        as_map(&from_cfg.clip_tensors, "text_model."),
        as_map(&clip, "text_model.")
    );
}

/// SD 1.5 from its public configs: tensor counts and parameters as diffusers 0.42.1 /
/// transformers 5.23.0 build them on the meta device (686 / 859,520,964 UNet;
/// 248 / 83,653,863 VAE; 196 / 123,060,480 CLIP text model without the position_ids
/// buffer), and the plan's limit checks at 512×512.
#[test]
fn sd15_plan_at_512() {
    let p = plan_inputs_for_dir(&fixture("sd15-configs")).unwrap();
    let mp = p.plan(512, 512, 1, true, false).unwrap();
    let counts: Vec<(usize, u64)> = mp.weights.iter().map(|w| (w.tensors, w.params)).collect();
    assert_eq!(
        counts,
        vec![(196, 123_060_480), (686, 859_520_964), (248, 83_653_863)]
    );
    let unet = &mp.weights[1];
    // Five 1280×2560×3×3 filters tie (the up path's first resnets): 118 MB as f32.
    assert!(
        unet.largest.0.ends_with("resnets.0.conv1.weight"),
        "{}",
        unet.largest.0
    );
    assert_eq!(unet.largest.1, 1280 * 2560 * 9 * 4);
    let clip = &mp.weights[0];
    let (name, bytes, row) = clip.gathered.clone().unwrap();
    assert!(name.ends_with("token_embedding.weight"));
    assert_eq!((bytes, row), (49408 * 768 * 4, 768 * 4));
    for line in mp.report() {
        println!("{line}");
    }
    // The untiled VAE decode at 512×512 needs a 256-channel 512×512 map (exactly 256 MiB):
    // within maxBufferSize but over a 128 MiB binding, so the default limits refuse it.
    let e = mp.check(&PlanLimits::WEBGPU_DEFAULT, false).unwrap_err();
    match &e {
        Error::Limit {
            limit,
            value,
            needed,
            what,
            ..
        } => {
            assert_eq!(*limit, "maxStorageBufferBindingSize");
            assert_eq!(*value, 128 << 20);
            assert_eq!(*needed, 256 * 512 * 512 * 4);
            assert!(what.contains("vae_decode"), "{what}");
        }
        other => panic!("expected a Limit error, got {other}"),
    }
    // 256×256 fits the defaults.
    let small = p.plan(256, 256, 1, true, false).unwrap();
    small.check(&PlanLimits::WEBGPU_DEFAULT, false).unwrap();
    assert_eq!(small.vae_tile, None);

    // With tiling (the default, `auto`), 512×512 fits: the largest tile whose 256-channel
    // map fits a 128 MiB binding is 352 pixels (256·352²·4 = 121 MiB; 384 would be 144 MiB).
    let lim = PlanLimits::WEBGPU_DEFAULT;
    for img2img in [false, true] {
        let tiled = p
            .plan_checked(512, 512, 1, true, img2img, VaeTiling::Auto, Some(&lim))
            .unwrap();
        assert_eq!(tiled.vae_tile, Some(352), "img2img {img2img}");
        for line in tiled.report() {
            println!("{line}");
        }
        let dec = tiled
            .stages
            .iter()
            .find(|s| s.stage == "vae_decode")
            .unwrap();
        assert_eq!(dec.largest_per_image, 256 * 352 * 352 * 4);
        assert!(dec.largest_per_image <= lim.max_binding);
        // Weights as packed f16 plus the largest stage, all within the default limits.
        println!(
            "SD-1.5 at 512×512 (img2img {img2img}), VAE in 352-pixel tiles: peak {} bytes with f16 weights",
            tiled.peak(true)
        );
    }
    let tiled = p
        .plan_checked(512, 512, 1, true, false, VaeTiling::Auto, Some(&lim))
        .unwrap();
    assert!(tiled.peak(true) < mp.peak(true));
    // `off` keeps the refusal; a forced tile that is too large is refused with its numbers.
    let e = p
        .plan_checked(512, 512, 1, true, false, VaeTiling::Off, Some(&lim))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("maxStorageBufferBindingSize") && e.contains("--vae-tiling"),
        "{e}"
    );
    let e = p
        .plan_checked(512, 512, 1, true, false, VaeTiling::Tile(384), Some(&lim))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&(256u64 * 384 * 384 * 4).to_string()), "{e}");
    let e = p
        .plan_checked(512, 512, 1, true, false, VaeTiling::Tile(100), Some(&lim))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 32"), "{e}");
    // 768×768 (SD 2's size) fits with the same tiles; at 1024×1024 the UNet's own CFG-batched
    // activation (320 MiB) exceeds maxBufferSize, which no VAE tiling can help, and the
    // hint does not suggest it.
    let big = p
        .plan_checked(768, 768, 1, true, false, VaeTiling::Auto, Some(&lim))
        .unwrap();
    assert_eq!(big.vae_tile, Some(352));
    let e = p
        .plan_checked(1024, 1024, 1, true, false, VaeTiling::Auto, Some(&lim))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unet stage") && !e.contains("tiles"), "{e}");
}

/// A tiny fake budget is refused up front, with the numbers.
#[test]
fn plan_refuses_a_small_budget() {
    let p = plan_inputs_for_dir(&fixture("tiny-sd")).unwrap();
    let mp = p.plan(16, 16, 1, true, true).unwrap();
    let peak = mp.peak(false);
    assert!(peak > 0 && mp.peak(true) < peak);
    let limits = PlanLimits {
        budget: Some(peak - 1),
        ..PlanLimits::WEBGPU_DEFAULT
    };
    let e = mp.check(&limits, false).unwrap_err().to_string();
    assert!(
        e.contains(&peak.to_string()) && e.contains(&(peak - 1).to_string()),
        "{e}"
    );
    let ok = PlanLimits {
        budget: Some(peak),
        ..PlanLimits::WEBGPU_DEFAULT
    };
    mp.check(&ok, false).unwrap();
    // A binding limit smaller than the largest weight names that weight.
    let tiny = PlanLimits {
        max_binding: 1000,
        ..PlanLimits::WEBGPU_DEFAULT
    };
    let e = mp.check(&tiny, false).unwrap_err().to_string();
    assert!(
        e.contains("maxStorageBufferBindingSize") && e.contains("weight"),
        "{e}"
    );
}

#[test]
fn resolution_not_divisible_by_the_vae_factor() {
    let p = plan_inputs_for_dir(&fixture("tiny-sd")).unwrap();
    let e = p.plan(17, 16, 1, true, false).unwrap_err().to_string();
    assert!(e.contains("width 17") && e.contains("multiple of 2"), "{e}");
    let p = plan_inputs_for_dir(&fixture("sd15-configs")).unwrap();
    let e = p.plan(512, 500, 1, true, false).unwrap_err().to_string();
    assert!(
        e.contains("height 500") && e.contains("multiple of 8"),
        "{e}"
    );
}

#[test]
fn missing_component_is_named() {
    let tmp = std::env::temp_dir().join(format!("wd-sd-missing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_dir(&fixture("tiny-sd"), &tmp);
    std::fs::remove_file(tmp.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let e = SdConfigs::open_dir(&tmp).unwrap_err().to_string();
    assert!(
        e.contains("`vae`") && e.contains("vae/diffusion_pytorch_model.safetensors"),
        "{e}"
    );
    let idx = std::fs::read_to_string(tmp.join("model_index.json")).unwrap();
    let idx = idx.replace("\"text_encoder\"", "\"text_encoder_gone\"");
    std::fs::write(tmp.join("model_index.json"), idx).unwrap();
    let e = SdConfigs::open_dir(&tmp).unwrap_err().to_string();
    assert!(
        e.contains("`text_encoder`") && e.contains("model_index.json"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

// ---- whole pipelines vs diffusers (tests/goldens/sd/<case>.safetensors) ----

use webdiffusion::pipeline::sd_run::{
    latent_rgb_cpu, GivenNoise, InitImage, Request, SdPipeline, LATENT_RGB_FACTORS,
};
use webdiffusion::platform::block_on;
use webdiffusion::sampling::solvers::Control;
use webdiffusion::weights::{LoadOptions, WeightDtype, Weights};
use webdiffusion::{Exec, Tensor};

/// The GPU (lavapipe in CI) when there is one, else the CPU reference backend.
fn exec() -> Exec {
    match common::gpu() {
        Some(ctx) => Exec::gpu(ctx),
        None => Exec::cpu(),
    }
}

struct Golden(Weights);

impl Golden {
    fn load(case: &str) -> Self {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/goldens/sd")
            .join(format!("{case}.safetensors"));
        Self(Weights::load_file(p, &LoadOptions::default()).unwrap())
    }
    fn get(&mut self, name: &str) -> Tensor {
        let shape = self
            .0
            .shape(name)
            .unwrap_or_else(|| panic!("golden tensor {name}"))
            .to_vec();
        self.0.take(name, &shape).unwrap()
    }
    fn has(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

fn case_options(case: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/sd/cases.json");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    all[case].clone()
}

/// max |got − want| / max |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    err / scale.max(1e-30)
}

fn check(exec: &mut Exec, case: &str, what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{case} {what}");
    let g = block_on(exec.read(got)).unwrap();
    let e = rel_err(&g, want.cpu_data().unwrap());
    eprintln!("{case} {what} on {}: rel err {e:.2e}", exec.backend_name());
    assert!(
        e <= tol,
        "{case} {what}: relative error {e:.2e} > {tol:.0e}"
    );
}

/// The request of a golden case from cases.json, with diffusers' draws fed in.
fn golden_request(case: &str, g: &mut Golden) -> Request {
    let o = case_options(case);
    let mut req = Request::new(o["prompt"].as_str().unwrap());
    req.negative_prompt = o["negative_prompt"].as_str().unwrap().to_string();
    req.steps = o["steps"].as_u64().unwrap() as usize;
    req.guidance_scale = o["guidance"].as_f64().unwrap();
    req.width = Some(o["width"].as_u64().unwrap() as usize);
    req.height = Some(o["height"].as_u64().unwrap() as usize);
    req.solver = o["solver"].as_str().map(str::to_string);
    if let Some(sp) = o.get("timestep_spacing") {
        req.scheduler_overrides
            .insert("timestep_spacing".into(), sp.clone());
    }
    if let Some(over) = o.get("scheduler_overrides").and_then(|v| v.as_object()) {
        req.scheduler_overrides.extend(over.clone());
    }
    if let Some(b) = o.get("batch").and_then(|v| v.as_u64()) {
        req.batch = b as usize;
    }
    // diffusers' enable_tiling with this tile_sample_min_size.
    if let Some(t) = o.get("vae_tile").and_then(|v| v.as_u64()) {
        req.vae_tiling = VaeTiling::Tile(t as usize);
    }
    let mut noise = GivenNoise::default();
    if g.has("init_latents") {
        noise.init_latents = Some(g.get("init_latents"));
    }
    let mut k = 0;
    while g.has(&format!("noise.{k}")) {
        noise.solver.push(g.get(&format!("noise.{k}")));
        k += 1;
    }
    if let Some(s) = o.get("strength").and_then(|v| v.as_f64()) {
        req.init = Some(InitImage {
            image: g.get("init_image"),
            strength: s,
        });
        noise.posterior = Some(g.get("noise.posterior"));
        noise.forward = Some(g.get("noise.forward"));
    }
    req.given_noise = Some(noise);
    req
}

/// Runs one golden case end to end: prompt states, final latents and decoded image within
/// the 1e-3 relative bar (img2img: the encoded init image too).
fn run_golden(case: &str) {
    run_golden_with(case, WeightDtype::Auto, 1e-3);
}

/// [`run_golden`] with the weight storage chosen and the bar for the final latents and
/// image (the prompt states get half of it); returns the weights' bytes on the executor.
fn run_golden_with(case: &str, dtype: WeightDtype, tol: f64) -> u64 {
    let mut exec = exec();
    let repo = case_options(case)["repo"]
        .as_str()
        .unwrap_or("tiny-sd")
        .to_string();
    let mut pipe = SdPipeline::load_dir_with(&mut exec, &fixture(&repo), dtype).unwrap();
    let mut g = Golden::load(case);
    let req = golden_request(case, &mut g);
    if g.has("w_embedding") {
        // The guidance embedding the LCM pipeline passed as `timestep_cond`.
        let got = pipe
            .guidance_embedding(req.guidance_scale)
            .unwrap()
            .unwrap();
        let want = g.get("w_embedding");
        assert_eq!(got.shape(), want.shape());
        let e = max_abs_diff(got.cpu_data().unwrap(), want.cpu_data().unwrap());
        eprintln!("{case} w_embedding: max abs diff {e:.2e}");
        assert!(e <= 1e-5, "{case} w_embedding: {e:.2e}");
    }
    if g.has("ids.cond") {
        let want: Vec<u32> = g
            .get("ids.cond")
            .cpu_data()
            .unwrap()
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(pipe.tokenizer().encode(&req.prompt).ids, want, "{case} ids");
    }
    let emb = pipe
        .encode_prompt(
            &mut exec,
            &req.prompt,
            pipe.guided(&req).then_some(req.negative_prompt.as_str()),
            0,
        )
        .unwrap();
    let mut states = Vec::new();
    if let Some(u) = &emb.uncond {
        states.extend(block_on(exec.read(u)).unwrap());
    }
    states.extend(block_on(exec.read(&emb.cond)).unwrap());
    // The img2img solver cases share the img2img case's prompts and leave their states out.
    let want = if g.has("prompt_embeds") {
        g.get("prompt_embeds")
    } else {
        Golden::load("img2img").get("prompt_embeds")
    };
    let e = rel_err(&states, want.cpu_data().unwrap());
    eprintln!("{case} prompt_embeds: rel err {e:.2e}");
    assert!(
        e <= tol / 2.0,
        "{case} prompt_embeds: relative error {e:.2e}"
    );
    if g.has("encoded") {
        // The image-to-image start: the posterior sample of the init image, as diffusers.
        let init = req.init.as_ref().unwrap();
        let e1 = req.given_noise.as_ref().unwrap().posterior.clone().unwrap();
        let tiles = match req.vae_tiling {
            VaeTiling::Tile(tile) => Some(webdiffusion::models::VaeTiles { tile }),
            _ => None,
        };
        let enc = pipe
            .encode_image(&mut exec, &init.image, &e1, tiles)
            .unwrap();
        check(
            &mut exec,
            case,
            "encoded",
            &enc,
            &g.get("encoded"),
            tol / 10.0,
        );
    }
    // PNDM takes one more step than asked (its PLMS warm-up), as diffusers' timesteps; an
    // img2img run takes the solver's steps from diffusers' t_start on (or, where the golden
    // lists the timesteps diffusers ran, exactly those).
    let num_steps = pipe.solver(&req).unwrap().num_steps();
    let want_timesteps: Option<Vec<f64>> = g.has("timesteps").then(|| {
        g.get("timesteps")
            .cpu_data()
            .unwrap()
            .iter()
            .map(|&t| t as f64)
            .collect()
    });
    let total_expected = match (&want_timesteps, &req.init) {
        (Some(ts), _) => ts.len(),
        (None, Some(i)) => num_steps - img2img_steps(req.steps, i.strength).unwrap().0,
        (None, None) => num_steps,
    };
    let mut seen = Vec::new();
    let out = pipe
        .generate(&mut exec, &req, &mut |_, s| {
            seen.push((s.index, s.total, s.timestep));
            Ok(Control::Continue)
        })
        .unwrap();
    assert_eq!(out.steps_run, total_expected, "{case}");
    assert_eq!(seen.len(), total_expected, "{case}");
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, s)| s.0 == i && s.1 == total_expected));
    if let Some(ts) = &want_timesteps {
        let got: Vec<f64> = seen.iter().map(|s| s.2).collect();
        assert_eq!(&got, ts, "{case}: the timesteps run");
    }
    check(
        &mut exec,
        case,
        "latents",
        &out.latents,
        &g.get("latents"),
        tol,
    );
    let image = out.image.expect("a finished run decodes");
    check(&mut exec, case, "image", &image, &g.get("image"), tol);
    pipe.weight_bytes()
}

#[test]
fn txt2img_matches_diffusers() {
    run_golden("txt2img");
}

#[test]
fn img2img_matches_diffusers() {
    run_golden("img2img");
}

/// Two images from one prompt (`num_images_per_prompt`): the states repeated over the batch
/// under CFG, each image its own noise (make_tiny_sd_batch.py checks they differ).
#[test]
fn batch_matches_diffusers() {
    run_golden("txt2img_batch");
    // The one start image encoded once and its latents repeated, then noised per image.
    run_golden("img2img_batch");
}

/// The first image of a seeded batch is the image a batch of one gives for that seed (the
/// counter-based noise is drawn per element), and the second is another image.
#[test]
fn batch_first_image_is_the_single_run() {
    let mut exec = exec();
    let mut pipe = SdPipeline::load_dir(&mut exec, &fixture("tiny-sd")).unwrap();
    let mut req = Request::new("a house by the sea");
    req.steps = 3;
    req.seed = 21;
    let mut run = |req: &Request| {
        let out = pipe
            .generate(&mut exec, req, &mut |_, _| Ok(Control::Continue))
            .unwrap();
        block_on(exec.read(&out.image.unwrap())).unwrap()
    };
    let single = run(&req);
    req.batch = 2;
    let pair = run(&req);
    assert_eq!(pair.len(), 2 * single.len());
    let (first, second) = pair.split_at(single.len());
    let same = max_abs_diff(first, &single);
    let other = max_abs_diff(second, &single);
    eprintln!("batch of 2 vs 1: first image max |diff| {same:.2e}, second {other:.2e}");
    assert!(
        same <= 1e-5,
        "the batch's first image is not the single run's: {same}"
    );
    assert!(
        other > 1e-2,
        "the batch's second image repeats the first: {other}"
    );
    req.batch = 0;
    let e = pipe
        .generate(&mut exec, &req, &mut |_, _| Ok(Control::Continue))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("at least 1"), "{e}");
}

/// An LCM-distilled repository's image-to-image is diffusers'
/// `LatentConsistencyModelImg2ImgPipeline`: strength cuts the distillation schedule and all
/// the steps run (make_tiny_lcm_img2img.py checks that the generic tail differs).
#[test]
fn lcm_img2img_matches_diffusers() {
    run_golden("lcm_img2img");
}

/// Image-to-image with the solvers that keep a history (and the two-call ones), each
/// started mid-schedule from a fresh state as diffusers' img2img pipeline does
/// (scripts/goldens/make_tiny_sd_img2img_solvers.py): the repository's PNDM (PLMS warm-up
/// restarted, one call more than ⌊steps·strength⌋) and its PRK variant, DPM-Solver++ 2M /
/// 3M (20 steps, so the third-order update runs) / 2M SDE, UniPC, DEIS, DPM-Solver
/// singlestep (started inside an order-2 group), LMS (the order from the position with the
/// derivatives there are), Heun, KDPM2 and KDPM2 ancestral.
#[test]
fn img2img_solvers_match_diffusers() {
    for case in [
        "img2img_pndm",
        "img2img_pndm_prk",
        "img2img_dpmpp_2m",
        "img2img_dpmpp_3m",
        "img2img_dpmpp_2m_sde",
        "img2img_unipc",
        "img2img_deis",
        "img2img_dpm_singlestep",
        "img2img_lms",
        "img2img_heun",
        "img2img_dpm2",
        "img2img_dpm2_ancestral",
    ] {
        run_golden(case);
    }
}

/// The weight storage (the packed-f16 weights). The tiny repository stores its UNet
/// and VAE in f16 and its text encoder in f32, as make_tiny_sd.py documents. `auto` (the
/// default, which every other golden test runs) keeps the f16 weights packed: lossless, so
/// the run matches diffusers at the same bar, with the plan's f16 bytes for the UNet and VAE
/// (less the VAE's folded 1×1 convolutions, kept f32) and f32 bytes for the text encoder.
/// `f32` widens everything: the same result at the plan's f32 bytes. `f16` packs the text
/// encoder too: the plan's f16 bytes exactly, and f16's precision in the prompt states.
#[test]
fn weight_storage_auto_f16_f32() {
    let inputs = plan_inputs_for_dir(&fixture("tiny-sd")).unwrap();
    let plan = inputs.plan(16, 16, 1, true, false).unwrap();
    let by = |c: &str| {
        plan.weights
            .iter()
            .find(|w| w.component == c)
            .unwrap()
            .clone()
    };
    let (te, unet, vae) = (by("text_encoder"), by("unet"), by("vae"));
    let l = inputs.vae.latent_channels as u64;
    // quant_conv (2l×2l) and post_quant_conv (l×l), folded with constants: f32 under auto.
    let folded_f16_bytes = 2 * (4 * l * l + l * l);

    let f32_bytes = run_golden_with("txt2img", WeightDtype::F32, 1e-3);
    assert_eq!(f32_bytes, plan.weights_bytes(false));
    let auto_bytes = run_golden_with("txt2img", WeightDtype::Auto, 1e-3);
    assert_eq!(
        auto_bytes,
        te.bytes_f32 + unet.bytes_f16 + vae.bytes_f16 + folded_f16_bytes
    );
    assert!(
        auto_bytes * 10 < f32_bytes * 6,
        "{auto_bytes} vs {f32_bytes}"
    );
    // The browser SD test expects the same count from the streamed loader.
    assert_eq!(auto_bytes, 3_061_076);
    // Rounding the text encoder's f32 weights to f16 moves the prompt states by ~1e-3; the
    // bar is loose, the byte count exact.
    let f16_bytes = run_golden_with("txt2img", WeightDtype::F16Packed, 2e-2);
    assert_eq!(f16_bytes, plan.weights_bytes(true));
}

/// Both pipelines with diffusers' VAE tiling (16-pixel tiles on a 40×24 image: the decoder
/// and, for img2img, the encoder run tiled inside the pipeline).
#[test]
fn tiled_vae_pipelines_match_diffusers() {
    run_golden("txt2img_tiled");
    run_golden("img2img_tiled");
}

/// The plan decides the tiling and the run follows it: under the default limits `auto`
/// runs the tiny VAE whole; a forced tile is reported in the output; `off` under limits the
/// whole pass exceeds is refused before anything runs, naming the stage. (Which tile `auto`
/// picks when the whole pass does not fit is tested on SD-1.5's plan in `sd15_plan_at_512`:
/// in the tiny model the UNet's activations, not the VAE's, are the largest.)
#[test]
fn vae_tiling_follows_the_plan() {
    let mut exec = exec();
    let mut pipe = SdPipeline::load_dir(&mut exec, &fixture("tiny-sd")).unwrap();
    let mut g = Golden::load("txt2img_tiled");
    let mut req = golden_request("txt2img_tiled", &mut g);
    pipe.set_limits(Some(PlanLimits::WEBGPU_DEFAULT));
    req.vae_tiling = VaeTiling::Auto;
    assert_eq!(pipe.check_memory(&exec, &req).unwrap().vae_tile, None);
    req.vae_tiling = VaeTiling::Tile(16);
    assert_eq!(pipe.check_memory(&exec, &req).unwrap().vae_tile, Some(16));
    req.steps = 1;
    let out = pipe
        .generate(&mut exec, &req, &mut |_, _| Ok(Control::Continue))
        .unwrap();
    assert_eq!(out.vae_tile, Some(16));
    // A tile as large as the image is no tiling.
    req.vae_tiling = VaeTiling::Tile(40);
    assert_eq!(pipe.check_memory(&exec, &req).unwrap().vae_tile, None);
    req.vae_tiling = VaeTiling::Tile(12);
    let e = pipe.check_memory(&exec, &req).unwrap_err().to_string();
    assert!(e.contains("multiple of 8"), "{e}");
    let inputs = plan_inputs_for_dir(&fixture("tiny-sd")).unwrap();
    let whole = inputs.plan(40, 24, 1, true, false).unwrap();
    let dec = whole
        .stages
        .iter()
        .find(|s| s.stage == "vae_decode")
        .unwrap();
    pipe.set_limits(Some(PlanLimits {
        max_binding: dec.largest_per_image - 4,
        ..PlanLimits::WEBGPU_DEFAULT
    }));
    req.vae_tiling = VaeTiling::Off;
    let e = pipe.check_memory(&exec, &req).unwrap_err().to_string();
    assert!(e.contains("maxStorageBufferBindingSize"), "{e}");
}

#[test]
fn lcm_matches_diffusers() {
    run_golden("lcm");
}

#[test]
fn turbo_matches_diffusers() {
    run_golden("turbo");
}

/// An LCM-distilled UNet (`time_cond_proj_dim` 32) through diffusers'
/// `LatentConsistencyModelPipeline`: guidance 8 goes in as the embedding of w = 7 (no CFG,
/// one UNet pass per step), 4 LCM steps with the scheduler's draws fed in. Without the
/// embedding the latents differ from the golden by 5.7 % of their largest value (checked by
/// make_tiny_lcm.py), far above the bar.
#[test]
fn lcm_distilled_matches_diffusers() {
    run_golden("lcm_distilled");
}

fn max_abs_diff(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()))
}

/// diffusers' `get_guidance_scale_embedding` at widths 1, 4, 7, 32, 33 and 256 (odd ones
/// zero-padded) for several scales, as the pipeline calls it (w = scale − 1, float32);
/// widths 2 and 3, where diffusers divides by zero, are refused.
#[test]
fn guidance_embedding_matches_diffusers() {
    use webdiffusion::pipeline::sd_run::guidance_scale_embedding;
    let mut g = Golden::load("guidance_embedding");
    let scales = g.get("scales").cpu_data().unwrap().to_vec();
    let mut dims = 0;
    let mut worst = 0f64;
    for d in [1usize, 4, 7, 32, 33, 256] {
        let want = g.get(&format!("dim.{d}"));
        assert_eq!(want.shape(), &[scales.len(), d]);
        let want = want.cpu_data().unwrap();
        for (i, &s) in scales.iter().enumerate() {
            let got = guidance_scale_embedding(s as f64, d).unwrap();
            assert_eq!(got.shape(), &[1, d]);
            let got = got.cpu_data().unwrap();
            let row = &want[i * d..(i + 1) * d];
            // torch's vectorised float32 exp is within one ulp but not always correctly
            // rounded (3 of 128 frequencies at d = 256), and w' = 1000·w magnifies that: an
            // argument a = w'·f_k may move by |a|·2⁻²⁴, so each element is held to that.
            let half = d / 2;
            let w = (s as f64 - 1.0) * 1000.0;
            for (k, (&g, &want)) in got.iter().zip(row).enumerate() {
                let j = if k < half { k } else { k - half };
                let a = if j < half && half > 1 {
                    (w * (-(j as f64) * 10000f64.ln() / (half - 1) as f64).exp()).abs()
                } else {
                    0.0
                };
                let tol = 1e-6 + a * 2f64.powi(-23);
                let e = (g as f64 - want as f64).abs();
                assert!(
                    e <= tol,
                    "dim {d} scale {s} element {k}: {g} vs diffusers {want} (tolerance {tol:.1e})"
                );
            }
            worst = worst.max(max_abs_diff(got, row));
            if d % 2 == 1 {
                assert_eq!(got[d - 1], 0.0, "dim {d}: the padding column");
            }
        }
        dims += 1;
    }
    assert_eq!(dims, 6);
    eprintln!("guidance embedding: max abs diff from diffusers {worst:.2e}");
    for d in [2, 3] {
        let e = guidance_scale_embedding(8.0, d).unwrap_err().to_string();
        assert!(e.contains(&format!("time_cond_proj_dim {d}")), "{e}");
    }
    assert!(guidance_scale_embedding(f64::NAN, 32).is_err());
}

/// The guidance embedding reaches the UNet: one forward with and without it differs, one
/// row broadcasts like N equal rows (as torch does), and bad inputs are errors naming them.
#[test]
fn lcm_unet_timestep_cond() {
    use webdiffusion::models::{Conditioning, UNet};
    use webdiffusion::pipeline::sd_run::guidance_scale_embedding;
    let mut exec = exec();
    let unet = UNet::load_dir(&mut exec, fixture("tiny-lcm/unet")).unwrap();
    assert_eq!(unet.arch().time_cond_proj_dim, Some(32));
    let n = 2;
    let x: Vec<f32> = (0..n * 4 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let x = exec
        .upload(&Tensor::from_vec(&[n, 4, 8, 8], x).unwrap())
        .unwrap();
    let ehs: Vec<f32> = (0..n * 5 * 32)
        .map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0)
        .collect();
    let ehs = Tensor::from_vec(&[n, 5, 32], ehs).unwrap();
    let w1 = guidance_scale_embedding(8.0, 32).unwrap();
    let w1d = w1.cpu_data().unwrap();
    let wn = Tensor::from_vec(&[n, 32], [w1d, w1d].concat()).unwrap();
    let run = |exec: &mut Exec, t: Option<&Tensor>| {
        let cond = Conditioning {
            class_labels: None,
            encoder_hidden_states: Some(&ehs),
            timestep_cond: t,
        };
        let y = unet.run(exec, &x, &[499.0], cond)?;
        block_on(exec.read(&y))
    };
    let one = run(&mut exec, Some(&w1)).unwrap();
    let rows = run(&mut exec, Some(&wn)).unwrap();
    let none = run(&mut exec, None).unwrap();
    assert!(max_abs_diff(&one, &rows) <= 1e-6);
    let d = rel_err(&none, &one);
    eprintln!("UNet output without the guidance embedding: rel diff {d:.2e}");
    assert!(d > 1e-2, "{d}");
    let bad = Tensor::from_vec(&[n, 16], vec![0.0; n * 16]).unwrap();
    let e = run(&mut exec, Some(&bad)).unwrap_err().to_string();
    assert!(e.contains("timestep_cond") && e.contains("32"), "{e}");
    let three = Tensor::from_vec(&[3, 32], vec![0.0; 96]).unwrap();
    assert!(run(&mut exec, Some(&three)).is_err());
    // A UNet without time_cond_proj_dim takes no condition.
    let mut plain = UNet::load_dir(&mut exec, fixture("tiny-sd/unet")).unwrap();
    let e = plain
        .set_timestep_cond(&mut exec, Some(&w1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("time_cond_proj_dim"), "{e}");
}

/// `time_embedding.cond_proj.weight` follows the config: a wrong shape, a missing weight and
/// a left-over one are errors naming it.
#[test]
fn lcm_cond_proj_weight_errors() {
    let tmp = std::env::temp_dir().join(format!("wd-lcm-weights-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_dir(&fixture("tiny-lcm/unet"), &tmp.join("lcm"));
    copy_dir(&fixture("tiny-sd/unet"), &tmp.join("sd"));
    let set_dim = |dir: &str, value: &str| {
        let p = tmp.join(dir).join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg["time_cond_proj_dim"] = serde_json::from_str(value).unwrap();
        std::fs::write(&p, cfg.to_string()).unwrap();
    };
    let mut exec = Exec::cpu();
    let load = |exec: &mut Exec, dir: &str| {
        let e = webdiffusion::models::UNet::load_dir(exec, tmp.join(dir))
            .err()
            .expect("the load must fail")
            .to_string();
        eprintln!("{dir}: {e}");
        e
    };
    // The stored weight is (16, 32); a config of 16 asks for (16, 16).
    set_dim("lcm", "16");
    let e = load(&mut exec, "lcm");
    assert!(
        e.contains("time_embedding.cond_proj.weight") && e.contains("16") && e.contains("32"),
        "{e}"
    );
    // A config that asks for the projection of a checkpoint without it.
    set_dim("sd", "32");
    let e = load(&mut exec, "sd");
    assert!(e.contains("time_embedding.cond_proj.weight"), "{e}");
    // A checkpoint with the projection under a config without it.
    set_dim("lcm", "null");
    let e = load(&mut exec, "lcm");
    assert!(e.contains("time_embedding.cond_proj.weight"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The linear preview is one 1×1 convolution with the published factors: every step's
/// preview equals the host computation on that step's x₀, and the budget check refuses a
/// run up front with the numbers.
#[test]
fn step_previews_and_memory_refusal() {
    let mut exec = exec();
    let mut pipe = SdPipeline::load_dir(&mut exec, &fixture("tiny-sd")).unwrap();
    let mut req = Request::new("a cat");
    req.steps = 2;
    req.guidance_scale = 3.0;
    req.seed = 5;
    req.solver = Some("euler_ancestral".into());
    let mut checked = 0;
    let out = pipe
        .generate(&mut exec, &req, &mut |exec, s| {
            let rgb = s.preview(exec)?;
            assert_eq!(rgb.shape(), &[1, 3, 8, 8]);
            let got = block_on(exec.read(&rgb))?;
            let x0 = block_on(exec.read(s.x0))?;
            let want = latent_rgb_cpu(s.x0.shape(), &x0)?;
            assert!(rel_err(&got, &want) < 1e-5, "{}", rel_err(&got, &want));
            checked += 1;
            Ok(Control::Continue)
        })
        .unwrap();
    assert_eq!(checked, 2);
    assert_eq!(LATENT_RGB_FACTORS.len(), 4);
    // The same seed gives the same image; another seed another.
    let a = block_on(exec.read(out.image.as_ref().unwrap())).unwrap();
    let again = pipe
        .generate(&mut exec, &req, &mut |_, _| Ok(Control::Continue))
        .unwrap();
    assert_eq!(
        a,
        block_on(exec.read(again.image.as_ref().unwrap())).unwrap()
    );
    req.seed = 6;
    let other = pipe
        .generate(&mut exec, &req, &mut |_, _| Ok(Control::Continue))
        .unwrap();
    assert!(
        rel_err(
            &block_on(exec.read(other.image.as_ref().unwrap())).unwrap(),
            &a
        ) > 1e-3
    );
    // Stopping after the first step skips the decode.
    let stopped = pipe
        .generate(&mut exec, &req, &mut |_, _| Ok(Control::Stop))
        .unwrap();
    assert!(stopped.stopped && stopped.image.is_none() && stopped.steps_run == 1);

    let plan = pipe.check_memory(&exec, &req).unwrap();
    let peak = plan.peak(false);
    pipe.set_limits(Some(PlanLimits {
        budget: Some(peak - 1),
        ..PlanLimits::WEBGPU_DEFAULT
    }));
    let e = pipe
        .generate(&mut exec, &req, &mut |_, _| panic!("no step may run"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(&peak.to_string()), "{e}");
    pipe.set_limits(None);

    // Bad requests are errors naming the problem.
    req.width = Some(17);
    let e = pipe
        .generate(&mut exec, &req, &mut |_, _| panic!("no step may run"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("width 17") && e.contains("multiple of 2"), "{e}");
    req.width = None;
    req.init = Some(InitImage {
        image: Tensor::from_vec(&[1, 3, 16, 16], vec![0.5; 768]).unwrap(),
        strength: 0.5,
    });
    // A solver that cannot start mid-schedule, with the ones that can.
    req.solver = Some("ddim_inverse".into());
    let e = pipe
        .generate(&mut exec, &req, &mut |_, _| panic!("no step may run"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ddim_inverse") && e.contains("pndm"), "{e}");
    req.solver = Some("ddim".into());
    req.init.as_mut().unwrap().strength = 1.5;
    let e = pipe
        .generate(&mut exec, &req, &mut |_, _| panic!("no step may run"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("strength"), "{e}");
    req.solver = Some("no_such_solver".into());
    assert!(pipe
        .generate(&mut exec, &req, &mut |_, _| panic!("no step may run"))
        .is_err());
}

fn sd_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .arg("sd")
        .args(args)
        .output()
        .expect("run webdiffusion")
}

/// `webdiffusion sd` on the tiny repository end to end (CPU backend: no adapter needed),
/// then its refusals.
#[test]
fn sd_command_writes_a_png_and_refuses_bad_input() {
    let tmp = std::env::temp_dir().join(format!("wd-sd-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let model = fixture("tiny-sd");
    let model = model.to_str().unwrap();
    let out = tmp.join("cat.png");
    let out_s = out.to_str().unwrap();
    let base = [
        "--model",
        model,
        "--prompt",
        "a photo of a cat",
        "--steps",
        "3",
        "--seed",
        "4",
        "--backend",
        "cpu",
        "--out",
        out_s,
    ];
    let r = sd_cli(&base);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("step 3/"), "{stderr}");
    let im = webdiffusion::image::decode_png(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!((im.width, im.height, im.channels), (16, 16, 3));
    // No overwrite without --force; with it, the same seed gives the same file.
    let r = sd_cli(&base);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    let first = std::fs::read(&out).unwrap();
    let mut forced = base.to_vec();
    forced.push("--force");
    assert!(sd_cli(&forced).status.success());
    assert_eq!(std::fs::read(&out).unwrap(), first);

    // Image-to-image from the golden's init.png with the repository's PNDM, as diffusers:
    // strength 0.6 over 5 steps starts at t_start 2 of PNDM's 6 calls, so 4 run.
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/sd/init.png");
    let out2 = tmp.join("i2i.png");
    let r = sd_cli(&[
        "--model",
        model,
        "--prompt",
        "a red dog",
        "--steps",
        "5",
        "--strength",
        "0.6",
        "--init",
        init.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        out2.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stderr}");
    assert!(
        stdout.contains("solver pndm") && stderr.contains("step 4/4"),
        "{stdout}\n{stderr}"
    );

    // --batch 2: OUT-0.png (the single run's image for the seed: `first`) and OUT-1.png;
    // with --grid one PNG of both side by side.
    let batch_out = tmp.join("pair.png");
    let mut batched = base.to_vec();
    batched.truncate(base.len() - 1);
    batched.extend_from_slice(&[batch_out.to_str().unwrap(), "--batch", "2"]);
    let r = sd_cli(&batched);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
    );
    assert!(
        r.status.success() && stdout.contains("batch 2"),
        "{stdout}\n{stderr}"
    );
    assert!(!batch_out.exists());
    let b0 = std::fs::read(tmp.join("pair-0.png")).unwrap();
    let b1 = std::fs::read(tmp.join("pair-1.png")).unwrap();
    assert_eq!(b0, first, "the batch's first image is not the single run's");
    assert_ne!(b1, first);
    // The existing OUT-1.png is not overwritten without --force (nothing is written).
    std::fs::remove_file(tmp.join("pair-0.png")).unwrap();
    let r = sd_cli(&batched);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && stderr.contains("pair-1.png"),
        "{stderr}"
    );
    assert!(!tmp.join("pair-0.png").exists());
    batched.push("--grid");
    let r = sd_cli(&batched);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let g = webdiffusion::image::decode_png(&std::fs::read(&batch_out).unwrap()).unwrap();
    // Two 16×16 images side by side with a 2-pixel gap; the left one is the single run's.
    assert_eq!((g.width, g.height), (34, 16));
    let single = webdiffusion::image::decode_png(&first).unwrap();
    for y in 0..16 {
        let row = &g.pixels[y * 34 * 3..][..16 * 3];
        assert_eq!(row, &single.pixels[y * 16 * 3..][..16 * 3], "grid row {y}");
    }

    let fresh = tmp.join("bad.png");
    let fresh_s = fresh.to_str().unwrap();
    let err = |extra: &[&str]| -> String {
        let mut a = vec![
            "--model",
            model,
            "--prompt",
            "x",
            "--backend",
            "cpu",
            "--out",
            fresh_s,
        ];
        a.extend_from_slice(extra);
        let r = sd_cli(&a);
        assert!(!r.status.success(), "{extra:?} should fail");
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    let e = err(&["--width", "17", "--height", "16"]);
    assert!(e.contains("width 17") && e.contains("multiple of 2"), "{e}");
    let e = err(&["--init", init.to_str().unwrap(), "--strength", "1.5"]);
    assert!(e.contains("--strength") && e.contains("1.5"), "{e}");
    let e = err(&["--solver", "frobnicate"]);
    assert!(
        e.contains("frobnicate") && e.contains("webdiffusion solvers"),
        "{e}"
    );
    let e = err(&["--strength", "0.5"]);
    assert!(e.contains("--init"), "{e}");
    let e = err(&["--batch", "0"]);
    assert!(e.contains("--batch"), "{e}");
    let e = err(&["--grid"]);
    assert!(e.contains("--grid") && e.contains("--batch"), "{e}");
    // A solver that cannot start mid-schedule is refused with the ones that can.
    let e = err(&["--init", init.to_str().unwrap(), "--solver", "ddim_inverse"]);
    assert!(
        e.contains("ddim_inverse") && e.contains("pndm") && e.contains("dpmpp_2m"),
        "{e}"
    );
    assert!(!fresh.exists());
    // A repository without its VAE names the component.
    let broken = tmp.join("broken");
    copy_dir(&fixture("tiny-sd"), &broken);
    std::fs::remove_dir_all(broken.join("vae")).unwrap();
    let r = sd_cli(&[
        "--model",
        broken.to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        fresh_s,
    ]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && e.contains("`vae`"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A tiny autoencoder set as the preview decoder replaces the linear preview: every step's
/// preview is the TAESD decode of that step's x₀ (checked against a second copy of the
/// decoder run on the same x₀), at full image size; the final image is still the VAE's.
#[test]
fn taesd_preview_decoder_replaces_the_linear_preview() {
    use webdiffusion::models::TinyDecoder;
    let mut exec = exec();
    let mut pipe = SdPipeline::load_dir(&mut exec, &fixture("tiny-sd")).unwrap();
    let taesd = fixture("tiny-taesd");
    let reference = TinyDecoder::load_dir(&mut exec, &taesd).unwrap();
    pipe.set_preview_decoder(Some(TinyDecoder::load_dir(&mut exec, &taesd).unwrap()))
        .unwrap();
    let mut req = Request::new("a cat");
    req.steps = 2;
    req.seed = 3;
    req.solver = Some("ddim".into());
    let mut checked = 0;
    let out = pipe
        .generate(&mut exec, &req, &mut |exec, s| {
            let rgb = s.preview(exec)?;
            let want = reference.decode(exec, s.x0)?;
            assert_eq!(rgb.shape(), want.shape());
            let up = reference.config().upscale();
            assert_eq!(rgb.shape()[2], up * s.x0.shape()[2], "decoder-size preview");
            let (got, want) = (block_on(exec.read(&rgb))?, block_on(exec.read(&want))?);
            assert!(rel_err(&got, &want) < 1e-6, "{}", rel_err(&got, &want));
            let linear = latent_rgb_cpu(s.x0.shape(), &block_on(exec.read(s.x0))?)?;
            assert_ne!(got.len(), linear.len(), "not the linear preview");
            checked += 1;
            Ok(Control::Continue)
        })
        .unwrap();
    assert_eq!(checked, 2);
    assert_eq!(out.image.unwrap().shape(), &[1, 3, 16, 16]);
    // Back to the linear preview.
    pipe.set_preview_decoder(None).unwrap();
    pipe.generate(&mut exec, &req, &mut |exec, s| {
        assert_eq!(s.preview(exec)?.shape(), &[1, 3, 8, 8]);
        Ok(Control::Continue)
    })
    .unwrap();
}
