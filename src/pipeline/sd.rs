//! Stable Diffusion pipelines (text-to-image, image-to-image, few-step models) over a
//! diffusers repository; see [`super::repo`] for the layout and [`super::plan`] for memory.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use crate::error::{Error, Result};
use crate::models::config::{ModelConfig, UNetClass};
use crate::sampling::config::SchedulerConfig;
use crate::sampling::solvers::lcm::Lcm;
use crate::sampling::solvers::{
    schedule_class_for, solver_from_name, Solver, SolverOptions, ALIASES,
};
#[cfg(not(target_arch = "wasm32"))]
use crate::weights::{Header, ShardIndex, TensorInfo};

#[cfg(not(target_arch = "wasm32"))]
use super::plan::TensorList;
use super::plan::{ClipDims, PlanInputs, VaeDims};
#[cfg(not(target_arch = "wasm32"))]
use super::repo::ResolvedFiles;
use super::repo::SdRepo;

/// Scheduler config keys that replace the file's.
pub type Overrides = serde_json::Map<String, serde_json::Value>;

/// The configs of a repository, parsed and validated without touching the weights.
#[derive(Debug, Clone)]
pub struct SdConfigs {
    pub repo: SdRepo,
    pub unet: ModelConfig,
    pub vae: VaeDims,
    pub vae_json: String,
    pub clip: ClipDims,
    pub clip_json: String,
    /// `scheduler/scheduler_config.json` as read, and its `_class_name`.
    pub scheduler_json: String,
    pub scheduler_class: String,
}

impl SdConfigs {
    /// Parses every component config from its text (`read(relative path)` gives a file's
    /// contents; the front ends read a folder or fetch a URL).
    pub fn parse(repo: SdRepo, read: &mut dyn FnMut(&str) -> Result<String>) -> Result<Self> {
        let src = repo.source.trim_end_matches('/').to_string();
        let unet_file = format!("{src}/unet/config.json");
        let unet = ModelConfig::from_json(&unet_file, &read("unet/config.json")?)?;
        if unet.arch.class != UNetClass::UNet2DConditionModel {
            return Err(Error::Config {
                file: unet_file,
                key: "_class_name".into(),
                expected: "UNet2DConditionModel".into(),
                got: unet.arch.class.name().into(),
                hint: "a Stable Diffusion UNet is conditioned on the text encoder".into(),
            });
        }
        let vae_json = read("vae/config.json")?;
        let vae = VaeDims::from_json(&format!("{src}/vae/config.json"), &vae_json)?;
        let clip_json = read("text_encoder/config.json")?;
        let clip = ClipDims::from_json(&format!("{src}/text_encoder/config.json"), &clip_json)?;
        let scheduler_json = read("scheduler/scheduler_config.json")?;
        let scheduler_class = serde_json::from_str::<serde_json::Value>(&scheduler_json)
            .ok()
            .and_then(|v| v.get("_class_name")?.as_str().map(str::to_string))
            .unwrap_or_default();
        let this = Self {
            repo: repo.clone(),
            unet: unet.clone(),
            vae: vae.clone(),
            vae_json: vae_json.clone(),
            clip: clip.clone(),
            clip_json: clip_json.clone(),
            scheduler_json,
            scheduler_class,
        };
        // Validate the scheduler now, with its own class, so a bad file fails before loading.
        this.scheduler_config(None, &Overrides::new())?;
        if let Some(cross) = unet.arch.cross_attention_dim {
            if cross != clip.hidden {
                return Err(Error::Config {
                    file: format!("{src}/unet/config.json"),
                    key: "cross_attention_dim".into(),
                    expected: format!("{} (the text encoder's hidden_size)", clip.hidden),
                    got: cross.to_string(),
                    hint: "the UNet and text encoder come from different models".into(),
                });
            }
        }
        if unet.arch.in_channels != vae.latent_channels {
            return Err(Error::Config {
                file: format!("{src}/unet/config.json"),
                key: "in_channels".into(),
                expected: format!("{} (the VAE's latent_channels)", vae.latent_channels),
                got: unet.arch.in_channels.to_string(),
                hint: "the UNet and VAE come from different models".into(),
            });
        }
        Ok(this)
    }

    /// The solver the repository's scheduler names (`PNDMScheduler` → `pndm`), or `solver`.
    pub fn solver_name<'a>(&'a self, solver: Option<&'a str>) -> &'a str {
        solver.unwrap_or(&self.scheduler_class)
    }

