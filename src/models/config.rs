//! diffusers `config.json` for `UNet2DModel` and `UNet2DConditionModel`.
//!
//! The raw structs ([`UNet2DConfig`], [`UNet2DConditionConfig`]) have exactly the `__init__`
//! parameters of diffusers' classes with diffusers' defaults, read from
//! `src/diffusers/models/unets/unet_2d.py` and `unet_2d_condition.py` at commit
//! `58eb52c0803ea9af3abec60841c2a093bdf1f951` (0.40.0.dev0). Loading follows
//! `ConfigMixin.extract_init_dict` in `configuration_utils.py`: keys listed in
//! `_use_default_values` are dropped (their defaults apply), `_`-prefixed keys are ignored.
//! Unlike diffusers, which warns about and ignores unknown keys, an unknown key is an error
//! here: it may come from a newer diffusers and change the computation.
//!
//! [`UNetArch`] is the validated, normalised architecture that the model code wires: the
//! int-or-list options expanded into per-block vectors and each block's channels, resnets,
//! attention heads and transformer depths resolved exactly as diffusers' constructors resolve
//! them, quirks included (see [`PerBlockOptions`]). Anything this engine does not implement
//! (block types, embedding types, activations, ...) is rejected naming the key, the value and
//! the supported values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// An option that diffusers accepts as one value for all blocks or a list with one per block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// `transformer_layers_per_block`: an int, one int per block, or (for asymmetric UNets such
/// as SDXL refiners) one list per block with a depth per resnet layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TransformerLayers {
    One(usize),
    PerBlock(Vec<OneOrMany<usize>>),
}

macro_rules! config_struct {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr ; $what:literal , )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// Every `__init__` parameter diffusers accepts for this class.
            pub const KEYS: &'static [&'static str] = &[ $( stringify!($field), )* ];

            /// Fills the struct from a JSON object whose keys were already checked, so that a
            /// bad value is reported with its key (serde's own error would not name it).
            fn from_map(file: &str, map: &serde_json::Map<String, Value>) -> Result<Self> {
                let mut c = Self::default();
                $(
                    if let Some(v) = map.get(stringify!($field)) {
                        c.$field = <$ty as Deserialize>::deserialize(v).map_err(|e| {
                            config_error(file, stringify!($field), $what, short_json(v),
                                format!("fix the value ({e})"))
                        })?;
                    }
                )*
                Ok(c)
            }
        }
    };
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

config_struct! {
    /// diffusers `UNet2DModel` (unconditional or class-conditional pixel-space UNet, DDPM).
    UNet2DConfig {
        sample_size: Option<OneOrMany<usize>> = None; "an integer, [height, width] or null",
        in_channels: usize = 3; "an integer",
        out_channels: usize = 3; "an integer",
        center_input_sample: bool = false; "true or false",
        time_embedding_type: String = "positional".into(); "a string",
        time_embedding_dim: Option<usize> = None; "an integer or null",
        freq_shift: f64 = 0.0; "a number",
        flip_sin_to_cos: bool = true; "true or false",
        down_block_types: Vec<String> = strs(&["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]); "a list of block type names",
        mid_block_type: Option<String> = Some("UNetMidBlock2D".into()); "a block type name or null",
        up_block_types: Vec<String> = strs(&["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]); "a list of block type names",
        block_out_channels: Vec<usize> = vec![224, 448, 672, 896]; "a list of integers",
        layers_per_block: usize = 2; "an integer",
        mid_block_scale_factor: f64 = 1.0; "a number",
        downsample_padding: usize = 1; "an integer",
        downsample_type: String = "conv".into(); "a string",
        upsample_type: String = "conv".into(); "a string",
        dropout: f64 = 0.0; "a number",
        act_fn: String = "silu".into(); "a string",
        attention_head_dim: Option<usize> = Some(8); "an integer or null",
        norm_num_groups: Option<usize> = Some(32); "an integer",
        attn_norm_num_groups: Option<usize> = None; "an integer or null",
        norm_eps: f64 = 1e-5; "a number",
        resnet_time_scale_shift: String = "default".into(); "a string",
        add_attention: bool = true; "true or false",
        class_embed_type: Option<String> = None; "a string or null",
        num_class_embeds: Option<usize> = None; "an integer or null",
        num_train_timesteps: Option<usize> = None; "an integer or null",
    }
}

config_struct! {
    /// diffusers `UNet2DConditionModel` (latent, text-conditioned UNet: Stable Diffusion).
    UNet2DConditionConfig {
        sample_size: Option<OneOrMany<usize>> = None; "an integer, [height, width] or null",
        in_channels: usize = 4; "an integer",
        out_channels: usize = 4; "an integer",
        center_input_sample: bool = false; "true or false",
        flip_sin_to_cos: bool = true; "true or false",
        freq_shift: f64 = 0.0; "a number",
        down_block_types: Vec<String> = strs(&["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]); "a list of block type names",
        mid_block_type: Option<String> = Some("UNetMidBlock2DCrossAttn".into()); "a block type name or null",
        up_block_types: Vec<String> = strs(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]); "a list of block type names",
        only_cross_attention: OneOrMany<bool> = OneOrMany::One(false); "true, false or a list of them",
        block_out_channels: Vec<usize> = vec![320, 640, 1280, 1280]; "a list of integers",
        layers_per_block: OneOrMany<usize> = OneOrMany::One(2); "an integer or a list of integers",
        downsample_padding: usize = 1; "an integer",
        mid_block_scale_factor: f64 = 1.0; "a number",
        dropout: f64 = 0.0; "a number",
        act_fn: String = "silu".into(); "a string",
        norm_num_groups: Option<usize> = Some(32); "an integer",
        norm_eps: f64 = 1e-5; "a number",
        cross_attention_dim: Option<OneOrMany<usize>> = Some(OneOrMany::One(1280)); "an integer or a list of integers",
        transformer_layers_per_block: TransformerLayers = TransformerLayers::One(1); "an integer, a list of integers, or a list of lists",
        reverse_transformer_layers_per_block: Option<Vec<OneOrMany<usize>>> = None; "null or a list of lists of integers",
        encoder_hid_dim: Option<usize> = None; "an integer or null",
        encoder_hid_dim_type: Option<String> = None; "a string or null",
        attention_head_dim: Option<OneOrMany<Option<usize>>> = Some(OneOrMany::One(Some(8))); "an integer or a list of integers",
        num_attention_heads: Option<OneOrMany<Option<usize>>> = None; "null",
        dual_cross_attention: bool = false; "true or false",
        use_linear_projection: bool = false; "true or false",
        class_embed_type: Option<String> = None; "a string or null",
        addition_embed_type: Option<String> = None; "a string or null",
        addition_time_embed_dim: Option<usize> = None; "an integer or null",
        num_class_embeds: Option<usize> = None; "an integer or null",
        upcast_attention: Option<bool> = Some(false); "true or false",
        resnet_time_scale_shift: String = "default".into(); "a string",
        resnet_skip_time_act: bool = false; "true or false",
        resnet_out_scale_factor: f64 = 1.0; "a number",
        time_embedding_type: String = "positional".into(); "a string",
        time_embedding_dim: Option<usize> = None; "an integer or null",
        time_embedding_act_fn: Option<String> = None; "a string or null",
        timestep_post_act: Option<String> = None; "a string or null",
        time_cond_proj_dim: Option<usize> = None; "an integer or null",
        conv_in_kernel: usize = 3; "an integer",
        conv_out_kernel: usize = 3; "an integer",
        projection_class_embeddings_input_dim: Option<usize> = None; "an integer or null",
        attention_type: String = "default".into(); "a string",
        class_embeddings_concat: bool = false; "true or false",
        mid_block_only_cross_attention: Option<bool> = None; "true, false or null",
        cross_attention_norm: Option<String> = None; "a string or null",
        addition_embed_type_num_heads: usize = 64; "an integer",
    }
}

/// Which diffusers class a config describes (its `_class_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UNetClass {
    UNet2DModel,
    UNet2DConditionModel,
}

impl UNetClass {
    pub fn name(self) -> &'static str {
        match self {
            UNetClass::UNet2DModel => "UNet2DModel",
            UNetClass::UNet2DConditionModel => "UNet2DConditionModel",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            UNetClass::UNet2DModel => UNet2DConfig::KEYS,
            UNetClass::UNet2DConditionModel => UNet2DConditionConfig::KEYS,
        }
    }
}

/// A parsed config of either class.
#[derive(Debug, Clone, PartialEq)]
pub enum UNetConfig {
    UNet2D(Box<UNet2DConfig>),
    UNet2DCondition(Box<UNet2DConditionConfig>),
}

/// A config file: the raw values and the architecture they describe.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub file: String,
    pub config: UNetConfig,
    pub arch: UNetArch,
}

impl ModelConfig {
    /// Parses and validates `config.json` text; `_class_name` selects the class.
    pub fn from_json(file: &str, text: &str) -> Result<Self> {
        let (class, map) = prepare(file, text, None)?;
        let (config, arch) = match class {
            UNetClass::UNet2DModel => {
                let c = UNet2DConfig::from_map(file, &map)?;
                let a = c.arch(file)?;
                (UNetConfig::UNet2D(Box::new(c)), a)
            }
            UNetClass::UNet2DConditionModel => {
                let c = UNet2DConditionConfig::from_map(file, &map)?;
                let a = c.arch(file)?;
                (UNetConfig::UNet2DCondition(Box::new(c)), a)
            }
        };
        Ok(Self {
            file: file.to_string(),
            config,
            arch,
        })
    }

    /// `sample_size` as (height, width): the resolution the model was trained at (an int
    /// means square; `None` when the config leaves it null).
    pub fn sample_size(&self) -> Option<(usize, usize)> {
        let s = match &self.config {
            UNetConfig::UNet2D(c) => c.sample_size.as_ref(),
            UNetConfig::UNet2DCondition(c) => c.sample_size.as_ref(),
        }?;
        match s {
            OneOrMany::One(n) => Some((*n, *n)),
            OneOrMany::Many(v) if v.len() == 2 => Some((v[0], v[1])),
            OneOrMany::Many(_) => None,
        }
    }

    /// Reads and parses a `config.json` file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            file: file.clone(),
            message: e.to_string(),
            hint: "point --model at a diffusers model folder holding config.json",
        })?;
        Self::from_json(&file, &text)
    }
}

