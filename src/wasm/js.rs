//! The JS side of the front end: typed errors (`WebDiffusionError` with a `code`), reading
//! option objects, and small wrappers over globals that exist both in a window and in a Web
//! Worker (`js_sys::global()`, never `window`).

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::error::Error;

/// The error codes of the JS API (`error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NoWebgpu,
    NoAdapter,
    Http,
    Network,
    Truncated,
    BadModel,
    UnsupportedConfig,
    Limit,
    OutOfMemory,
    Aborted,
    BadOption,
    NotLoaded,
    Disposed,
    Internal,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Code::NoWebgpu => "NO_WEBGPU",
            Code::NoAdapter => "NO_ADAPTER",
            Code::Http => "HTTP",
            Code::Network => "NETWORK",
            Code::Truncated => "TRUNCATED",
            Code::BadModel => "BAD_MODEL",
            Code::UnsupportedConfig => "UNSUPPORTED_CONFIG",
            Code::Limit => "LIMIT",
            Code::OutOfMemory => "OUT_OF_MEMORY",
            Code::Aborted => "ABORTED",
            Code::BadOption => "BAD_OPTION",
            Code::NotLoaded => "NOT_LOADED",
            Code::Disposed => "DISPOSED",
            Code::Internal => "INTERNAL",
        }
    }
}

/// An error on its way to JS: a code and a message saying what is wrong and what to do.
#[derive(Debug, Clone)]
pub struct WdError {
    pub code: Code,
    pub message: String,
}

pub type WdResult<T> = std::result::Result<T, WdError>;

impl WdError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn aborted(what: &str) -> Self {
        Self::new(
            Code::Aborted,
            format!("{what} was aborted (abort() or the AbortSignal); the engine is ready for the next call"),
        )
    }

    pub fn bad_option(message: impl Into<String>) -> Self {
        Self::new(Code::BadOption, message)
    }

    /// A JS `Error` with `name = "WebDiffusionError"` and a `code` property.
    pub fn into_js(self) -> JsValue {
        let e = js_sys::Error::new(&self.message);
        e.set_name("WebDiffusionError");
        let _ = Reflect::set(&e, &"code".into(), &self.code.name().into());
        e.into()
    }
}

impl From<WdError> for JsValue {
    fn from(e: WdError) -> JsValue {
        e.into_js()
    }
}

impl From<Error> for WdError {
    /// Every crate error gets the code a caller can act on; the message is the crate's, which
    /// already names the file, tensor, key or limit.
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::NoAdapter(_) | Error::RequestDevice(_) => Code::NoAdapter,
            Error::Limit { .. } => Code::Limit,
            Error::Gpu { message, .. } if is_oom(message) => Code::OutOfMemory,
            Error::Gpu { .. } | Error::Readback(_) => Code::Internal,
            Error::SchedulerConfig { .. } | Error::Config { .. } => Code::UnsupportedConfig,
            Error::WeightsFormat { hint, .. } if *hint == crate::weights::HINT_TRUNCATED => {
                Code::Truncated
            }
            Error::WeightsFormat { .. }
            | Error::WeightShape { .. }
            | Error::MissingTensors { .. }
            | Error::UnexpectedTensors { .. }
            | Error::NonFiniteWeights { .. }
            | Error::Io { .. } => Code::BadModel,
            Error::InvalidArgument { .. } => Code::BadOption,
            Error::Shape { .. } | Error::Backend { .. } | Error::MissingShader(_) => Code::Internal,
        };
        Self::new(code, e.to_string())
    }
}

pub fn is_oom(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("outofmemory") || m.contains("out-of-memory")
}

/// `obj[key]`, `undefined` when `obj` is not an object or the key is missing.
pub fn get(obj: &JsValue, key: &str) -> JsValue {
    if !obj.is_object() && !obj.is_function() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

pub fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

pub fn is_absent(v: &JsValue) -> bool {
    v.is_undefined() || v.is_null()
}

/// An optional number option: absent → None; anything but a finite number → BAD_OPTION.
pub fn opt_f64(options: &JsValue, key: &str) -> WdResult<Option<f64>> {
    let v = get(options, key);
    if is_absent(&v) {
        return Ok(None);
    }
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(Some(x)),
        _ => Err(WdError::bad_option(format!(
            "option `{key}` must be a finite number, got {}",
            describe(&v)
        ))),
    }
}

/// An optional non-negative integer option (counts, seeds, labels) below `max`.
pub fn opt_uint(options: &JsValue, key: &str, max: f64) -> WdResult<Option<u64>> {
    let v = get(options, key);
    if is_absent(&v) {
        return Ok(None);
    }
    if let Some(b) = v.dyn_ref::<js_sys::BigInt>() {
        let s: String = b.to_string(10).map(String::from).unwrap_or_default();
        return s.parse::<u64>().map(Some).map_err(|_| {
            WdError::bad_option(format!(
                "option `{key}` must be a non-negative integer below 2^64, got {s}n"
            ))
        });
    }
    match v.as_f64() {
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= max => Ok(Some(x as u64)),
        _ => Err(WdError::bad_option(format!(
            "option `{key}` must be an integer from 0 to {max}, got {}",
            describe(&v)
        ))),
    }
}