    /// `scheduler_config.json` loaded for `solver` (default: the file's own class), keeping
    /// the file's schedule keys as `Scheduler.from_config(pipe.scheduler.config)` does.
    /// `overrides` replace keys of the file (e.g. `timestep_spacing: "trailing"` for
    /// SD-Turbo-style one-step sampling).
    pub fn scheduler_config(
        &self,
        solver: Option<&str>,
        overrides: &Overrides,
    ) -> Result<SchedulerConfig> {
        let name = self.solver_name(solver);
        let file = format!(
            "{}/scheduler/scheduler_config.json",
            self.repo.source.trim_end_matches('/')
        );
        let class = schedule_class_for(name).ok_or_else(|| Error::SchedulerConfig {
            file: file.clone(),
            key: if solver.is_some() { String::new() } else { "_class_name".into() },
            message: format!(
                "{name:?} is not a solver this engine has; pick one with --solver (see `webdiffusion solvers`)"
            ),
        })?;
        if overrides.is_empty() {
            return SchedulerConfig::from_json_str(&self.scheduler_json, &file, Some(class));
        }
        let mut v: serde_json::Value =
            serde_json::from_str(&self.scheduler_json).map_err(|e| Error::SchedulerConfig {
                file: file.clone(),
                key: String::new(),
                message: format!("is not valid JSON: {e}"),
            })?;
        if let Some(obj) = v.as_object_mut() {
            for (k, val) in overrides {
                obj.insert(k.clone(), val.clone());
            }
        }
        SchedulerConfig::from_json_value(&v, &file, Some(class))
    }

    /// The solver for `steps` steps: the repository's scheduler unless `solver` names one.
    pub fn solver(
        &self,
        solver: Option<&str>,
        overrides: &Overrides,
        steps: usize,
    ) -> Result<Box<dyn Solver>> {
        let cfg = self.scheduler_config(solver, overrides)?;
        solver_from_name(
            self.solver_name(solver),
            &cfg,
            steps,
            SolverOptions::default(),
        )
    }

    /// Whether image-to-image with `solver` follows diffusers'
    /// `LatentConsistencyModelImg2ImgPipeline` (what `AutoPipelineForImage2Image` makes of a
    /// `LatentConsistencyModelPipeline` repository): the LCM solver with `strength` applied to
    /// its distillation schedule ([`Lcm::with_strength`]) instead of the usual tail of the
    /// schedule ([`img2img_steps`]).
    pub fn lcm_img2img(&self, solver: Option<&str>) -> bool {
        let name = self.solver_name(solver);
        let name = ALIASES
            .iter()
            .find(|(a, _)| *a == name)
            .map_or(name, |(_, n)| *n);
        self.repo.pipeline_class == "LatentConsistencyModelPipeline" && name == "lcm"
    }

    /// The LCM solver of an image-to-image run at `strength` (see [`SdConfigs::lcm_img2img`]).
    pub fn lcm_img2img_solver(
        &self,
        solver: Option<&str>,
        overrides: &Overrides,
        steps: usize,
        strength: f64,
    ) -> Result<Box<dyn Solver>> {
        let cfg = self.scheduler_config(solver, overrides)?;
        Ok(Box::new(Lcm::with_strength(&cfg, steps, strength)?))
    }

    /// Plan inputs from the configs alone (no weight files needed).
    pub fn plan_inputs(&self) -> PlanInputs {
        PlanInputs::from_configs(self.unet.arch.clone(), self.vae.clone(), self.clip.clone())
    }

    /// Reads a local repository's configs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &Path) -> Result<(Self, ResolvedFiles)> {
        let (repo, files) = SdRepo::open_dir(dir)?;
        let mut read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(|e| Error::Io {
                file: p.display().to_string(),
                message: e.to_string(),
                hint: "download the whole repository",
            })
        };
        Ok((Self::parse(repo, &mut read)?, files))
    }

    /// The configs of a repository folder that holds only `model_index.json` and the
    /// component configs (no weights), e.g. tests/fixtures/sd15-configs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_configs_only(dir: &Path) -> Result<Self> {
        let index = dir.join("model_index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| Error::Io {
            file: index.display().to_string(),
            message: e.to_string(),
            hint: "point at a diffusers Stable Diffusion folder",
        })?;
        let repo = SdRepo::from_model_index(&dir.display().to_string(), &text)?;
        let mut read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(|e| Error::Io {
                file: p.display().to_string(),
                message: e.to_string(),
                hint: "the component's config.json is needed for the memory plan",
            })
        };
        Self::parse(repo, &mut read)
    }
}

