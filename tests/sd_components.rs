//! Stable Diffusion components vs transformers / diffusers: the CLIP tokenizer, the CLIP
//! text encoder and the VAE. Fixtures (`tests/fixtures/tiny-*`) and goldens
//! (`tests/goldens/sd/`) were written by `scripts/goldens/make_sd_component_goldens.py`
//! (transformers 5.23.0, diffusers 0.42.1, torch 2.9.1, float32 CPU). Models are compared
//! by max |ours − reference| / max |reference|.

#[path = "ops/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use webdiffusion::tokenizer::{ClipTokenizer, MAX_LENGTH};
use webdiffusion::Error;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/goldens/sd")
        .join(name)
}

fn tokenizer_files() -> (Vec<u8>, Vec<u8>) {
    let dir = fixture("tiny-clip-tokenizer");
    (
        std::fs::read(dir.join("vocab.json")).unwrap(),
        std::fs::read(dir.join("merges.txt")).unwrap(),
    )
}

#[derive(serde::Deserialize)]
struct TokenizerGolden {
    prompts: Vec<String>,
    ids: Vec<Vec<u32>>,
    ids_pad_bang: Vec<Vec<u32>>,
    truncated: Vec<bool>,
}

fn tokenizer_golden() -> TokenizerGolden {
    serde_json::from_slice(&std::fs::read(golden("tokenizer.json")).unwrap()).unwrap()
}

#[test]
fn tokenizer_matches_transformers_on_tricky_prompts() {
    let g = tokenizer_golden();
    let tok = ClipTokenizer::load_dir(fixture("tiny-clip-tokenizer")).unwrap();
    let mut failures = Vec::new();
    for (i, p) in g.prompts.iter().enumerate() {
        let e = tok.encode(p);
        assert_eq!(e.ids.len(), MAX_LENGTH);
        if e.ids != g.ids[i] || e.truncated != g.truncated[i] {
            failures.push(format!(
                "prompt {i} {p:?}:\n  ours {:?} (truncated {})\n  want {:?} (truncated {})",
                e.ids, e.truncated, g.ids[i], g.truncated[i]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The goldens exercise what they claim to: some prompts are cut, some padded.
    assert!(g.truncated.iter().any(|&t| t) && g.truncated.iter().any(|&t| !t));
}

#[test]
fn tokenizer_pads_with_the_configured_token() {
    let g = tokenizer_golden();
    let (v, m) = tokenizer_files();
    let tok = ClipTokenizer::from_files(&v, &m)
        .unwrap()
        .with_pad_token("!")
        .unwrap();
    for (i, p) in g.prompts.iter().enumerate() {
        assert_eq!(tok.encode(p).ids, g.ids_pad_bang[i], "prompt {i} {p:?}");
    }
    // SD 2's tokenizer folder names "!" in tokenizer_config.json.
    let dir = std::env::temp_dir().join(format!("wd-tok-pad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vocab.json"), &v).unwrap();
    std::fs::write(dir.join("merges.txt"), &m).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": {"content": "!", "lstrip": false}}"#,
    )
    .unwrap();
    let from_dir = ClipTokenizer::load_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(from_dir.pad_id(), tok.pad_id());
    assert_ne!(from_dir.pad_id(), from_dir.eos_id());
}

#[test]
fn tokenizer_rejects_files_that_disagree() {
    let (v, m) = tokenizer_files();
    let text = String::from_utf8(m.clone()).unwrap();
    // A merge whose result is not in the vocabulary.
    let bad = format!("{text}z q\n");
    let err = ClipTokenizer::from_files(&v, bad.as_bytes())
        .err()
        .expect("a merge producing an unknown token must be rejected");
    let msg = err.to_string();
    assert!(matches!(err, Error::Io { .. }), "{msg}");
    assert!(msg.contains("`zq`") && msg.contains("vocab.json"), "{msg}");
    // A merge with a symbol the vocabulary lacks.
    let bad = format!("{text}\u{4e00}\u{4e01} a\n");
    let msg = ClipTokenizer::from_files(&v, bad.as_bytes())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains('\u{4e00}'), "{msg}");
    // A malformed merges line and a vocabulary without the special tokens.
    let bad = format!("{text}abc\n");
    let msg = ClipTokenizer::from_files(&v, bad.as_bytes())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("two symbols"), "{msg}");
    let msg = ClipTokenizer::from_files(br#"{"a": 0}"#, b"")
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("<|startoftext|>"), "{msg}");
    assert!(ClipTokenizer::from_files(b"[1, 2]", &m).is_err());
    let (v, m) = tokenizer_files();
    assert!(ClipTokenizer::from_files(&v, &m)
        .unwrap()
        .with_pad_token("<no such token>")
        .is_err());
}

#[test]
fn clip_text_config_parses_and_rejects_unsupported_variants() {
    use webdiffusion::models::clip::{ClipActivation, ClipTextConfig};
    let text = std::fs::read_to_string(fixture("tiny-clip-text/config.json")).unwrap();
    let c = ClipTextConfig::from_json(&text).unwrap();
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size),
        (674, 32, 44)
    );
    assert_eq!((c.num_attention_heads, c.num_hidden_layers), (4, 3));
    assert_eq!(c.hidden_act, ClipActivation::QuickGelu);
    let bad = text.replace("quick_gelu", "swish");
    let msg = ClipTextConfig::from_json(&bad).err().unwrap().to_string();
    assert!(msg.contains("hidden_act") && msg.contains("swish"), "{msg}");
    let bad = text.replace("clip_text_model", "t5");
    let msg = ClipTextConfig::from_json(&bad).err().unwrap().to_string();
    assert!(msg.contains("model_type"), "{msg}");
    let bad = text.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5");
    assert!(ClipTextConfig::from_json(&bad).is_err());
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

