//! UNet2DModel and UNet2DConditionModel vs diffusers: the goldens in
//! `tests/goldens/unet/<case>/` were written by `scripts/goldens/make_unet_goldens.py`
//! (`uncond_attn`, `class_cond`, `plain`) and `make_unet_cond_goldens.py` (`cross_attn`,
//! `cross_linear`) (diffusers 0.42.1, torch 2.9.1, float32 CPU). Each case holds the model
//! folder and `io.safetensors` with the inputs, the output and per-block intermediates. Target: max |ours − diffusers| / max |diffusers| ≤ 1e-4 for the
//! whole model, on the CPU reference backend and on the GPU.

#[path = "ops/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use webdiffusion::models::config::ModelConfig;
use webdiffusion::models::{Conditioning, UNet, UNet2DConditionModel, UNet2DModel};
use webdiffusion::weights::{LoadOptions, ReadyTensor, TensorData, Weights};
use webdiffusion::{Error, Exec, Tensor};

const TOL: f64 = 1e-4;

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/goldens/unet")
        .join(name)
}

struct Golden {
    io: Weights,
}

impl Golden {
    fn load(name: &str) -> Self {
        let io = Weights::load_file(
            case_dir(name).join("io.safetensors"),
            &LoadOptions::default(),
        )
        .unwrap();
        Self { io }
    }

    fn get(&mut self, name: &str) -> Tensor {
        let shape = self.io.shape(name).unwrap().to_vec();
        self.io.take(name, &shape).unwrap()
    }

    fn has(&self, name: &str) -> bool {
        self.io.contains(name)
    }
}

/// max |got − want| / max |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    if err.is_nan() || got.iter().any(|v| v.is_nan()) {
        return f64::INFINITY;
    }
    err / scale.max(1e-30)
}

/// Runs one case on `exec` and checks the output and every recorded intermediate.
fn run_case(exec: &mut Exec, name: &str) {
    let mut model = UNet::load_dir(exec, case_dir(name)).unwrap();
    let mut g = Golden::load(name);
    let sample = g.get("sample");
    let timesteps: Vec<f64> = g
        .get("timestep")
        .cpu_data()
        .unwrap()
        .iter()
        .map(|&t| t as f64)
        .collect();
    let labels: Option<Vec<usize>> = g.has("class_labels").then(|| {
        g.get("class_labels")
            .cpu_data()
            .unwrap()
            .iter()
            .map(|&l| l as usize)
            .collect()
    });
    let ehs = g
        .has("encoder_hidden_states")
        .then(|| g.get("encoder_hidden_states"));
    let sample = exec.upload(&sample).unwrap();
    let mut traced: Vec<(String, Tensor)> = Vec::new();
    let cond = Conditioning {
        class_labels: labels.as_deref(),
        encoder_hidden_states: ehs.as_ref(),
        timestep_cond: None,
    };
    let out = model
        .run_traced(
            exec,
            &sample,
            &timesteps,
            cond,
            &mut |k: &str, t: &Tensor| traced.push((k.to_string(), t.clone())),
        )
        .unwrap();
    traced.push(("output".to_string(), out));
    let tensors: Vec<&Tensor> = traced.iter().map(|(_, t)| t).collect();
    let values = webdiffusion::platform::block_on(exec.read_many(&tensors)).unwrap();
    let mut report = Vec::new();
    for ((key, t), got) in traced.iter().zip(&values) {
        let want = g.get(key);
        assert_eq!(t.shape(), want.shape(), "{name} {key}: shape");
        let e = rel_err(got, want.cpu_data().unwrap());
        report.push(format!("{key} {e:.2e}"));
        assert!(
            e <= TOL,
            "{name} on {}: {key} differs from diffusers by {e:.3e} (relative to its max |x|); all: {report:?}",
            exec.backend_name()
        );
    }
    eprintln!("{name} on {}: {}", exec.backend_name(), report.join(", "));

    // The Denoiser path (one timestep for the batch) runs and gives the output's shape.
    model.set_class_labels(labels);
    model.set_encoder_hidden_states(exec, ehs.as_ref()).unwrap();
    let y = webdiffusion::sampling::solvers::Denoiser::denoise(&mut model, exec, &sample, 500.0)
        .unwrap();
    let s = sample.shape();
    assert_eq!(y.shape(), [s[0], model.arch().out_channels, s[2], s[3]]);
}

