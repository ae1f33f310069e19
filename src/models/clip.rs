//! transformers' `CLIPTextModel` (the text encoder of Stable Diffusion 1.x/2.x), composed of
//! ops only. Shapes: ids (B·L) with L ≤ max_position_embeddings (77), states (B, L, hidden).
//! ```text
//! h = token_embedding[ids] + position_embedding[0..L]
//! per layer:  h = out_proj(causal_attention(q(ln1(h)), k(ln1(h)), v(ln1(h)))) + h
//!             h = fc2(act(fc1(ln2(h)))) + h        act: quick_gelu (SD 1) or gelu (SD 2)
//! out = final_layer_norm(h)
//! ```
//! Every linear has a bias; the softmax scale is 1/√head_dim; the only mask is the causal
//! one (Stable Diffusion pipelines pass no padding mask). diffusers' `clip_skip` k takes the
//! states after layer `num_hidden_layers − k` (`hidden_states[-(k + 1)]`) and still applies
//! `final_layer_norm`, so the later layers are simply not run.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::nn::layers::take;
use crate::nn::{LayerNorm, Linear};
use crate::ops::{Attention, Binary, BinaryOp, GatherRows, Unary, UnaryOp};
use crate::tensor::Tensor;
use crate::weights::{LoadOptions, Weights};

/// The activation between `fc1` and `fc2` of each encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x · sigmoid(1.702 · x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// Exact (erf) GELU (OpenCLIP ViT-H, SD 2.x).
    Gelu,
}

/// The keys of a transformers `CLIPTextConfig` config.json that shape the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: ClipActivation,
    pub layer_norm_eps: f64,
}

fn config_err(key: &str, expected: &str, got: String, hint: &str) -> Error {
    super::config::config_error("text_encoder/config.json", key, expected, got, hint)
}

impl ClipTextConfig {
    /// Parses a `CLIPTextConfig` (or a full `CLIPConfig`'s `text_config`).
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| config_err("(file)", "a JSON object", e.to_string(), "re-save it"))?;
        let v = v.get("text_config").unwrap_or(&v);
        if let Some(t) = v.get("model_type").and_then(Value::as_str) {
            if t != "clip_text_model" && t != "clip" {
                return Err(config_err(
                    "model_type",
                    "\"clip_text_model\"",
                    format!("{t:?}"),
                    "only CLIP text encoders (SD 1.x/2.x) are supported",
                ));
            }
        }
        let size = |key: &str, default: usize| -> Result<usize> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        config_err(key, "a positive integer", x.to_string(), "fix the config")
                    }),
            }
        };
        let hidden_size = size("hidden_size", 512)?;
        let num_attention_heads = size("num_attention_heads", 8)?;
        if !hidden_size.is_multiple_of(num_attention_heads) {
            return Err(config_err(
                "num_attention_heads",
                &format!("a divisor of hidden_size = {hidden_size}"),
                num_attention_heads.to_string(),
                "fix the config",
            ));
        }
        let hidden_act = match v.get("hidden_act").and_then(Value::as_str) {
            None | Some("quick_gelu") => ClipActivation::QuickGelu,
            Some("gelu") => ClipActivation::Gelu,
            Some(other) => {
                return Err(config_err(
                    "hidden_act",
                    "\"quick_gelu\" or \"gelu\"",
                    format!("{other:?}"),
                    "this text-encoder variant is not supported",
                ))
            }
        };
        let layer_norm_eps = match v.get("layer_norm_eps") {
            None | Some(Value::Null) => 1e-5,
            Some(x) => x.as_f64().filter(|e| *e > 0.0).ok_or_else(|| {
                config_err(
                    "layer_norm_eps",
                    "a positive number",
                    x.to_string(),
                    "fix the config",
                )
            })?,
        };
        Ok(Self {
            vocab_size: size("vocab_size", 49408)?,
            hidden_size,
            intermediate_size: size("intermediate_size", 2048)?,
            num_attention_heads,
            num_hidden_layers: size("num_hidden_layers", 12)?,
            max_position_embeddings: size("max_position_embeddings", 77)?,
            hidden_act,
            layer_norm_eps,
        })
    }
}

impl ClipTextConfig {
    /// Reads `config.json` of a transformers text-encoder folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.display().to_string(),
            key: "(file)".into(),
            expected: "a readable config.json".into(),
            got: e.to_string(),
            hint: "point at the text_encoder folder of a Stable Diffusion model".into(),
        })?;
        Self::from_json(&text)
    }
}

