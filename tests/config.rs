//! diffusers `config.json` parsing: real configs, diffusers' defaults and quirks, rejection
//! of what is not implemented, and a fuzz loop that must never panic. No GPU needed.

use webdiffusion::models::config::{
    DownKind, MidKind, ModelConfig, TimeScaleShift, UNet2DConditionConfig, UNet2DConfig, UNetClass,
    UNetConfig, UpKind,
};
use webdiffusion::Error;

/// google/ddpm-cifar10-32 `unet/config.json` (diffusers 0.0.4 export) as copied verbatim into
/// public training code found with the code search; it predates `attention_head_dim`, so
/// today's diffusers (and this parser) apply the default 8.
const DDPM_CIFAR10: &str = r#"{
  "_class_name": "UNet2DModel",
  "_diffusers_version": "0.0.4",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 256, 256],
  "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
  "downsample_padding": 0,
  "flip_sin_to_cos": false,
  "freq_shift": 1,
  "in_channels": 3,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-06,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 32,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
}"#;

/// google/ddpm-cat-256 `unet/config.json`, verbatim from a public write-up found with the code
/// search (which also printed the module tree used below).
const DDPM_CAT_256: &str = r#"{
  "_class_name": "UNet2DModel",
  "_diffusers_version": "0.0.4",
  "act_fn": "silu",
  "attention_head_dim": null,
  "block_out_channels": [128, 128, 256, 256, 512, 512],
  "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 0,
  "flip_sin_to_cos": false,
  "freq_shift": 1,
  "in_channels": 3,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-06,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 256,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]
}"#;

/// runwayml/stable-diffusion-v1-5 `unet/config.json` (diffusers 0.6.0), verbatim as found in
/// several public repositories with the code search.
const SD15: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.6.0",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

/// The Marigold v1.0 UNet (a Stable Diffusion 2 UNet with 8 input channels) as a complete
/// diffusers config with every `UNet2DConditionModel` key, transcribed from the Python dict in
/// a public repository found with the code search (None → null, False → false; the
/// "marigold-v1-0" values for block_out_channels and norm_num_groups).
const MARIGOLD_SD2: &str = r#"{
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.25.0", "_name_or_path": "prs-eth/marigold-v1-0",
  "sample_size": 96, "in_channels": 8, "out_channels": 4, "center_input_sample": false,
  "flip_sin_to_cos": true, "freq_shift": 0,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "only_cross_attention": false, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
  "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu",
  "norm_num_groups": 32, "norm_eps": 1e-05, "cross_attention_dim": 1024,
  "transformer_layers_per_block": 1, "reverse_transformer_layers_per_block": null,
  "encoder_hid_dim": null, "encoder_hid_dim_type": null, "attention_head_dim": [5, 10, 20, 20],
  "num_attention_heads": null, "dual_cross_attention": false, "use_linear_projection": true,
  "class_embed_type": null, "addition_embed_type": null, "addition_time_embed_dim": null,
  "num_class_embeds": null, "upcast_attention": false, "resnet_time_scale_shift": "default",
  "resnet_skip_time_act": false, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
  "time_embedding_dim": null, "time_embedding_act_fn": null, "timestep_post_act": null,
  "time_cond_proj_dim": null, "conv_in_kernel": 3, "conv_out_kernel": 3,
  "projection_class_embeddings_input_dim": null, "attention_type": "default",
  "class_embeddings_concat": false, "mid_block_only_cross_attention": null, "cross_attention_norm": null,
  "addition_embed_type_num_heads": 64
}"#;

/// stabilityai/stable-diffusion-xl-base-1.0 `unet/config.json`, written from memory of the
/// Hub file; its keys and values match the SDXL UNet dict found with the code search
/// (attention_head_dim [5, 10, 20], transformer_layers_per_block [1, 2, 10], text_time).
const SDXL: &str = r#"{
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0",
  "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280], "center_input_sample": false, "class_embed_type": null,
  "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3,
  "cross_attention_dim": 2048, "cross_attention_norm": null,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null,
  "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
  "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
  "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false,
  "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
  "resnet_skip_time_act": false, "resnet_time_scale_shift": "default", "sample_size": 128,
  "time_cond_proj_dim": null, "time_embedding_act_fn": null, "time_embedding_dim": null,
  "time_embedding_type": "positional", "timestep_post_act": null,
  "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "upcast_attention": false, "use_linear_projection": true
}"#;

