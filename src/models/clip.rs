//! transformers' `CLIPTextModel` (the text encoder of Stable Diffusion 1.x/2.x). So far only
//! its configuration: the encoder itself (causal self-attention, quick-GELU MLP, final
//! layer norm, `clip_skip`) is not written yet.

use serde_json::Value;

use crate::error::{Error, Result};

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
    Error::Config {
        file: "text_encoder/config.json".into(),
        key: key.into(),
        expected: expected.into(),
        got,
        hint: hint.into(),
    }
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
