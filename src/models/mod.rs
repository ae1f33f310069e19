//! UNet variants wired from diffusers `config.json` (the configs live in [`config`]).

pub mod clip;
pub mod config;
pub mod guided;
pub mod info;
pub mod mixer;
pub mod unet2d;
pub mod unet2d_condition;
pub mod vae;

pub use config::ModelConfig;
pub use guided::{GuidedConfig, GuidedUNet};
pub use mixer::{MixerConfig, MixerScoreNet};
pub use unet2d::{Conditioning, UNet, UNet2DModel};
pub use unet2d_condition::UNet2DConditionModel;
pub use vae::{AutoencoderKl, VaeConfig};
