//! diffusers' `scheduler_config.json`: the file users find next to model weights.
//!
//! Loading follows `ConfigMixin.from_config` / `extract_init_dict` (diffusers 0.42.1,
//! configuration_utils.py): the keys the *target* class's `__init__` takes are read (the
//! target is `_class_name` unless the caller names another class, as
//! `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)` does), keys listed in
//! `_use_default_values` fall back to the target's defaults, `_`-prefixed keys are private,
//! and every other key is ignored. diffusers still registers those other keys on the config,
//! and `_convert_to_karras`/`_exponential`/`_beta` look `sigma_min`/`sigma_max` up with
//! `hasattr`, so a DPM-Solver loaded from a config that carries `sigma_min` uses it: this
//! loader does the same.
//!
//! Keys that do not change the schedule (solver order, thresholding, clipping, …) are kept
//! verbatim in [`SchedulerConfig::other`] for the solvers and logged at `info` level.
//! Values the schedule cannot use are errors that name the file, the key, the value and the
//! valid options.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::schedule::{
    BetaSchedule, FinalSigmas, InterpolationType, PredictionType, SchedulerClass, SigmaSchedule,
    TimestepSpacing, TimestepType,
};
use crate::error::{Error, Result};

/// Every option of diffusers' schedulers that shapes the noise schedule, for one scheduler
/// class. [`SchedulerConfig::new`] gives that class's diffusers defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub class: SchedulerClass,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Given betas, which replace `beta_schedule` (cast to float32 as diffusers does).
    pub trained_betas: Option<Vec<f64>>,
    pub rescale_betas_zero_snr: bool,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub prediction_type: PredictionType,
    /// EulerDiscrete only.
    pub interpolation_type: InterpolationType,
    /// `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas` / `use_lu_lambdas` /
    /// `use_flow_sigmas` as one choice (diffusers rejects more than one of the first three).
    pub sigma_schedule: SigmaSchedule,
    pub flow_shift: f64,
    /// `shift_terminal` of UniPC's flow sigmas.
    pub shift_terminal: Option<f64>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_type: TimestepType,
    pub final_sigmas_type: FinalSigmas,
    /// DPM-Solver: timesteps whose λ = log(α/σ) is below this are skipped (DeepFloyd IF).
    pub lambda_min_clipped: f64,
    /// DDIM: the "previous" ᾱ of the last step is 1 (else ᾱ₀).
    pub set_alpha_to_one: bool,
    /// EDM: σ_data of Karras et al. (2022).
    pub sigma_data: f64,
    /// EDM: ρ of the Karras sigma ramp.
    pub rho: f64,
    /// Keys that do not shape the schedule (the solvers read them), as found in the file.
    pub other: BTreeMap<String, Value>,
}

impl SchedulerConfig {
    /// diffusers' defaults for `class` (its `__init__` signature).
    pub fn new(class: SchedulerClass) -> Self {
        let edm = class == SchedulerClass::EdmEuler;
        SchedulerConfig {
            class,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            rescale_betas_zero_snr: false,
            timestep_spacing: match class {
                SchedulerClass::Ddim | SchedulerClass::Ddpm => TimestepSpacing::Leading,
                _ => TimestepSpacing::Linspace,
            },
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            interpolation_type: InterpolationType::Linear,
            sigma_schedule: if edm {
                SigmaSchedule::Karras
            } else {
                SigmaSchedule::Interpolated
            },
            flow_shift: 1.0,
            shift_terminal: None,
            sigma_min: edm.then_some(0.002),
            sigma_max: edm.then_some(80.0),
            timestep_type: TimestepType::Discrete,
            final_sigmas_type: FinalSigmas::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            set_alpha_to_one: true,
            sigma_data: 0.5,
            rho: 7.0,
            other: BTreeMap::new(),
        }
    }