/// A class-conditional UNet2DModel: the model diffusers' example
/// `examples/research_projects/consistency_training/train_cm_ct_unconditional.py` builds with
/// `--num_classes 10`, serialised with every `__init__` parameter as `save_pretrained` writes
/// it (written by hand from the signature at diffusers 58eb52c).
const CLASS_COND: &str = r#"{
  "_class_name": "UNet2DModel", "_diffusers_version": "0.40.0.dev0",
  "act_fn": "silu", "add_attention": true, "attention_head_dim": 8, "attn_norm_num_groups": null,
  "block_out_channels": [128, 128, 256, 256, 512, 512], "center_input_sample": false,
  "class_embed_type": null,
  "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "downsample_type": "conv", "dropout": 0.0, "flip_sin_to_cos": true,
  "freq_shift": 0, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2D", "norm_eps": 1e-05, "norm_num_groups": 32,
  "num_class_embeds": 10, "num_train_timesteps": null, "out_channels": 3,
  "resnet_time_scale_shift": "default", "sample_size": 64, "time_embedding_dim": null,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
  "upsample_type": "conv"
}"#;

/// openai/diffusers-cd_imagenet64_l2's UNet, from diffusers' own
/// `scripts/convert_consistency_to_diffusers.py` (IMAGENET_64_UNET_CONFIG): class-conditional,
/// but built from blocks this engine does not implement.
const CD_IMAGENET64: &str = r#"{
  "_class_name": "UNet2DModel", "sample_size": 64, "in_channels": 3, "out_channels": 3,
  "layers_per_block": 3, "num_class_embeds": 1000, "block_out_channels": [192, 384, 576, 768],
  "attention_head_dim": 64,
  "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
  "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 32,
  "upsample_type": "resnet", "downsample_type": "resnet"
}"#;

fn parse(text: &str) -> ModelConfig {
    ModelConfig::from_json("config.json", text).unwrap_or_else(|e| panic!("{e}"))
}