/// One `CLIPEncoderLayer`.
struct ClipLayer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl ClipLayer {
    fn load(exec: &mut Exec, cfg: &ClipTextConfig, w: &mut Weights, p: &str) -> Result<Self> {
        let (d, ff, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let lin = |exec: &mut Exec, w: &mut Weights, name: &str, i: usize, o: usize| {
            Linear::load(exec, w, &format!("{p}.{name}"), i, o, true)
        };
        Ok(Self {
            ln1: LayerNorm::load(exec, w, &format!("{p}.layer_norm1"), d, eps)?,
            q: lin(exec, w, "self_attn.q_proj", d, d)?,
            k: lin(exec, w, "self_attn.k_proj", d, d)?,
            v: lin(exec, w, "self_attn.v_proj", d, d)?,
            out: lin(exec, w, "self_attn.out_proj", d, d)?,
            ln2: LayerNorm::load(exec, w, &format!("{p}.layer_norm2"), d, eps)?,
            fc1: lin(exec, w, "mlp.fc1", d, ff)?,
            fc2: lin(exec, w, "mlp.fc2", ff, d)?,
        })
    }
}

/// transformers' `CLIPTextModel` up to `last_hidden_state` (no pooled output, no projection).
pub struct ClipTextModel {
    cfg: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<ClipLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// Loads a transformers `CLIPTextModel` folder (`config.json` and safetensors weights,
    /// single or sharded), e.g. a Stable Diffusion model's `text_encoder/`.
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = ClipTextConfig::from_file(dir.join("config.json"))?;
        // transformers names its weights `model.safetensors` (diffusers folders use
        // `diffusion_pytorch_model.safetensors`, which the fallback finds).
        let opts = LoadOptions::default();
        let mut w = if dir.join("model.safetensors").is_file() {
            Weights::load_file(dir.join("model.safetensors"), &opts)?
        } else if dir.join("model.safetensors.index.json").is_file() {
            Weights::load_sharded(dir.join("model.safetensors.index.json"), &opts, |_| {})?
        } else {
            Weights::load_model_dir(dir, &opts, |_| {})?
        };
        let model = Self::from_weights(exec, &cfg, &mut w)?;
        // Checkpoints saved by transformers 4 keep the `position_ids` buffer; it is always
        // 0..max_position_embeddings, so it is not needed.
        let _ = w.take(
            "text_model.embeddings.position_ids",
            &[1, cfg.max_position_embeddings],
        );
        w.finish_unused(false)?;
        Ok(model)
    }

    /// Builds the encoder, taking its tensors (`text_model.…`, as SD checkpoints name them)
    /// from `w`: a missing one is `Error::MissingTensors` naming it, a wrong shape
    /// `Error::WeightShape`. Tensors of other modules (e.g. a projection) are left in `w`.
    /// Checkpoints saved by transformers 5 drop the `text_model.` prefix; it is added back.
    pub fn from_weights(exec: &mut Exec, cfg: &ClipTextConfig, w: &mut Weights) -> Result<Self> {
        if !w.contains("text_model.embeddings.token_embedding.weight")
            && w.contains("embeddings.token_embedding.weight")
        {
            w.add_prefix("text_model.")?;
        }
        let d = cfg.hidden_size;
        let token_embedding = take(
            exec,
            w,
            "text_model.embeddings.token_embedding.weight",
            &[cfg.vocab_size, d],
        )?;
        let position_embedding = take(
            exec,
            w,
            "text_model.embeddings.position_embedding.weight",
            &[cfg.max_position_embeddings, d],
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipLayer::load(exec, cfg, w, &format!("text_model.encoder.layers.{i}")))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::load(
            exec,
            w,
            "text_model.final_layer_norm",
            d,
            cfg.layer_norm_eps,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// Encodes `batch` prompts of `ids.len() / batch` token ids each (77 from the
    /// tokenizer) into (batch, L, hidden). `clip_skip` 0 is `last_hidden_state`; k ≥ 1 is
    /// diffusers' `clip_skip` k, `final_layer_norm(hidden_states[-(k + 1)])`.
    pub fn encode(
        &self,
        exec: &mut Exec,
        ids: &[u32],
        batch: usize,
        clip_skip: usize,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let op = "clip_text";
        if batch == 0 || ids.is_empty() || !ids.len().is_multiple_of(batch) {
            return Err(Error::invalid(
                op,
                format!(
                    "{} token ids do not split into {batch} prompts of equal length",
                    ids.len()
                ),
            ));
        }
        let len = ids.len() / batch;
        if len > cfg.max_position_embeddings {
            return Err(Error::invalid(
                op,
                format!(
                    "prompts of {len} tokens are longer than the encoder's {} positions; \
                     tokenize with truncation",
                    cfg.max_position_embeddings
                ),
            ));
        }
        if clip_skip > cfg.num_hidden_layers {
            return Err(Error::invalid(
                op,
                format!(
                    "clip_skip {clip_skip} skips more than the encoder's {} layers",
                    cfg.num_hidden_layers
                ),
            ));
        }
        let d = cfg.hidden_size;
        let tokens = exec.run(&GatherRows::new(ids), &[&self.token_embedding])?;
        let positions: Vec<u32> = (0..len as u32).collect();
        let positions = exec.run(&GatherRows::new(positions), &[&self.position_embedding])?;
        let mut h = exec.run(
            &Binary::new(BinaryOp::Add),
            &[&tokens.reshape(&[batch, len, d])?, &positions],
        )?;
        let act = Unary::new(match cfg.hidden_act {
            ClipActivation::QuickGelu => UnaryOp::QuickGelu,
            ClipActivation::Gelu => UnaryOp::GeluErf,
        });
        let attention = Attention::new(cfg.num_attention_heads).with_causal(true);
        for layer in &self.layers[..cfg.num_hidden_layers - clip_skip] {
            let x = layer.ln1.forward(exec, &h)?;
            let q = layer.q.forward(exec, &x)?;
            let k = layer.k.forward(exec, &x)?;
            let v = layer.v.forward(exec, &x)?;
            let a = exec.run(&attention, &[&q, &k, &v])?;
            h = layer.out.forward_residual(exec, &a, &h)?;
            let x = layer.ln2.forward(exec, &h)?;
            let x = layer.fc1.forward(exec, &x)?;
            let x = exec.run(&act, &[&x])?;
            h = layer.fc2.forward_residual(exec, &x, &h)?;
        }
        self.final_layer_norm.forward(exec, &h)
    }
}
