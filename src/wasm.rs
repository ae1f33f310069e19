//! The wasm-bindgen front end: the only place that converts `Error` into a JS error.
//! This is the foundation's minimal surface (create, capabilities, self-check); the full
//! `Engine` API (load, generate, abort) is added with the browser issue.

use std::sync::Arc;

use wasm_bindgen::prelude::*;

use crate::gpu::{GpuContext, GpuOptions};

fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// A WebGPU device and the engine's caches.
#[wasm_bindgen]
pub struct Engine {
    ctx: Arc<GpuContext>,
}

#[wasm_bindgen]
impl Engine {
    /// Request an adapter and device. Rejects with a clear message when WebGPU or an
    /// adapter is missing.
    pub async fn create() -> Result<Engine, JsError> {
        let has_webgpu = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("navigator"))
            .ok()
            .and_then(|nav| js_sys::Reflect::get(&nav, &JsValue::from_str("gpu")).ok())
            .is_some_and(|gpu| !gpu.is_undefined());
        if !has_webgpu {
            return Err(JsError::new(
                "WebGPU is not available in this browser (navigator.gpu is undefined); use a recent Chrome or Edge, or enable WebGPU",
            ));
        }
        let ctx = GpuContext::new(&GpuOptions::default())
            .await
            .map_err(|e| match e {
                // The native message (install lavapipe) and wgpu's list of backends not
                // compiled in mean nothing to a browser user.
                crate::Error::NoAdapter(_) => JsError::new(
                    "WebGPU is present but the browser offered no GPU adapter (navigator.gpu.requestAdapter() returned none); WebGPU may be disabled or this GPU blocklisted: enable hardware acceleration, or in Chrome try chrome://flags/#enable-unsafe-webgpu",
                ),
                e => js_err(e),
            })?;
        Ok(Engine { ctx })
    }

    /// Adapter, features and limits as text.
    pub fn capabilities(&self) -> String {
        self.ctx.caps.summary()
    }

    /// Run the kernel self-check; resolves to one line per kernel.
    #[wasm_bindgen(js_name = selfCheck)]
    pub async fn self_check(&self) -> Result<String, JsError> {
        let report = crate::selfcheck::run_async(&self.ctx)
            .await
            .map_err(js_err)?;
        Ok(report
            .iter()
            .map(|r| {
                format!(
                    "{} {:.3e} {}",
                    r.name,
                    r.max_abs_err,
                    if r.ok() { "ok" } else { "FAILED" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
