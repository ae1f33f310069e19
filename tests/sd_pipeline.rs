//! Stable Diffusion pipelines: the repository layout, the memory plan, and (with the text
//! encoder and VAE) whole pipelines against diffusers goldens made by
//! scripts/goldens/make_tiny_sd.py on the tiny repository in tests/fixtures/tiny-sd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use webdiffusion::pipeline::plan::{self, PlanLimits};
use webdiffusion::pipeline::sd::{header_tensors, plan_inputs_for_dir, SdConfigs};
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
    let dir = fixture("tiny-sd");
    let (cfg, files) = SdConfigs::open_dir(&dir).unwrap();
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
