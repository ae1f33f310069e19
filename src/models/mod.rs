//! UNet variants wired from diffusers `config.json` (the configs live in [`config`]).

pub mod config;
pub mod unet2d;

pub use config::ModelConfig;
pub use unet2d::UNet2DModel;
