//! A Stable Diffusion repository in diffusers' layout: `model_index.json` naming the
//! components, each in its own folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
//! `scheduler/`). The same description serves a local folder and a URL prefix: the loader
//! asks [`SdRepo::files`] which paths to read and [`SdRepo::check_files`] names the first
//! one that is missing, before anything large is read.

use serde_json::Value;

use crate::error::{Error, Result};

/// One entry of `model_index.json`: `"unet": ["diffusers", "UNet2DConditionModel"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The folder and key (`unet`, `vae`, …).
    pub name: &'static str,
    pub library: String,
    pub class: String,
}

/// The parts a text-to-image pipeline needs and the classes this engine runs for each.
pub const COMPONENTS: &[(&str, &[&str])] = &[
    ("unet", &["UNet2DConditionModel"]),
    ("vae", &["AutoencoderKL"]),
    ("text_encoder", &["CLIPTextModel"]),
    ("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"]),
    ("scheduler", &[]),
];

/// Pipeline classes whose components are laid out as above.
pub const PIPELINES: &[&str] = &[
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "LatentConsistencyModelPipeline",
];

/// Weight file names a component may use, in the order diffusers prefers them (a single
/// file before a shard index, the plain variant before fp16).
pub fn weight_candidates(component: &str) -> &'static [&'static str] {
    match component {
        "text_encoder" => &[
            "model.safetensors",
            "model.safetensors.index.json",
            "model.fp16.safetensors",
            "model.fp16.safetensors.index.json",
        ],
        _ => &[
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model.fp16.safetensors",
            "diffusion_pytorch_model.fp16.safetensors.index.json",
        ],
    }
}

/// A parsed `model_index.json`.
#[derive(Debug, Clone)]
pub struct SdRepo {
    /// Where it came from (a folder or URL), for messages.
    pub source: String,
    pub pipeline_class: String,
    pub unet: Component,
    pub vae: Component,
    pub text_encoder: Component,
    pub tokenizer: Component,
    pub scheduler: Component,
}

/// One file a component needs: a fixed path, or the first of several weight files present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needed {
    File(String),
    OneOf(Vec<String>),
}

impl SdRepo {
    /// Parses `model_index.json` (`source` names the repository in errors). A missing or
    /// `null` component names itself; a component class this engine does not run names the
    /// class and what it takes.
    pub fn from_model_index(source: &str, text: &str) -> Result<Self> {
        let file = format!("{}/model_index.json", source.trim_end_matches('/'));
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Io {
            file: file.clone(),
            message: format!("not valid JSON: {e}"),
            hint: "a diffusers pipeline folder has a model_index.json written by save_pretrained",
        })?;
        let obj = v.as_object().ok_or_else(|| Error::Io {
            file: file.clone(),
            message: "expected a JSON object".into(),
            hint: "a diffusers pipeline folder has a model_index.json written by save_pretrained",
        })?;
        let class = obj
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !PIPELINES.contains(&class.as_str()) {
            return Err(config_err(
                &file,
                "_class_name",
                format!("one of {}", PIPELINES.join(", ")),
                format!("\"{class}\""),
                "this engine runs Stable Diffusion 1.x/2.x-style pipelines (UNet2DConditionModel + AutoencoderKL + CLIPTextModel)",
            ));
        }
        let mut found = Vec::new();
        for (name, classes) in COMPONENTS {
            let entry = obj.get(*name).and_then(Value::as_array);
            let (lib, cls) = match entry.map(|a| (a.first(), a.get(1))) {
                Some((Some(Value::String(l)), Some(Value::String(c)))) => (l.clone(), c.clone()),
                _ => {
                    return Err(config_err(
                        &file,
                        name,
                        format!("[\"<library>\", \"<class>\"] for the `{name}` component"),
                        entry.map_or("nothing".into(), |a| Value::Array(a.clone()).to_string()),
                        "the repository is missing a component this pipeline needs; use a complete Stable Diffusion repository",
                    ))
                }
            };
            if !classes.is_empty() && !classes.contains(&cls.as_str()) {
                return Err(config_err(
                    &file,
                    name,
                    format!("class {}", classes.join(" or ")),
                    format!("\"{cls}\""),
                    "this engine has no implementation of that component class",
                ));
            }
            found.push(Component {
                name,
                library: lib,
                class: cls,
            });
        }
        let mut it = found.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| Error::invalid("sd repo", "component list"))
        };
        Ok(Self {
            source: source.to_string(),
            pipeline_class: class,
            unet: next()?,
            vae: next()?,
            text_encoder: next()?,
            tokenizer: next()?,
            scheduler: next()?,
        })
    }

    /// Every file the pipeline reads, per component, relative to the repository root.
    pub fn files(&self) -> Vec<(&'static str, Needed)> {
        let mut v = Vec::new();
        for c in ["unet", "vae", "text_encoder"] {
            v.push((c, Needed::File(format!("{c}/config.json"))));
            let ws = weight_candidates(c).iter().map(|f| format!("{c}/{f}"));
            v.push((c, Needed::OneOf(ws.collect())));
        }
        v.push(("tokenizer", Needed::File("tokenizer/vocab.json".into())));
        v.push(("tokenizer", Needed::File("tokenizer/merges.txt".into())));
        v.push((
            "scheduler",
            Needed::File("scheduler/scheduler_config.json".into()),
        ));
        v
    }

    /// Checks that every needed file exists (`exists(relative path)`), naming the component
    /// and the file(s) looked for when one is missing. Returns the weight file chosen for
    /// each of unet, vae and text_encoder.
    pub fn check_files(&self, exists: impl Fn(&str) -> bool) -> Result<ResolvedFiles> {
        let mut weights = Vec::new();
        for (component, needed) in self.files() {
            match needed {
                Needed::File(f) => {
                    if !exists(&f) {
                        return Err(missing(&self.source, component, &f));
                    }
                }
                Needed::OneOf(fs) => match fs.iter().find(|f| exists(f)) {
                    Some(f) => weights.push(f.clone()),
                    None => return Err(missing(&self.source, component, &fs.join(" or "))),
                },
            }
        }
        match <[String; 3]>::try_from(weights) {
            Ok([unet, vae, text_encoder]) => Ok(ResolvedFiles {
                unet,
                vae,
                text_encoder,
            }),
            Err(_) => Err(Error::invalid("sd repo", "weight file list")),
        }
    }

    /// Reads `model_index.json` from a local folder and checks every component's files.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<(Self, ResolvedFiles)> {
        let index = dir.join("model_index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| Error::Io {
            file: index.display().to_string(),
            message: e.to_string(),
            hint: "point --model at a diffusers Stable Diffusion folder (the one holding model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
        })?;
        let repo = Self::from_model_index(&dir.display().to_string(), &text)?;
        let files = repo.check_files(|f| dir.join(f).is_file())?;
        Ok((repo, files))
    }
}

