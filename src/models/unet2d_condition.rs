//! diffusers' `UNet2DConditionModel` (`src/diffusers/models/unets/unet_2d_condition.py` at
//! 0.42.1): the shared [`UNet`] core with `CrossAttnDownBlock2D`, `CrossAttnUpBlock2D` and
//! `UNetMidBlock2DCrossAttn` running [`Transformer2D`](crate::nn::Transformer2D)s on the
//! encoder hidden states (Stable Diffusion 1.x/2.x style). LCM-distilled UNets
//! (`time_cond_proj_dim` set) run too: their `time_embedding.cond_proj` adds the projected
//! guidance-scale embedding (`timestep_cond`, [`Conditioning::timestep_cond`] or
//! [`set_timestep_cond`](UNet2DConditionModel::set_timestep_cond)) to the timestep features.
//! Options that change the computation and are not implemented are rejected by the config
//! parser, naming them (`only_cross_attention`, `addition_embed_type`, `encoder_hid_dim`,
//! `class_embed_type`, `dual_cross_attention`, `attention_type`, …). `upcast_attention` is
//! accepted: it only changes fp16 runs, and this engine computes attention in f32.

use std::path::Path;

use super::config::{ModelConfig, UNetArch, UNetClass};
use super::unet2d::{check_class, Conditioning, UNet};
use crate::error::Result;
use crate::exec::Exec;
use crate::sampling::solvers::Denoiser;
use crate::tensor::Tensor;
use crate::weights::{LoadOptions, Weights};

/// A loaded `UNet2DConditionModel` ([`UNet`] with the class checked).
pub struct UNet2DConditionModel(UNet);

impl UNet2DConditionModel {
    /// Loads a diffusers `UNet2DConditionModel` folder; see [`UNet::load_dir`].
    pub fn load_dir(exec: &mut Exec, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        check_class(&config.arch, UNetClass::UNet2DConditionModel)?;
        let mut weights = Weights::load_model_dir(dir, &LoadOptions::default(), |_| {})?;
        Self::from_weights(exec, &config.arch, &mut weights, false)
    }

    /// See [`UNet::from_weights`].
    pub fn from_weights(
        exec: &mut Exec,
        arch: &UNetArch,
        w: &mut Weights,
        allow_extra: bool,
    ) -> Result<Self> {
        check_class(arch, UNetClass::UNet2DConditionModel)?;
        Ok(Self(UNet::from_weights(exec, arch, w, allow_extra)?))
    }

    pub fn arch(&self) -> &UNetArch {
        self.0.arch()
    }

    /// Class labels for [`Denoiser::denoise`] (models with `num_class_embeds`).
    pub fn set_class_labels(&mut self, labels: Option<Vec<usize>>) {
        self.0.set_class_labels(labels);
    }

    /// Encoder hidden states (N, L, cross_attention_dim) for [`Denoiser::denoise`].
    pub fn set_encoder_hidden_states(
        &mut self,
        exec: &mut Exec,
        states: Option<&Tensor>,
    ) -> Result<()> {
        self.0.set_encoder_hidden_states(exec, states)
    }

    /// The guidance embedding (N or 1, time_cond_proj_dim) for [`Denoiser::denoise`]; see
    /// [`UNet::set_timestep_cond`].
    pub fn set_timestep_cond(&mut self, exec: &mut Exec, cond: Option<&Tensor>) -> Result<()> {
        self.0.set_timestep_cond(exec, cond)
    }

    /// Runs the network once with every input diffusers' `forward` takes here
    /// (`timestep_cond` included); see [`UNet::run`].
    pub fn run(
        &self,
        exec: &mut Exec,
        sample: &Tensor,
        timesteps: &[f64],
        cond: Conditioning<'_>,
    ) -> Result<Tensor> {
        self.0.run(exec, sample, timesteps, cond)
    }

    /// Runs the network once. `timesteps`: one for the whole batch or one per sample.
    pub fn forward(
        &self,
        exec: &mut Exec,
        sample: &Tensor,
        timesteps: &[f64],
        encoder_hidden_states: &Tensor,
        class_labels: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.forward_traced(
            exec,
            sample,
            timesteps,
            encoder_hidden_states,
            class_labels,
            &mut |_, _| {},
        )
    }

    /// See [`UNet::run_traced`].
    pub fn forward_traced(
        &self,
        exec: &mut Exec,
        sample: &Tensor,
        timesteps: &[f64],
        encoder_hidden_states: &Tensor,
        class_labels: Option<&[usize]>,
        trace: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor> {
        let cond = Conditioning {
            class_labels,
            encoder_hidden_states: Some(encoder_hidden_states),
            timestep_cond: None,
        };
        self.0.run_traced(exec, sample, timesteps, cond, trace)
    }

    pub fn into_inner(self) -> UNet {
        self.0
    }
}

impl Denoiser for UNet2DConditionModel {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        self.0.denoise(exec, x, timestep)
    }
}