    /// Reads a `scheduler_config.json` file; see [`SchedulerConfig::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>, class: Option<SchedulerClass>) -> Result<Self> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::SchedulerConfig {
            file: file.clone(),
            key: String::new(),
            message: format!("cannot be read: {e}"),
        })?;
        Self::from_json_str(&text, &file, class)
    }

    /// Parses a diffusers scheduler config. `file` names the source in errors. `class` picks
    /// the scheduler whose keys and defaults apply (`None`: the file's `_class_name`).
    /// Python's `Infinity`, `-Infinity` and `NaN`, which diffusers writes for infinite
    /// floats, are accepted.
    pub fn from_json_str(text: &str, file: &str, class: Option<SchedulerClass>) -> Result<Self> {
        let value: Value = serde_json::from_str(&quote_nonfinite_tokens(text)).map_err(|e| {
            Error::SchedulerConfig {
                file: file.to_string(),
                key: String::new(),
                message: format!("is not valid JSON: {e}"),
            }
        })?;
        Self::from_json_value(&value, file, class)
    }

    /// As [`SchedulerConfig::from_json_str`], from parsed JSON.
    pub fn from_json_value(
        value: &Value,
        file: &str,
        class: Option<SchedulerClass>,
    ) -> Result<Self> {
        let err = |key: &str, message: String| Error::SchedulerConfig {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        let map = value
            .as_object()
            .ok_or_else(|| err("", format!("must be a JSON object, got {}", kind(value))))?;
        let class = match class {
            Some(c) => c,
            None => match map.get("_class_name") {
                Some(Value::String(name)) => SchedulerClass::from_name(name).ok_or_else(|| {
                    err(
                        "_class_name",
                        format!(
                            "is \"{name}\", which has no schedule here; supported: {} (or load it as one of them)",
                            list(SchedulerClass::ALL.iter().map(|c| c.name()))
                        ),
                    )
                })?,
                Some(v) => {
                    return Err(err(
                        "_class_name",
                        format!("must be a string, got {}", kind(v)),
                    ))
                }
                None => {
                    return Err(err(
                        "_class_name",
                        "is missing; name the scheduler class to load the config as".into(),
                    ))
                }
            },
        };

        let mut cfg = SchedulerConfig::new(class);
        let defaults_used: Vec<&str> = match map.get("_use_default_values") {
            Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut sigma_flags = SigmaFlags::default();
        let mut ignored = Vec::new();
        for (key, v) in map {
            if key.starts_with('_') || defaults_used.contains(&key.as_str()) {
                continue;
            }
            let used = class.init_keys().contains(&key.as_str())
                // Read through `hasattr(self.config, ...)` by every class with converted sigmas.
                || (class.has_sigmas() && matches!(key.as_str(), "sigma_min" | "sigma_max"));
            if !used || !cfg.read_key(key, v, &mut sigma_flags, &err)? {
                ignored.push(key.clone());
                cfg.other.insert(key.clone(), v.clone());
            }
        }
        if !ignored.is_empty() {
            log::info!(
                "{file}: {} do not shape the noise schedule of {} and are left to the solver",
                list(ignored.iter().map(String::as_str)),
                class.name()
            );
        }
        if class != SchedulerClass::EdmEuler {
            cfg.sigma_schedule = sigma_flags.resolve(class, &err)?;
        }
        cfg.validate().map_err(|message| err("", message))?;
        Ok(cfg)
    }

    /// Reads one key the class takes. Returns false for keys that are taken by the class's
    /// `__init__` but do not shape the schedule.
    fn read_key(
        &mut self,
        key: &str,
        v: &Value,
        flags: &mut SigmaFlags,
        err: &dyn Fn(&str, String) -> Error,
    ) -> Result<bool> {
        let class = self.class;
        match key {
            "num_train_timesteps" => {
                let n = int(key, v, err)?;
                if n < 1 {
                    return Err(err(key, format!("must be at least 1, got {n}")));
                }
                self.num_train_timesteps = n as usize;
            }
            "beta_start" => self.beta_start = float(key, v, err)?,
            "beta_end" => self.beta_end = float(key, v, err)?,
            "beta_schedule" => {
                self.beta_schedule = choice(key, v, class.beta_schedules(), class, err)?
            }
            "trained_betas" => {
                self.trained_betas = match v {
                    Value::Null => None,
                    Value::Array(items) => Some(
                        items
                            .iter()
                            .enumerate()
                            .map(|(i, x)| float(&format!("trained_betas[{i}]"), x, err))
                            .collect::<Result<_>>()?,
                    ),
                    _ => {
                        return Err(err(
                            key,
                            format!("must be null or a list of numbers, got {}", kind(v)),
                        ))
                    }
                }
            }
            "rescale_betas_zero_snr" => self.rescale_betas_zero_snr = boolean(key, v, err)?,
            "timestep_spacing" => {
                self.timestep_spacing = choice(key, v, TimestepSpacing::OPTIONS, class, err)?
            }
            "steps_offset" => self.steps_offset = int(key, v, err)?,
            "prediction_type" => {
                self.prediction_type = choice(key, v, class.prediction_types(), class, err)?
            }
            "interpolation_type" => {
                self.interpolation_type = choice(key, v, InterpolationType::OPTIONS, class, err)?
            }
            "use_karras_sigmas" => flags.karras = boolean(key, v, err)?,
            "use_exponential_sigmas" => flags.exponential = boolean(key, v, err)?,
            "use_beta_sigmas" => flags.beta = boolean(key, v, err)?,
            "use_lu_lambdas" => flags.lu = boolean(key, v, err)?,
            "use_flow_sigmas" => flags.flow = boolean(key, v, err)?,
            "use_dynamic_shifting" => {
                if boolean(key, v, err)? {
                    return Err(err(
                        key,
                        "is true: dynamic shifting needs a per-image `mu` at set_timesteps, which this crate does not take yet; set it to false".into(),
                    ));
                }
            }
            "flow_shift" => self.flow_shift = float(key, v, err)?,
            "shift_terminal" => self.shift_terminal = optional_float(key, v, err)?,
            "sigma_min" => self.sigma_min = optional_float(key, v, err)?.or(self.sigma_min),
            "sigma_max" => self.sigma_max = optional_float(key, v, err)?.or(self.sigma_max),
            "timestep_type" => {
                self.timestep_type = choice(key, v, TimestepType::OPTIONS, class, err)?
            }
            "final_sigmas_type" => {
                self.final_sigmas_type = choice(key, v, FinalSigmas::OPTIONS, class, err)?
            }
            "lambda_min_clipped" => self.lambda_min_clipped = float(key, v, err)?,
            "set_alpha_to_one" => self.set_alpha_to_one = boolean(key, v, err)?,
            "sigma_data" => self.sigma_data = float(key, v, err)?,
            "rho" => self.rho = float(key, v, err)?,
            "sigma_schedule" => {
                self.sigma_schedule = choice(key, v, SigmaSchedule::EDM_OPTIONS, class, err)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the combination of options; the message says what to change.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let class = self.class;
        if self.num_train_timesteps == 0 {
            return Err("`num_train_timesteps` must be at least 1".into());
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return Err(format!(
                    "`trained_betas` has {} values but `num_train_timesteps` is {}",
                    b.len(),
                    self.num_train_timesteps
                ));
            }
            if let Some(i) = b.iter().position(|x| !(0.0..=1.0).contains(x)) {
                return Err(format!("`trained_betas[{i}]` is {}, outside [0, 1]", b[i]));
            }
        }
        if !class
            .beta_schedules()
            .iter()
            .any(|(_, s)| *s == self.beta_schedule)
        {
            return Err(format!(
                "`beta_schedule` \"{}\" is not available for {}; valid: {}",
                self.beta_schedule.name(),
                class.name(),
                list(class.beta_schedules().iter().map(|(n, _)| *n))
            ));
        }
        if !class
            .prediction_types()
            .iter()
            .any(|(_, p)| *p == self.prediction_type)
        {
            return Err(format!(
                "`prediction_type` \"{}\" is not available for {}; valid: {}",
                self.prediction_type.name(),
                class.name(),
                list(class.prediction_types().iter().map(|(n, _)| *n))
            ));
        }
        if !class.sigma_schedules().contains(&self.sigma_schedule) {
            return Err(format!(
                "{} cannot use {} sigmas; it takes {}",
                class.name(),
                self.sigma_schedule.name(),
                list(class.sigma_schedules().iter().map(|s| s.name()))
            ));
        }
        if self.interpolation_type != InterpolationType::Linear
            && class != SchedulerClass::EulerDiscrete
        {
            return Err(format!(
                "`interpolation_type` applies to EulerDiscreteScheduler only, not {}",
                class.name()
            ));
        }
        if self.timestep_type == TimestepType::Continuous && class != SchedulerClass::EulerDiscrete
        {
            return Err(format!(
                "`timestep_type` \"continuous\" applies to EulerDiscreteScheduler only, not {}",
                class.name()
            ));
        }
        if self.final_sigmas_type == FinalSigmas::SigmaMin && !class.has_sigmas() {
            return Err(format!(
                "`final_sigmas_type` applies to schedulers with sigmas, not {}",
                class.name()
            ));
        }
        if self.rescale_betas_zero_snr && class == SchedulerClass::EdmEuler {
            return Err("EDMEulerScheduler has no betas to rescale".into());
        }
        if class == SchedulerClass::EdmEuler {
            match (self.sigma_min, self.sigma_max) {
                (Some(lo), Some(hi)) if lo > 0.0 && hi > lo => {}
                (lo, hi) => {
                    return Err(format!(
                    "EDM needs 0 < sigma_min < sigma_max, got sigma_min={lo:?}, sigma_max={hi:?}"
                ))
                }
            }
            if self.rho <= 0.0 || self.sigma_data <= 0.0 {
                return Err(format!(
                    "EDM needs rho > 0 and sigma_data > 0, got rho={}, sigma_data={}",
                    self.rho, self.sigma_data
                ));
            }
        }
        Ok(())
    }
}

/// The five sigma switches as read, resolved to one [`SigmaSchedule`] at the end.
#[derive(Default)]
struct SigmaFlags {
    karras: bool,
    exponential: bool,
    beta: bool,
    lu: bool,
    flow: bool,
}

impl SigmaFlags {
    fn resolve(
        &self,
        class: SchedulerClass,
        err: &dyn Fn(&str, String) -> Error,
    ) -> Result<SigmaSchedule> {
        let set: Vec<(&str, SigmaSchedule)> = [
            (self.karras, "use_karras_sigmas", SigmaSchedule::Karras),
            (
                self.exponential,
                "use_exponential_sigmas",
                SigmaSchedule::Exponential,
            ),
            (self.beta, "use_beta_sigmas", SigmaSchedule::Beta),
            (self.lu, "use_lu_lambdas", SigmaSchedule::LuLambdas),
            (self.flow, "use_flow_sigmas", SigmaSchedule::Flow),
        ]
        .into_iter()
        .filter(|(on, _, _)| *on)
        .map(|(_, k, s)| (k, s))
        .collect();
        match set.as_slice() {
            [] => Ok(SigmaSchedule::Interpolated),
            [(_, s)] => Ok(*s),
            // diffusers rejects two of karras/exponential/beta and lets its if/elif chain pick
            // among the rest silently; any two at once is a mistake worth reporting.
            _ => Err(err(
                set[1].0,
                format!(
                    "conflicts with `{}`: {} takes at most one of {}",
                    set[0].0,
                    class.name(),
                    list(set.iter().map(|(k, _)| *k))
                ),
            )),
        }
    }
}

/// Replaces Python's non-standard JSON tokens `NaN`, `Infinity`, `-Infinity` (outside
/// strings) by strings, which the number readers below accept.
fn quote_nonfinite_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        } else {
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(t) = token {
                out.push('"');
                out.push_str(t);
                out.push('"');
                rest = &rest[t.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn float(key: &str, v: &Value, err: &dyn Fn(&str, String) -> Error) -> Result<f64> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| err(key, format!("is {n}, not representable as a float"))),
        Value::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => Err(err(key, format!("must be a number, got {}", kind(v)))),
    }
}

fn optional_float(
    key: &str,
    v: &Value,
    err: &dyn Fn(&str, String) -> Error,
) -> Result<Option<f64>> {
    match v {
        Value::Null => Ok(None),
        _ => float(key, v, err).map(Some),
    }
}

fn int(key: &str, v: &Value, err: &dyn Fn(&str, String) -> Error) -> Result<i64> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            // Integral floats (`1000.0`) pass, as Python's range/arange would take them.
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                _ => Err(err(key, format!("must be an integer, got {}", kind(v)))),
            }
        }
        _ => Err(err(key, format!("must be an integer, got {}", kind(v)))),
    }
}