/// The `Error::Config` fields, or a panic naming what came instead.
fn config_err(text: &str) -> (String, String, String, String) {
    match ModelConfig::from_json("cfg/config.json", text) {
        Err(Error::Config {
            file,
            key,
            expected,
            got,
            ..
        }) => {
            assert_eq!(file, "cfg/config.json");
            (
                key,
                expected,
                got,
                ModelConfig::from_json("cfg/config.json", text)
                    .unwrap_err()
                    .to_string(),
            )
        }
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

fn with(base: &str, key: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    v[key] = serde_json::from_str(value).unwrap();
    v.to_string()
}

fn without(base: &str, key: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    v.as_object_mut().unwrap().remove(key);
    v.to_string()
}

#[test]
fn ddpm_cifar10() {
    let m = parse(DDPM_CIFAR10);
    let a = &m.arch;
    assert_eq!(a.class, UNetClass::UNet2DModel);
    assert_eq!((a.in_channels, a.out_channels), (3, 3));
    assert_eq!((a.time_proj_dim, a.time_embed_dim), (128, 512));
    assert!(!a.flip_sin_to_cos);
    assert_eq!(a.freq_shift, 1.0);
    assert_eq!(a.norm_eps, 1e-6);
    assert_eq!(a.num_class_embeds, None);
    let kinds: Vec<DownKind> = a.down_blocks.iter().map(|b| b.kind).collect();
    assert_eq!(
        kinds,
        [
            DownKind::DownBlock2D,
            DownKind::AttnDownBlock2D,
            DownKind::DownBlock2D,
            DownKind::DownBlock2D
        ]
    );
    let pads: Vec<Option<usize>> = a.down_blocks.iter().map(|b| b.downsample_padding).collect();
    assert_eq!(pads, [Some(0), Some(0), Some(0), None]);
    // attention_head_dim absent → diffusers' default 8 → 256 / 8 = 32 heads.
    let att = &a.down_blocks[1].attentions;
    assert_eq!(att.len(), 2);
    assert_eq!(
        (att[0].heads, att[0].head_dim, att[0].norm_groups),
        (32, 8, Some(32))
    );
    let up_kinds: Vec<UpKind> = a.up_blocks.iter().map(|b| b.kind).collect();
    assert_eq!(
        up_kinds,
        [
            UpKind::UpBlock2D,
            UpKind::UpBlock2D,
            UpKind::AttnUpBlock2D,
            UpKind::UpBlock2D
        ]
    );
    assert!(a.up_blocks.iter().all(|b| b.resnets.len() == 3));
    let mid = a.mid_block.as_ref().unwrap();
    assert_eq!(mid.kind, MidKind::UNetMidBlock2D);
    assert_eq!((mid.resnets.len(), mid.attentions.len()), (2, 1));
}

#[test]
fn ddpm_cat_256_matches_diffusers_module_tree() {
    // The printed UNet2DModel tree next to this config was made with layers_per_block 1 (one
    // resnet per down block, two per up block); check every channel count against it.
    let m = parse(&with(DDPM_CAT_256, "layers_per_block", "1"));
    let a = &m.arch;
    let down: Vec<Vec<(usize, usize)>> = a
        .down_blocks
        .iter()
        .map(|b| {
            b.resnets
                .iter()
                .map(|r| (r.in_channels, r.out_channels))
                .collect()
        })
        .collect();
    assert_eq!(
        down,
        vec![
            vec![(128, 128)],
            vec![(128, 128)],
            vec![(128, 256)],
            vec![(256, 256)],
            vec![(256, 512)],
            vec![(512, 512)],
        ]
    );
    let up: Vec<Vec<(usize, usize)>> = a
        .up_blocks
        .iter()
        .map(|b| {
            b.resnets
                .iter()
                .map(|r| (r.in_channels, r.out_channels))
                .collect()
        })
        .collect();
    assert_eq!(
        up,
        vec![
            vec![(1024, 512), (1024, 512)],
            vec![(1024, 512), (768, 512)],
            vec![(768, 256), (512, 256)],
            vec![(512, 256), (384, 256)],
            vec![(384, 128), (256, 128)],
            vec![(256, 128), (256, 128)],
        ]
    );
    let ups: Vec<bool> = a.up_blocks.iter().map(|b| b.upsample).collect();
    assert_eq!(ups, [true, true, true, true, true, false]);
    // attention_head_dim null → one head over all channels (to_q: 512 → 512).
    let att = &a.down_blocks[4].attentions[0];
    assert_eq!((att.channels, att.heads, att.head_dim), (512, 1, 512));
    assert_eq!(a.up_blocks[1].attentions.len(), 2);
    let mid = a.mid_block.as_ref().unwrap();
    assert_eq!(
        (mid.attentions[0].heads, mid.attentions[0].norm_groups),
        (1, Some(32))
    );
    assert_eq!(a.time_embed_dim, 512);
    // And the real config (two layers) parses too.
    let real = parse(DDPM_CAT_256);
    assert_eq!(real.arch.down_blocks[0].resnets.len(), 2);
    assert_eq!(real.arch.up_blocks[0].resnets.len(), 3);
}

#[test]
fn stable_diffusion_1_5() {
    let m = parse(SD15);
    let a = &m.arch;
    assert_eq!(a.class, UNetClass::UNet2DConditionModel);
    assert_eq!(a.cross_attention_dim, Some(768));
    assert_eq!((a.time_proj_dim, a.time_embed_dim), (320, 1280));
    // diffusers' quirk: attention_head_dim 8 is the number of heads.
    for (b, hd) in a.down_blocks[..3].iter().zip([40, 80, 160]) {
        assert_eq!(b.transformers.len(), 2);
        let t = &b.transformers[0];
        assert_eq!(
            (t.heads, t.head_dim, t.depth, t.cross_attention_dim),
            (8, hd, 1, 768)
        );
        assert!(!t.use_linear_projection);
    }
    assert!(a.down_blocks[3].transformers.is_empty());
    let mid = a.mid_block.as_ref().unwrap();
    assert_eq!(mid.kind, MidKind::UNetMidBlock2DCrossAttn);
    assert_eq!(
        (mid.transformers[0].heads, mid.transformers[0].head_dim),
        (8, 160)
    );
    // Up-block resnet inputs of SD 1.5 (conv1 in_channels in the checkpoint).
    let up: Vec<Vec<usize>> = a
        .up_blocks
        .iter()
        .map(|b| b.resnets.iter().map(|r| r.in_channels).collect())
        .collect();
    assert_eq!(
        up,
        vec![
            vec![2560, 2560, 2560],
            vec![2560, 2560, 1920],
            vec![1920, 1280, 960],
            vec![960, 640, 640],
        ]
    );
    assert_eq!(a.up_blocks[1].transformers.len(), 3);
    assert_eq!(a.per_block.num_attention_heads, vec![Some(8); 4]);
    assert_eq!(
        a.per_block.transformer_layers_per_block,
        vec![vec![1, 1]; 4]
    );
    // What SD 1.5 changes from diffusers' defaults.
    let changed = webdiffusion::models::config::non_default_keys(&m.config);
    let keys: Vec<&str> = changed.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cross_attention_dim", "sample_size"]);
}

#[test]
fn sd2_full_config_with_per_block_heads() {
    let m = parse(MARIGOLD_SD2);
    let a = &m.arch;
    assert_eq!(a.in_channels, 8);
    let heads: Vec<usize> = a.down_blocks[..3]
        .iter()
        .map(|b| b.transformers[0].heads)
        .collect();
    assert_eq!(heads, [5, 10, 20]);
    assert!(a
        .down_blocks
        .iter()
        .flat_map(|b| &b.transformers)
        .all(|t| t.head_dim == 64 && t.use_linear_projection && t.cross_attention_dim == 1024));
    // Up blocks read the head counts reversed: 1280 → 20, 640 → 10, 320 → 5.
    let up_heads: Vec<usize> = a.up_blocks[1..]
        .iter()
        .map(|b| b.transformers[0].heads)
        .collect();
    assert_eq!(up_heads, [20, 10, 5]);
    assert_eq!(a.mid_block.as_ref().unwrap().transformers[0].heads, 20);
}

#[test]
fn sdxl_is_rejected_for_its_text_time_embedding_and_normalises_depths() {
    let (key, expected, got, msg) = config_err(SDXL);
    assert_eq!(key, "addition_embed_type");
    assert_eq!(expected, "null");
    assert_eq!(got, "\"text_time\"");
    assert!(msg.contains("not implemented"), "{msg}");
    // Without it, transformer_layers_per_block [1, 2, 10] expands per block and reverses.
    let m = parse(&with(SDXL, "addition_embed_type", "null"));
    let a = &m.arch;
    assert_eq!(
        a.per_block.transformer_layers_per_block,
        vec![vec![1, 1], vec![2, 2], vec![10, 10]]
    );
    let depths = |ts: &[webdiffusion::models::config::TransformerSpec]| -> Vec<usize> {
        ts.iter().map(|t| t.depth).collect()
    };
    assert_eq!(depths(&a.down_blocks[1].transformers), [2, 2]);
    assert_eq!(depths(&a.mid_block.as_ref().unwrap().transformers), [10]);
    assert_eq!(depths(&a.up_blocks[0].transformers), [10, 10, 10]);
    assert_eq!(depths(&a.up_blocks[1].transformers), [2, 2, 2]);
    assert_eq!(a.up_blocks[0].transformers[0].heads, 20);
    assert_eq!(a.cross_attention_dim, Some(2048));
}

#[test]
fn class_conditional_unet2d() {
    let m = parse(CLASS_COND);
    assert_eq!(m.arch.num_class_embeds, Some(10));
    assert_eq!(m.arch.time_embed_dim, 512);
    assert_eq!(m.arch.down_blocks[4].attentions[0].heads, 512 / 8);
    match &m.config {
        UNetConfig::UNet2D(c) => assert_eq!(c.num_class_embeds, Some(10)),
        other => panic!("{other:?}"),
    }
    // The consistency-model UNet uses blocks this engine lacks: the error names the key, the
    // value and what is supported.
    let (key, expected, got, msg) = config_err(CD_IMAGENET64);
    assert_eq!(key, "down_block_types[0]");
    assert!(expected.contains("DownBlock2D") && expected.contains("AttnDownBlock2D"));
    assert_eq!(got, "\"ResnetDownsampleBlock2D\"");
    assert!(msg.contains("does not implement"), "{msg}");
}

#[test]
fn defaults_are_diffusers_defaults() {
    // `{"_class_name": ...}` alone builds diffusers' default model.
    let m = parse(r#"{"_class_name": "UNet2DModel"}"#);
    assert_eq!(m.arch.block_out_channels, [224, 448, 672, 896]);
    assert_eq!(m.arch.down_blocks[1].attentions[0].heads, 448 / 8);
    assert_eq!(
        (m.arch.in_channels, m.arch.norm_num_groups, m.arch.norm_eps),
        (3, 32, 1e-5)
    );
    assert!(m.arch.flip_sin_to_cos);
    assert_eq!(m.arch.resnet_time_scale_shift, TimeScaleShift::Default);
    let d = UNet2DConfig::default();
    assert_eq!(
        (d.layers_per_block, d.downsample_padding, d.add_attention),
        (2, 1, true)
    );
    let m = parse(r#"{"_class_name": "UNet2DConditionModel"}"#);
    assert_eq!(m.arch.cross_attention_dim, Some(1280));
    assert_eq!(m.arch.in_channels, 4);
    assert_eq!(m.arch.down_blocks[0].transformers[0].heads, 8);
    let d = UNet2DConditionConfig::default();
    assert_eq!((d.conv_in_kernel, d.addition_embed_type_num_heads), (3, 64));
    // _use_default_values: diffusers drops the listed keys so today's defaults apply.
    let m = parse(
        r#"{"_class_name": "UNet2DModel", "attention_head_dim": 16, "_use_default_values": ["attention_head_dim"]}"#,
    );
    assert_eq!(m.arch.down_blocks[1].attentions[0].head_dim, 8);
    // The per-class parsers accept a config without _class_name and reject the other class.
    assert!(UNet2DConfig::from_json("c", "{}").is_ok());
    assert!(UNet2DConditionConfig::from_json("c", r#"{"_class_name": "UNet2DModel"}"#).is_err());
}

#[test]
fn scale_shift_mid_attention_has_no_group_norm_unless_asked() {
    let base = r#"{"_class_name": "UNet2DModel", "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "resnet_time_scale_shift": "scale_shift", "norm_num_groups": 8}"#;
    let m = parse(base);
    assert_eq!(m.arch.resnet_time_scale_shift, TimeScaleShift::ScaleShift);
    assert_eq!(
        m.arch.mid_block.as_ref().unwrap().attentions[0].norm_groups,
        None
    );
    // Down/up attentions always have one.
    assert_eq!(m.arch.down_blocks[1].attentions[0].norm_groups, Some(8));
    let m = parse(&with(base, "attn_norm_num_groups", "16"));
    assert_eq!(
        m.arch.mid_block.as_ref().unwrap().attentions[0].norm_groups,
        Some(16)
    );
    let m = parse(&with(base, "add_attention", "false"));
    assert!(m.arch.mid_block.as_ref().unwrap().attentions.is_empty());
    let m = parse(&with(base, "mid_block_type", "null"));
    assert!(m.arch.mid_block.is_none());
    // UNet2DConditionModel's "UNetMidBlock2D" is a single resnet (num_layers=0 in get_mid_block).
    let m = parse(&with(SD15, "mid_block_type", "\"UNetMidBlock2D\""));
    let mid = m.arch.mid_block.as_ref().unwrap();
    assert_eq!(
        (
            mid.resnets.len(),
            mid.attentions.len(),
            mid.transformers.len()
        ),
        (1, 0, 0)
    );
}

#[test]
fn attn_up_blocks_in_condition_models_read_attention_head_dim_unreversed() {
    let cfg = r#"{"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64],
        "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D"], "mid_block_type": "UNetMidBlock2D",
        "attention_head_dim": [4, 16], "norm_num_groups": 8, "cross_attention_dim": null}"#;
    let a = parse(cfg).arch;
    assert_eq!(a.down_blocks[0].attentions[0].head_dim, 4);
    assert_eq!(a.down_blocks[1].attentions[0].head_dim, 16);
    // Up block 0 has 64 channels but diffusers passes attention_head_dim[0] = 4.
    assert_eq!(
        (
            a.up_blocks[0].out_channels,
            a.up_blocks[0].attentions[0].head_dim
        ),
        (64, 4)
    );
    assert_eq!(
        (
            a.up_blocks[1].out_channels,
            a.up_blocks[1].attentions[0].head_dim
        ),
        (32, 16)
    );
    assert_eq!(a.cross_attention_dim, None);
    // UNetRes-prefixed names are the same blocks (get_down_block strips the prefix).
    let a2 = parse(&with(
        cfg,
        "down_block_types",
        r#"["UNetResAttnDownBlock2D", "AttnDownBlock2D"]"#,
    ))
    .arch;
    assert_eq!(a2.down_blocks, a.down_blocks);
}

#[test]
fn unknown_and_harmless_keys() {
    // Private keys are dropped by diffusers before the constructor: accepted.
    parse(&with(
        &with(SD15, "_name_or_path", "\"x\""),
        "_some_future_bookkeeping",
        "[1]",
    ));
    // Parameters that do not change the computation of supported blocks: accepted.
    parse(&with(
        &with(SD15, "dropout", "0.1"),
        "upcast_attention",
        "true",
    ));
    parse(&with(SD15, "resnet_out_scale_factor", "2.0"));
    // An unknown key might change it: rejected, naming it.
    let (key, _, got, msg) = config_err(&with(SD15, "use_flash_magic", "true"));
    assert_eq!(key, "use_flash_magic");
    assert!(got.contains("true"));
    assert!(msg.contains("refused"), "{msg}");
    let (key, ..) = config_err(&with(SD15, "quantization_config", "{}"));
    assert_eq!(key, "quantization_config");
    // Keys of the other class are unknown here.
    let (key, ..) = config_err(&with(DDPM_CIFAR10, "cross_attention_dim", "768"));
    assert_eq!(key, "cross_attention_dim");
}

#[test]
fn unsupported_options_name_key_value_and_supported() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            SD15,
            "down_block_types",
            r#"["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]"#,
            "down_block_types[0]",
        ),
        (
            SD15,
            "up_block_types",
            r#"["UpBlock2D", "CrossAttnUpBlock2D", "KUpBlock2D", "CrossAttnUpBlock2D"]"#,
            "up_block_types[2]",
        ),
        (
            SD15,
            "mid_block_type",
            "\"UNetMidBlock2DSimpleCrossAttn\"",
            "mid_block_type",
        ),
        (SD15, "class_embed_type", "\"timestep\"", "class_embed_type"),
        (
            SD15,
            "time_embedding_type",
            "\"fourier\"",
            "time_embedding_type",
        ),
        (SD15, "act_fn", "\"gelu\"", "act_fn"),
        (
            SD15,
            "resnet_time_scale_shift",
            "\"spatial\"",
            "resnet_time_scale_shift",
        ),
        (SD15, "encoder_hid_dim", "1024", "encoder_hid_dim"),
        (SD15, "only_cross_attention", "true", "only_cross_attention"),
        (SD15, "dual_cross_attention", "true", "dual_cross_attention"),
        (SD15, "attention_type", "\"gated\"", "attention_type"),
        (
            SD15,
            "class_embeddings_concat",
            "true",
            "class_embeddings_concat",
        ),
        (SD15, "num_attention_heads", "8", "num_attention_heads"),
        (SD15, "conv_in_kernel", "4", "conv_in_kernel"),
        (
            DDPM_CIFAR10,
            "time_embedding_type",
            "\"fourier\"",
            "time_embedding_type",
        ),
        (
            DDPM_CIFAR10,
            "class_embed_type",
            "\"identity\"",
            "class_embed_type",
        ),
        (
            DDPM_CIFAR10,
            "downsample_type",
            "\"resnet\"",
            "downsample_type",
        ),
        (DDPM_CIFAR10, "upsample_type", "\"resnet\"", "upsample_type"),
        (
            DDPM_CIFAR10,
            "down_block_types",
            r#"["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]"#,
            "down_block_types[1]",
        ),
        (
            DDPM_CIFAR10,
            "mid_block_type",
            "\"UNetMidBlock2DCrossAttn\"",
            "mid_block_type",
        ),
    ];
    for (base, key, value, want_key) in cases {
        let (k, expected, got, msg) = config_err(&with(base, key, value));
        assert_eq!(&k, want_key, "{key}={value}: {msg}");
        assert!(!expected.is_empty() && !got.is_empty(), "{msg}");
        assert!(msg.contains(want_key), "{msg}");
    }
    // The block error lists the supported values.
    let (_, expected, _, _) = config_err(&with(SD15, "mid_block_type", "\"Foo\""));
    assert!(expected.contains("UNetMidBlock2DCrossAttn") && expected.contains("null"));
    // downsample_type only matters where an AttnDownBlock2D downsamples.
    parse(&with(
        &with(
            DDPM_CIFAR10,
            "down_block_types",
            r#"["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]"#,
        ),
        "downsample_type",
        "\"resnet\"",
    ));
}

/// LCM-distilled UNets (LCM-Dreamshaper, latent-consistency/lcm-sd*: `time_cond_proj_dim`
/// 256) parse, with the width in the architecture; UNet2DModel has none.
#[test]
fn lcm_time_cond_proj_dim() {
    let m = parse(&with(SD15, "time_cond_proj_dim", "256"));
    assert_eq!(m.arch.time_cond_proj_dim, Some(256));
    assert_eq!(parse(SD15).arch.time_cond_proj_dim, None);
    assert_eq!(parse(DDPM_CIFAR10).arch.time_cond_proj_dim, None);
}

#[test]
fn inconsistent_configs_are_rejected() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            SD15,
            "up_block_types",
            r#"["UpBlock2D", "CrossAttnUpBlock2D"]"#,
            "up_block_types",
        ),
        (
            SD15,
            "block_out_channels",
            "[320, 640, 1280]",
            "block_out_channels",
        ),
        (SD15, "attention_head_dim", "[8, 8]", "attention_head_dim"),
        (SD15, "attention_head_dim", "null", "attention_head_dim"),
        (SD15, "attention_head_dim", "0", "attention_head_dim"),
        (SD15, "time_cond_proj_dim", "0", "time_cond_proj_dim"),
        (SD15, "time_cond_proj_dim", "\"256\"", "time_cond_proj_dim"),
        (SD15, "cross_attention_dim", "null", "cross_attention_dim"),
        (
            SD15,
            "cross_attention_dim",
            "[768, 768, 1024, 768]",
            "cross_attention_dim",
        ),
        (SD15, "layers_per_block", "[2, 2]", "layers_per_block"),
        (SD15, "layers_per_block", "\"two\"", "layers_per_block"),
        (SD15, "norm_num_groups", "30", "norm_num_groups"),
        (SD15, "norm_num_groups", "null", "norm_num_groups"),
        (SD15, "norm_eps", "-1", "norm_eps"),
        (
            SD15,
            "transformer_layers_per_block",
            "[[1, 1], 1, 1, 1]",
            "reverse_transformer_layers_per_block",
        ),
        (
            SD15,
            "block_out_channels",
            "[320, 0, 1280, 1280]",
            "block_out_channels[1]",
        ),
        (
            DDPM_CIFAR10,
            "attention_head_dim",
            "512",
            "attention_head_dim",
        ),
        (
            DDPM_CIFAR10,
            "layers_per_block",
            "[2, 2, 2, 2]",
            "layers_per_block",
        ),
        (DDPM_CIFAR10, "down_block_types", "[]", "down_block_types"),
        (DDPM_CIFAR10, "in_channels", "0", "in_channels"),
    ];
    for (base, key, value, want_key) in cases {
        let (k, _, _, msg) = config_err(&with(base, key, value));
        assert_eq!(&k, want_key, "{key}={value}: {msg}");
    }
    let (k, ..) = config_err(&without(SD15, "_class_name"));
    assert_eq!(k, "_class_name");
    let (k, ..) = config_err(&with(SD15, "_class_name", "\"AutoencoderKL\""));
    assert_eq!(k, "_class_name");
    let (k, ..) = config_err("[1, 2]");
    assert_eq!(k, "(file)");
    let (k, ..) = config_err("{not json");
    assert_eq!(k, "(file)");
}

