//! The GPU memory a Stable Diffusion pipeline needs at a resolution, computed before
//! anything is loaded, and the check against the adapter's limits.
//!
//! **Weights** come from the tensor list: the safetensors headers when the files are there
//! (exact names, shapes and stored dtypes), otherwise the list the component configs imply
//! ([`unet_tensors`], [`vae_tensors`], [`clip_tensors`]: diffusers'/transformers' names and
//! shapes; a test checks them against the tiny repository's headers). Two totals: every
//! weight as f32 (weight storage `f32`, or `auto` on an f32 checkpoint) and Linear/Conv2d
//! weights as packed f16 with embedding tables and 1-D tensors (norms, biases) kept f32
//! (storage `f16`, or `auto` on an f16 checkpoint, less the VAE's few folded 1×1 weights
//! that `auto` keeps f32; see [`WeightDtype`](crate::weights::WeightDtype)).
//!
//! **Activations** per stage (text encoder, UNet step, VAE decode, VAE encode) follow each
//! network's forward pass as [`crate::models::info`] does for the UNet: live skip tensors
//! plus one layer's inputs, intermediates and output, all f32. They err high (the pool frees
//! some intermediates earlier) and never count an attention score matrix (the attention
//! kernel is flash-style). Stages run one after another and every weight stays resident,
//! so the peak is `weights + max(stage)`.
//!
//! **Limits.** WebGPU has no total-memory limit an adapter reports; what it does report is
//! `maxBufferSize` (one buffer) and `maxStorageBufferBindingSize` (one binding). Ops split
//! their dispatches over batch items and rows (`ops/chunk.rs`), but a convolution never
//! splits one image, so the largest per-image activation must fit a binding, every
//! activation a buffer, and every weight both — except the token embedding, which is only
//! ever gathered row by row and so can be stored in row chunks. [`MemoryPlan::check`]
//! returns `Error::Limit` naming the tensor, the limit, its value and the bytes needed; a
//! caller-supplied budget (a fake limit in tests, or what the user knows the device holds)
//! is checked against the peak.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::config::{TransformerSpec, UNetArch};
use crate::models::info;

/// (name, shape) of each weight tensor, in no particular order.
pub type TensorList = Vec<(String, Vec<usize>)>;

/// Tensors that are read one row per token and so may live in several row-chunk buffers.
pub fn is_row_gathered(name: &str) -> bool {
    name.ends_with("embeddings.token_embedding.weight")
}

/// One component's weights.
#[derive(Debug, Clone)]
pub struct WeightPlan {
    pub component: String,
    pub tensors: usize,
    pub params: u64,
    pub bytes_f32: u64,
    /// Linear/Conv2d weights as packed f16 ([`crate::weights::is_packable`]), the rest f32.
    pub bytes_f16: u64,
    /// The largest tensor that is bound whole: (name, f32 bytes).
    pub largest: (String, u64),
    /// The largest row-gathered tensor, if any: (name, f32 bytes, bytes per row).
    pub gathered: Option<(String, u64, u64)>,
}

impl WeightPlan {
    pub fn from_list(component: &str, list: &TensorList) -> Self {
        let mut p = WeightPlan {
            component: component.to_string(),
            tensors: list.len(),
            params: 0,
            bytes_f32: 0,
            bytes_f16: 0,
            largest: (String::new(), 0),
            gathered: None,
        };
        for (name, shape) in list {
            let n = shape.iter().product::<usize>() as u64;
            p.params += n;
            p.bytes_f32 += 4 * n;
            p.bytes_f16 += if crate::weights::is_packable(name, shape) {
                2 * n.div_ceil(2) * 2
            } else {
                4 * n
            };
            if is_row_gathered(name) {
                let row = 4 * shape.get(1..).map_or(1, |s| s.iter().product::<usize>()) as u64;
                p.gathered = Some((name.clone(), 4 * n, row));
            } else if 4 * n > p.largest.1 {
                p.largest = (name.clone(), 4 * n);
            }
        }
        p
    }
}

/// One stage's activations.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub stage: String,
    /// Peak bytes alive at once during the stage.
    pub bytes: u64,
    /// The largest single activation (f32 bytes) and the largest for one image (what one
    /// convolution binding must hold).
    pub largest: u64,
    pub largest_per_image: u64,
}

/// Peak GPU memory of a pipeline at one resolution; see the module docs.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub width: usize,
    pub height: usize,
    /// Images generated at once.
    pub batch: usize,
    /// Classifier-free guidance doubles the UNet and text-encoder batch.
    pub cfg: bool,
    pub weights: Vec<WeightPlan>,
    pub stages: Vec<StagePlan>,
    /// The VAE decodes (and encodes) in tiles of this many pixels ([`VaeTiling`]); `None`:
    /// whole.
    pub vae_tile: Option<usize>,
}

