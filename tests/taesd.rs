//! The TAESD decoder (`models::TinyDecoder`, diffusers' `AutoencoderTiny`) against diffusers
//! 0.42.1: fixture `tests/fixtures/tiny-taesd` and golden `tests/goldens/taesd/` were
//! written by `scripts/goldens/make_taesd_goldens.py` (torch 2.9.1, float32 CPU). Compared
//! by max |ours − reference| / max |reference| ≤ 1e-4, on the CPU backend and the GPU
//! (lavapipe in CI), from the f16 folder as stored and from an f32 copy; plus load errors.

#[path = "ops/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use webdiffusion::models::{TaesdConfig, TinyDecoder};
use webdiffusion::platform::block_on;
use webdiffusion::weights::{LoadOptions, Weights};
use webdiffusion::{Error, Exec, Tensor};

const MAX_REL: f64 = 1e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-taesd")
}

fn golden() -> (Tensor, Vec<f32>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/taesd/decode.safetensors");
    let mut w = Weights::load_file(path, &LoadOptions::default()).unwrap();
    let mut get = |name: &str| {
        let shape = w.shape(name).unwrap().to_vec();
        w.take(name, &shape).unwrap()
    };
    let (latents, decoded) = (get("latents"), get("decoded"));
    assert_eq!(decoded.shape(), [2, 3, 20, 28]);
    (latents, decoded.cpu_data().unwrap().to_vec())
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

fn execs() -> Vec<(&'static str, Exec)> {
    let mut v = vec![("cpu", Exec::cpu())];
    if let Some(ctx) = common::gpu() {
        v.push(("gpu", Exec::gpu(ctx)));
    }
    v
}

/// A temporary copy of the fixture folder with the weights rewritten by `edit` (name,
/// shape, f32 values → kept entries, stored as F32) and the config by `cfg`.
fn variant(
    tag: &str,
    edit: impl Fn(Vec<(String, Vec<usize>, Vec<f32>)>) -> Vec<(String, Vec<usize>, Vec<f32>)>,
    cfg: impl Fn(String) -> String,
) -> PathBuf {
    let src = fixture();
    let mut w = Weights::load_file(
        src.join("diffusion_pytorch_model.safetensors"),
        &LoadOptions::default(),
    )
    .unwrap();
    let mut names: Vec<String> = w.names().map(str::to_string).collect();
    names.sort();
    let entries: Vec<(String, Vec<usize>, Vec<f32>)> = names
        .into_iter()
        .map(|n| {
            let shape = w.shape(&n).unwrap().to_vec();
            let t = w.take(&n, &shape).unwrap();
            (n, shape, t.cpu_data().unwrap().to_vec())
        })
        .collect();
    let entries = edit(entries);
    let bytes: Vec<Vec<u8>> = entries
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("wd-taesd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg(text)).unwrap();
    dir
}

fn check_decoder(name: &str, exec: &mut Exec, dir: &Path, latents: &Tensor, want: &[f32]) {
    let dec = TinyDecoder::load_dir(exec, dir).unwrap();
    assert_eq!(dec.config().upscale(), 4);
    let z = exec.upload(latents).unwrap();
    let x = dec.decode(exec, &z).unwrap();
    assert_eq!(x.shape(), [2, 3, 20, 28]);
    let got = block_on(exec.read(&x)).unwrap();
    let e = rel_err(&got, want);
    eprintln!("taesd {name}: rel err {e:.2e}");
    assert!(
        e <= MAX_REL,
        "taesd {name}: rel err {e:.2e} > {MAX_REL:.0e}"
    );

    // The preview of the first image is the first image of the full decode.
    let p = dec.decode_preview(exec, &z, 1).unwrap();
    assert_eq!(p.shape(), [1, 3, 20, 28]);
    let got = block_on(exec.read(&p)).unwrap();
    let e = rel_err(&got, &want[..want.len() / 2]);
    assert!(e <= MAX_REL, "taesd {name} preview: rel err {e:.2e}");
    let all = dec.decode_preview(exec, &z, 5).unwrap();
    assert_eq!(all.shape(), [2, 3, 20, 28]);
}

#[test]
fn taesd_decoder_matches_diffusers() {
    let (latents, want) = golden();
    // The output spans [−1, 1] with ReLU clipping inside: a sanity check on the golden.
    let (lo, hi) = want
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(hi - lo > 0.1, "golden range {lo}..{hi}");
    let f32_dir = variant("f32", |e| e, |c| c);
    for (name, mut exec) in execs() {
        check_decoder(
            &format!("{name} f16"),
            &mut exec,
            &fixture(),
            &latents,
            &want,
        );
        check_decoder(&format!("{name} f32"), &mut exec, &f32_dir, &latents, &want);
    }
    std::fs::remove_dir_all(f32_dir).ok();
}

#[test]
fn taesd_config_parses_and_rejects_unsupported_variants() {
    let text = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    let c = TaesdConfig::from_json(&text).unwrap();
    assert_eq!(c.block_out_channels, [12, 12, 12]);
    assert_eq!(c.num_blocks, [2, 1, 1]);
    assert_eq!((c.scaling_factor, c.shift_factor), (0.8, 0.1));
    // diffusers' defaults are madebyollin/taesd's: 8× upscale.
    assert_eq!(TaesdConfig::from_json("{}").unwrap().upscale(), 8);
    for (from, to, key) in [
        ("\"relu\"", "\"mish\"", "act_fn"),
        ("\"nearest\"", "\"bilinear\"", "upsample_fn"),
        ("\"AutoencoderTiny\"", "\"AutoencoderKL\"", "_class_name"),
        (
            "\"scaling_factor\": 0.8",
            "\"scaling_factor\": 0",
            "scaling_factor",
        ),
    ] {
        assert!(text.contains(from), "fixture config lacks {from}");
        let msg = TaesdConfig::from_json(&text.replace(from, to))
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains(key), "{msg}");
    }
    let unequal = r#"{"decoder_block_out_channels": [8, 16], "num_decoder_blocks": [1, 1]}"#;
    let msg = TaesdConfig::from_json(unequal).err().unwrap().to_string();
    assert!(
        msg.contains("decoder_block_out_channels") && msg.contains("8 and 16"),
        "{msg}"
    );
    let lengths = r#"{"decoder_block_out_channels": [8, 8], "num_decoder_blocks": [1]}"#;
    let msg = TaesdConfig::from_json(lengths).err().unwrap().to_string();
    assert!(msg.contains("num_decoder_blocks"), "{msg}");
    let msg = TaesdConfig::from_json("[").err().unwrap().to_string();
    assert!(msg.contains("JSON"), "{msg}");
}

#[test]
fn taesd_load_errors_name_the_tensor() {
    let mut exec = Exec::cpu();
    let conv = "decoder.layers.2.conv.2.weight";
    let missing = variant(
        "missing",
        |e| e.into_iter().filter(|(n, _, _)| n != conv).collect(),
        |c| c,
    );
    match TinyDecoder::load_dir(&mut exec, &missing) {
        Err(Error::MissingTensors { names, .. }) => assert_eq!(names, [conv]),
        other => panic!("expected MissingTensors, got {:?}", other.err()),
    }
    let shape = variant(
        "shape",
        |e| {
            e.into_iter()
                .map(|(n, s, v)| match n == conv {
                    true => (n, vec![12, 12, 1, 9], v),
                    false => (n, s, v),
                })
                .collect()
        },
        |c| c,
    );
    let msg = TinyDecoder::load_dir(&mut exec, &shape)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(conv) && msg.contains("[12, 12, 1, 9]") || msg.contains(conv),
        "{msg}"
    );
    assert!(matches!(
        TinyDecoder::load_dir(&mut exec, &shape),
        Err(Error::WeightShape { .. })
    ));
    // A config with one block fewer than the weights: the extra decoder tensors are named.
    let fewer = variant(
        "fewer",
        |e| e,
        |c| {
            let mut v: serde_json::Value = serde_json::from_str(&c).unwrap();
            v["num_decoder_blocks"] = serde_json::json!([1, 1, 1]);
            v.to_string()
        },
    );
    let msg = TinyDecoder::load_dir(&mut exec, &fewer)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("decoder.layers."), "{msg}");
    // Latents with the wrong channel count.
    let dec = TinyDecoder::load_dir(&mut exec, fixture()).unwrap();
    let bad = Tensor::from_vec(&[1, 3, 2, 2], vec![0.0; 12]).unwrap();
    let msg = dec.decode(&mut exec, &bad).err().unwrap().to_string();
    assert!(
        msg.contains("latents") && msg.contains("(N, 4, H, W)"),
        "{msg}"
    );
    assert!(dec.decode_preview(&mut exec, &bad, 0).is_err());
    for d in [missing, shape, fewer] {
        std::fs::remove_dir_all(d).ok();
    }
}