fn boolean(key: &str, v: &Value, err: &dyn Fn(&str, String) -> Error) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        // diffusers types several switches `bool | None`; None acts as false.
        Value::Null => Ok(false),
        _ => Err(err(key, format!("must be true or false, got {}", kind(v)))),
    }
}

fn choice<T: Copy>(
    key: &str,
    v: &Value,
    options: &[(&'static str, T)],
    class: SchedulerClass,
    err: &dyn Fn(&str, String) -> Error,
) -> Result<T> {
    let valid = || list(options.iter().map(|(n, _)| *n));
    match v {
        Value::String(s) => options
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                err(
                    key,
                    format!(
                        "is \"{s}\", which {} does not know; valid: {}",
                        class.name(),
                        valid()
                    ),
                )
            }),
        _ => Err(err(
            key,
            format!("must be one of {}, got {}", valid(), kind(v)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonfinite_tokens_are_quoted_outside_strings_only() {
        let t = r#"{"a": -Infinity, "b": "NaN is -Infinity", "c": [Infinity, NaN]}"#;
        let q = quote_nonfinite_tokens(t);
        assert_eq!(
            q,
            r#"{"a": "-Infinity", "b": "NaN is -Infinity", "c": ["Infinity", "NaN"]}"#
        );
    }
}