/// The tensor list of a safetensors file (or a shard index next to its shards), read from
/// the headers only.
#[cfg(not(target_arch = "wasm32"))]
pub fn header_tensors(path: &Path) -> Result<TensorList> {
    use std::io::Read;
    let name = path.display().to_string();
    let io = |e: std::io::Error| Error::Io {
        file: name.clone(),
        message: e.to_string(),
        hint: "check the file exists and is readable",
    };
    if name.ends_with(".index.json") {
        let text = std::fs::read_to_string(path).map_err(io)?;
        let index = ShardIndex::parse(&name, &text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut all = Vec::new();
        for shard in index.shard_files() {
            all.extend(header_tensors(&dir.join(shard))?);
        }
        return Ok(all);
    }
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut prefix = vec![0u8; 8];
    f.read_exact(&mut prefix).map_err(io)?;
    let len = u64::from_le_bytes([
        prefix[0], prefix[1], prefix[2], prefix[3], prefix[4], prefix[5], prefix[6], prefix[7],
    ]);
    if len > crate::weights::MAX_HEADER_BYTES {
        // Header::parse reports it with the file name.
        return Header::parse(&name, &prefix).map(|_| Vec::new());
    }
    let mut rest = vec![0u8; len as usize];
    f.read_exact(&mut rest).map_err(io)?;
    prefix.extend_from_slice(&rest);
    let header = Header::parse(&name, &prefix)?.ok_or_else(|| Error::Io {
        file: name.clone(),
        message: "the safetensors header is truncated".into(),
        hint: "download the file again",
    })?;
    Ok(header
        .tensors()
        .iter()
        .map(|t: &TensorInfo| (t.name.clone(), t.shape.clone()))
        .collect())
}

/// Plan inputs for a local repository: tensor lists from the weight headers when the
/// weights are there, else from the configs.
#[cfg(not(target_arch = "wasm32"))]
pub fn plan_inputs_for_dir(dir: &Path) -> Result<PlanInputs> {
    if !dir.join("unet").join("config.json").is_file() && !dir.join("model_index.json").is_file() {
        return Err(Error::Io {
            file: dir.join("model_index.json").display().to_string(),
            message: "no such file".into(),
            hint: "point at a diffusers Stable Diffusion folder (the one holding model_index.json)",
        });
    }
    match SdConfigs::open_dir(dir) {
        Ok((cfg, files)) => {
            let mut p = cfg.plan_inputs();
            p.unet_tensors = header_tensors(&dir.join(&files.unet))?;
            p.vae_tensors = header_tensors(&dir.join(&files.vae))?;
            p.clip_tensors = header_tensors(&dir.join(&files.text_encoder))?;
            Ok(p)
        }
        // Configs only (no weights): the lists the configs imply.
        Err(Error::Io { .. }) => Ok(SdConfigs::open_configs_only(dir)?.plan_inputs()),
        Err(e) => Err(e),
    }
}

/// Image-to-image with `strength` s over an `steps`-step schedule starts at step
/// `steps − min(⌊steps·s⌋, steps)` and runs the rest (diffusers' `get_timesteps`): s = 1 is
/// text-to-image from pure noise, s → 0 keeps the image. Returns (first step, steps run).
pub fn img2img_steps(steps: usize, strength: f64) -> Result<(usize, usize)> {
    if !(0.0..=1.0).contains(&strength) || !strength.is_finite() {
        return Err(Error::invalid(
            "img2img",
            format!("strength must be between 0 and 1, got {strength}"),
        ));
    }
    let init = ((steps as f64 * strength) as usize).min(steps);
    if init == 0 {
        return Err(Error::invalid(
            "img2img",
            format!(
                "strength {strength} with {steps} steps runs no step (⌊steps·strength⌋ = 0); raise --strength or --steps"
            ),
        ));
    }
    Ok((steps - init, init))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn img2img_steps_follow_get_timesteps() {
        // The img2img golden: 5 steps at strength 0.6 run the last 3.
        assert_eq!(img2img_steps(5, 0.6).unwrap(), (2, 3));
        assert_eq!(img2img_steps(50, 1.0).unwrap(), (0, 50));
        assert_eq!(img2img_steps(4, 0.3).unwrap(), (3, 1));
        assert!(img2img_steps(4, 0.1).is_err());
        assert!(img2img_steps(4, 1.5).is_err());
    }
}