/// How the VAE decodes and encodes: whole, or in diffusers-style overlapping tiles
/// ([`crate::models::VaeTiles`]), which bound its activations by the tile instead of the
/// image. Tiled output is diffusers' `enable_tiling` output, not the untiled one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VaeTiling {
    /// Whole when the untiled plan fits the limits, else the largest tile (a multiple of
    /// 4× the VAE factor) with which the plan does.
    #[default]
    Auto,
    /// Always whole; a plan that does not fit is refused.
    Off,
    /// Tiles of this many pixels (when the image is larger than one tile).
    Tile(usize),
}

impl VaeTiling {
    /// `auto`, `off`, or a tile size in pixels.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" | "none" => Ok(Self::Off),
            n => n.parse::<usize>().map(Self::Tile).map_err(|_| {
                Error::invalid(
                    "vae tiling",
                    format!("{s:?} is not `auto`, `off` or a tile size in pixels (e.g. 256)"),
                )
            }),
        }
    }
}

/// The limits a plan is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// `maxBufferSize`.
    pub max_buffer: u64,
    /// `maxStorageBufferBindingSize`.
    pub max_binding: u64,
    /// Total bytes the caller allows (None: unchecked).
    pub budget: Option<u64>,
}

impl PlanLimits {
    /// WebGPU's default limits (256 MiB buffers, 128 MiB bindings), no budget.
    pub const WEBGPU_DEFAULT: PlanLimits = PlanLimits {
        max_buffer: 256 << 20,
        max_binding: 128 << 20,
        budget: None,
    };

    pub fn from_caps(caps: &crate::gpu::Capabilities) -> Self {
        PlanLimits {
            max_buffer: caps.max_buffer(),
            max_binding: caps.max_binding(),
            budget: None,
        }
    }
}

impl MemoryPlan {
    pub fn weights_bytes(&self, f16: bool) -> u64 {
        self.weights
            .iter()
            .map(|w| if f16 { w.bytes_f16 } else { w.bytes_f32 })
            .sum()
    }

    /// The VAE tiling this plan was made for, as the VAE takes it.
    pub fn vae_tiles(&self) -> Option<crate::models::VaeTiles> {
        self.vae_tile.map(|tile| crate::models::VaeTiles { tile })
    }

    pub fn activation_peak(&self) -> u64 {
        self.stages.iter().map(|s| s.bytes).max().unwrap_or(0)
    }

    /// Peak bytes: every weight plus the largest stage.
    pub fn peak(&self, f16: bool) -> u64 {
        self.weights_bytes(f16) + self.activation_peak()
    }

    /// Errors (before anything is loaded) when a weight, an activation or the peak does not
    /// fit `limits`, naming the tensor or stage, the limit and both numbers.
    pub fn check(&self, limits: &PlanLimits, f16: bool) -> Result<()> {
        for w in &self.weights {
            let (name, bytes) = &w.largest;
            for (limit, value) in [
                ("maxBufferSize", limits.max_buffer),
                ("maxStorageBufferBindingSize", limits.max_binding),
            ] {
                if *bytes > value {
                    return Err(limit_err(
                        format!("{} weight `{name}` ({})", w.component, mib(*bytes)),
                        limit,
                        value,
                        *bytes,
                        "use a smaller model or an adapter with larger limits",
                    ));
                }
            }
            if let Some((name, _, row)) = &w.gathered {
                if *row > limits.max_binding {
                    return Err(limit_err(
                        format!("one row of {} weight `{name}`", w.component),
                        "maxStorageBufferBindingSize",
                        limits.max_binding,
                        *row,
                        "use an adapter with larger limits",
                    ));
                }
            }
        }
        for s in &self.stages {
            let checks = [
                ("maxBufferSize", limits.max_buffer, s.largest),
                (
                    "maxStorageBufferBindingSize",
                    limits.max_binding,
                    s.largest_per_image,
                ),
            ];
            for (limit, value, needed) in checks {
                if needed > value {
                    return Err(limit_err(
                        format!(
                            "the largest activation of the {} stage at {}×{} ({})",
                            s.stage,
                            self.width,
                            self.height,
                            mib(needed)
                        ),
                        limit,
                        value,
                        needed,
                        if s.stage.starts_with("vae") {
                            "lower --width/--height, let the VAE run in tiles (--vae-tiling auto or a tile size), or use an adapter with larger limits"
                        } else {
                            "lower --width/--height or use an adapter with larger limits"
                        },
                    ));
                }
            }
        }
        if let Some(budget) = limits.budget {
            let peak = self.peak(f16);
            if peak > budget {
                return Err(limit_err(
                    format!(
                        "the pipeline at {}×{}, batch {} ({} weights as {} + {} activations)",
                        self.width,
                        self.height,
                        self.batch,
                        mib(self.weights_bytes(f16)),
                        if f16 { "f16" } else { "f32" },
                        mib(self.activation_peak())
                    ),
                    "memory budget",
                    budget,
                    peak,
                    "lower the resolution or the batch, or raise the budget",
                ));
            }
        }
        Ok(())
    }

