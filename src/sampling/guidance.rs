//! Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, eq. 6 in ε form):
//! `ε̃ = ε_u + w·(ε_c − ε_u)`, with optional guidance rescale (Lin et al. 2023, "Common
//! Diffusion Noise Schedules and Sample Steps are Flawed", arXiv:2305.08891, eqs. 15–16, as
//! diffusers' `rescale_noise_cfg` applies them):
//! ```text
//! ε_rescaled = ε̃ · std(ε_c) / std(ε̃)          (eq. 15; std per sample over all other dims,
//!                                                with Bessel's correction, as torch.std)
//! ε_final    = φ·ε_rescaled + (1 − φ)·ε̃        (eq. 16; φ = guidance_rescale)
//! ```
//! Symbols: w = `scale` (diffusers' `guidance_scale`), φ = `rescale`, ε_c / ε_u = the model
//! output with / without the condition (whatever the model predicts: ε, v or x₀).
//!
//! [`Guided`] runs the unconditional and conditional passes as **one** batched forward, as
//! diffusers pipelines do: x is repeated as `cat([x, x])` (uncond first, then cond) and the
//! inner model must be conditioned on the matching `cat([uncond, cond])` batch;
//! [`Guided::for_unet`] sets that up for a [`UNet`]. The combination is one `SolverUpdate`
//! dispatch; the rescale adds two per-sample std reductions and three small ops.
//!
//! Class-conditional models (`num_class_embeds`): there is no universal "no class" label;
//! the caller gives the unconditional labels explicitly (e.g. the extra null class a model was
//! trained with, as DiT's `num_classes` index), each checked against the embedding size like
//! any label.

use super::solvers::Denoiser;
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::models::{Conditioning, UNet};
use crate::ops::{Binary, BinaryOp, Concat, SampleStd, SliceBatch, SolverUpdate, Unary};
use crate::tensor::Tensor;

/// A denoiser with classifier-free guidance around an inner model that takes the doubled
/// (uncond, cond) batch; see the module docs.
pub struct Guided<D> {
    inner: D,
    /// w (diffusers' `guidance_scale`).
    pub scale: f64,
    /// φ (diffusers' `guidance_rescale`), in [0, 1]; 0 disables the rescale.
    pub rescale: f64,
    /// Offer solvers the (uncond, cond) pair so they fold the combination into their
    /// update (default; see [`Denoiser::denoise_guided_pair`]). False forces the separate
    /// combine (the reference the fused path is tested against).
    pub fused: bool,
}

impl<D: Denoiser> Guided<D> {
    /// `inner` must already be conditioned on `cat([uncond, cond])` for a doubled batch.
    pub fn new(inner: D, scale: f64) -> Result<Self> {
        check_finite("guidance scale", scale)?;
        Ok(Self {
            inner,
            scale,
            rescale: 0.0,
            fused: true,
        })
    }

    /// Sets φ = `guidance_rescale` (0 to 1).
    pub fn with_rescale(mut self, rescale: f64) -> Result<Self> {
        check_finite("guidance_rescale", rescale)?;
        if !(0.0..=1.0).contains(&rescale) {
            return Err(Error::invalid(
                "guidance",
                format!("guidance_rescale must be between 0 and 1, got {rescale}"),
            ));
        }
        self.rescale = rescale;
        Ok(self)
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }
}

fn check_finite(what: &str, v: f64) -> Result<()> {
    if !v.is_finite() {
        return Err(Error::invalid(
            "guidance",
            format!("{what} must be finite, got {v}"),
        ));
    }
    Ok(())
}

impl Guided<UNet> {
    /// Conditions `unet` on `cat([uncond, cond])` (encoder hidden states concatenated along
    /// the batch, labels appended) and wraps it. `cond` and `uncond` must give the same kinds
    /// of conditioning, each for the N samples that will be denoised; their encoder hidden
    /// states must have the same length L (pipelines pad both prompts to one length).
    pub fn for_unet(
        exec: &mut Exec,
        mut unet: UNet,
        cond: Conditioning<'_>,
        uncond: Conditioning<'_>,
        scale: f64,
    ) -> Result<Self> {
        let ehs = batch_pair(
            exec,
            "encoder_hidden_states",
            uncond.encoder_hidden_states,
            cond.encoder_hidden_states,
        )?;
        let labels = match (uncond.class_labels, cond.class_labels) {
            (Some(u), Some(c)) => {
                if u.len() != c.len() {
                    return Err(Error::invalid(
                        "guidance",
                        format!(
                            "{} unconditional class labels for {} conditional ones",
                            u.len(),
                            c.len()
                        ),
                    ));
                }
                Some([u, c].concat())
            }
            (None, None) => None,
            _ => {
                return Err(Error::invalid(
                    "guidance",
                    "give class labels for both the conditional and the unconditional pass (e.g. the model's null class), or for neither",
                ))
            }
        };
        // LCM's guidance embedding (pipelines do not combine it with CFG, as diffusers, but a
        // caller may): batched like the hidden states.
        let t_cond = batch_pair(
            exec,
            "timestep_cond",
            uncond.timestep_cond,
            cond.timestep_cond,
        )?;
        unet.set_encoder_hidden_states(exec, ehs.as_ref())?;
        unet.set_timestep_cond(exec, t_cond.as_ref())?;
        unet.set_class_labels(labels);
        Self::new(unet, scale)
    }
}