/// The weight file picked for each model component (relative paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFiles {
    pub unet: String,
    pub vae: String,
    pub text_encoder: String,
}

/// Whether a `model_index.json` text describes a pipeline this module loads (for front
/// ends that must tell an SD repository from a single UNet).
pub fn is_sd_model_index(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| {
            v.get("_class_name")?
                .as_str()
                .map(|c| PIPELINES.contains(&c))
        })
        .unwrap_or(false)
}

fn missing(source: &str, component: &str, file: &str) -> Error {
    Error::Io {
        file: format!("{}/{file}", source.trim_end_matches('/')),
        message: format!("the `{component}` component's file is missing"),
        hint: "download the whole repository (every component folder of model_index.json)",
    }
}

fn config_err(file: &str, key: &str, expected: String, got: String, hint: &str) -> Error {
    Error::Config {
        file: file.to_string(),
        key: key.to_string(),
        expected,
        got,
        hint: hint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{"_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [null, null]}"#;

    #[test]
    fn parses_and_resolves() {
        let r = SdRepo::from_model_index("r", INDEX).unwrap();
        assert_eq!(r.scheduler.class, "PNDMScheduler");
        let files = r
            .check_files(|f| !f.contains(".fp16") && !f.ends_with(".index.json"))
            .unwrap();
        assert_eq!(files.text_encoder, "text_encoder/model.safetensors");
        // The fp16 variant when the plain file is absent.
        let files = r
            .check_files(|f| f != "unet/diffusion_pytorch_model.safetensors")
            .unwrap();
        assert_eq!(
            files.unet,
            "unet/diffusion_pytorch_model.safetensors.index.json"
        );
    }

    #[test]
    fn missing_component_and_file_are_named() {
        let idx = INDEX.replace("\"vae\": [\"diffusers\", \"AutoencoderKL\"],", "");
        let e = SdRepo::from_model_index("r", &idx).unwrap_err().to_string();
        assert!(e.contains("`vae`") && e.contains("model_index.json"), "{e}");
        let idx = INDEX.replace("AutoencoderKL", "VQModel");
        let e = SdRepo::from_model_index("r", &idx).unwrap_err().to_string();
        assert!(e.contains("VQModel") && e.contains("AutoencoderKL"), "{e}");
        let r = SdRepo::from_model_index("r", INDEX).unwrap();
        let e = r
            .check_files(|f| f != "tokenizer/merges.txt")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r/tokenizer/merges.txt") && e.contains("`tokenizer`"),
            "{e}"
        );
        assert!(!is_sd_model_index("{\"_class_name\": \"UNet2DModel\"}"));
        assert!(is_sd_model_index(INDEX));
    }
}