impl UNet2DConfig {
    /// Parses `config.json` text that must describe a `UNet2DModel` (a missing `_class_name`
    /// is accepted).
    pub fn from_json(file: &str, text: &str) -> Result<Self> {
        let (_, map) = prepare(file, text, Some(UNetClass::UNet2DModel))?;
        let c = Self::from_map(file, &map)?;
        c.arch(file)?;
        Ok(c)
    }
}

impl UNet2DConditionConfig {
    /// Parses `config.json` text that must describe a `UNet2DConditionModel` (a missing
    /// `_class_name` is accepted).
    pub fn from_json(file: &str, text: &str) -> Result<Self> {
        let (_, map) = prepare(file, text, Some(UNetClass::UNet2DConditionModel))?;
        let c = Self::from_map(file, &map)?;
        c.arch(file)?;
        Ok(c)
    }
}

pub(crate) fn config_error(
    file: &str,
    key: &str,
    expected: impl Into<String>,
    got: impl Into<String>,
    hint: impl Into<String>,
) -> Error {
    Error::Config {
        file: file.to_string(),
        key: key.to_string(),
        expected: expected.into(),
        got: got.into(),
        hint: hint.into(),
    }
}

fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// A config value as JSON, for messages.
fn js<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".into())
}

fn one_of(values: &[&str]) -> String {
    format!("one of {}", values.join(", "))
}

/// Keys that are not `__init__` parameters but that diffusers itself handles before (or
/// instead of) building the model. Everything with a leading `_` is removed by
/// `extract_init_dict` before the constructor sees it, so it cannot change the computation;
/// the names diffusers writes are listed to document that.
pub const KNOWN_PRIVATE_KEYS: &[&str] = &[
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "_use_default_values",
    "_commit_hash",
];

/// Parses the JSON, picks the class, applies `_use_default_values` and rejects unknown keys.
fn prepare(
    file: &str,
    text: &str,
    want: Option<UNetClass>,
) -> Result<(UNetClass, serde_json::Map<String, Value>)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        config_error(
            file,
            "(file)",
            "a JSON object",
            format!("invalid JSON: {e}"),
            "the file is not valid JSON; download it again",
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(config_error(
            file,
            "(file)",
            "a JSON object",
            short_json(&value),
            "config.json must be a JSON object of model parameters",
        ));
    };
    let supported = [
        UNetClass::UNet2DModel.name(),
        UNetClass::UNet2DConditionModel.name(),
    ];
    let class = match (map.get("_class_name"), want) {
        (Some(Value::String(s)), _) => {
            let c = match s.as_str() {
                "UNet2DModel" => UNetClass::UNet2DModel,
                "UNet2DConditionModel" => UNetClass::UNet2DConditionModel,
                _ => {
                    return Err(config_error(
                        file,
                        "_class_name",
                        one_of(&supported),
                        format!("{s:?}"),
                        "only these diffusers denoisers are supported (a pipeline's UNet config is in its unet/ folder)",
                    ))
                }
            };
            if let Some(w) = want {
                if w != c {
                    return Err(config_error(
                        file,
                        "_class_name",
                        format!("{:?}", w.name()),
                        format!("{s:?}"),
                        "this config describes another model class",
                    ));
                }
            }
            c
        }
        (None, Some(w)) => w,
        (other, _) => {
            return Err(config_error(
                file,
                "_class_name",
                one_of(&supported),
                other.map_or("no `_class_name`".into(), short_json),
                "config.json must name its diffusers class in `_class_name`",
            ))
        }
    };

    // diffusers saves which values were defaults at save time; on load it drops them so the
    // current defaults apply (configuration_utils.py, extract_init_dict).
    if let Some(used) = map.remove("_use_default_values") {
        let Some(list) = used.as_array() else {
            return Err(config_error(
                file,
                "_use_default_values",
                "a list of key names",
                short_json(&used),
                "fix or remove `_use_default_values`",
            ));
        };
        for k in list {
            let Some(k) = k.as_str() else {
                return Err(config_error(
                    file,
                    "_use_default_values",
                    "a list of key names",
                    short_json(&used),
                    "fix or remove `_use_default_values`",
                ));
            };
            map.remove(k);
        }
    }

    let keys = class.keys();
    let mut unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with('_') && !keys.contains(k))
        .collect();
    unknown.sort_unstable();
    if let Some(first) = unknown.first() {
        let others = if unknown.len() > 1 {
            format!(" (other unknown keys: {})", unknown[1..].join(", "))
        } else {
            String::new()
        };
        let hint = if *first == "quantization_config" {
            "quantized weights are not supported; use an unquantized float32/float16 model"
                .to_string()
        } else {
            format!(
                "not a {} parameter in diffusers 0.40{others}; an unknown option may change the computation, so it is refused; remove it if you know it is harmless",
                class.name()
            )
        };
        return Err(config_error(
            file,
            first,
            format!("a {} parameter", class.name()),
            format!("an unknown key (value {})", short_json(&map[*first])),
            hint,
        ));
    }
    Ok((class, map))
}