#[test]
fn uncond_attn_cpu_matches_diffusers() {
    run_case(&mut Exec::cpu(), "uncond_attn");
}

#[test]
fn class_cond_cpu_matches_diffusers() {
    run_case(&mut Exec::cpu(), "class_cond");
}

/// GPU cases run in parallel on one shared `GpuContext`, each with its own `Exec`: this also
/// exercises concurrent recordings (see `tests/ops/exec.rs`).
fn run_gpu_case(name: &str) {
    let Some(ctx) = common::gpu() else { return };
    run_case(&mut Exec::gpu(ctx), name);
}

#[test]
fn plain_cpu_matches_diffusers() {
    run_case(&mut Exec::cpu(), "plain");
}

#[test]
fn plain_gpu_matches_diffusers() {
    run_gpu_case("plain");
}

#[test]
fn uncond_attn_gpu_matches_diffusers() {
    run_gpu_case("uncond_attn");
}

#[test]
fn class_cond_gpu_matches_diffusers() {
    run_gpu_case("class_cond");
}

#[test]
fn cross_attn_cpu_matches_diffusers() {
    run_case(&mut Exec::cpu(), "cross_attn");
}

#[test]
fn cross_attn_gpu_matches_diffusers() {
    run_gpu_case("cross_attn");
}

#[test]
fn cross_linear_cpu_matches_diffusers() {
    run_case(&mut Exec::cpu(), "cross_linear");
}

#[test]
fn cross_linear_gpu_matches_diffusers() {
    run_gpu_case("cross_linear");
}

/// An input size that is not a multiple of the downsampling (7×9 with one downsampler):
/// diffusers resizes each upsampled map to its skip's size.
fn odd_size_case(exec: &mut Exec) {
    let mut g = Golden::load("cross_attn");
    let model = UNet2DConditionModel::load_dir(exec, case_dir("cross_attn")).unwrap();
    let x = exec.upload(&g.get("odd.sample")).unwrap();
    let e = g.get("odd.encoder_hidden_states");
    let t = g.get("odd.timestep").cpu_data().unwrap()[0] as f64;
    let y = model.forward(exec, &x, &[t], &e, None).unwrap();
    let got = webdiffusion::platform::block_on(exec.read(&y)).unwrap();
    let want = g.get("odd.output");
    assert_eq!(y.shape(), want.shape());
    let err = rel_err(&got, want.cpu_data().unwrap());
    eprintln!("odd size 7×9 on {}: {err:.2e}", exec.backend_name());
    assert!(err <= TOL, "odd size on {}: {err:.3e}", exec.backend_name());
}

#[test]
fn odd_size_cpu_matches_diffusers() {
    odd_size_case(&mut Exec::cpu());
}

#[test]
fn odd_size_gpu_matches_diffusers() {
    let Some(ctx) = common::gpu() else { return };
    odd_size_case(&mut Exec::gpu(ctx));
}

/// The class-checked wrappers refuse the other class, naming both.
#[test]
fn wrappers_check_the_class() {
    let mut exec = Exec::cpu();
    let err = UNet2DModel::load_dir(&mut exec, case_dir("cross_attn"))
        .err()
        .expect("a UNet2DConditionModel folder is not a UNet2DModel");
    assert!(err.to_string().contains("UNet2DConditionModel"), "{err}");
    let err = UNet2DConditionModel::load_dir(&mut exec, case_dir("plain"))
        .err()
        .expect("a UNet2DModel folder is not a UNet2DConditionModel");
    assert!(
        err.to_string().contains("not a UNet2DConditionModel"),
        "{err}"
    );
}