/// Small seeded generator for the fuzz loop.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn fuzz_configs_never_panic() {
    let mut rng = Lcg(42);
    let keys: Vec<&str> = UNet2DConditionConfig::KEYS
        .iter()
        .chain(UNet2DConfig::KEYS)
        .copied()
        .collect();
    let values = [
        "0",
        "1",
        "2",
        "3",
        "8",
        "-1",
        "1.5",
        "1e30",
        "null",
        "true",
        "false",
        "\"\"",
        "\"silu\"",
        "\"DownBlock2D\"",
        "\"CrossAttnUpBlock2D\"",
        "[]",
        "[0]",
        "[1, 2]",
        "[2, 2, 2, 2]",
        "[[1, 2], [3]]",
        "[null, 8]",
        "[320, 640, 1280, 1280]",
        "{}",
        "18446744073709551615",
        "[\"AttnDownBlock2D\", \"AttnDownBlock2D\", \"AttnDownBlock2D\", \"AttnDownBlock2D\"]",
    ];
    let bases = [
        DDPM_CIFAR10,
        DDPM_CAT_256,
        SD15,
        MARIGOLD_SD2,
        SDXL,
        CLASS_COND,
    ];
    let mut ok = 0;
    for i in 0..3000 {
        let base = bases[rng.below(bases.len())];
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        for _ in 0..1 + rng.below(4) {
            let k = keys[rng.below(keys.len())];
            v[k] = serde_json::from_str(values[rng.below(values.len())]).unwrap();
        }
        let mut text = v.to_string();
        // Every few rounds, raw byte damage as well.
        if i % 5 == 0 {
            let mut b = text.into_bytes();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(b.len());
                b[at] = b"{}[],:\"0129 .-eanul"[rng.below(19)];
            }
            text = String::from_utf8_lossy(&b).into_owned();
        }
        ok += ModelConfig::from_json("fuzz.json", &text).is_ok() as usize;
    }
    println!("fuzzed configs accepted: {ok} of 3000");
    assert!(ok > 50, "{ok}");
}

#[test]
fn absurd_numbers_are_rejected_without_panicking_or_allocating() {
    let keys: Vec<&str> = UNet2DConditionConfig::KEYS
        .iter()
        .chain(UNet2DConfig::KEYS)
        .copied()
        .collect();
    let huge = [
        "18446744073709551615",
        "4294967296",
        "1000000000",
        "1e300",
        "[18446744073709551615, 1, 1, 1]",
        "[[1000000000], [1], [1], [1]]",
    ];
    for base in [DDPM_CIFAR10, SD15, SDXL, CLASS_COND] {
        for k in &keys {
            for v in huge {
                // Only the outcome's absence of panic/hang matters; most are errors.
                let _ = ModelConfig::from_json("c", &with(base, k, v));
            }
        }
    }
    let (k, ..) = config_err(&with(SD15, "layers_per_block", "1000000"));
    assert_eq!(k, "layers_per_block[0]");
    let (k, ..) = config_err(&with(
        DDPM_CIFAR10,
        "block_out_channels",
        "[128, 256, 256, 18446744073709551615]",
    ));
    assert_eq!(k, "block_out_channels[3]");
}