// ---------------------------------------------------------------------------------------
// The normalised architecture.

/// The nonlinearity of resnets and the time MLP. diffusers' `get_activation` maps both
/// "silu" and "swish" to `nn.SiLU`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
}

/// `resnet_time_scale_shift`: how a resnet applies the time embedding after `norm2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeScaleShift {
    /// `h + proj(emb)` before `norm2` (`time_emb_proj` outputs `out_channels`).
    Default,
    /// `norm2(h) * (1 + scale) + shift` (`time_emb_proj` outputs `2 * out_channels`).
    ScaleShift,
}

/// One `ResnetBlock2D`; it has a 1×1 `conv_shortcut` iff `in_channels != out_channels`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResnetSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub output_scale_factor: f64,
}

/// One diffusers `Attention` built with `_from_deprecated_attn_block=True` (group norm,
/// q/k/v/out with bias, residual, `rescale_output_factor`); `heads * head_dim` is its inner
/// width, which diffusers lets differ from `channels` when the division is not exact.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionSpec {
    pub channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// `None`: no group norm before q/k/v.
    pub norm_groups: Option<usize>,
    pub eps: f64,
    pub rescale_output_factor: f64,
}

/// One `Transformer2DModel` (group norm, proj_in, `depth` BasicTransformerBlocks with
/// self-attention, cross-attention and GEGLU feed-forward, proj_out, residual).
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerSpec {
    pub channels: usize,
    pub heads: usize,
    /// `channels / heads` (floor, as diffusers).
    pub head_dim: usize,
    pub depth: usize,
    pub cross_attention_dim: usize,
    pub norm_groups: usize,
    /// Linear instead of 1×1 conv proj_in/proj_out.
    pub use_linear_projection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownKind {
    DownBlock2D,
    AttnDownBlock2D,
    CrossAttnDownBlock2D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpKind {
    UpBlock2D,
    AttnUpBlock2D,
    CrossAttnUpBlock2D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidKind {
    /// Resnet, then `attentions.len()` × (attention, resnet).
    UNetMidBlock2D,
    /// Resnet, then `transformers.len()` × (transformer, resnet).
    UNetMidBlock2DCrossAttn,
}

/// A down block: `resnets[i]` then (if any) `attentions[i]` / `transformers[i]`, each output
/// a skip; then the optional downsampler (3×3 conv, stride 2, `padding`; with padding 0
/// diffusers pads right and bottom by one first), whose output is a skip too.
#[derive(Debug, Clone, PartialEq)]
pub struct DownBlockSpec {
    pub kind: DownKind,
    pub in_channels: usize,
    pub out_channels: usize,
    pub resnets: Vec<ResnetSpec>,
    pub attentions: Vec<AttentionSpec>,
    pub transformers: Vec<TransformerSpec>,
    /// `Some(padding)` when the block downsamples.
    pub downsample_padding: Option<usize>,
}

/// An up block: for each resnet, concatenate the next skip (popped from the end), run
/// `resnets[i]` (whose `in_channels` includes the skip) and the attention/transformer;
/// then the optional upsampler (nearest ×2, 3×3 conv).
#[derive(Debug, Clone, PartialEq)]
pub struct UpBlockSpec {
    pub kind: UpKind,
    pub prev_output_channels: usize,
    pub out_channels: usize,
    /// Channels of the skip each resnet concatenates.
    pub skip_channels: Vec<usize>,
    pub resnets: Vec<ResnetSpec>,
    pub attentions: Vec<AttentionSpec>,
    pub transformers: Vec<TransformerSpec>,
    pub upsample: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MidBlockSpec {
    pub kind: MidKind,
    pub channels: usize,
    pub resnets: Vec<ResnetSpec>,
    pub attentions: Vec<AttentionSpec>,
    pub transformers: Vec<TransformerSpec>,
}

/// The int-or-list options of `UNet2DConditionModel`, normalised to one entry per down block
/// exactly as its `__init__` does. Up blocks read them reversed, except — a diffusers quirk
/// kept here — `attention_head_dim`, which `AttnUpBlock2D` reads unreversed. Another quirk:
/// `num_attention_heads` defaults to `attention_head_dim`, whose value is the head *count* of
/// cross-attention blocks (the name predates the fix; diffusers#2011). For `UNet2DModel` the
/// scalar options are repeated.
#[derive(Debug, Clone, PartialEq)]
pub struct PerBlockOptions {
    pub layers_per_block: Vec<usize>,
    pub attention_head_dim: Vec<Option<usize>>,
    pub num_attention_heads: Vec<Option<usize>>,
    pub cross_attention_dim: Vec<Option<usize>>,
    /// Transformer depth per resnet of each down block.
    pub transformer_layers_per_block: Vec<Vec<usize>>,
    pub only_cross_attention: Vec<bool>,
}

/// A validated UNet architecture, ready to be wired.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetArch {
    pub class: UNetClass,
    pub in_channels: usize,
    pub out_channels: usize,
    /// `sample = 2 * sample - 1` first.
    pub center_input_sample: bool,
    /// `conv_in` kernel (padding `(k - 1) / 2`), 3 unless configured.
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    /// Sinusoidal projection width (`block_out_channels[0]`), `flip_sin_to_cos`,
    /// `downscale_freq_shift`.
    pub time_proj_dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    /// `TimestepEmbedding`: linear(time_proj_dim → time_embed_dim), act, linear.
    pub time_embed_dim: usize,
    /// `time_cond_proj_dim` (LCM-distilled UNets): `TimestepEmbedding.cond_proj`, a linear
    /// (time_cond_proj_dim → time_proj_dim, no bias) of the guidance-scale embedding added to
    /// the sinusoidal features before `linear_1`. Always `None` for `UNet2DModel`.
    pub time_cond_proj_dim: Option<usize>,
    /// `nn.Embedding(n, time_embed_dim)` added to the time embedding.
    pub num_class_embeds: Option<usize>,
    pub act: Activation,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: TimeScaleShift,
    pub block_out_channels: Vec<usize>,
    pub per_block: PerBlockOptions,
    pub down_blocks: Vec<DownBlockSpec>,
    pub mid_block: Option<MidBlockSpec>,
    pub up_blocks: Vec<UpBlockSpec>,
    /// Cross-attention width of the encoder hidden states, if any block attends to them.
    pub cross_attention_dim: Option<usize>,
}

const DOWN_2D: &[&str] = &["DownBlock2D", "AttnDownBlock2D"];
const UP_2D: &[&str] = &["UpBlock2D", "AttnUpBlock2D"];
const DOWN_COND: &[&str] = &["DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D"];
const UP_COND: &[&str] = &["UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D"];
/// Block types diffusers' `get_down_block`/`get_up_block` know (for a clearer message).
const DIFFUSERS_BLOCKS: &[&str] = &[
    "DownBlock2D",
    "ResnetDownsampleBlock2D",
    "AttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "SimpleCrossAttnDownBlock2D",
    "SkipDownBlock2D",
    "AttnSkipDownBlock2D",
    "DownEncoderBlock2D",
    "AttnDownEncoderBlock2D",
    "KDownBlock2D",
    "KCrossAttnDownBlock2D",
    "UpBlock2D",
    "ResnetUpsampleBlock2D",
    "CrossAttnUpBlock2D",
    "SimpleCrossAttnUpBlock2D",
    "AttnUpBlock2D",
    "SkipUpBlock2D",
    "AttnSkipUpBlock2D",
    "UpDecoderBlock2D",
    "AttnUpDecoderBlock2D",
    "KUpBlock2D",
    "KCrossAttnUpBlock2D",
    "UNetMidBlock2D",
    "UNetMidBlock2DCrossAttn",
    "UNetMidBlock2DSimpleCrossAttn",
];

fn unsupported_hint(value: &str) -> String {
    if DIFFUSERS_BLOCKS.contains(&value) {
        format!("{value} is a diffusers block this engine does not implement")
    } else {
        format!("{value} is not a diffusers block type")
    }
}

/// `get_down_block`/`get_up_block` strip a `UNetRes` prefix.
fn strip_unetres(s: &str) -> &str {
    s.strip_prefix("UNetRes").unwrap_or(s)
}

fn parse_down(file: &str, i: usize, name: &str, allowed: &[&str]) -> Result<DownKind> {
    let n = strip_unetres(name);
    let kind = match n {
        "DownBlock2D" => Some(DownKind::DownBlock2D),
        "AttnDownBlock2D" => Some(DownKind::AttnDownBlock2D),
        "CrossAttnDownBlock2D" => Some(DownKind::CrossAttnDownBlock2D),
        _ => None,
    };
    match kind {
        Some(k) if allowed.contains(&n) => Ok(k),
        _ => Err(config_error(
            file,
            &format!("down_block_types[{i}]"),
            one_of(allowed),
            format!("{name:?}"),
            unsupported_hint(n),
        )),
    }
}

fn parse_up(file: &str, i: usize, name: &str, allowed: &[&str]) -> Result<UpKind> {
    let n = strip_unetres(name);
    let kind = match n {
        "UpBlock2D" => Some(UpKind::UpBlock2D),
        "AttnUpBlock2D" => Some(UpKind::AttnUpBlock2D),
        "CrossAttnUpBlock2D" => Some(UpKind::CrossAttnUpBlock2D),
        _ => None,
    };
    match kind {
        Some(k) if allowed.contains(&n) => Ok(k),
        _ => Err(config_error(
            file,
            &format!("up_block_types[{i}]"),
            one_of(allowed),
            format!("{name:?}"),
            unsupported_hint(n),
        )),
    }
}

fn require(file: &str, key: &str, ok: bool, expected: &str, got: String, hint: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(config_error(file, key, expected, got, hint))
    }
}

const HINT_UNSUPPORTED: &str = "this option is not implemented by this engine";

fn parse_act(file: &str, act_fn: &str) -> Result<Activation> {
    match act_fn {
        "silu" | "swish" => Ok(Activation::Silu),
        other => Err(config_error(
            file,
            "act_fn",
            one_of(&["\"silu\"", "\"swish\""]),
            format!("{other:?}"),
            HINT_UNSUPPORTED,
        )),
    }
}

fn parse_shift(file: &str, s: &str) -> Result<TimeScaleShift> {
    match s {
        "default" => Ok(TimeScaleShift::Default),
        "scale_shift" => Ok(TimeScaleShift::ScaleShift),
        other => Err(config_error(
            file,
            "resnet_time_scale_shift",
            one_of(&["\"default\"", "\"scale_shift\""]),
            format!("{other:?}"),
            HINT_UNSUPPORTED,
        )),
    }
}

/// Upper bounds far above any real model that keep absurd values (which would make the
/// block loops allocate without end or overflow channel sums) out.
const MAX_CHANNELS: usize = 1 << 20;
const MAX_LAYERS: usize = 64;
const MAX_DEPTH: usize = 256;
const MAX_BLOCKS: usize = 16;

fn check_range(file: &str, key: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
    require(
        file,
        key,
        (lo..=hi).contains(&v),
        &format!("an integer from {lo} to {hi}"),
        v.to_string(),
        "fix the value",
    )
}

/// A channel-like count: 1 to [`MAX_CHANNELS`].
fn check_positive(file: &str, key: &str, v: usize) -> Result<()> {
    check_range(file, key, v, 1, MAX_CHANNELS)
}

fn check_eps(file: &str, v: f64) -> Result<()> {
    require(
        file,
        "norm_eps",
        v.is_finite() && v > 0.0,
        "a positive number",
        v.to_string(),
        "fix the value",
    )
}

/// Shared checks of the block lists (diffusers' `_check_config` and its UNet2DModel twin).
fn check_block_lists(
    file: &str,
    down: &[String],
    up: &[String],
    block_out_channels: &[usize],
) -> Result<()> {
    require(
        file,
        "down_block_types",
        !down.is_empty(),
        "at least one block",
        "[]".into(),
        "fix the value",
    )?;
    require(
        file,
        "down_block_types",
        down.len() <= MAX_BLOCKS,
        &format!("at most {MAX_BLOCKS} blocks"),
        down.len().to_string(),
        "fix the value",
    )?;
    require(
        file,
        "up_block_types",
        up.len() == down.len(),
        &format!("{} entries, as many as down_block_types", down.len()),
        up.len().to_string(),
        "diffusers rejects this config too",
    )?;
    require(
        file,
        "block_out_channels",
        block_out_channels.len() == down.len(),
        &format!("{} entries, as many as down_block_types", down.len()),
        block_out_channels.len().to_string(),
        "diffusers rejects this config too",
    )?;
    for (i, &c) in block_out_channels.iter().enumerate() {
        check_positive(file, &format!("block_out_channels[{i}]"), c)?;
    }
    Ok(())
}

/// Expands an int-or-list option to one entry per block (a list must have one per block).
fn per_block<T: Clone + std::fmt::Debug>(
    file: &str,
    key: &str,
    v: &OneOrMany<T>,
    n: usize,
) -> Result<Vec<T>> {
    match v {
        OneOrMany::One(x) => Ok(vec![x.clone(); n]),
        OneOrMany::Many(xs) if xs.len() == n => Ok(xs.clone()),
        OneOrMany::Many(xs) => Err(config_error(
            file,
            key,
            format!("one value or a list of {n}, one per down block"),
            format!("a list of {}", xs.len()),
            "diffusers rejects this config too",
        )),
    }
}

/// Context for building blocks: the checks every block needs.
struct Builder<'a> {
    file: &'a str,
    groups: usize,
    eps: f64,
}

impl Builder<'_> {
    fn check_groups(&self, key: &str, groups: usize, channels: usize, what: &str) -> Result<()> {
        require(
            self.file,
            key,
            groups > 0 && channels.is_multiple_of(groups),
            &format!("a group count dividing {channels} (the channels of {what})"),
            groups.to_string(),
            "torch.nn.GroupNorm needs channels divisible by groups; diffusers rejects this config too",
        )
    }

    fn resnet(&self, what: &str, cin: usize, cout: usize, scale: f64) -> Result<ResnetSpec> {
        self.check_groups(
            "norm_num_groups",
            self.groups,
            cin,
            &format!("{what} norm1"),
        )?;
        self.check_groups(
            "norm_num_groups",
            self.groups,
            cout,
            &format!("{what} norm2"),
        )?;
        Ok(ResnetSpec {
            in_channels: cin,
            out_channels: cout,
            output_scale_factor: scale,
        })
    }

    /// `Attention(channels, heads=channels // head_dim, dim_head=head_dim)`.
    fn attention(
        &self,
        key: &str,
        what: &str,
        channels: usize,
        head_dim: usize,
        norm_groups: Option<usize>,
        rescale: f64,
    ) -> Result<AttentionSpec> {
        let heads = channels.checked_div(head_dim).unwrap_or(0);
        require(
            self.file,
            key,
            heads > 0,
            &format!("a head dimension between 1 and {channels} (the channels of {what})"),
            head_dim.to_string(),
            "diffusers would build an attention with no heads",
        )?;
        if let Some(g) = norm_groups {
            self.check_groups(key, g, channels, &format!("{what} group_norm"))?;
        }
        Ok(AttentionSpec {
            channels,
            heads,
            head_dim,
            norm_groups,
            eps: self.eps,
            rescale_output_factor: rescale,
        })
    }

    /// `Transformer2DModel(heads, channels // heads, in_channels=channels, ...)`.
    fn transformer(
        &self,
        what: &str,
        channels: usize,
        heads: Option<usize>,
        depth: usize,
        cross_attention_dim: Option<usize>,
        use_linear_projection: bool,
    ) -> Result<TransformerSpec> {
        let heads = heads.unwrap_or(0);
        require(
            self.file,
            "attention_head_dim",
            heads > 0 && heads <= channels,
            &format!(
                "a head count between 1 and {channels} for {what} (in UNet2DConditionModel configs `attention_head_dim` is the number of heads)"
            ),
            heads.to_string(),
            "fix the value",
        )?;
        let Some(cross) = cross_attention_dim else {
            return Err(config_error(
                self.file,
                "cross_attention_dim",
                format!("an integer for {what}"),
                "null",
                "cross-attention blocks need the width of encoder_hidden_states",
            ));
        };
        check_positive(self.file, "cross_attention_dim", cross)?;
        check_range(
            self.file,
            "transformer_layers_per_block",
            depth,
            1,
            MAX_DEPTH,
        )?;
        self.check_groups(
            "norm_num_groups",
            self.groups,
            channels,
            &format!("{what} norm"),
        )?;
        Ok(TransformerSpec {
            channels,
            heads,
            head_dim: channels / heads,
            depth,
            cross_attention_dim: cross,
            norm_groups: self.groups,
            use_linear_projection,
        })
    }
}