#[test]
fn bad_encoder_hidden_states_are_errors() {
    let mut exec = Exec::cpu();
    let mut model = UNet2DConditionModel::load_dir(&mut exec, case_dir("cross_attn")).unwrap();
    let x = Tensor::from_vec(&[2, 4, 6, 10], vec![0.1; 480]).unwrap();
    let ehs =
        |n: usize, l: usize, d: usize| Tensor::from_vec(&[n, l, d], vec![0.2; n * l * d]).unwrap();
    // Wrong width: the error names the expected cross_attention_dim and the shape got.
    let err = model
        .forward(&mut exec, &x, &[5.0], &ehs(2, 7, 23), None)
        .expect_err("width 23 for cross_attention_dim 24 must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::Shape { .. }), "{msg}");
    assert!(
        msg.contains("cross_attention_dim 24") && msg.contains("23"),
        "{msg}"
    );
    // Wrong batch, wrong rank.
    assert!(model
        .forward(&mut exec, &x, &[5.0], &ehs(3, 7, 24), None)
        .is_err());
    let flat = Tensor::from_vec(&[7, 24], vec![0.0; 168]).unwrap();
    assert!(model.forward(&mut exec, &x, &[5.0], &flat, None).is_err());
    assert!(model
        .set_encoder_hidden_states(&mut exec, Some(&ehs(1, 7, 25)))
        .is_err());
    // Labels for a model without a class embedding.
    assert!(model
        .forward(&mut exec, &x, &[5.0], &ehs(2, 7, 24), Some(&[0, 1]))
        .is_err());
    // The Denoiser path without encoder hidden states names them.
    let err = webdiffusion::sampling::solvers::Denoiser::denoise(&mut model, &mut exec, &x, 1.0)
        .expect_err("no encoder hidden states must fail");
    assert!(err.to_string().contains("encoder_hidden_states"), "{err}");
    // A UNet2DModel cannot take a size its skips do not match (diffusers fails too).
    let plain_model = UNet2DModel::load_dir(&mut exec, case_dir("plain")).unwrap();
    let odd = Tensor::from_vec(&[2, 2, 5, 10], vec![0.1; 200]).unwrap();
    let err = plain_model
        .forward(&mut exec, &odd, &[5.0], None)
        .expect_err("height 5 must fail");
    assert!(err.to_string().contains("multiples of 2"), "{err}");
    // A UNet2DModel takes no encoder hidden states.
    let mut plain = UNet::load_dir(&mut exec, case_dir("plain")).unwrap();
    assert!(plain
        .set_encoder_hidden_states(&mut exec, Some(&ehs(2, 7, 24)))
        .is_err());
}

fn golden_weights(name: &str) -> (ModelConfig, Weights) {
    let dir = case_dir(name);
    let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let w = Weights::load_model_dir(&dir, &LoadOptions::default(), |_| {}).unwrap();
    (config, w)
}

#[test]
fn missing_tensor_is_named() {
    let (config, mut all) = golden_weights("uncond_attn");
    let missing = "mid_block.attentions.0.to_k.bias";
    // A fresh set holding every tensor but one (taking it from `all` would make the model's
    // request a "taken twice" bug report instead).
    let mut w = Weights::new("test");
    let names: Vec<String> = all.names().map(str::to_string).collect();
    for name in names {
        let shape = all.shape(&name).unwrap().to_vec();
        let t = all.take(&name, &shape).unwrap();
        if name != missing {
            w.insert(ReadyTensor {
                file: "test".into(),
                name,
                shape,
                data: TensorData::F32(t.cpu_data().unwrap().to_vec()),
            })
            .unwrap();
        }
    }
    let err = UNet2DModel::from_weights(&mut Exec::cpu(), &config.arch, &mut w, false)
        .err()
        .expect("a missing tensor must fail");
    match &err {
        Error::MissingTensors { names, .. } => assert_eq!(names, &[missing.to_string()]),
        other => panic!("expected MissingTensors, got {other}"),
    }
    assert!(err.to_string().contains(missing), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let (config, mut w) = golden_weights("class_cond");
    let name = "down_blocks.0.resnets.0.conv1.weight";
    let shape = w.shape(name).unwrap().to_vec();
    let t = w.take(name, &shape).unwrap();
    let mut bad = shape.clone();
    bad.swap(0, 1);
    bad[0] += 1;
    let mut data = t.cpu_data().unwrap().to_vec();
    data.resize(bad.iter().product(), 0.0);
    w.insert(ReadyTensor {
        file: "test".into(),
        name: name.into(),
        shape: bad.clone(),
        data: TensorData::F32(data),
    })
    .unwrap();
    let err = UNet2DModel::from_weights(&mut Exec::cpu(), &config.arch, &mut w, false)
        .err()
        .expect("a wrong shape must fail");
    match &err {
        Error::WeightShape {
            tensor,
            expected,
            got,
            ..
        } => {
            assert_eq!(tensor, name);
            assert_eq!(expected.0, shape);
            assert_eq!(got.0, bad);
        }
        other => panic!("expected WeightShape, got {other}"),
    }
}

#[test]
fn extra_tensor_is_rejected_unless_allowed() {
    let (config, mut w) = golden_weights("uncond_attn");
    w.insert(ReadyTensor {
        file: "test".into(),
        name: "extra.weight".into(),
        shape: vec![2],
        data: TensorData::F32(vec![0.0, 1.0]),
    })
    .unwrap();
    let err = UNet2DModel::from_weights(&mut Exec::cpu(), &config.arch, &mut w, false)
        .err()
        .expect("an extra tensor must fail");
    assert!(
        matches!(&err, Error::UnexpectedTensors { names, .. } if names == &["extra.weight".to_string()]),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let mut exec = Exec::cpu();
    let mut model = UNet2DModel::load_dir(&mut exec, case_dir("class_cond")).unwrap();
    let x = Tensor::from_vec(&[2, 3, 6, 10], vec![0.1; 360]).unwrap();
    // Class labels missing, out of range, or of the wrong count.
    assert!(model.forward(&mut exec, &x, &[5.0], None).is_err());
    assert!(model
        .forward(&mut exec, &x, &[5.0], Some(&[1, 10]))
        .is_err());
    assert!(model.forward(&mut exec, &x, &[5.0], Some(&[1])).is_err());
    // Three timesteps for a batch of two; a NaN timestep; wrong channel count.
    assert!(model
        .forward(&mut exec, &x, &[1.0, 2.0, 3.0], Some(&[1, 2]))
        .is_err());
    assert!(model
        .forward(&mut exec, &x, &[f64::NAN], Some(&[1, 2]))
        .is_err());
    let x4 = Tensor::from_vec(&[2, 4, 6, 10], vec![0.1; 480]).unwrap();
    assert!(matches!(
        model.forward(&mut exec, &x4, &[5.0], Some(&[1, 2])),
        Err(Error::Shape { .. })
    ));
    model.set_class_labels(None);
    assert!(
        webdiffusion::sampling::solvers::Denoiser::denoise(&mut model, &mut exec, &x, 1.0).is_err()
    );
}

#[test]
fn one_timestep_is_broadcast_to_the_batch() {
    let mut exec = Exec::cpu();
    let model = UNet2DModel::load_dir(&mut exec, case_dir("uncond_attn")).unwrap();
    let x = Tensor::from_vec(
        &[2, 3, 4, 4],
        (0..96).map(|i| (i as f32 * 0.37).sin()).collect(),
    )
    .unwrap();
    let one = model.forward(&mut exec, &x, &[321.0], None).unwrap();
    let each = model.forward(&mut exec, &x, &[321.0, 321.0], None).unwrap();
    assert_eq!(one.cpu_data().unwrap(), each.cpu_data().unwrap());
}

#[test]
fn extra_tensors_can_be_allowed() {
    let (config, mut w) = golden_weights("uncond_attn");
    w.insert(ReadyTensor {
        file: "test".into(),
        name: "extra.weight".into(),
        shape: vec![1],
        data: TensorData::F32(vec![0.0]),
    })
    .unwrap();
    UNet2DModel::from_weights(&mut Exec::cpu(), &config.arch, &mut w, true).unwrap();
}

#[test]
fn too_wide_attention_heads_fail_at_load() {
    let mut w = Weights::new("empty");
    let err = webdiffusion::nn::AttentionBlock::load(
        &mut Exec::cpu(),
        &mut w,
        "mid_block.attentions.0",
        640,
        (1, 640),
        Some((32, 1e-6)),
        1.0,
    )
    .err()
    .expect("head dim 640 (over attention_wide's 512) must be rejected");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("mid_block.attentions.0"), "{err}");
}

/// `info`'s activation estimate against what the GPU pool really holds at its peak during one
/// forward pass (pool buckets round sizes up by at most 25 %).
#[test]
fn activation_estimate_bounds_the_measured_peak() {
    let Some(ctx) = common::gpu() else { return };
    for (case, tokens) in [("cross_attn", 7), ("uncond_attn", 0), ("cross_linear", 5)] {
        let mut exec = Exec::gpu(ctx.clone());
        let model = UNet::load_dir(&mut exec, case_dir(case)).unwrap();
        let a = model.arch().clone();
        let (n, h, w) = (2, 16, 24);
        let x = exec
            .tensor(
                &[n, a.in_channels, h, w],
                &vec![0.1; n * a.in_channels * h * w],
            )
            .unwrap();
        let ehs = a
            .cross_attention_dim
            .map(|d| Tensor::from_vec(&[n, tokens, d], vec![0.2; n * tokens * d]).unwrap());
        let labels = a.num_class_embeds.map(|_| vec![1; n]);
        let before = exec.pool_stats().unwrap().live_bytes;
        let y = model
            .run(
                &mut exec,
                &x,
                &[3.0],
                Conditioning {
                    class_labels: labels.as_deref(),
                    encoder_hidden_states: ehs.as_ref(),
                    timestep_cond: None,
                },
            )
            .unwrap();
        webdiffusion::platform::block_on(exec.read(&y)).unwrap();
        let measured = exec.pool_stats().unwrap().peak_bytes - before;
        let est = webdiffusion::models::info::peak_activation_bytes(&a, n, h, w, tokens);
        eprintln!("{case}: estimate {est} bytes, measured pool peak {measured} bytes");
        assert!(
            est as f64 >= 0.8 * measured as f64 && (est as f64) <= 4.0 * measured as f64,
            "{case}: estimate {est}, measured {measured}"
        );
    }
}

#[test]
fn too_wide_transformer_heads_fail_at_load() {
    let mut w = Weights::new("empty");
    let cfg = webdiffusion::nn::Transformer2DConfig {
        channels: 1280,
        heads: 2,
        head_dim: 640,
        depth: 1,
        cross_attention_dim: 768,
        norm_groups: 32,
        use_linear_projection: false,
    };
    let err = webdiffusion::nn::Transformer2D::load(
        &mut Exec::cpu(),
        &mut w,
        "down_blocks.2.attentions.0",
        &cfg,
    )
    .err()
    .expect("head dim 640 must be rejected");
    let msg = err.to_string();
    assert!(
        msg.contains("down_blocks.2.attentions.0") && msg.contains("640") && msg.contains("512"),
        "{msg}"
    );
}