    /// Lines for `webdiffusion info`.
    pub fn report(&self) -> Vec<String> {
        let mut v = vec![format!(
            "memory plan: {}×{} pixels, batch {}{}",
            self.width,
            self.height,
            self.batch,
            if self.cfg {
                " (×2 for classifier-free guidance)"
            } else {
                ""
            }
        )];
        for w in &self.weights {
            v.push(format!(
                "  weights {:<13} {:>5} tensors {:>12} params  f32 {:>10}  f16 {:>10}  largest `{}` {}{}",
                w.component,
                w.tensors,
                w.params,
                mib(w.bytes_f32),
                mib(w.bytes_f16),
                w.largest.0,
                mib(w.largest.1),
                w.gathered.as_ref().map_or(String::new(), |(n, b, _)| format!(
                    "; `{n}` {} gathered by rows",
                    mib(*b)
                ))
            ));
        }
        if let Some(t) = self.vae_tile {
            v.push(format!(
                "  vae decode{} in {t}×{t}-pixel tiles overlapping by a quarter (diffusers' enable_tiling)",
                if self.stages.iter().any(|s| s.stage == "vae_encode") {
                    " and encode"
                } else {
                    ""
                }
            ));
        }
        for s in &self.stages {
            v.push(format!(
                "  activations {:<13} peak {:>10}  largest tensor {:>10} ({} per image)",
                s.stage,
                mib(s.bytes),
                mib(s.largest),
                mib(s.largest_per_image)
            ));
        }
        for f16 in [false, true] {
            v.push(format!(
                "  peak with {} weights: {} bytes ({})",
                if f16 { "f16" } else { "f32" },
                self.peak(f16),
                mib(self.peak(f16))
            ));
        }
        v
    }
}

fn limit_err(
    what: String,
    limit: &'static str,
    value: u64,
    needed: u64,
    hint: &'static str,
) -> Error {
    Error::Limit {
        op: "memory plan",
        what,
        limit,
        value,
        needed,
        hint,
    }
}

/// `bytes` as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The dimensions of an `AutoencoderKL` config.json that shape its tensors and activations.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeDims {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_attention: bool,
    pub quant_conv: bool,
    pub post_quant_conv: bool,
}

impl VaeDims {
    pub fn from_json(file: &str, text: &str) -> Result<Self> {
        let v = parse_obj(file, text)?;
        let boc = usize_list(file, &v, "block_out_channels")?.unwrap_or(vec![64]);
        if boc.is_empty() {
            return Err(cfg_err(
                file,
                "block_out_channels",
                "a non-empty list",
                "[]",
            ));
        }
        Ok(Self {
            in_channels: usize_key(file, &v, "in_channels", 3)?,
            out_channels: usize_key(file, &v, "out_channels", 3)?,
            latent_channels: usize_key(file, &v, "latent_channels", 4)?,
            block_out_channels: boc,
            layers_per_block: usize_key(file, &v, "layers_per_block", 1)?,
            mid_attention: bool_key(&v, "mid_block_add_attention", true),
            quant_conv: bool_key(&v, "use_quant_conv", true),
            post_quant_conv: bool_key(&v, "use_post_quant_conv", true),
        })
    }

    /// The spatial factor between pixels and latents.
    pub fn factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// The dimensions of a `CLIPTextModel` config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipDims {
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub positions: usize,
}

impl ClipDims {
    pub fn from_json(file: &str, text: &str) -> Result<Self> {
        let v = parse_obj(file, text)?;
        Ok(Self {
            vocab_size: usize_key(file, &v, "vocab_size", 49408)?,
            hidden: usize_key(file, &v, "hidden_size", 512)?,
            intermediate: usize_key(file, &v, "intermediate_size", 2048)?,
            layers: usize_key(file, &v, "num_hidden_layers", 12)?,
            heads: usize_key(file, &v, "num_attention_heads", 8)?,
            positions: usize_key(file, &v, "max_position_embeddings", 77)?,
        })
    }
}