/// Simulates diffusers' skip stack: conv_in, then each down resnet and downsampler push
/// their output; each up resnet pops one. A mismatch means torch would fail at `cat`.
fn check_skips(file: &str, down: &[DownBlockSpec], up: &[UpBlockSpec], c0: usize) -> Result<()> {
    let mut stack = vec![c0];
    for b in down {
        for r in &b.resnets {
            stack.push(r.out_channels);
        }
        if b.downsample_padding.is_some() {
            stack.push(b.out_channels);
        }
    }
    for (i, b) in up.iter().enumerate() {
        for (j, &want) in b.skip_channels.iter().enumerate() {
            let got = stack.pop();
            if got != Some(want) {
                return Err(config_error(
                    file,
                    "layers_per_block",
                    format!(
                        "a skip connection of {want} channels for up block {i} resnet {j}"
                    ),
                    got.map_or("none left".into(), |g| format!("{g} channels")),
                    "the down and up blocks do not pair up; diffusers fails on this config at run time",
                ));
            }
        }
    }
    if !stack.is_empty() {
        return Err(config_error(
            file,
            "layers_per_block",
            "every down-block output consumed by an up block",
            format!("{} left over", stack.len()),
            "the down and up blocks do not pair up",
        ));
    }
    Ok(())
}