struct VaeGolden(webdiffusion::weights::Weights);

impl VaeGolden {
    fn load() -> Self {
        Self::load_file("vae.safetensors")
    }
    fn load_file(file: &str) -> Self {
        use webdiffusion::weights::{LoadOptions, Weights};
        Self(Weights::load_file(golden(file), &LoadOptions::default()).unwrap())
    }
    fn get(&mut self, name: &str) -> webdiffusion::Tensor {
        let shape = self.0.shape(name).unwrap().to_vec();
        self.0.take(name, &shape).unwrap()
    }
}

/// Runs decode, encode and encode_sample of the tiny VAE on the CPU and (when present) the
/// GPU, each against the diffusers goldens.
#[test]
fn vae_matches_diffusers() {
    use webdiffusion::models::AutoencoderKl;
    use webdiffusion::platform::block_on;
    use webdiffusion::Exec;
    let mut g = VaeGolden::load();
    let (latents, decoded) = (g.get("latents"), g.get("decoded"));
    let (image, mean, noise, sampled) = (
        g.get("image"),
        g.get("mean"),
        g.get("noise"),
        g.get("sampled"),
    );
    let mut execs = vec![("cpu", Exec::cpu())];
    if let Some(ctx) = common::gpu() {
        execs.push(("gpu", Exec::gpu(ctx)));
    }
    for (name, mut exec) in execs {
        let vae = AutoencoderKl::load_dir(&mut exec, fixture("tiny-vae")).unwrap();
        assert_eq!(vae.downscale(), 2);
        let check = |exec: &mut Exec,
                     what: &str,
                     got: webdiffusion::Tensor,
                     want: &webdiffusion::Tensor| {
            assert_eq!(got.shape(), want.shape(), "{name} {what}");
            let got = block_on(exec.read(&got)).unwrap();
            let e = rel_err(&got, want.cpu_data().unwrap());
            eprintln!("vae {name} {what}: rel err {e:.2e}");
            assert!(e <= 1e-5, "{name} {what}: rel err {e:.2e}");
        };
        let z = exec.upload(&latents).unwrap();
        let x = vae.decode(&mut exec, &z).unwrap();
        check(&mut exec, "decode", x, &decoded);
        let img = exec.upload(&image).unwrap();
        let m = vae.encode(&mut exec, &img).unwrap();
        check(&mut exec, "encode mean", m, &mean);
        let n = exec.upload(&noise).unwrap();
        let s = vae.encode_sample(&mut exec, &img, &n).unwrap();
        check(&mut exec, "encode sample", s, &sampled);
    }
}