pub fn opt_string(options: &JsValue, key: &str) -> WdResult<Option<String>> {
    let v = get(options, key);
    if is_absent(&v) {
        return Ok(None);
    }
    v.as_string().map(Some).ok_or_else(|| {
        WdError::bad_option(format!(
            "option `{key}` must be a string, got {}",
            describe(&v)
        ))
    })
}

/// An optional callback option.
pub fn opt_function(options: &JsValue, key: &str) -> WdResult<Option<Function>> {
    let v = get(options, key);
    if is_absent(&v) {
        return Ok(None);
    }
    v.dyn_into::<Function>().map(Some).map_err(|v| {
        WdError::bad_option(format!(
            "option `{key}` must be a function, got {}",
            describe(&v)
        ))
    })
}

/// A short description of a JS value for error messages.
pub fn describe(v: &JsValue) -> String {
    if let Some(s) = v.as_string() {
        let short: String = s.chars().take(60).collect();
        return format!("the string {short:?}");
    }
    if let Some(x) = v.as_f64() {
        return format!("{x}");
    }
    if v.is_null() {
        return "null".into();
    }
    if v.is_undefined() {
        return "undefined".into();
    }
    v.js_typeof()
        .as_string()
        .unwrap_or_else(|| "a value".into())
}

/// The message of a thrown JS value (an `Error`'s `name: message`, or its string form).
pub fn js_message(v: &JsValue) -> String {
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        let name: String = e.name().into();
        let msg: String = e.message().into();
        return format!("{name}: {msg}");
    }
    v.as_string().unwrap_or_else(|| format!("{v:?}"))
}

/// Whether a thrown JS value is an `AbortError` (fetch or a stream read cancelled by a
/// signal).
pub fn is_abort_error(v: &JsValue) -> bool {
    get(v, "name").as_string().as_deref() == Some("AbortError")
}

/// `globalThis[name]` as a constructor, when this global scope has it.
pub fn global_ctor(name: &str) -> Option<Function> {
    get(&js_sys::global(), name).dyn_into::<Function>().ok()
}

/// `instanceof globalThis[name]`, false when the scope lacks the constructor (a worker has
/// no `HTMLCanvasElement`).
pub fn instance_of(v: &JsValue, name: &str) -> bool {
    global_ctor(name)
        .is_some_and(|c| v.is_object() && v.unchecked_ref::<Object>().is_instance_of_ctor(&c))
}

trait InstanceOfCtor {
    fn is_instance_of_ctor(&self, ctor: &Function) -> bool;
}

impl InstanceOfCtor for Object {
    fn is_instance_of_ctor(&self, ctor: &Function) -> bool {
        let proto = get(ctor, "prototype");
        if !proto.is_object() {
            return false;
        }
        let proto: &Object = proto.unchecked_ref();
        proto.is_prototype_of(self)
    }
}

/// `navigator.gpu`, if this browser exposes WebGPU.
pub fn navigator_gpu() -> Option<JsValue> {
    let nav = get(&js_sys::global(), "navigator");
    let gpu = get(&nav, "gpu");
    (!is_absent(&gpu)).then_some(gpu)
}

/// `performance.now()` (sub-millisecond where the browser allows), else `Date.now()`.
pub fn now_ms() -> f64 {
    let perf = get(&js_sys::global(), "performance");
    if let Ok(now) = get(&perf, "now").dyn_into::<Function>() {
        if let Some(t) = now.call0(&perf).ok().and_then(|v| v.as_f64()) {
            return t;
        }
    }
    js_sys::Date::now()
}

/// Calls `method` on `obj` with `args`.
pub fn call(obj: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let f: Function = get(obj, method).dyn_into().map_err(|_| {
        JsValue::from(js_sys::Error::new(&format!(
            "{method} is not a function here"
        )))
    })?;
    let arr: js_sys::Array = args.iter().collect();
    f.apply(obj, &arr)
}

/// Awaits a value that may be a promise.
pub async fn await_value(v: JsValue) -> Result<JsValue, JsValue> {
    match v.dyn_into::<Promise>() {
        Ok(p) => JsFuture::from(p).await,
        Err(v) => Ok(v),
    }
}

/// Lets the browser run other tasks (input, rendering, an `abort()` call) before going on:
/// a macrotask via `setTimeout(0)`, which exists in windows and workers alike.
pub async fn yield_to_event_loop() {
    let global = js_sys::global();
    let p = Promise::new(&mut |resolve, _| {
        let _ = call(
            &global,
            "setTimeout",
            &[resolve.into(), JsValue::from_f64(0.0)],
        );
    });
    let _ = JsFuture::from(p).await;
}