/// Up-block channel plan shared by both classes (`UpBlock2D.__init__` and twins).
fn up_resnets(
    b: &Builder,
    i: usize,
    layers: usize,
    prev: usize,
    cin: usize,
    cout: usize,
) -> Result<(Vec<ResnetSpec>, Vec<usize>)> {
    let mut resnets = Vec::with_capacity(layers);
    let mut skips = Vec::with_capacity(layers);
    for j in 0..layers {
        let skip = if j == layers - 1 { cin } else { cout };
        let rin = if j == 0 { prev } else { cout };
        resnets.push(b.resnet(&format!("up block {i} resnet {j}"), rin + skip, cout, 1.0)?);
        skips.push(skip);
    }
    Ok((resnets, skips))
}

impl UNet2DConfig {
    /// Validates the config and resolves the architecture (`UNet2DModel.__init__`).
    pub fn arch(&self, file: &str) -> Result<UNetArch> {
        let n = self.down_block_types.len();
        check_block_lists(
            file,
            &self.down_block_types,
            &self.up_block_types,
            &self.block_out_channels,
        )?;
        check_positive(file, "in_channels", self.in_channels)?;
        check_positive(file, "out_channels", self.out_channels)?;
        check_range(
            file,
            "layers_per_block",
            self.layers_per_block,
            1,
            MAX_LAYERS,
        )?;
        check_range(file, "downsample_padding", self.downsample_padding, 0, 64)?;
        check_eps(file, self.norm_eps)?;
        require(
            file,
            "time_embedding_type",
            self.time_embedding_type == "positional",
            "\"positional\"",
            js(&self.time_embedding_type),
            HINT_UNSUPPORTED,
        )?;
        require(
            file,
            "class_embed_type",
            self.class_embed_type.is_none(),
            "null (class labels through `num_class_embeds`)",
            js(&self.class_embed_type),
            HINT_UNSUPPORTED,
        )?;
        let act = parse_act(file, &self.act_fn)?;
        let shift = parse_shift(file, &self.resnet_time_scale_shift)?;
        let Some(groups) = self.norm_num_groups else {
            return Err(config_error(
                file,
                "norm_num_groups",
                "an integer",
                "null",
                HINT_UNSUPPORTED,
            ));
        };
        if let Some(d) = self.attn_norm_num_groups {
            check_positive(file, "attn_norm_num_groups", d)?;
        }
        let c = &self.block_out_channels;
        let b = Builder {
            file,
            groups,
            eps: self.norm_eps,
        };
        b.check_groups("norm_num_groups", groups, c[0], "conv_norm_out")?;
        let time_embed_dim = self.time_embedding_dim.unwrap_or(c[0] * 4);
        check_range(
            file,
            "time_embedding_dim",
            time_embed_dim,
            1,
            4 * MAX_CHANNELS,
        )?;
        if let Some(k) = self.num_class_embeds {
            check_range(file, "num_class_embeds", k, 1, 1 << 24)?;
        }

        let mut down = Vec::with_capacity(n);
        let mut out = c[0];
        for (i, name) in self.down_block_types.iter().enumerate() {
            let kind = parse_down(file, i, name, DOWN_2D)?;
            let cin = out;
            out = c[i];
            let last = i == n - 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..self.layers_per_block {
                let rin = if j == 0 { cin } else { out };
                resnets.push(b.resnet(&format!("down block {i} resnet {j}"), rin, out, 1.0)?);
                if kind == DownKind::AttnDownBlock2D {
                    attentions.push(b.attention(
                        "attention_head_dim",
                        &format!("down block {i} attention {j}"),
                        out,
                        self.attention_head_dim.unwrap_or(out),
                        Some(groups),
                        1.0,
                    )?);
                }
            }
            if kind == DownKind::AttnDownBlock2D && !last {
                require(
                    file,
                    "downsample_type",
                    self.downsample_type == "conv",
                    "\"conv\"",
                    js(&self.downsample_type),
                    HINT_UNSUPPORTED,
                )?;
            }
            down.push(DownBlockSpec {
                kind,
                in_channels: cin,
                out_channels: out,
                resnets,
                attentions,
                transformers: Vec::new(),
                downsample_padding: (!last).then_some(self.downsample_padding),
            });
        }

        let mid = match self.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2D") => {
                let ch = c[n - 1];
                let s = self.mid_block_scale_factor;
                let mut resnets = vec![b.resnet("mid block resnet 0", ch, ch, s)?];
                let mut attentions = Vec::new();
                if self.add_attention {
                    // UNetMidBlock2D: without an explicit attn_norm_num_groups the attention
                    // has a group norm only with the default time scale shift.
                    let norm = self.attn_norm_num_groups.or(match shift {
                        TimeScaleShift::Default => Some(groups),
                        TimeScaleShift::ScaleShift => None,
                    });
                    attentions.push(b.attention(
                        "attention_head_dim",
                        "mid block attention",
                        ch,
                        self.attention_head_dim.unwrap_or(ch),
                        norm,
                        s,
                    )?);
                }
                resnets.push(b.resnet("mid block resnet 1", ch, ch, s)?);
                Some(MidBlockSpec {
                    kind: MidKind::UNetMidBlock2D,
                    channels: ch,
                    resnets,
                    attentions,
                    transformers: Vec::new(),
                })
            }
            Some(other) => {
                return Err(config_error(
                    file,
                    "mid_block_type",
                    "\"UNetMidBlock2D\" or null",
                    format!("{other:?}"),
                    unsupported_hint(other),
                ))
            }
        };

        let rev: Vec<usize> = c.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut out = rev[0];
        for (i, name) in self.up_block_types.iter().enumerate() {
            let kind = parse_up(file, i, name, UP_2D)?;
            let prev = out;
            out = rev[i];
            let cin = rev[(i + 1).min(n - 1)];
            let last = i == n - 1;
            let layers = self.layers_per_block + 1;
            let (resnets, skip_channels) = up_resnets(&b, i, layers, prev, cin, out)?;
            let mut attentions = Vec::new();
            if kind == UpKind::AttnUpBlock2D {
                for j in 0..layers {
                    attentions.push(b.attention(
                        "attention_head_dim",
                        &format!("up block {i} attention {j}"),
                        out,
                        self.attention_head_dim.unwrap_or(out),
                        Some(groups),
                        1.0,
                    )?);
                }
                if !last {
                    require(
                        file,
                        "upsample_type",
                        self.upsample_type == "conv",
                        "\"conv\"",
                        js(&self.upsample_type),
                        HINT_UNSUPPORTED,
                    )?;
                }
            }
            up.push(UpBlockSpec {
                kind,
                prev_output_channels: prev,
                out_channels: out,
                skip_channels,
                resnets,
                attentions,
                transformers: Vec::new(),
                upsample: !last,
            });
        }
        check_skips(file, &down, &up, c[0])?;

        Ok(UNetArch {
            class: UNetClass::UNet2DModel,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            center_input_sample: self.center_input_sample,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            time_proj_dim: c[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            time_embed_dim,
            time_cond_proj_dim: None,
            num_class_embeds: self.num_class_embeds,
            act,
            norm_num_groups: groups,
            norm_eps: self.norm_eps,
            resnet_time_scale_shift: shift,
            block_out_channels: c.clone(),
            per_block: PerBlockOptions {
                layers_per_block: vec![self.layers_per_block; n],
                attention_head_dim: vec![self.attention_head_dim; n],
                num_attention_heads: vec![None; n],
                cross_attention_dim: vec![None; n],
                transformer_layers_per_block: vec![Vec::new(); n],
                only_cross_attention: vec![false; n],
            },
            down_blocks: down,
            mid_block: mid,
            up_blocks: up,
            cross_attention_dim: None,
        })
    }
}