fn parse_obj(file: &str, text: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text).map_err(|e| Error::Io {
        file: file.to_string(),
        message: format!("not valid JSON: {e}"),
        hint: "use the config.json written by save_pretrained",
    })?;
    if !v.is_object() {
        return Err(cfg_err(file, "", "a JSON object", "something else"));
    }
    Ok(v)
}

fn cfg_err(file: &str, key: &str, expected: &str, got: &str) -> Error {
    Error::Config {
        file: file.to_string(),
        key: key.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
        hint: "use the config.json written by save_pretrained".into(),
    }
}

fn usize_key(file: &str, v: &Value, key: &str, default: usize) -> Result<usize> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| cfg_err(file, key, "a positive integer", &x.to_string())),
    }
}

fn usize_list(file: &str, v: &Value, key: &str) -> Result<Option<Vec<usize>>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        cfg_err(file, key, "a list of positive integers", &x.to_string())
                    })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(x) => Err(cfg_err(
            file,
            key,
            "a list of positive integers",
            &x.to_string(),
        )),
    }
}

fn bool_key(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

// ---- tensor lists from configs -------------------------------------------------------

struct Lister(TensorList);

impl Lister {
    fn t(&mut self, name: String, shape: &[usize]) {
        self.0.push((name, shape.to_vec()));
    }
    fn norm(&mut self, p: &str, c: usize) {
        self.t(format!("{p}.weight"), &[c]);
        self.t(format!("{p}.bias"), &[c]);
    }
    fn conv(&mut self, p: &str, cin: usize, cout: usize, k: usize) {
        self.t(format!("{p}.weight"), &[cout, cin, k, k]);
        self.t(format!("{p}.bias"), &[cout]);
    }
    fn linear(&mut self, p: &str, i: usize, o: usize, bias: bool) {
        self.t(format!("{p}.weight"), &[o, i]);
        if bias {
            self.t(format!("{p}.bias"), &[o]);
        }
    }
    /// diffusers' ResnetBlock2D; `temb` = None for the VAE's.
    fn resnet(&mut self, p: &str, cin: usize, cout: usize, temb: Option<(usize, usize)>) {
        self.norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cin, cout, 3);
        if let Some((t, mult)) = temb {
            self.linear(&format!("{p}.time_emb_proj"), t, mult * cout, true);
        }
        self.norm(&format!("{p}.norm2"), cout);
        self.conv(&format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{p}.conv_shortcut"), cin, cout, 1);
        }
    }
    /// The spatial `Attention` of AttnDownBlock2D / the VAE's mid block.
    fn spatial_attention(&mut self, p: &str, c: usize, inner: usize, norm: bool) {
        if norm {
            self.norm(&format!("{p}.group_norm"), c);
        }
        for q in ["to_q", "to_k", "to_v"] {
            self.linear(&format!("{p}.{q}"), c, inner, true);
        }
        self.linear(&format!("{p}.to_out.0"), inner, c, true);
    }
    fn transformer(&mut self, p: &str, t: &TransformerSpec) {
        let (c, inner) = (t.channels, t.heads * t.head_dim);
        self.norm(&format!("{p}.norm"), c);
        let proj = |l: &mut Self, name: &str, i: usize, o: usize| {
            if t.use_linear_projection {
                l.linear(&format!("{p}.{name}"), i, o, true);
            } else {
                l.conv(&format!("{p}.{name}"), i, o, 1);
            }
        };
        proj(self, "proj_in", c, inner);
        for d in 0..t.depth {
            let b = format!("{p}.transformer_blocks.{d}");
            self.norm(&format!("{b}.norm1"), inner);
            for (a, kv) in [("attn1", inner), ("attn2", t.cross_attention_dim)] {
                self.linear(&format!("{b}.{a}.to_q"), inner, inner, false);
                self.linear(&format!("{b}.{a}.to_k"), kv, inner, false);
                self.linear(&format!("{b}.{a}.to_v"), kv, inner, false);
                self.linear(&format!("{b}.{a}.to_out.0"), inner, inner, true);
            }
            self.norm(&format!("{b}.norm2"), inner);
            self.norm(&format!("{b}.norm3"), inner);
            self.linear(&format!("{b}.ff.net.0.proj"), inner, 8 * inner, true);
            self.linear(&format!("{b}.ff.net.2"), 4 * inner, inner, true);
        }
        proj(self, "proj_out", inner, c);
    }
}