/// Tiled decode and encode against diffusers' own tiling (`enable_tiling` with
/// `tile_sample_min_size` 8 and 16 on the factor-2 tiny VAE; goldens by
/// `scripts/goldens/make_vae_tiling_goldens.py`): many tiles, non-square inputs, and a last
/// row of tiles thinner than the blend extent. The untiled outputs differ from these by
/// 0.1–1.3, so a tiling that is off by one row or blends the wrong way fails.
#[test]
fn vae_tiled_matches_diffusers_tiling() {
    use webdiffusion::models::{AutoencoderKl, VaeTiles};
    use webdiffusion::platform::block_on;
    use webdiffusion::Exec;
    let mut g = VaeGolden::load_file("vae_tiled.safetensors");
    let (latents, image, noise) = (g.get("latents"), g.get("image"), g.get("noise"));
    let plain = g.get("decoded_plain");
    let mut want = std::collections::HashMap::new();
    for t in [8usize, 16] {
        for what in ["decoded", "mean", "sampled"] {
            let k = format!("{what}_{t}");
            want.insert(k.clone(), g.get(&k));
        }
    }
    let mut execs = vec![("cpu", Exec::cpu())];
    if let Some(ctx) = common::gpu() {
        execs.push(("gpu", Exec::gpu(ctx)));
    }
    for (name, mut exec) in execs {
        let vae = AutoencoderKl::load_dir(&mut exec, fixture("tiny-vae")).unwrap();
        let check = |exec: &mut Exec, what: &str, got: webdiffusion::Tensor, want: &[f32]| {
            let got = block_on(exec.read(&got)).unwrap();
            let e = rel_err(&got, want);
            eprintln!("vae tiled {name} {what}: rel err {e:.2e}");
            assert!(e <= 1e-5, "{name} {what}: rel err {e:.2e}");
        };
        let z = exec.upload(&latents).unwrap();
        let img = exec.upload(&image).unwrap();
        let n = exec.upload(&noise).unwrap();
        // A tile at least as large as the input is the untiled pass, as in diffusers.
        let whole = VaeTiles::new(40, 2).unwrap();
        let x = vae.decode_tiled(&mut exec, &z, Some(whole)).unwrap();
        check(&mut exec, "decode, one tile", x, plain.cpu_data().unwrap());
        for t in [8usize, 16] {
            let tiles = Some(VaeTiles::new(t, 2).unwrap());
            let w = &want[&format!("decoded_{t}")];
            let x = vae.decode_tiled(&mut exec, &z, tiles).unwrap();
            assert_eq!(x.shape(), w.shape());
            check(&mut exec, &format!("decode {t}"), x, w.cpu_data().unwrap());
            let w = &want[&format!("mean_{t}")];
            let m = vae.encode_tiled(&mut exec, &img, tiles).unwrap();
            assert_eq!(m.shape(), w.shape());
            check(&mut exec, &format!("mean {t}"), m, w.cpu_data().unwrap());
            let w = &want[&format!("sampled_{t}")];
            let s = vae.encode_sample_tiled(&mut exec, &img, &n, tiles).unwrap();
            check(&mut exec, &format!("sample {t}"), s, w.cpu_data().unwrap());
        }
    }
    // Tile sizes that would not add up to the image are refused with the rule.
    let msg = VaeTiles::new(12, 2).err().unwrap().to_string();
    assert!(
        msg.contains("multiple of 8") && msg.contains("e.g. 8"),
        "{msg}"
    );
}

#[test]
fn vae_config_rejects_unsupported_blocks() {
    use webdiffusion::models::VaeConfig;
    let text = std::fs::read_to_string(fixture("tiny-vae/config.json")).unwrap();
    let c = VaeConfig::from_json(&text).unwrap();
    assert_eq!(c.block_out_channels, vec![16, 32]);
    assert_eq!(
        (c.latent_channels, c.norm_num_groups, c.layers_per_block),
        (4, 8, 1)
    );
    assert!((c.scaling_factor - 0.18215).abs() < 1e-12 && c.shift_factor == 0.0);
    let bad = text.replacen("UpDecoderBlock2D", "AttnUpDecoderBlock2D", 1);
    let msg = VaeConfig::from_json(&bad).err().unwrap().to_string();
    assert!(
        msg.contains("up_block_types") && msg.contains("AttnUpDecoderBlock2D"),
        "{msg}"
    );
    let bad = text.replacen("DownEncoderBlock2D", "DownBlock2D", 1);
    let msg = VaeConfig::from_json(&bad).err().unwrap().to_string();
    assert!(
        msg.contains("down_block_types") && msg.contains("DownBlock2D"),
        "{msg}"
    );
    // Inputs of the wrong shape are errors naming what is wrong, not panics.
    let mut exec = webdiffusion::Exec::cpu();
    let vae =
        webdiffusion::models::AutoencoderKl::load_dir(&mut exec, fixture("tiny-vae")).unwrap();
    let odd = webdiffusion::Tensor::from_vec(&[1, 3, 7, 12], vec![0.0; 3 * 7 * 12]).unwrap();
    let msg = vae.encode(&mut exec, &odd).err().unwrap().to_string();
    assert!(
        msg.contains("image") && msg.contains("multiples of 2"),
        "{msg}"
    );
    let wrong_c = webdiffusion::Tensor::from_vec(&[1, 3, 4, 4], vec![0.0; 48]).unwrap();
    let msg = vae.decode(&mut exec, &wrong_c).err().unwrap().to_string();
    assert!(msg.contains("latents"), "{msg}");
    let bad = text.replace("\"norm_num_groups\": 8", "\"norm_num_groups\": 5");
    let msg = VaeConfig::from_json(&bad).err().unwrap().to_string();
    assert!(msg.contains("norm_num_groups"), "{msg}");
}