impl UNet2DConditionConfig {
    /// Validates the config and resolves the architecture (`UNet2DConditionModel.__init__`).
    pub fn arch(&self, file: &str) -> Result<UNetArch> {
        let n = self.down_block_types.len();
        check_block_lists(
            file,
            &self.down_block_types,
            &self.up_block_types,
            &self.block_out_channels,
        )?;
        check_positive(file, "in_channels", self.in_channels)?;
        check_positive(file, "out_channels", self.out_channels)?;
        check_eps(file, self.norm_eps)?;
        check_range(file, "downsample_padding", self.downsample_padding, 0, 64)?;
        for (key, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            require(
                file,
                key,
                k % 2 == 1 && k <= 31,
                "an odd kernel size up to 31 (diffusers pads by (k - 1) / 2, so an even one changes the output size)",
                k.to_string(),
                HINT_UNSUPPORTED,
            )?;
        }

        // Options whose non-default values change the computation in ways not implemented:
        // (key, value is the supported one, what is supported, the value found).
        let unsupported = [
            (
                "time_embedding_type",
                self.time_embedding_type == "positional",
                "\"positional\"",
                js(&self.time_embedding_type),
            ),
            (
                "class_embed_type",
                self.class_embed_type.is_none(),
                "null (class labels through `num_class_embeds`)",
                js(&self.class_embed_type),
            ),
            (
                "addition_embed_type",
                self.addition_embed_type.is_none(),
                "null",
                js(&self.addition_embed_type),
            ),
            (
                "encoder_hid_dim_type",
                self.encoder_hid_dim_type.is_none(),
                "null",
                js(&self.encoder_hid_dim_type),
            ),
            (
                "encoder_hid_dim",
                self.encoder_hid_dim.is_none(),
                "null (no projection of encoder_hidden_states)",
                js(&self.encoder_hid_dim),
            ),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_none(),
                "null",
                js(&self.time_embedding_act_fn),
            ),
            (
                "timestep_post_act",
                self.timestep_post_act.is_none(),
                "null",
                js(&self.timestep_post_act),
            ),
            (
                "class_embeddings_concat",
                !self.class_embeddings_concat,
                "false",
                "true".into(),
            ),
            (
                "dual_cross_attention",
                !self.dual_cross_attention,
                "false",
                "true".into(),
            ),
            (
                "attention_type",
                self.attention_type == "default",
                "\"default\"",
                js(&self.attention_type),
            ),
        ];
        for (key, ok, expected, got) in unsupported {
            require(file, key, ok, expected, got, HINT_UNSUPPORTED)?;
        }
        require(
            file,
            "num_attention_heads",
            self.num_attention_heads.is_none(),
            "null",
            js(&self.num_attention_heads),
            "diffusers refuses `num_attention_heads` for UNet2DConditionModel too (diffusers#2011); the head count goes in `attention_head_dim`",
        )?;
        let act = parse_act(file, &self.act_fn)?;
        let shift = parse_shift(file, &self.resnet_time_scale_shift)?;
        let Some(groups) = self.norm_num_groups else {
            return Err(config_error(
                file,
                "norm_num_groups",
                "an integer",
                "null",
                HINT_UNSUPPORTED,
            ));
        };
        let Some(head_opt) = &self.attention_head_dim else {
            return Err(config_error(
                file,
                "attention_head_dim",
                "an integer or a list of integers",
                "null",
                "diffusers rejects this config too",
            ));
        };