/// The weight tensors of a UNet2DConditionModel / UNet2DModel with this architecture.
pub fn unet_tensors(arch: &UNetArch) -> TensorList {
    use crate::models::config::TimeScaleShift;
    let mut l = Lister(Vec::new());
    let c0 = arch.block_out_channels.first().copied().unwrap_or(0);
    let ted = arch.time_embed_dim;
    let temb = Some((
        ted,
        if arch.resnet_time_scale_shift == TimeScaleShift::ScaleShift {
            2
        } else {
            1
        },
    ));
    l.conv("conv_in", arch.in_channels, c0, arch.conv_in_kernel);
    l.linear("time_embedding.linear_1", arch.time_proj_dim, ted, true);
    l.linear("time_embedding.linear_2", ted, ted, true);
    if let Some(d) = arch.time_cond_proj_dim {
        l.linear("time_embedding.cond_proj", d, arch.time_proj_dim, false);
    }
    if let Some(n) = arch.num_class_embeds {
        l.t("class_embedding.weight".into(), &[n, ted]);
    }
    let attn = |l: &mut Lister,
                p: String,
                j: usize,
                sp: &[crate::models::config::AttentionSpec],
                tr: &[TransformerSpec]| {
        if let Some(t) = tr.get(j) {
            l.transformer(&p, t);
        } else if let Some(a) = sp.get(j) {
            l.spatial_attention(
                &p,
                a.channels,
                a.heads * a.head_dim,
                a.norm_groups.is_some(),
            );
        }
    };
    for (i, b) in arch.down_blocks.iter().enumerate() {
        for (j, r) in b.resnets.iter().enumerate() {
            l.resnet(
                &format!("down_blocks.{i}.resnets.{j}"),
                r.in_channels,
                r.out_channels,
                temb,
            );
            attn(
                &mut l,
                format!("down_blocks.{i}.attentions.{j}"),
                j,
                &b.attentions,
                &b.transformers,
            );
        }
        if b.downsample_padding.is_some() {
            let c = b.out_channels;
            l.conv(&format!("down_blocks.{i}.downsamplers.0.conv"), c, c, 3);
        }
    }
    if let Some(m) = &arch.mid_block {
        for (j, r) in m.resnets.iter().enumerate() {
            l.resnet(
                &format!("mid_block.resnets.{j}"),
                r.in_channels,
                r.out_channels,
                temb,
            );
        }
        for j in 0..m.resnets.len().saturating_sub(1) {
            attn(
                &mut l,
                format!("mid_block.attentions.{j}"),
                j,
                &m.attentions,
                &m.transformers,
            );
        }
    }
    for (i, b) in arch.up_blocks.iter().enumerate() {
        for (j, r) in b.resnets.iter().enumerate() {
            l.resnet(
                &format!("up_blocks.{i}.resnets.{j}"),
                r.in_channels,
                r.out_channels,
                temb,
            );
            attn(
                &mut l,
                format!("up_blocks.{i}.attentions.{j}"),
                j,
                &b.attentions,
                &b.transformers,
            );
        }
        if b.upsample {
            let c = b.out_channels;
            l.conv(&format!("up_blocks.{i}.upsamplers.0.conv"), c, c, 3);
        }
    }
    l.norm("conv_norm_out", c0);
    l.conv("conv_out", c0, arch.out_channels, arch.conv_out_kernel);
    l.0
}

/// The weight tensors of an `AutoencoderKL`.
pub fn vae_tensors(v: &VaeDims) -> TensorList {
    let mut l = Lister(Vec::new());
    let boc = &v.block_out_channels;
    let last = boc[boc.len() - 1];
    let mid = |l: &mut Lister, p: &str| {
        l.resnet(&format!("{p}.mid_block.resnets.0"), last, last, None);
        if v.mid_attention {
            l.spatial_attention(&format!("{p}.mid_block.attentions.0"), last, last, true);
        }
        l.resnet(&format!("{p}.mid_block.resnets.1"), last, last, None);
    };
    l.conv("encoder.conv_in", v.in_channels, boc[0], 3);
    let mut prev = boc[0];
    for (i, &c) in boc.iter().enumerate() {
        for j in 0..v.layers_per_block {
            let cin = if j == 0 { prev } else { c };
            l.resnet(
                &format!("encoder.down_blocks.{i}.resnets.{j}"),
                cin,
                c,
                None,
            );
        }
        if i + 1 < boc.len() {
            l.conv(
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                c,
                c,
                3,
            );
        }
        prev = c;
    }
    mid(&mut l, "encoder");
    l.norm("encoder.conv_norm_out", last);
    l.conv("encoder.conv_out", last, 2 * v.latent_channels, 3);
    if v.quant_conv {
        l.conv(
            "quant_conv",
            2 * v.latent_channels,
            2 * v.latent_channels,
            1,
        );
    }
    if v.post_quant_conv {
        l.conv("post_quant_conv", v.latent_channels, v.latent_channels, 1);
    }
    l.conv("decoder.conv_in", v.latent_channels, last, 3);
    mid(&mut l, "decoder");
    let mut prev = last;
    for (i, &c) in boc.iter().rev().enumerate() {
        for j in 0..=v.layers_per_block {
            let cin = if j == 0 { prev } else { c };
            l.resnet(&format!("decoder.up_blocks.{i}.resnets.{j}"), cin, c, None);
        }
        if i + 1 < boc.len() {
            l.conv(&format!("decoder.up_blocks.{i}.upsamplers.0.conv"), c, c, 3);
        }
        prev = c;
    }
    l.norm("decoder.conv_norm_out", boc[0]);
    l.conv("decoder.conv_out", boc[0], v.out_channels, 3);
    l.0
}

