//! The solvers of `generate` that are not fixed-step diffusers classes: the adaptive
//! DPM-Solvers (steps decided from an error norm read back every attempted step, awaited,
//! never blocking), Analytic-DPM / Analytic-DDIM (Γ estimated from data samples before
//! sampling: the bundled model's held-out digits, fetched on demand, or `momentData`) and
//! GMS (a model with moment outputs). The CLI's `sample` runs the same library code.

use js_sys::Reflect;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js::{self, Code, WdError, WdResult};
pub use crate::sampling::solvers::MomentData;
use crate::sampling::solvers::{AdaptiveOrder, AnalyticVariant};
use crate::tensor::Tensor;

/// Name, description. Listed by `Engine.solvers()` after the diffusers classes.
pub const EXTRA_SOLVERS: &[(&str, &str)] = &[
    (
        "dpm_adaptive_12",
        "DPM-Solver-12 with adaptive step size (Lu et al. 2022, arXiv:2206.00927, Sec. 4); options rtol, atol; `steps` does not apply",
    ),
    (
        "dpm_adaptive_23",
        "DPM-Solver-23 with adaptive step size (Lu et al. 2022, arXiv:2206.00927, Sec. 4); options rtol, atol; `steps` does not apply",
    ),
    (
        "analytic_dpm",
        "Analytic-DPM (Bao et al. 2022, arXiv:2201.06503); Γ estimated from momentData (default for the bundled model: its held-out digits)",
    ),
    (
        "analytic_ddim",
        "Analytic-DDIM (same paper, λ = 0); Γ estimated from momentData (default for the bundled model: its held-out digits)",
    ),
    (
        "gms",
        "Gaussian Mixture Solver (Guo et al. 2023, arXiv:2311.00941); needs a moment model (out_channels = 3 × in_channels)",
    ),
];

/// Other spellings, as the CLI takes them.
pub const EXTRA_ALIASES: &[(&str, &str)] = &[("analytic_ddpm", "analytic_dpm")];

/// What a solver name asks of the run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Fixed,
    Adaptive(AdaptiveOrder),
    Analytic(AnalyticVariant),
    Gms,
}

pub fn kind_of(name: &str) -> Kind {
    let name = EXTRA_ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, n)| *n);
    match name {
        "dpm_adaptive_12" => Kind::Adaptive(AdaptiveOrder::O12),
        "dpm_adaptive_23" => Kind::Adaptive(AdaptiveOrder::O23),
        "analytic_dpm" => Kind::Analytic(AnalyticVariant::Ddpm),
        "analytic_ddim" => Kind::Analytic(AnalyticVariant::Ddim),
        "gms" => Kind::Gms,
        _ => Kind::Fixed,
    }
}

/// The held-out digits next to the bundled model (`eval/heldout.safetensors`).
pub const HELDOUT: &str = "eval/heldout.safetensors";

/// `momentData`: a Float32Array of K·C·H·W values, or the URL of a .safetensors file (the
/// held-out digit layout, or one float32 tensor (K, C, H, W)); absent → the bundled model's
/// held-out digits from its folder.
pub async fn moment_data(
    option: &JsValue,
    chw: [usize; 3],
    bundled_base: Option<&str>,
    solver: &str,
) -> WdResult<MomentData> {
    let [c, h, w] = chw;
    let item = c * h * w;
    if let Some(arr) = option.dyn_ref::<js_sys::Float32Array>() {
        let v = arr.to_vec();
        if v.is_empty() || item == 0 || v.len() % item != 0 {
            return Err(WdError::bad_option(format!(
                "option `momentData`: {} values, not a whole number of samples of {c}×{h}×{w} = {item}; give K·{item} values (K samples, in the model's range)",
                v.len()
            )));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(WdError::bad_option(format!(
                "option `momentData`: element {i} is not finite"
            )));
        }
        return Ok(MomentData {
            data: Tensor::from_vec(&[v.len() / item, c, h, w], v)?,
            labels: None,
            source: "momentData".into(),
        });
    }
    let url = if js::is_absent(option) {
        match bundled_base {
            Some(base) => format!("{base}{HELDOUT}"),
            None => {
                return Err(WdError::bad_option(format!(
                    "solver {solver} estimates Γ from data samples: pass generate({{ momentData }}) (a Float32Array of K×{c}×{h}×{w} values in the model's range, or the URL of a .safetensors file)"
                )))
            }
        }
    } else if let Some(s) = option.as_string() {
        s
    } else if js::instance_of(option, "URL") {
        js::get(option, "href").as_string().unwrap_or_default()
    } else {
        return Err(WdError::bad_option(format!(
            "option `momentData` must be a Float32Array or a URL, got {}",
            js::describe(option)
        )));
    };
    let bytes = fetch_bytes(&url).await?;
    let bad = |what: String| WdError::bad_option(format!("momentData {url}: {what}"));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    if st
        .tensor("images")
        .is_ok_and(|t| t.dtype() == safetensors::Dtype::U8)
    {
        let (data, labels) = crate::eval::heldout_digits(&bytes).map_err(|e| bad(e.to_string()))?;
        return Ok(MomentData {
            data,
            labels: Some(labels),
            source: url,
        });
    }
    let names = st.names();
    let name = match names.as_slice() {
        [one] => one.to_string(),
        _ if names.contains(&"data") => "data".into(),
        _ => {
            return Err(bad(format!(
                "{} tensors; give one float32 tensor (K, C, H, W), or name it \"data\"",
                names.len()
            )))
        }
    };
    let t = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 4 {
        return Err(bad(format!(
            "tensor \"{name}\" is {:?} {:?}; expected float32 (K, C, H, W)",
            t.dtype(),
            t.shape()
        )));
    }
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(MomentData {
        data: Tensor::from_vec(t.shape(), v)?,
        labels: None,
        source: url,
    })
}

async fn fetch_bytes(url: &str) -> WdResult<Vec<u8>> {
    let http = |what: String| WdError::new(Code::Http, format!("could not fetch {url}: {what}"));
    let resp = js::call(&js_sys::global(), "fetch", &[JsValue::from_str(url)])
        .map_err(|e| http(js::js_message(&e)))?;
    let resp = js::await_value(resp)
        .await
        .map_err(|e| http(js::js_message(&e)))?;
    let ok = Reflect::get(&resp, &"ok".into())
        .ok()
        .and_then(|v| v.as_bool());
    if ok != Some(true) {
        let status = js::get(&resp, "status").as_f64().unwrap_or(0.0);
        return Err(http(format!("the server answered HTTP {status}")));
    }
    let buf = js::call(&resp, "arrayBuffer", &[]).map_err(|e| http(js::js_message(&e)))?;
    let buf = js::await_value(buf)
        .await
        .map_err(|e| http(js::js_message(&e)))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}
