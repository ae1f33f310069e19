//! UNet variants wired from diffusers `config.json` (the configs live in [`config`]).

pub mod clip;
pub mod config;
pub mod guided;
pub mod info;
pub mod mixer;
pub mod taesd;
pub mod unet2d;
pub mod unet2d_condition;
pub mod vae;

pub use config::ModelConfig;
pub use guided::{GuidedConfig, GuidedUNet};
pub use mixer::{MixerConfig, MixerScoreNet};
pub use taesd::{TaesdConfig, TinyDecoder};
pub use unet2d::{Conditioning, UNet, UNet2DModel};
pub use unet2d_condition::UNet2DConditionModel;
pub use vae::{AutoencoderKl, VaeConfig, VaeTiles};

/// The `_class_name` of a model's config.json text (`None` when it is not JSON or has
/// none): how the CLI and the browser engine tell a diffusers UNet folder from the
/// galaxy ([`mixer::CLASS_NAME`]) and terrain ([`guided::CLASS_NAME`]) networks.
pub fn class_name_of(config_json: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(config_json)
        .ok()?
        .get("_class_name")?
        .as_str()
        .map(str::to_string)
}