/// The weight tensors of a `CLIPTextModel` (names as transformers 4 saves them, with the
/// `text_model.` prefix that SD repositories carry).
pub fn clip_tensors(c: &ClipDims) -> TensorList {
    let mut l = Lister(Vec::new());
    let (h, i) = (c.hidden, c.intermediate);
    l.t(
        "text_model.embeddings.token_embedding.weight".into(),
        &[c.vocab_size, h],
    );
    l.t(
        "text_model.embeddings.position_embedding.weight".into(),
        &[c.positions, h],
    );
    for k in 0..c.layers {
        let p = format!("text_model.encoder.layers.{k}");
        for q in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            l.linear(&format!("{p}.self_attn.{q}"), h, h, true);
        }
        l.norm(&format!("{p}.layer_norm1"), h);
        l.linear(&format!("{p}.mlp.fc1"), h, i, true);
        l.linear(&format!("{p}.mlp.fc2"), i, h, true);
        l.norm(&format!("{p}.layer_norm2"), h);
    }
    l.norm("text_model.final_layer_norm", h);
    l.0
}

// ---- activations ---------------------------------------------------------------------

/// Activation peak of the text encoder on `batch` prompts of `tokens` tokens.
pub fn clip_stage(c: &ClipDims, batch: usize, tokens: usize) -> StagePlan {
    let bt = (batch * tokens) as u64;
    let (h, i) = (c.hidden as u64, c.intermediate as u64);
    // residual, norm, q, k, v, attention out, projection; or norm, fc1, activation, fc2.
    let attn = 7 * h * bt;
    let mlp = (3 * h + 2 * i) * bt;
    let largest = i * bt * 4;
    StagePlan {
        stage: "text_encoder".into(),
        bytes: attn.max(mlp) * 4,
        largest,
        largest_per_image: largest / batch.max(1) as u64,
    }
}

/// Activation peak of one UNet step on `batch` latents (the doubled batch under CFG) plus
/// the solver's state (the sample, the model output and up to 4 history tensors).
pub fn unet_stage(arch: &UNetArch, batch: usize, lh: usize, lw: usize, tokens: usize) -> StagePlan {
    let peak = info::peak_activation_bytes(arch, batch, lh, lw, tokens);
    let latent = (arch.in_channels * lh * lw * 4) as u64;
    // The largest single tensor per sample: the GEGLU input (8·inner per token) of the
    // outermost transformer, or a concatenated skip at full latent size.
    let mut per = 0u64;
    let (mut h, mut w) = (lh as u64, lw as u64);
    for (i, b) in arch.down_blocks.iter().enumerate() {
        for t in &b.transformers {
            per = per.max(8 * (t.heads * t.head_dim) as u64 * h * w);
        }
        for r in &b.resnets {
            per = per.max(r.out_channels as u64 * h * w);
        }
        if b.downsample_padding.is_some() && i + 1 < arch.down_blocks.len() {
            h = h.div_ceil(2);
            w = w.div_ceil(2);
        }
    }
    for b in &arch.up_blocks {
        for r in &b.resnets {
            per = per.max(r.in_channels as u64 * lh as u64 * lw as u64);
        }
    }
    StagePlan {
        stage: "unet".into(),
        bytes: peak + 6 * latent * (batch as u64),
        largest: per * 4 * batch as u64,
        largest_per_image: per * 4,
    }
}

fn resnet_work(cin: u64, cout: u64, hw: u64) -> u64 {
    (2 * cin + 3 * cout) * hw
}