        // Normalisation, in UNet2DConditionModel.__init__'s order.
        let attention_head_dim = per_block(file, "attention_head_dim", head_opt, n)?;
        let num_attention_heads = attention_head_dim.clone();
        let layers_per_block = per_block(file, "layers_per_block", &self.layers_per_block, n)?;
        for (i, &l) in layers_per_block.iter().enumerate() {
            check_range(file, &format!("layers_per_block[{i}]"), l, 1, MAX_LAYERS)?;
        }
        let only_cross_attention =
            per_block(file, "only_cross_attention", &self.only_cross_attention, n)?;
        let cross_attention_dim: Vec<Option<usize>> = match &self.cross_attention_dim {
            None => vec![None; n],
            Some(v) => per_block(file, "cross_attention_dim", v, n)?
                .into_iter()
                .map(Some)
                .collect(),
        };
        let tl_raw: Vec<OneOrMany<usize>> = match &self.transformer_layers_per_block {
            TransformerLayers::One(k) => vec![OneOrMany::One(*k); n],
            TransformerLayers::PerBlock(v) if v.len() == n => v.clone(),
            TransformerLayers::PerBlock(v) => {
                return Err(config_error(
                    file,
                    "transformer_layers_per_block",
                    format!("one value or a list of {n}, one per down block"),
                    format!("a list of {}", v.len()),
                    "fix the value",
                ))
            }
        };
        let asymmetric = tl_raw.iter().any(|x| matches!(x, OneOrMany::Many(_)));
        if asymmetric && self.reverse_transformer_layers_per_block.is_none() {
            return Err(config_error(
                file,
                "reverse_transformer_layers_per_block",
                "a list of lists (required when transformer_layers_per_block holds lists)",
                "null",
                "diffusers rejects this config too",
            ));
        }
        // CrossAttn*Block2D: an int depth applies to every resnet layer of the block; a list
        // gives one per layer (entries past the layer count are unused, as in diffusers).
        let expand = |key: &str, v: &OneOrMany<usize>, layers: usize| -> Result<Vec<usize>> {
            match v {
                OneOrMany::One(k) => Ok(vec![*k; layers]),
                OneOrMany::Many(ks) if ks.len() >= layers => Ok(ks[..layers].to_vec()),
                OneOrMany::Many(ks) => Err(config_error(
                    file,
                    key,
                    format!("at least {layers} depths, one per resnet layer"),
                    format!("{ks:?}"),
                    "diffusers fails on this config too",
                )),
            }
        };
        let mut transformer_layers_per_block = Vec::with_capacity(n);
        for (i, v) in tl_raw.iter().enumerate() {
            transformer_layers_per_block.push(expand(
                "transformer_layers_per_block",
                v,
                layers_per_block[i],
            )?);
        }
        if only_cross_attention.iter().any(|&b| b) {
            return Err(config_error(
                file,
                "only_cross_attention",
                "false",
                js(&self.only_cross_attention),
                HINT_UNSUPPORTED,
            ));
        }

        let c = &self.block_out_channels;
        let b = Builder {
            file,
            groups,
            eps: self.norm_eps,
        };
        b.check_groups("norm_num_groups", groups, c[0], "conv_norm_out")?;
        let time_embed_dim = self.time_embedding_dim.unwrap_or(c[0] * 4);
        check_range(
            file,
            "time_embedding_dim",
            time_embed_dim,
            1,
            4 * MAX_CHANNELS,
        )?;
        if let Some(k) = self.num_class_embeds {
            check_range(file, "num_class_embeds", k, 1, 1 << 24)?;
        }
        if let Some(d) = self.time_cond_proj_dim {
            check_positive(file, "time_cond_proj_dim", d)?;
        }

        let mut down = Vec::with_capacity(n);
        let mut out = c[0];
        for (i, name) in self.down_block_types.iter().enumerate() {
            let kind = parse_down(file, i, name, DOWN_COND)?;
            let cin = out;
            out = c[i];
            let last = i == n - 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            let mut transformers = Vec::new();
            // One transformer depth per resnet layer (expanded above).
            for (j, &depth) in transformer_layers_per_block[i].iter().enumerate() {
                let rin = if j == 0 { cin } else { out };
                resnets.push(b.resnet(&format!("down block {i} resnet {j}"), rin, out, 1.0)?);
                let what = format!("down block {i} attention {j}");
                match kind {
                    DownKind::DownBlock2D => {}
                    DownKind::AttnDownBlock2D => attentions.push(b.attention(
                        "attention_head_dim",
                        &what,
                        out,
                        attention_head_dim[i].unwrap_or(out),
                        Some(groups),
                        1.0,
                    )?),
                    DownKind::CrossAttnDownBlock2D => transformers.push(b.transformer(
                        &what,
                        out,
                        num_attention_heads[i],
                        depth,
                        cross_attention_dim[i],
                        self.use_linear_projection,
                    )?),
                }
            }
            down.push(DownBlockSpec {
                kind,
                in_channels: cin,
                out_channels: out,
                resnets,
                attentions,
                transformers,
                downsample_padding: (!last).then_some(self.downsample_padding),
            });
        }