impl<D: Denoiser> Guided<D> {
    /// The inner model on `cat([x, x])`: `cat([ε_u, ε_c])`.
    fn pair(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let n = x.shape().first().copied().unwrap_or(0);
        let xx = exec.run(&Concat::new(0), &[x, x])?;
        let out = self.inner.denoise(exec, &xx, timestep)?;
        if out.shape().first() != Some(&(2 * n)) {
            return Err(Error::shape(
                "guidance",
                "model output",
                format!("a batch of {} (uncond then cond for {n} samples)", 2 * n),
                out.shape(),
            ));
        }
        Ok(out)
    }
}

impl<D: Denoiser> Denoiser for Guided<D> {
    fn denoise(&mut self, exec: &mut Exec, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let out = self.pair(exec, x, timestep)?;
        guidance_combine(exec, &out, self.scale, self.rescale)
    }

    fn denoise_guided_pair(
        &mut self,
        exec: &mut Exec,
        x: &Tensor,
        timestep: f64,
    ) -> Result<Option<(Tensor, f64)>> {
        if !self.fused || self.rescale != 0.0 {
            return Ok(None);
        }
        Ok(Some((self.pair(exec, x, timestep)?, self.scale)))
    }
}

/// `out2` (2N, …) = `cat([ε_u, ε_c])` → (N, …) guided output with scale w and rescale φ;
/// see the module docs.
pub fn guidance_combine(
    exec: &mut Exec,
    out2: &Tensor,
    scale: f64,
    rescale: f64,
) -> Result<Tensor> {
    let s = out2.shape();
    let n = match s.first() {
        Some(&b) if b >= 2 && b % 2 == 0 => b / 2,
        _ => {
            return Err(Error::shape(
                "guidance",
                "model output",
                "(2N, …): the unconditional then the conditional batch",
                s,
            ))
        }
    };
    let uncond = exec.run(&SliceBatch::new(0, n), &[out2])?;
    let cond = exec.run(&SliceBatch::new(n, n), &[out2])?;
    let cfg = exec.run(
        &SolverUpdate::linear(&[1.0 - scale, scale]),
        &[&uncond, &cond],
    )?;
    if rescale == 0.0 {
        return Ok(cfg);
    }
    let std_c = exec.run(&SampleStd, &[&cond])?;
    let std_g = exec.run(&SampleStd, &[&cfg])?;
    let ratio = exec.run(&Binary::new(BinaryOp::Div), &[&std_c, &std_g])?;
    // φ·std_c/std_g + (1 − φ): eq. 16 as one per-sample factor on ε̃.
    let factor = exec.run(
        &Unary::affine(rescale as f32, (1.0 - rescale) as f32),
        &[&ratio],
    )?;
    let m = cfg.numel() / n;
    let out = exec.run(
        &Binary::new(BinaryOp::Mul),
        &[&cfg.reshape(&[n, m])?, &factor.reshape(&[n, 1])?],
    )?;
    out.reshape(cfg.shape())
}

/// The unconditional and conditional `what` stacked on the batch axis (uncond first), as the
/// doubled batch of classifier-free guidance takes it; both or neither must be given, of one
/// shape.
fn batch_pair(
    exec: &mut Exec,
    what: &str,
    uncond: Option<&Tensor>,
    cond: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    match (uncond, cond) {
        (Some(u), Some(c)) => {
            if u.shape() != c.shape() {
                return Err(Error::shape(
                    "guidance",
                    format!("unconditional {what}"),
                    format!("{:?} like the conditional one", c.shape()),
                    u.shape(),
                ));
            }
            let (u, c) = (exec.upload(u)?, exec.upload(c)?);
            Ok(Some(exec.run(&Concat::new(0), &[&u, &c])?))
        }
        (None, None) => Ok(None),
        _ => Err(Error::invalid(
            "guidance",
            format!(
                "give {what} for both the conditional and the unconditional pass, or for neither"
            ),
        )),
    }
}