/// Activation peak of the VAE decoder on one latent of `lh × lw` (images are decoded one
/// at a time).
pub fn vae_decode_stage(v: &VaeDims, lh: usize, lw: usize) -> StagePlan {
    let boc: Vec<u64> = v.block_out_channels.iter().map(|&c| c as u64).collect();
    let last = boc[boc.len() - 1];
    let mut hw = (lh * lw) as u64;
    let mut peak = 0u64;
    let mut largest = 0u64;
    let mut live = |work: u64, big: u64| {
        peak = peak.max(work);
        largest = largest.max(big);
    };
    let l = v.latent_channels as u64;
    live((2 * l + last) * hw, last * hw);
    live(resnet_work(last, last, hw), last * hw);
    live(7 * last * hw, last * hw);
    let mut prev = last;
    for (i, &c) in boc.iter().rev().enumerate() {
        for j in 0..=v.layers_per_block {
            let cin = if j == 0 { prev } else { c };
            live(resnet_work(cin, c, hw), cin.max(c) * hw);
        }
        if i + 1 < boc.len() {
            // input, nearest ×2, conv output
            live(c * hw * 9, 4 * c * hw);
            hw *= 4;
        }
        prev = c;
    }
    live((2 * boc[0] + v.out_channels as u64) * hw, boc[0] * hw);
    StagePlan {
        stage: "vae_decode".into(),
        bytes: peak * 4,
        largest: largest * 4,
        largest_per_image: largest * 4,
    }
}

/// Activation peak of the VAE encoder on one `h × w` image (img2img).
pub fn vae_encode_stage(v: &VaeDims, h: usize, w: usize) -> StagePlan {
    let boc: Vec<u64> = v.block_out_channels.iter().map(|&c| c as u64).collect();
    let (mut h, mut w) = (h as u64, w as u64);
    let mut peak = 0u64;
    let mut largest = 0u64;
    let mut live = |work: u64, big: u64| {
        peak = peak.max(work);
        largest = largest.max(big);
    };
    live((v.in_channels as u64 + boc[0]) * h * w, boc[0] * h * w);
    let mut prev = boc[0];
    for (i, &c) in boc.iter().enumerate() {
        for j in 0..v.layers_per_block {
            let cin = if j == 0 { prev } else { c };
            live(resnet_work(cin, c, h * w), cin.max(c) * h * w);
        }
        if i + 1 < boc.len() {
            // input, the (0, 1, 0, 1)-padded copy, the stride-2 output
            let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
            live(
                c * (h * w + (h + 1) * (w + 1) + h2 * w2),
                c * (h + 1) * (w + 1),
            );
            h = h2;
            w = w2;
        }
        prev = c;
    }
    let last = prev;
    live(resnet_work(last, last, h * w), last * h * w);
    live(7 * last * h * w, last * h * w);
    StagePlan {
        stage: "vae_encode".into(),
        bytes: peak * 4,
        largest: largest * 4,
        largest_per_image: largest * 4,
    }
}

/// What a plan is computed from: the parsed configs and each component's tensor list.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    pub unet: UNetArch,
    pub vae: VaeDims,
    pub clip: ClipDims,
    pub unet_tensors: TensorList,
    pub vae_tensors: TensorList,
    pub clip_tensors: TensorList,
}

impl PlanInputs {
    /// Tensor lists implied by the configs.
    pub fn from_configs(unet: UNetArch, vae: VaeDims, clip: ClipDims) -> Self {
        Self {
            unet_tensors: unet_tensors(&unet),
            vae_tensors: vae_tensors(&vae),
            clip_tensors: clip_tensors(&clip),
            unet,
            vae,
            clip,
        }
    }

    /// The plan for `batch` images of `width × height` pixels with the VAE run whole; `cfg`:
    /// guidance doubles the UNet batch; `img2img`: the VAE encoder runs too. Errors when the
    /// size is not a multiple of the VAE factor.
    pub fn plan(
        &self,
        width: usize,
        height: usize,
        batch: usize,
        cfg: bool,
        img2img: bool,
    ) -> Result<MemoryPlan> {
        self.plan_tiled(width, height, batch, cfg, img2img, None)
    }