/// `ids`, `last`, `skip1`, `skip2` of `clip_text.safetensors`.
fn clip_golden() -> (Vec<u32>, [Vec<f32>; 3]) {
    use webdiffusion::weights::{LoadOptions, Weights};
    let mut g =
        Weights::load_file(golden("clip_text.safetensors"), &LoadOptions::default()).unwrap();
    let mut f32s = |name: &str, shape: &[usize]| -> Vec<f32> {
        g.take(name, shape).unwrap().cpu_data().unwrap().to_vec()
    };
    let ids = f32s("ids", &[2, 77]).iter().map(|&x| x as u32).collect();
    let shape = [2, 77, 32];
    (
        ids,
        [
            f32s("last", &shape),
            f32s("skip1", &shape),
            f32s("skip2", &shape),
        ],
    )
}

fn check_clip_text(mut exec: webdiffusion::Exec) {
    use webdiffusion::models::clip::ClipTextModel;
    use webdiffusion::platform::block_on;
    let model = ClipTextModel::load_dir(&mut exec, fixture("tiny-clip-text")).unwrap();
    let (ids, want) = clip_golden();
    // The two prompts differ, so a batch mix-up or a missing causal mask shows.
    assert_ne!(ids[..77], ids[77..]);
    for (skip, want) in want.iter().enumerate() {
        let out = model.encode(&mut exec, &ids, 2, skip).unwrap();
        assert_eq!(out.shape(), &[2, 77, 32]);
        let got = block_on(exec.read(&out)).unwrap();
        let err = rel_err(&got, want);
        eprintln!(
            "{} clip_skip {skip}: rel err {err:.2e}",
            exec.backend_name()
        );
        assert!(err <= 5e-4, "clip_skip {skip}: relative error {err:.2e}");
    }
    // Different clip_skip values really give different states.
    assert!(rel_err(&want[0], &want[1]) > 1e-2 && rel_err(&want[1], &want[2]) > 1e-2);
}

#[test]
fn clip_text_matches_transformers_on_cpu() {
    check_clip_text(webdiffusion::Exec::cpu());
}

#[test]
fn clip_text_matches_transformers_on_gpu() {
    let Some(ctx) = common::gpu() else { return };
    check_clip_text(webdiffusion::Exec::gpu(ctx));
}

#[test]
fn clip_text_rejects_a_missing_weight_and_bad_ids() {
    use webdiffusion::models::clip::{ClipTextConfig, ClipTextModel};
    use webdiffusion::weights::{LoadOptions, Weights};
    let dir = fixture("tiny-clip-text");
    let cfg = ClipTextConfig::from_file(dir.join("config.json")).unwrap();
    let mut exec = webdiffusion::Exec::cpu();
    let name = "text_model.encoder.layers.1.mlp.fc2.bias";
    let mut w = Weights::load_file(dir.join("model.safetensors"), &LoadOptions::default()).unwrap();
    w.take(name, &[32]).unwrap();
    let err = ClipTextModel::from_weights(&mut exec, &cfg, &mut w)
        .err()
        .expect("a missing tensor must fail");
    assert!(err.to_string().contains(name), "{err}");

    let model = ClipTextModel::load_dir(&mut exec, &dir).unwrap();
    let mut ids = vec![0u32; 77];
    ids[5] = cfg.vocab_size as u32;
    let err = model.encode(&mut exec, &ids, 1, 0).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
    assert!(model.encode(&mut exec, &[0; 78], 1, 0).is_err());
    assert!(model.encode(&mut exec, &[0; 77], 1, 4).is_err());
}