        let ch = c[n - 1];
        let scale = self.mid_block_scale_factor;
        let mid = match self.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2DCrossAttn") => {
                // transformer_layers_per_block[-1] of the down list; an int applies to the
                // mid block's single layer, a list gives its first entry.
                let depth = expand("transformer_layers_per_block", &tl_raw[n - 1], 1)?[0];
                Some(MidBlockSpec {
                    kind: MidKind::UNetMidBlock2DCrossAttn,
                    channels: ch,
                    resnets: vec![
                        b.resnet("mid block resnet 0", ch, ch, scale)?,
                        b.resnet("mid block resnet 1", ch, ch, scale)?,
                    ],
                    attentions: Vec::new(),
                    transformers: vec![b.transformer(
                        "mid block attention",
                        ch,
                        num_attention_heads[n - 1],
                        depth,
                        cross_attention_dim[n - 1],
                        self.use_linear_projection,
                    )?],
                })
            }
            // get_mid_block builds UNetMidBlock2D with num_layers=0 and no attention: one
            // resnet only.
            Some("UNetMidBlock2D") => Some(MidBlockSpec {
                kind: MidKind::UNetMidBlock2D,
                channels: ch,
                resnets: vec![b.resnet("mid block resnet 0", ch, ch, scale)?],
                attentions: Vec::new(),
                transformers: Vec::new(),
            }),
            Some(other) => {
                return Err(config_error(
                    file,
                    "mid_block_type",
                    "\"UNetMidBlock2DCrossAttn\", \"UNetMidBlock2D\" or null",
                    format!("{other:?}"),
                    unsupported_hint(other),
                ))
            }
        };

        let rev_c: Vec<usize> = c.iter().rev().copied().collect();
        let rev_heads: Vec<Option<usize>> = num_attention_heads.iter().rev().copied().collect();
        let rev_layers: Vec<usize> = layers_per_block.iter().rev().copied().collect();
        let rev_cross: Vec<Option<usize>> = cross_attention_dim.iter().rev().copied().collect();
        let rev_tl: Vec<OneOrMany<usize>> = match &self.reverse_transformer_layers_per_block {
            None => tl_raw.iter().rev().cloned().collect(),
            Some(v) if v.len() == n => v.clone(),
            Some(v) => {
                return Err(config_error(
                    file,
                    "reverse_transformer_layers_per_block",
                    format!("a list of {n}, one per up block"),
                    format!("a list of {}", v.len()),
                    "fix the value",
                ))
            }
        };
        let mut up = Vec::with_capacity(n);
        let mut out = rev_c[0];
        for (i, name) in self.up_block_types.iter().enumerate() {
            let kind = parse_up(file, i, name, UP_COND)?;
            let prev = out;
            out = rev_c[i];
            let cin = rev_c[(i + 1).min(n - 1)];
            let last = i == n - 1;
            let layers = rev_layers[i] + 1;
            let (resnets, skip_channels) = up_resnets(&b, i, layers, prev, cin, out)?;
            let mut attentions = Vec::new();
            let mut transformers = Vec::new();
            match kind {
                UpKind::UpBlock2D => {}
                UpKind::AttnUpBlock2D => {
                    for j in 0..layers {
                        attentions.push(b.attention(
                            "attention_head_dim",
                            &format!("up block {i} attention {j}"),
                            out,
                            // diffusers passes attention_head_dim[i], not reversed.
                            attention_head_dim[i].unwrap_or(out),
                            Some(groups),
                            1.0,
                        )?);
                    }
                }
                UpKind::CrossAttnUpBlock2D => {
                    let depths =
                        expand("reverse_transformer_layers_per_block", &rev_tl[i], layers)?;
                    for (j, depth) in depths.into_iter().enumerate() {
                        transformers.push(b.transformer(
                            &format!("up block {i} attention {j}"),
                            out,
                            rev_heads[i],
                            depth,
                            rev_cross[i],
                            self.use_linear_projection,
                        )?);
                    }
                }
            }
            up.push(UpBlockSpec {
                kind,
                prev_output_channels: prev,
                out_channels: out,
                skip_channels,
                resnets,
                attentions,
                transformers,
                upsample: !last,
            });
        }
        check_skips(file, &down, &up, c[0])?;

        let cross_dims: Vec<usize> = down
            .iter()
            .flat_map(|d| d.transformers.iter())
            .chain(mid.iter().flat_map(|m| m.transformers.iter()))
            .chain(up.iter().flat_map(|u| u.transformers.iter()))
            .map(|t| t.cross_attention_dim)
            .collect();
        if let Some(&first) = cross_dims.first() {
            if let Some(&other) = cross_dims.iter().find(|&&d| d != first) {
                return Err(config_error(
                    file,
                    "cross_attention_dim",
                    format!("one width for all blocks ({first})"),
                    format!("also {other}"),
                    "per-block cross-attention widths (several encoders) are not implemented",
                ));
            }
        }

        Ok(UNetArch {
            class: UNetClass::UNet2DConditionModel,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            center_input_sample: self.center_input_sample,
            conv_in_kernel: self.conv_in_kernel,
            conv_out_kernel: self.conv_out_kernel,
            time_proj_dim: c[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            time_embed_dim,
            time_cond_proj_dim: self.time_cond_proj_dim,
            num_class_embeds: self.num_class_embeds,
            act,
            norm_num_groups: groups,
            norm_eps: self.norm_eps,
            resnet_time_scale_shift: shift,
            block_out_channels: c.clone(),
            per_block: PerBlockOptions {
                layers_per_block,
                attention_head_dim,
                num_attention_heads,
                cross_attention_dim,
                transformer_layers_per_block,
                only_cross_attention,
            },
            down_blocks: down,
            mid_block: mid,
            up_blocks: up,
            cross_attention_dim: cross_dims.first().copied(),
        })
    }
}

/// Keys of `config` that differ from diffusers' defaults (for `info` output and tests).
pub fn non_default_keys(config: &UNetConfig) -> BTreeMap<String, Value> {
    let (value, default) = match config {
        UNetConfig::UNet2D(c) => (
            serde_json::to_value(c).unwrap_or(Value::Null),
            serde_json::to_value(UNet2DConfig::default()).unwrap_or(Value::Null),
        ),
        UNetConfig::UNet2DCondition(c) => (
            serde_json::to_value(c).unwrap_or(Value::Null),
            serde_json::to_value(UNet2DConditionConfig::default()).unwrap_or(Value::Null),
        ),
    };
    let mut out = BTreeMap::new();
    if let (Value::Object(v), Value::Object(d)) = (value, default) {
        for (k, x) in v {
            if d.get(&k) != Some(&x) {
                out.insert(k, x);
            }
        }
    }
    out
}