    /// [`Self::plan`] with the VAE in tiles of `vae_tile` pixels (see [`VaeTiling`]); a tile
    /// at least as large as the image is the untiled pass.
    pub fn plan_tiled(
        &self,
        width: usize,
        height: usize,
        batch: usize,
        cfg: bool,
        img2img: bool,
        vae_tile: Option<usize>,
    ) -> Result<MemoryPlan> {
        let f = self.vae.factor();
        check_size(width, height, f)?;
        if let Some(t) = vae_tile {
            crate::models::VaeTiles::new(t, f)?;
        }
        let vae_tile = vae_tile.filter(|&t| t < width.max(height));
        let (lh, lw) = (height / f, width / f);
        let b2 = if cfg { 2 * batch } else { batch };
        let mut stages = vec![
            clip_stage(&self.clip, b2, self.clip.positions),
            unet_stage(&self.unet, b2, lh, lw, self.clip.positions),
            vae_decode_tiled_stage(&self.vae, height, width, vae_tile),
        ];
        if img2img {
            stages.push(vae_encode_tiled_stage(&self.vae, height, width, vae_tile));
        }
        Ok(MemoryPlan {
            width,
            height,
            batch,
            cfg,
            weights: vec![
                WeightPlan::from_list("text_encoder", &self.clip_tensors),
                WeightPlan::from_list("unet", &self.unet_tensors),
                WeightPlan::from_list("vae", &self.vae_tensors),
            ],
            stages,
            vae_tile,
        })
    }

    /// The plan for `tiling`, checked against `limits` (when given): with
    /// [`VaeTiling::Auto`], the untiled plan when it fits, else the one with the largest
    /// VAE tile that fits; the untiled plan's error when none does.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_checked(
        &self,
        width: usize,
        height: usize,
        batch: usize,
        cfg: bool,
        img2img: bool,
        tiling: VaeTiling,
        limits: Option<&PlanLimits>,
    ) -> Result<MemoryPlan> {
        let plan = |tile| self.plan_tiled(width, height, batch, cfg, img2img, tile);
        let check = |p: MemoryPlan| match limits {
            Some(l) => p.check(l, false).map(|()| p),
            None => Ok(p),
        };
        match tiling {
            VaeTiling::Off => check(plan(None)?),
            VaeTiling::Tile(t) => check(plan(Some(t))?),
            VaeTiling::Auto => {
                let err = match check(plan(None)?) {
                    Ok(p) => return Ok(p),
                    Err(e) => e,
                };
                let step = 4 * self.vae.factor();
                let largest = (width.max(height) - 1) / step * step;
                for t in (1..=largest / step).rev().map(|k| k * step) {
                    if let Ok(p) = check(plan(Some(t))?) {
                        return Ok(p);
                    }
                }
                Err(err)
            }
        }
    }
}

/// The VAE decode stage at `h × w` pixels, whole or in `tile`-pixel tiles: one tile's pass
/// plus the finished tiles of two rows of tiles and the stitched image twice (row strips and
/// the final concatenation).
fn vae_decode_tiled_stage(v: &VaeDims, h: usize, w: usize, tile: Option<usize>) -> StagePlan {
    let f = v.factor();
    let Some(t) = tile else {
        return vae_decode_stage(v, h / f, w / f);
    };
    let mut s = vae_decode_stage(v, t.min(h) / f, t.min(w) / f);
    let c = v.out_channels as u64;
    let (_, stride, _, _) = crate::models::VaeTiles { tile: t }.geometry(f, true);
    let per_row = (w / f).div_ceil(stride) as u64;
    let image = c * (h * w) as u64 * 4;
    s.bytes += 2 * per_row * c * (t * t) as u64 * 4 + 2 * image;
    s.largest = s.largest.max(image);
    s.largest_per_image = s.largest_per_image.max(image);
    s
}

/// The VAE encode stage, whole or tiled (the tiles' moments are stitched as in
/// [`vae_decode_tiled_stage`]).
fn vae_encode_tiled_stage(v: &VaeDims, h: usize, w: usize, tile: Option<usize>) -> StagePlan {
    let Some(t) = tile else {
        return vae_encode_stage(v, h, w);
    };
    let f = v.factor();
    let mut s = vae_encode_stage(v, t.min(h), t.min(w));
    let c = 2 * v.latent_channels as u64;
    let (_, stride, _, _) = crate::models::VaeTiles { tile: t }.geometry(f, false);
    let per_row = w.div_ceil(stride) as u64;
    let moments = c * ((h / f) * (w / f)) as u64 * 4;
    s.bytes += 2 * per_row * c * ((t / f) * (t / f)) as u64 * 4 + 2 * moments;
    s.largest = s.largest.max(moments);
    s.largest_per_image = s.largest_per_image.max(moments);
    s
}

/// Width and height must be positive multiples of the VAE factor.
pub fn check_size(width: usize, height: usize, factor: usize) -> Result<()> {
    for (what, v) in [("width", width), ("height", height)] {
        if v == 0 || v % factor != 0 {
            return Err(Error::invalid(
                "stable diffusion",
                format!(
                    "{what} {v} is not a positive multiple of {factor} (the VAE's downsampling factor: latents are {what}/{factor}); use e.g. {}",
                    (v / factor).max(1) * factor
                ),
            ));
        }
    }
    Ok(())
}
