//! The bundled default model, compiled into the native binary so that `webdiffusion sample`
//! makes a picture on a fresh machine with nothing to download: a class-conditional
//! `UNet2DModel` trained on real MNIST digits by `scripts/train/train_mnist.py` (model card:
//! `models/mnist/README.md`). The same files sit in `models/mnist/` as an ordinary diffusers
//! folder, so `--model models/mnist` loads the identical weights from disk.

use crate::error::Result;
use crate::exec::Exec;
use crate::models::{ModelConfig, UNet2DModel};
use crate::sampling::SchedulerConfig;
use crate::weights::{LoadOptions, WeightDtype, Weights};

/// Shown in errors and output.
pub const NAME: &str = "bundled MNIST digits (models/mnist)";

/// Digit labels are 0–9; label 10 is "no class", the unconditional half of classifier-free
/// guidance (the training script drops labels to it 10 % of the time).
pub const NULL_CLASS: usize = 10;

/// Classes a user may ask for.
pub const CLASSES: usize = 10;

const CONFIG: &str = include_str!("../models/mnist/config.json");
const SCHEDULER: &str = include_str!("../models/mnist/scheduler_config.json");
const WEIGHTS: &[u8] = include_bytes!("../models/mnist/diffusion_pytorch_model.safetensors");

/// The model's `config.json`, parsed.
pub fn config() -> Result<ModelConfig> {
    ModelConfig::from_json("<bundled>/models/mnist/config.json", CONFIG)
}

/// Its `scheduler_config.json` (the DDPM schedule it was trained with).
pub fn scheduler_config() -> Result<SchedulerConfig> {
    SchedulerConfig::from_json_str(
        SCHEDULER,
        "<bundled>/models/mnist/scheduler_config.json",
        None,
    )
}

/// Loads the model onto `exec`'s backend.
pub fn load(exec: &mut Exec) -> Result<UNet2DModel> {
    Ok(load_with(exec, WeightDtype::F32)?.0)
}

/// Loads the model with its Linear and Conv2d weights stored as `dtype`; also returns the
/// bytes the weights occupy on the executor.
pub fn load_with(exec: &mut Exec, dtype: WeightDtype) -> Result<(UNet2DModel, u64)> {
    let config = config()?;
    let mut weights = weights(dtype)?;
    let model = UNet2DModel::from_weights(exec, &config.arch, &mut weights, false)?;
    Ok((model, weights.device_bytes()))
}

/// The embedded checkpoint, its Linear and Conv2d weights to be stored as `dtype` (build the
/// model with `UNet2DModel::from_weights(exec, &config()?.arch, &mut w, false)`; afterwards
/// `w.device_bytes()` tells what the weights occupy).
pub fn weights(dtype: WeightDtype) -> Result<Weights> {
    let mut w = Weights::from_bytes(
        "<bundled>/models/mnist/diffusion_pytorch_model.safetensors",
        WEIGHTS,
        &LoadOptions::default(),
    )?;
    w.set_weight_dtype(dtype);
    Ok(w)
}

/// Size of the embedded weights file in bytes.
pub fn weight_bytes() -> usize {
    WEIGHTS.len()
}
