//! The wasm-bindgen front end: the only place that converts `Error` into a JS error
//! (`WebDiffusionError` with a `code`, see [`js::Code`]). `Engine` is the browser API:
//! create, capabilities, solvers, load (streamed weights), generate (the native `sample`
//! loop with a live canvas), abort, dispose. It only uses `js_sys::global()`, so it runs in a
//! window and in a Web Worker (with an `OffscreenCanvas`) alike.

mod canvas;
mod js;
mod load;
mod nets;
mod research;
mod sd;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Array, Function, Object};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::exec::Exec;
use crate::gpu::{GpuContext, GpuOptions};
use crate::models::{ModelConfig, UNet};
use crate::ops::SolverUpdate;
use crate::sampling::solvers::{
    estimate_gamma_for_run, initial_noise, sample_adaptive_observed, schedule_class_for,
    solver_from_name, AdaptiveOptions, AnalyticDpm, AnalyticVariant, Denoiser, GammaRun, Gms,
    MomentChannels, MomentData, Noise, Solver, SolverOptions, StepContext, StepInfo, ALIASES,
    SOLVERS,
};
use crate::sampling::{FiniteWatch, Guided, Schedule, SchedulerClass, SchedulerConfig};
use crate::weights::WeightDtype;
use canvas::CanvasTarget;
use js::{Code, WdError, WdResult};
use research::Kind;

/// The bundled digit model's config: a model loaded with this exact architecture gets the
/// bundled model's defaults (its "no class" label, guidance 2, the SDE solver), as the CLI
/// gives them to `sample` without `--model`.
const BUNDLED_CONFIG: &str = include_str!("../../models/mnist/config.json");
const BUNDLED_NULL_CLASS: usize = 10;
const BUNDLED_CLASSES: usize = 10;

/// The most steps `generate` takes (diffusers' schedules have 1000 training steps).
const MAX_STEPS: f64 = 1000.0;
/// The most samples in one batch.
const MAX_BATCH: f64 = 256.0;

/// A model ready to sample.
struct Model {
    unet: UNet,
    config: ModelConfig,
    /// `(file, text)` of scheduler_config.json, parsed per run for the chosen solver's class.
    scheduler: Option<(String, String)>,
    bundled: bool,
    /// The model folder's URL (with a trailing `/`) when it was loaded from one.
    base: Option<String>,
    load_ms: f64,
}

impl Model {
    fn null_class(&self) -> Option<usize> {
        (self.bundled && self.unet.arch().num_class_embeds.is_some()).then_some(BUNDLED_NULL_CLASS)
    }
    fn default_solver(&self) -> &'static str {
        if self.bundled {
            "dpmpp_2m_sde"
        } else {
            "dpmpp_2m"
        }
    }
    fn default_guidance(&self) -> f64 {
        if self.bundled {
            2.0
        } else {
            1.0
        }
    }
}

struct Inner {
    ctx: RefCell<Option<Arc<GpuContext>>>,
    exec: RefCell<Option<Exec>>,
    model: RefCell<Option<Model>>,
    /// A galaxy or terrain network, when that is what was loaded last (then `model` is None).
    net: RefCell<Option<nets::NetModel>>,
    /// A Stable Diffusion pipeline, when that is what was loaded last.
    sd: RefCell<Option<sd::SdModel>>,
    canvas: RefCell<Option<CanvasTarget>>,
    busy: Cell<bool>,
    disposed: Cell<bool>,
    /// Set by `abort()`; the running load or generate checks it between chunks and steps.
    aborted: Rc<Cell<bool>>,
    /// The running load's AbortController (so `abort()` also cancels a pending fetch).
    controller: RefCell<Option<JsValue>>,
    /// The browser's `GPUAdapterInfo` (vendor, architecture, description, isFallbackAdapter),
    /// which wgpu's WebGPU backend does not pass on.
    adapter_info: JsValue,
}

/// Marks the engine busy for one call; frees it again however the call ends.
struct BusyGuard<'a>(&'a Inner);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.set(false);
        *self.0.controller.borrow_mut() = None;
    }
}

impl Inner {
    fn begin(&self, what: &str) -> WdResult<BusyGuard<'_>> {
        if self.disposed.get() {
            return Err(WdError::new(
                Code::Disposed,
                format!("{what}: this engine was disposed; create a new one with Engine.create()"),
            ));
        }
        if self.busy.get() {
            return Err(WdError::bad_option(format!(
                "{what}: another load() or generate() is still running on this engine; await it, or call abort() first"
            )));
        }
        self.busy.set(true);
        self.aborted.set(false);
        Ok(BusyGuard(self))
    }

    fn ctx(&self) -> WdResult<Arc<GpuContext>> {
        self.ctx.borrow().clone().ok_or_else(|| {
            WdError::new(
                Code::Disposed,
                "this engine was disposed; create a new one with Engine.create()",
            )
        })
    }

    fn check_running(&self, what: &str) -> WdResult<()> {
        if self.disposed.get() {
            return Err(WdError::new(
                Code::Disposed,
                format!("{what}: the engine was disposed while it ran"),
            ));
        }
        if self.aborted.get() {
            return Err(WdError::aborted(what));
        }
        Ok(())
    }
}

/// A WebGPU device, the loaded model and the canvas it draws on.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

fn no_adapter_message() -> &'static str {
    "WebGPU is present but the browser offered no GPU adapter (navigator.gpu.requestAdapter() returned none); WebGPU may be disabled or this GPU blocklisted: enable hardware acceleration, or in Chrome try chrome://flags/#enable-unsafe-webgpu"
}

#[wasm_bindgen]
impl Engine {
    /// `Engine.create({ canvas?, powerPreference? })`: request an adapter and a device with
    /// the adapter's own limits. Rejects with `NO_WEBGPU` or `NO_ADAPTER` when there is none.
    pub async fn create(options: Option<JsValue>) -> Result<Engine, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        Ok(Self::create_inner(&options).await?)
    }

    async fn create_inner(options: &JsValue) -> WdResult<Engine> {
        if js::navigator_gpu().is_none() {
            return Err(WdError::new(
                Code::NoWebgpu,
                "WebGPU is not available in this browser (navigator.gpu is undefined); use a recent Chrome or Edge, or enable WebGPU",
            ));
        }
        let high_performance = match js::opt_string(options, "powerPreference")?.as_deref() {
            None | Some("high-performance") => true,
            Some("low-power") => false,
            Some(other) => {
                return Err(WdError::bad_option(format!(
                    "powerPreference must be \"low-power\" or \"high-performance\", got {other:?}"
                )))
            }
        };
        let opts = GpuOptions {
            high_performance,
            ..GpuOptions::default()
        };
        let adapter_info = browser_adapter_info(high_performance).await;
        let ctx = GpuContext::new(&opts).await.map_err(|e| match e {
            // The native message (install lavapipe) and wgpu's list of backends not compiled
            // in mean nothing to a browser user.
            crate::Error::NoAdapter(_) => WdError::new(Code::NoAdapter, no_adapter_message()),
            e => WdError::from(e),
        })?;
        let engine = Engine {
            inner: Rc::new(Inner {
                exec: RefCell::new(Some(Exec::gpu(ctx.clone()))),
                ctx: RefCell::new(Some(ctx)),
                model: RefCell::new(None),
                net: RefCell::new(None),
                sd: RefCell::new(None),
                canvas: RefCell::new(None),
                busy: Cell::new(false),
                disposed: Cell::new(false),
                aborted: Rc::new(Cell::new(false)),
                controller: RefCell::new(None),
                adapter_info,
            }),
        };
        let canvas = js::get(options, "canvas");
        if !js::is_absent(&canvas) {
            engine.set_canvas_inner(&canvas)?;
        }
        Ok(engine)
    }

    /// Draw on `canvas` from now on (`null`: draw nowhere).
    #[wasm_bindgen(js_name = setCanvas)]
    pub fn set_canvas(&self, canvas: JsValue) -> Result<(), JsValue> {
        Ok(self.set_canvas_inner(&canvas)?)
    }

    fn set_canvas_inner(&self, canvas: &JsValue) -> WdResult<()> {
        let ctx = self.inner.ctx()?;
        let target = if js::is_absent(canvas) {
            None
        } else {
            Some(CanvasTarget::new(&ctx, canvas)?)
        };
        *self.inner.canvas.borrow_mut() = target;
        Ok(())
    }

    /// The adapter, its optional features and the limits that matter, as a plain object.
    pub fn capabilities(&self) -> Result<JsValue, JsValue> {
        let ctx = self.inner.ctx()?;
        let caps = &ctx.caps;
        let o = Object::new();
        js::set(&o, "webgpu", true);
        let a = Object::new();
        let info = &self.inner.adapter_info;
        let text = |k: &str| js::get(info, k).as_string().unwrap_or_default();
        let name = [
            caps.adapter_name.clone(),
            text("description"),
            text("device"),
        ]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| text("vendor"));
        js::set(&a, "name", name);
        js::set(&a, "vendor", text("vendor"));
        js::set(&a, "architecture", text("architecture"));
        js::set(&a, "backend", caps.backend.as_str());
        js::set(
            &a,
            "isFallback",
            caps.device_type == "Cpu" || js::get(info, "isFallbackAdapter").as_bool() == Some(true),
        );
        js::set(&o, "adapter", a);
        let f = Object::new();
        js::set(&f, "shaderF16", caps.shader_f16);
        js::set(&f, "subgroups", caps.subgroups);
        js::set(&f, "timestampQuery", caps.timestamp_query);
        js::set(&o, "features", f);
        let l = Object::new();
        let lim = &caps.limits;
        js::set(&l, "maxBufferSize", lim.max_buffer_size as f64);
        js::set(
            &l,
            "maxStorageBufferBindingSize",
            lim.max_storage_buffer_binding_size as f64,
        );
        js::set(
            &l,
            "maxComputeWorkgroupStorageSize",
            lim.max_compute_workgroup_storage_size,
        );
        js::set(
            &l,
            "maxComputeInvocationsPerWorkgroup",
            lim.max_compute_invocations_per_workgroup,
        );
        js::set(
            &l,
            "maxComputeWorkgroupsPerDimension",
            lim.max_compute_workgroups_per_dimension,
        );
        js::set(
            &l,
            "maxStorageBuffersPerShaderStage",
            lim.max_storage_buffers_per_shader_stage,
        );
        js::set(&o, "limits", l);
        js::set(&o, "summary", caps.summary());
        Ok(o.into())
    }

    /// Every solver name `generate` accepts, with its diffusers class (or what it is and
    /// needs, for the adaptive and research solvers) and aliases.
    pub fn solvers() -> Array {
        SOLVERS
            .iter()
            .chain(research::EXTRA_SOLVERS)
            .map(|(name, class)| {
                let o = Object::new();
                js::set(&o, "name", *name);
                js::set(&o, "description", *class);
                let adaptive = matches!(research::kind_of(name), Kind::Adaptive(_));
                js::set(&o, "adaptive", adaptive);
                let aliases: Array = ALIASES
                    .iter()
                    .chain(research::EXTRA_ALIASES)
                    .filter(|(_, target)| target == name)
                    .map(|(alias, _)| JsValue::from_str(alias))
                    .collect();
                js::set(&o, "aliases", aliases);
                JsValue::from(o)
            })
            .collect()
    }

    /// Run the kernel self-check; resolves to one line per kernel.
    #[wasm_bindgen(js_name = selfCheck)]
    pub async fn self_check(&self) -> Result<String, JsValue> {
        let ctx = self.inner.ctx()?;
        let report = crate::selfcheck::run_async(&ctx)
            .await
            .map_err(WdError::from)?;
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

    /// `load(source, { onProgress?, fetch?, signal? })` → ModelInfo.
    pub async fn load(
        &self,
        source: JsValue,
        options: Option<JsValue>,
    ) -> Result<JsValue, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let inner = self.inner.clone();
        let _busy = inner.begin("load")?;
        Ok(load_model(&inner, &source, &options).await?)
    }

    /// `generate({ solver?, steps?, seed?, guidance?, classLabel?, eta?, batch?, preview?,
    /// onStep?, rtol?, atol?, momentData?, momentSamples? })` → `{ width, height, pixels, timings, seed }`.
    pub async fn generate(&self, options: Option<JsValue>) -> Result<JsValue, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let inner = self.inner.clone();
        let _busy = inner.begin("generate")?;
        Ok(generate(&inner, &options).await?)
    }

    /// Stops the running load or generate between chunks or steps (it rejects with
    /// `ABORTED`); the engine stays usable.
    pub fn abort(&self) {
        if !self.inner.busy.get() {
            return;
        }
        self.inner.aborted.set(true);
        if let Some(c) = self.inner.controller.borrow().as_ref() {
            let _ = js::call(c, "abort", &[]);
        }
    }

    /// Frees the model and the GPU device; later calls reject with `DISPOSED`.
    pub fn dispose(&self) {
        self.abort();
        self.inner.disposed.set(true);
        *self.inner.canvas.borrow_mut() = None;
        if let Ok(mut m) = self.inner.model.try_borrow_mut() {
            *m = None;
        }
        if let Ok(mut m) = self.inner.net.try_borrow_mut() {
            *m = None;
        }
        if let Ok(mut m) = self.inner.sd.try_borrow_mut() {
            *m = None;
        }
        if let Ok(mut e) = self.inner.exec.try_borrow_mut() {
            *e = None;
        }
        if let Some(ctx) = self.inner.ctx.borrow_mut().take() {
            ctx.pool.trim();
            ctx.device.destroy();
        }
    }
}

/// The browser's `GPUAdapterInfo` of the adapter `requestAdapter` picks with the same power
/// preference (wgpu's device does not expose it); `undefined` if there is none. Older
/// browsers keep `isFallbackAdapter` on the adapter rather than its info: copied over.
async fn browser_adapter_info(high_performance: bool) -> JsValue {
    let Some(gpu) = js::navigator_gpu() else {
        return JsValue::UNDEFINED;
    };
    let opts = Object::new();
    let pref = if high_performance {
        "high-performance"
    } else {
        "low-power"
    };
    js::set(&opts, "powerPreference", pref);
    let adapter = match js::call(&gpu, "requestAdapter", &[opts.into()]) {
        Ok(p) => js::await_value(p).await.unwrap_or(JsValue::UNDEFINED),
        Err(_) => return JsValue::UNDEFINED,
    };
    let info = js::get(&adapter, "info");
    let out = Object::new();
    for k in [
        "vendor",
        "architecture",
        "device",
        "description",
        "isFallbackAdapter",
    ] {
        js::set(&out, k, js::get(&info, k));
    }
    if js::is_absent(&js::get(&info, "isFallbackAdapter")) {
        js::set(
            &out,
            "isFallbackAdapter",
            js::get(&adapter, "isFallbackAdapter"),
        );
    }
    out.into()
}

async fn load_model(inner: &Inner, source: &JsValue, options: &JsValue) -> WdResult<JsValue> {
    let t0 = js::now_ms();
    let ctx = inner.ctx()?;
    let src = load::resolve_source(source)?;
    let fetch = match js::opt_function(options, "fetch")? {
        Some(f) => f,
        None => js::get(&js_sys::global(), "fetch")
            .dyn_into::<Function>()
            .map_err(|_| {
                WdError::new(
                    Code::NoWebgpu,
                    "this scope has no fetch(); pass options.fetch",
                )
            })?,
    };
    let user_signal = js::get(options, "signal");
    if !js::is_absent(&user_signal) && js::get(&user_signal, "aborted").as_bool() == Some(true) {
        return Err(WdError::aborted("load"));
    }
    // Our own controller lets abort() cancel a pending fetch; combined with the caller's
    // signal where the browser has AbortSignal.any.
    let controller = js::global_ctor("AbortController")
        .and_then(|c| js_sys::Reflect::construct(&c, &Array::new()).ok());
    let mut signal = controller
        .as_ref()
        .map(|c| js::get(c, "signal"))
        .unwrap_or(JsValue::UNDEFINED);
    if !js::is_absent(&user_signal) {
        let any = js::global_ctor("AbortSignal")
            .and_then(|s| js::call(&s, "any", &[Array::of2(&signal, &user_signal).into()]).ok());
        signal = match any {
            Some(s) if !js::is_absent(&signal) => s,
            _ => user_signal.clone(),
        };
    }
    let weight_dtype = match js::opt_string(options, "weights")? {
        None => WeightDtype::Auto,
        Some(s) => WeightDtype::parse(&s).map_err(|_| {
            WdError::bad_option(format!(
                "load(options.weights): `{s}` is not a weight storage; use 'auto' (packed f16 for weights stored in f16, the default), 'f16' (pack every weight: half the memory, f16 precision) or 'f32'"
            ))
        })?,
    };
    *inner.controller.borrow_mut() = controller;
    // The previous model stays loaded (and usable if this load fails) while the new one's
    // tensors go to the GPU as they arrive.
    let exec = inner
        .exec
        .borrow_mut()
        .take()
        .ok_or_else(|| WdError::new(Code::Disposed, "the engine was disposed"))?;
    let lctx = load::LoadCtx {
        fetch,
        signal,
        user_signal,
        aborted: inner.aborted.clone(),
        on_progress: js::opt_function(options, "onProgress")?,
        tensors_ready: Cell::new(0),
        tensors_total: Cell::new(None),
        bytes_read: Cell::new(0),
        max_buffer_size: ctx.caps.max_buffer(),
        exec: RefCell::new(exec),
        uploaded: Cell::new(0),
        reader: RefCell::new(None),
        keep_on_host: Cell::new(load::keep_on_host),
        weight_dtype: Cell::new(weight_dtype),
        preview_decoder: RefCell::new(js::opt_string(options, "previewDecoder")?),
    };

    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let built = read_and_build(&lctx, &src).await;
    let oom = scope.pop().await;
    let load::LoadCtx {
        exec,
        uploaded,
        bytes_read,
        ..
    } = lctx;
    *inner.exec.borrow_mut() = Some(exec.into_inner());
    if let Some(e) = oom {
        drop(built);
        ctx.pool.trim();
        return Err(WdError::new(
            Code::OutOfMemory,
            format!(
                "the GPU ran out of memory while uploading the model ({e}); close other GPU-heavy tabs or use a smaller model. The engine is still usable."
            ),
        ));
    }
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            ctx.pool.trim();
            return Err(e);
        }
    };
    ctx.take_error("uploading the model")?;
    let (unet, config, texts, parameters, weight_bytes) = match built {
        Built::UNet(b) => *b,
        Built::Sd(b) => {
            let (mut model, parameters, weight_bytes) = *b;
            let info = model.info(parameters, weight_bytes);
            js::set(&info, "bytesRead", bytes_read.get() as f64);
            js::set(
                &info,
                "tensorsUploadedWhileStreaming",
                uploaded.get() as f64,
            );
            model.load_ms = js::now_ms() - t0;
            js::set(&info, "loadMs", model.load_ms);
            *inner.model.borrow_mut() = None;
            *inner.net.borrow_mut() = None;
            *inner.sd.borrow_mut() = Some(model);
            return Ok(info.into());
        }
        Built::Net(net, parameters, weight_bytes) => {
            let info = nets::info(&net, parameters, weight_bytes);
            js::set(&info, "bytesRead", bytes_read.get() as f64);
            js::set(
                &info,
                "tensorsUploadedWhileStreaming",
                uploaded.get() as f64,
            );
            let load_ms = js::now_ms() - t0;
            js::set(&info, "loadMs", load_ms);
            *inner.model.borrow_mut() = None;
            *inner.sd.borrow_mut() = None;
            *inner.net.borrow_mut() = Some(nets::NetModel { net, load_ms });
            return Ok(info.into());
        }
    };

    let bundled = ModelConfig::from_json("bundled config.json", BUNDLED_CONFIG)
        .is_ok_and(|b| b.config == config.config);
    let arch = unet.arch().clone();
    let (h, w) = config.sample_size().ok_or_else(|| {
        WdError::new(
            Code::UnsupportedConfig,
            format!("{}: config key `sample_size` gives no usable resolution (null or not [height, width]); the engine needs it to know the image size", texts.config_file),
        )
    })?;
    let prediction = match &texts.scheduler {
        Some((file, text)) => {
            Some(SchedulerConfig::from_json_str(text, file, None)?.prediction_type)
        }
        None => None,
    };
    let info = Object::new();
    js::set(
        &info,
        "className",
        match config.config {
            crate::models::config::UNetConfig::UNet2D(_) => "UNet2DModel",
            crate::models::config::UNetConfig::UNet2DCondition(_) => "UNet2DConditionModel",
        },
    );
    js::set(&info, "width", w as f64);
    js::set(&info, "height", h as f64);
    js::set(&info, "channels", arch.in_channels as f64);
    js::set(
        &info,
        "numClassEmbeds",
        arch.num_class_embeds
            .map_or(JsValue::NULL, |n| JsValue::from_f64(n as f64)),
    );
    let mut model = Model {
        unet,
        config,
        scheduler: texts.scheduler,
        bundled,
        base: source
            .as_string()
            .map(|u| if u.ends_with('/') { u } else { format!("{u}/") }),
        load_ms: 0.0,
    };
    js::set(
        &info,
        "nullClass",
        model
            .null_class()
            .map_or(JsValue::NULL, |n| JsValue::from_f64(n as f64)),
    );
    js::set(&info, "parameters", parameters as f64);
    js::set(&info, "weightBytes", weight_bytes as f64);
    js::set(
        &info,
        "predictionType",
        prediction.map_or(JsValue::NULL, |p| JsValue::from_str(p.name())),
    );
    js::set(&info, "defaultSolver", model.default_solver());
    js::set(&info, "defaultGuidance", model.default_guidance());
    js::set(&info, "bytesRead", bytes_read.get() as f64);
    js::set(
        &info,
        "tensorsUploadedWhileStreaming",
        uploaded.get() as f64,
    );
    model.load_ms = js::now_ms() - t0;
    js::set(&info, "loadMs", model.load_ms);
    // The new model replaces the old one only now that it is complete.
    *inner.model.borrow_mut() = Some(model);
    *inner.net.borrow_mut() = None;
    *inner.sd.borrow_mut() = None;
    Ok(info.into())
}

/// What a load built: a diffusers UNet, a galaxy/terrain network, or a Stable Diffusion
/// pipeline.
enum Built {
    UNet(Box<(UNet, ModelConfig, load::Texts, u64, u64)>),
    Net(nets::Net, u64, u64),
    Sd(Box<(sd::SdModel, u64, u64)>),
}

/// Reads the model's files and builds the UNet (or the network config.json's `_class_name`
/// names) on the load's executor.
async fn read_and_build(lctx: &load::LoadCtx, src: &load::Source) -> WdResult<Built> {
    let texts = match &src.weights {
        // A folder without config.json may be a pipeline repository (model_index.json at
        // its root); a model folder pays nothing extra for the check.
        load::WeightsSource::FolderGuess { base } => {
            match load::read_text_or_404(lctx, &src.config).await? {
                Ok(config) => load::read_texts_after(lctx, src, config).await?,
                Err(not_found) => {
                    let index = load::Item::Url(format!("{base}{}", load::MODEL_INDEX));
                    return match load::read_text_or_404(lctx, &index).await? {
                        Ok(text) => Ok(Built::Sd(Box::new(
                            sd::load(lctx, load::RepoRoot::Url(base), &text).await?,
                        ))),
                        Err(_) => Err(WdError::new(
                            not_found.code,
                            format!(
                                "{} (and no {} either: {base} is neither a model folder nor a pipeline repository)",
                                not_found.message,
                                load::MODEL_INDEX
                            ),
                        )),
                    };
                }
            }
        }
        load::WeightsSource::Repo(repo) => {
            let text = load::read_text_or_404(lctx, &src.config).await??;
            return Ok(Built::Sd(Box::new(
                sd::load(lctx, load::RepoRoot::Local(repo), &text).await?,
            )));
        }
        _ => load::read_texts(lctx, src).await?,
    };
    if let Some(url) = lctx.preview_decoder.borrow().as_ref() {
        return Err(WdError::bad_option(format!(
            "load(options.previewDecoder = {url:?}): a preview decoder is for Stable Diffusion repositories (a folder with model_index.json); {} is a single model",
            texts.config_file
        )));
    }
    if crate::models::class_name_of(&texts.config).is_some_and(|c| nets::is_net_class(&c)) {
        // A folder of these networks holds their converter's weights file, not diffusers'.
        let folder;
        let use_src = match &src.weights {
            load::WeightsSource::FolderGuess { base } => {
                folder = load::Source {
                    config: src.config.clone(),
                    scheduler: None,
                    scheduler_optional_url: None,
                    weights: load::WeightsSource::Single(load::Item::Url(format!(
                        "{base}{}",
                        nets::WEIGHTS_FILE
                    ))),
                };
                &folder
            }
            _ => src,
        };
        lctx.keep_on_host.set(nets::keep_on_host);
        // These networks read their weights as f32 (see `nets`).
        lctx.weight_dtype.set(WeightDtype::F32);
        let mut weights = load::read_weights(lctx, use_src).await?;
        lctx.check()?;
        let parameters = weights.numel();
        let weight_bytes = weights.byte_len();
        let net = nets::build(
            &mut lctx.exec.borrow_mut(),
            &texts.config_file,
            &texts.config,
            &mut weights,
        )?;
        return Ok(Built::Net(net, parameters, weight_bytes));
    }
    let config = ModelConfig::from_json(&texts.config_file, &texts.config)?;
    // Parse the scheduler config once now, so a bad one fails the load and not the first run.
    if let Some((file, text)) = &texts.scheduler {
        SchedulerConfig::from_json_str(text, file, None)?;
    }
    let mut weights = load::read_weights(lctx, src).await?;
    lctx.check()?;
    let parameters = weights.numel();
    let weight_bytes = weights.byte_len();
    let unet = UNet::from_weights(
        &mut lctx.exec.borrow_mut(),
        &config.arch,
        &mut weights,
        false,
    )?;
    Ok(Built::UNet(Box::new((
        unet,
        config,
        texts,
        parameters,
        weight_bytes,
    ))))
}

/// The options of one `generate` call, checked.
struct RunOptions {
    solver: String,
    steps: usize,
    seed: u64,
    guidance: f64,
    labels: Option<Vec<usize>>,
    eta: f64,
    batch: usize,
    preview: Preview,
    on_step: Option<Function>,
    rtol: f64,
    atol: f64,
    moment_data: JsValue,
    moment_samples: usize,
    /// How the sample becomes `pixels` (the canvas's mode is set with it).
    mode: crate::render::RenderMode,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Preview {
    X0,
    Xt,
    None,
}

fn run_options(model: &Model, options: &JsValue) -> WdResult<RunOptions> {
    let solver =
        js::opt_string(options, "solver")?.unwrap_or_else(|| model.default_solver().into());
    let steps = js::opt_uint(options, "steps", MAX_STEPS)?.unwrap_or(20) as usize;
    if steps == 0 {
        return Err(WdError::bad_option("option `steps` must be at least 1"));
    }
    let seed = match js::opt_uint(options, "seed", 9_007_199_254_740_991.0)? {
        Some(s) => s,
        // Short enough to retype, as the CLI's.
        None => (js_sys::Math::random() * 1e9).floor() as u64,
    };
    let guidance = js::opt_f64(options, "guidance")?.unwrap_or(model.default_guidance());
    let eta = js::opt_f64(options, "eta")?.unwrap_or(0.0);
    let batch_opt = js::opt_uint(options, "batch", MAX_BATCH)?.map(|b| b as usize);
    if batch_opt == Some(0) {
        return Err(WdError::bad_option("option `batch` must be at least 1"));
    }
    let label_value = js::get(options, "classLabel");
    let given: Vec<usize> = if js::is_absent(&label_value) {
        Vec::new()
    } else if Array::is_array(&label_value) {
        let arr: &Array = label_value.unchecked_ref();
        arr.iter()
            .map(|v| match v.as_f64() {
                Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(x as usize),
                _ => Err(WdError::bad_option(format!(
                    "option `classLabel` entries must be non-negative integers, got {}",
                    js::describe(&v)
                ))),
            })
            .collect::<WdResult<_>>()?
    } else {
        vec![js::opt_uint(options, "classLabel", 1e9)?.unwrap_or(0) as usize]
    };
    let labels = match model.unet.arch().num_class_embeds {
        None => {
            if !given.is_empty() {
                return Err(WdError::bad_option(
                    "option `classLabel` given, but the model is not class-conditional (its config has no num_class_embeds)",
                ));
            }
            None
        }
        Some(n) => {
            let drawable = if model.bundled { BUNDLED_CLASSES } else { n };
            if let Some(bad) = given.iter().find(|&&l| l >= drawable) {
                return Err(WdError::bad_option(format!(
                    "class label {bad} is out of range: this model has classes 0..={}",
                    drawable - 1
                )));
            }
            Some(match (given.len(), batch_opt) {
                (0, b) => (0..b.unwrap_or(1)).map(|i| i % drawable).collect(),
                (1, Some(b)) => vec![given[0]; b],
                (k, Some(b)) if k != b => {
                    return Err(WdError::bad_option(format!(
                        "{k} class labels for a batch of {b}: give one label, or one per sample"
                    )))
                }
                _ => given,
            })
        }
    };
    let batch = labels.as_ref().map_or(batch_opt.unwrap_or(1), Vec::len);
    let preview = match js::opt_string(options, "preview")?.as_deref() {
        None | Some("x0") => Preview::X0,
        Some("xt") => Preview::Xt,
        Some("none") => Preview::None,
        Some(other) => {
            return Err(WdError::bad_option(format!(
                "option `preview` must be \"x0\", \"xt\" or \"none\", got {other:?}"
            )))
        }
    };
    let kind = research::kind_of(&solver);
    let adaptive = matches!(kind, Kind::Adaptive(_));
    let defaults = AdaptiveOptions::default();
    let tol = |key: &str, default: f64| -> WdResult<f64> {
        match js::opt_f64(options, key)? {
            Some(_) if !adaptive => Err(WdError::bad_option(format!(
                "option `{key}` only applies to the adaptive solvers (dpm_adaptive_12, dpm_adaptive_23), not {solver}"
            ))),
            Some(v) if v <= 0.0 => Err(WdError::bad_option(format!(
                "option `{key}` must be positive, got {v}"
            ))),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    };
    let rtol = tol("rtol", defaults.rtol)?;
    let atol = tol("atol", defaults.atol)?;
    let moment_data = js::get(options, "momentData");
    let analytic = matches!(kind, Kind::Analytic(_));
    if !analytic && !js::is_absent(&moment_data) {
        return Err(WdError::bad_option(format!(
            "option `momentData` is only used by the solvers analytic_dpm and analytic_ddim, not {solver}"
        )));
    }
    let moment_samples = js::opt_uint(options, "momentSamples", 100_000.0)?.unwrap_or(100) as usize;
    if moment_samples == 0 {
        return Err(WdError::bad_option(
            "option `momentSamples` must be at least 1",
        ));
    }
    Ok(RunOptions {
        solver,
        steps,
        seed,
        guidance,
        labels,
        eta,
        batch,
        preview,
        on_step: js::opt_function(options, "onStep")?,
        rtol,
        atol,
        moment_data,
        moment_samples,
        mode: crate::render::RenderMode::Image,
    })
}

/// Resolves once the GPU has finished everything submitted so far: the step's time, and a
/// turn of the event loop for the page (and for `abort()`).
async fn work_done(ctx: &GpuContext) {
    let (tx, rx) = futures_channel::oneshot::channel::<()>();
    ctx.queue.on_submitted_work_done(move || {
        let _ = tx.send(());
    });
    let _ = rx.await;
}

async fn generate(inner: &Inner, options: &JsValue) -> WdResult<JsValue> {
    let ctx = inner.ctx()?;
    let t_start = js::now_ms();
    if inner.net.borrow().is_some() {
        return nets::generate(inner, &ctx, options, t_start).await;
    }
    if inner.sd.borrow().is_some() {
        return sd::generate(inner, &ctx, options, t_start).await;
    }
    let model = inner.model.borrow_mut().take().ok_or_else(|| {
        WdError::new(
            Code::NotLoaded,
            "generate(): no model is loaded; call load(url) first (and wait for it)",
        )
    })?;
    let mut exec = inner
        .exec
        .borrow_mut()
        .take()
        .ok_or_else(|| WdError::new(Code::Disposed, "the engine was disposed"))?;
    let parsed = run_options(&model, options);
    let mut slot = Some(model);
    let r = match parsed {
        Ok(opts) => {
            // Validation errors of this run (a bind group over a buffer whose allocation
            // failed) are caught here too, so they are reported by this call and not by the
            // next load or run, whose errors are read from the uncaptured-error queue.
            let vscope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let r = run(inner, &ctx, &mut exec, &mut slot, &opts, t_start).await;
            let oom = scope.pop().await;
            let invalid = vscope.pop().await;
            let r = match (invalid, r) {
                (Some(e), Ok(_)) => Err(WdError::from(crate::Error::Gpu {
                    context: "sampling".into(),
                    message: e.to_string(),
                })),
                (_, r) => r,
            };
            match (oom, r) {
                (Some(e), _) => {
                    Err(WdError::new(
                        Code::OutOfMemory,
                        format!(
                            "the GPU ran out of memory while sampling a batch of {} ({e}); use a smaller batch. The engine is still usable.",
                            opts.batch
                        ),
                    ))
                }
                (None, r) => r,
            }
        }
        Err(e) => Err(e),
    };
    // GPU errors outside the out-of-memory scope (a bind group over a buffer whose allocation
    // failed) belong to this run: report them here rather than from the next load or run.
    let r = match (r, ctx.take_error("sampling")) {
        (Ok(_), Err(e)) => Err(e.into()),
        (r, _) => r,
    };
    if !inner.disposed.get() {
        *inner.model.borrow_mut() = slot;
        *inner.exec.borrow_mut() = Some(exec);
    }
    if r.is_err() {
        if let Some(exec) = inner.exec.borrow_mut().as_mut() {
            exec.discard_pending();
        }
        ctx.pool.trim();
    }
    r
}

async fn run(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    exec: &mut Exec,
    slot: &mut Option<Model>,
    opts: &RunOptions,
    t_start: f64,
) -> WdResult<JsValue> {
    let model = slot
        .as_ref()
        .ok_or_else(|| WdError::new(Code::NotLoaded, "generate(): no model is loaded"))?;
    let kind = research::kind_of(&opts.solver);
    // As the CLI: the research solvers read the config as DDPM's, the adaptive ones only
    // need its ᾱ table and prediction type.
    let class = match kind {
        Kind::Fixed => schedule_class_for(&opts.solver),
        Kind::Adaptive(_) => None,
        Kind::Analytic(_) | Kind::Gms => Some(SchedulerClass::Ddpm),
    };
    let scheduler = match &model.scheduler {
        Some((file, text)) => SchedulerConfig::from_json_str(text, file, class)?,
        None => {
            return Err(WdError::new(
                Code::BadModel,
                "the model was loaded without a scheduler_config.json, so its noise schedule is unknown; load the model folder with its scheduler_config.json (or add the file to the list)",
            ))
        }
    };
    let (h, w) = model.config.sample_size().unwrap_or((0, 0));
    let arch = model.unet.arch();
    let shape = [opts.batch, arch.in_channels, h, w];
    let moments = arch.out_channels == 3 * arch.in_channels;
    let guided = opts.guidance != 1.0;
    let mut plan = match kind {
        Kind::Fixed => Plan::Solver(solver_from_name(
            &opts.solver,
            &scheduler,
            opts.steps,
            SolverOptions { eta: opts.eta },
        )?),
        Kind::Adaptive(order) => Plan::Adaptive {
            opts: AdaptiveOptions {
                order,
                rtol: opts.rtol,
                atol: opts.atol,
                ..Default::default()
            },
            scheduler: scheduler.clone(),
        },
        Kind::Analytic(variant) => {
            let base = if model.bundled {
                model.base.as_deref()
            } else {
                None
            };
            let data =
                research::moment_data(&opts.moment_data, [shape[1], h, w], base, &opts.solver)
                    .await?;
            inner.check_running("generate")?;
            Plan::Analytic {
                variant,
                data,
                scheduler: scheduler.clone(),
                half_range: model.bundled.then_some(1.0),
            }
        }
        Kind::Gms => {
            if !moments {
                return Err(WdError::bad_option(format!(
                    "solver gms needs a model that predicts E[ε²] and E[ε³] as well as ε: a UNet whose out_channels is 3 × in_channels (channels 0..C = ε, C..2C = E[ε²], 2C..3C = E[ε³]). This model has in_channels {} and out_channels {}, so it predicts only its output; use another solver (e.g. analytic_dpm)",
                    arch.in_channels, arch.out_channels
                )));
            }
            if guided {
                return Err(WdError::bad_option(
                    "solver gms: classifier-free guidance combines the model's ε, not its higher moments, so GMS cannot run guided; pass guidance: 1",
                ));
            }
            Plan::Solver(Box::new(Gms::new(&scheduler, opts.steps)?))
        }
    };

    // The same conditioning as `webdiffusion sample`: with guidance w ≠ 1 the model runs on
    // the doubled batch [unconditional, conditional] (what `Guided::for_unet` sets up).
    let null_class = model.null_class();
    let uncond = match (&opts.labels, guided) {
        (Some(l), true) => match null_class {
            Some(u) => Some(vec![u; l.len()]),
            None => {
                return Err(WdError::bad_option(
                    "guidance ≠ 1 needs this class-conditional model's unconditional label, which the engine does not know for this model; use guidance 1",
                ))
            }
        },
        _ => None,
    };
    // The UNet moves into the denoiser for the run and comes back out after it.
    let Model {
        mut unet,
        config,
        scheduler: sched_text,
        bundled,
        base,
        load_ms,
    } = slot
        .take()
        .ok_or_else(|| WdError::new(Code::NotLoaded, "generate(): no model is loaded"))?;
    let r = match (guided, uncond) {
        (true, Some(u)) => {
            let c = opts.labels.clone().unwrap_or_default();
            unet.set_class_labels(Some([u, c].concat()));
            let mut g = Guided::new(unet, opts.guidance)?;
            let r = sample_loop(inner, ctx, exec, &mut plan, &mut g, &shape, opts, t_start).await;
            unet = g.into_inner();
            r
        }
        (true, None) => {
            let mut g = Guided::new(unet, opts.guidance)?;
            let r = sample_loop(inner, ctx, exec, &mut plan, &mut g, &shape, opts, t_start).await;
            unet = g.into_inner();
            r
        }
        (false, _) if moments => {
            // A moment model's ε block is what every solver reads; GMS also its moments.
            unet.set_class_labels(opts.labels.clone());
            let mut m = MomentChannels::new(unet, shape[1])?;
            let r = sample_loop(inner, ctx, exec, &mut plan, &mut m, &shape, opts, t_start).await;
            unet = m.into_inner();
            r
        }
        (false, _) => {
            unet.set_class_labels(opts.labels.clone());
            sample_loop(
                inner, ctx, exec, &mut plan, &mut unet, &shape, opts, t_start,
            )
            .await
        }
    };
    unet.set_class_labels(None);
    if let Ok(v) = &r {
        let timings = js::get(v, "timings");
        if let Some(t) = timings.dyn_ref::<Object>() {
            js::set(t, "loadMs", load_ms);
        }
    }
    *slot = Some(Model {
        unet,
        config,
        scheduler: sched_text,
        bundled,
        base,
        load_ms,
    });
    r
}

/// How a run samples: a fixed-step solver, or one whose steps or coefficients are decided
/// with the model at hand.
enum Plan {
    Solver(Box<dyn Solver>),
    Adaptive {
        opts: AdaptiveOptions,
        scheduler: SchedulerConfig,
    },
    Analytic {
        variant: AnalyticVariant,
        data: MomentData,
        scheduler: SchedulerConfig,
        half_range: Option<f64>,
    },
}

#[allow(clippy::too_many_arguments)]
async fn sample_loop(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    exec: &mut Exec,
    plan: &mut Plan,
    model: &mut dyn Denoiser,
    shape: &[usize; 4],
    opts: &RunOptions,
    t_start: f64,
) -> WdResult<JsValue> {
    let mut built: Box<dyn Solver>;
    let solver: &mut dyn Solver = match plan {
        Plan::Solver(s) => s.as_mut(),
        Plan::Adaptive { opts: a, scheduler } => {
            return adaptive_loop(inner, ctx, exec, *a, scheduler, model, shape, opts, t_start)
                .await
        }
        Plan::Analytic {
            variant,
            data,
            scheduler,
            half_range,
        } => {
            let ts = AnalyticDpm::timesteps_for(scheduler, opts.steps)?;
            let run = GammaRun {
                shape: *shape,
                labels: opts.labels.as_deref(),
                fixed_batch: opts.labels.is_some(),
                samples: opts.moment_samples,
                // The CLI's seed for the estimate's noise.
                seed: opts.seed ^ 0x5bd1_e995,
                data_option: "momentData",
                samples_option: "option `momentSamples`",
            };
            let gamma = estimate_gamma_for_run(exec, model, scheduler, &ts, data, &run).await?;
            inner.check_running("generate")?;
            built = Box::new(AnalyticDpm::new(
                scheduler,
                opts.steps,
                *variant,
                gamma,
                *half_range,
            )?);
            built.as_mut()
        }
    };
    let x_t = initial_noise(exec, solver, shape, opts.seed)?;
    let mut noise = Noise::Philox { seed: opts.seed };
    let mut watch = FiniteWatch::new();
    let total = solver.num_steps();
    let mut steps_ms = Vec::with_capacity(total);
    // The loop of `sampling::solvers::sample`, step for step (same recording, same submit
    // per step), with an await after each so the page and `abort()` get their turn.
    let mut x = exec.upload(&x_t)?;
    exec.submit()?;
    for i in 0..total {
        inner.check_running("generate")?;
        let t0 = js::now_ms();
        let mut sctx = StepContext {
            exec,
            noise: &mut noise,
            step: i as u32,
        };
        let out = solver.step(&mut sctx, model, i, &x)?;
        x = out.prev_sample;
        let info = StepInfo {
            index: i,
            total,
            timestep: solver.timestep(i),
            x: &x,
            x0: &out.x0,
        };
        watch.record(exec, &info)?;
        exec.submit()?;
        let shown = match opts.preview {
            Preview::X0 => Some(&out.x0),
            Preview::Xt => Some(&x),
            Preview::None => None,
        };
        if let Some(t) = shown {
            if let Some(c) = inner.canvas.borrow_mut().as_mut() {
                c.draw(ctx, &[t])?;
            }
        }
        work_done(ctx).await;
        let ms = js::now_ms() - t0;
        steps_ms.push(ms);
        if let Some(f) = &opts.on_step {
            let s = Object::new();
            js::set(&s, "step", (i + 1) as f64);
            js::set(&s, "total", total as f64);
            js::set(&s, "ms", ms);
            call_on_step(f, &s).await;
        }
        js::yield_to_event_loop().await;
    }
    inner.check_running("generate")?;
    if let Some(c) = inner.canvas.borrow_mut().as_mut() {
        c.draw(ctx, &[&x])?;
    }
    let data = exec.read(&x).await?;
    watch.check(exec).await?;
    Ok(result(
        shape,
        &data,
        t_start,
        &steps_ms,
        opts,
        solver.name(),
        total,
    ))
}

/// Calls the page's `onStep` with `s`. A promise it returns holds the next step until it
/// settles (a page that wants to look at every frame, or to pace the run); a throw or a
/// rejection is the page's bug and only warned about.
async fn call_on_step(f: &Function, s: &Object) {
    match f.call1(&JsValue::NULL, s) {
        Ok(v) if v.is_instance_of::<js_sys::Promise>() => {
            if let Err(e) = js::await_value(v).await {
                web_sys::console::warn_1(
                    &format!("onStep's promise rejected: {}", js::js_message(&e)).into(),
                );
            }
        }
        Ok(_) => {}
        Err(e) => web_sys::console::warn_1(&format!("onStep threw: {}", js::js_message(&e)).into()),
    }
}

/// `{ width, height, pixels, timings, seed, solver, steps }` of a finished run.
fn result(
    shape: &[usize; 4],
    data: &[f32],
    t_start: f64,
    steps_ms: &[f64],
    opts: &RunOptions,
    solver: &str,
    steps: usize,
) -> JsValue {
    let (width, height, pixels) = match opts.mode {
        crate::render::RenderMode::Image => to_rgba_grid(shape, data),
        // The CLI's PNG of these modes: the render pass's layout, drawn on the CPU.
        mode => {
            let layout = crate::render::Layout::default();
            match layout.natural_size(shape, 1).and_then(|(w, h)| {
                crate::render::render_cpu_mode(&[data], shape, &layout, (w, h), mode)
                    .map(|px| (w as usize, h as usize, px))
            }) {
                Ok(r) => r,
                Err(_) => to_rgba_grid(shape, data),
            }
        }
    };
    let out = Object::new();
    js::set(&out, "width", width as f64);
    js::set(&out, "height", height as f64);
    let arr = js_sys::Uint8ClampedArray::new_with_length(pixels.len() as u32);
    arr.copy_from(&pixels);
    js::set(&out, "pixels", arr);
    let timings = Object::new();
    js::set(&timings, "totalMs", js::now_ms() - t_start);
    let sms: Array = steps_ms.iter().map(|&m| JsValue::from_f64(m)).collect();
    js::set(&timings, "stepsMs", sms);
    js::set(&out, "timings", timings);
    js::set(&out, "seed", opts.seed as f64);
    js::set(&out, "solver", solver);
    js::set(&out, "steps", steps as f64);
    out.into()
}

/// The adaptive DPM-Solvers: from the last training timestep to 0 with error-controlled
/// steps. Every attempted step awaits a small readback of its error norm (so the page gets
/// its turns); `onStep` gets `total: null` (the count is not known ahead) and the preview
/// shows x_t (the solver forms no x̂₀).
#[allow(clippy::too_many_arguments)]
async fn adaptive_loop(
    inner: &Inner,
    ctx: &Arc<GpuContext>,
    exec: &mut Exec,
    a: AdaptiveOptions,
    scheduler: &SchedulerConfig,
    model: &mut dyn Denoiser,
    shape: &[usize; 4],
    opts: &RunOptions,
    t_start: f64,
) -> WdResult<JsValue> {
    let schedule = Schedule::new(scheduler)?;
    // The same x_T as `webdiffusion sample --solver dpm_adaptive_*` draws for this seed.
    let x_t = exec.run(
        &SolverUpdate::noise(shape, 1.0, opts.seed, u32::MAX, 0),
        &[],
    )?;
    let mut steps_ms: Vec<f64> = Vec::new();
    let mut stopped: Option<WdError> = None;
    let mut t0 = js::now_ms();
    let res = sample_adaptive_observed(
        exec,
        model,
        &schedule.alphas_cumprod,
        scheduler.prediction_type,
        &x_t,
        a,
        &mut |_, st| {
            if let Err(e) = inner.check_running("generate") {
                stopped = Some(e);
                return Err(crate::Error::Readback("generate stopped".into()));
            }
            let now = js::now_ms();
            let ms = now - t0;
            t0 = now;
            if st.accepted {
                steps_ms.push(ms);
            }
            if opts.preview != Preview::None {
                if let Some(c) = inner.canvas.borrow_mut().as_mut() {
                    if let Err(e) = c.draw(ctx, &[st.x]) {
                        stopped = Some(e);
                        return Err(crate::Error::Readback("preview failed".into()));
                    }
                }
            }
            if let Some(f) = &opts.on_step {
                let s = Object::new();
                js::set(&s, "step", st.accepted_steps as f64);
                js::set(&s, "total", JsValue::NULL);
                js::set(&s, "ms", ms);
                js::set(&s, "accepted", st.accepted);
                js::set(&s, "rejected", st.rejected as f64);
                js::set(&s, "timestep", st.t);
                if let Err(e) = f.call1(&JsValue::NULL, &s) {
                    web_sys::console::warn_1(
                        &format!("onStep threw: {}", js::js_message(&e)).into(),
                    );
                }
            }
            Ok(())
        },
    )
    .await;
    if let Some(e) = stopped {
        return Err(e);
    }
    let res = res?;
    inner.check_running("generate")?;
    if let Some(c) = inner.canvas.borrow_mut().as_mut() {
        c.draw(ctx, &[&res.sample])?;
    }
    let data = exec.read(&res.sample).await?;
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(crate::Error::invalid(
            "sample",
            format!("the sample contains non-finite values (first at element {i}): the solver diverged; try tighter tolerances or another solver"),
        )
        .into());
    }
    let name = match a.order {
        crate::sampling::solvers::AdaptiveOrder::O12 => "dpm_adaptive_12",
        crate::sampling::solvers::AdaptiveOrder::O23 => "dpm_adaptive_23",
    };
    Ok(result(
        shape,
        &data,
        t_start,
        &steps_ms,
        opts,
        name,
        res.timesteps.len(),
    ))
}

/// The sample as RGBA bytes, a batch tiled as the CLI's `--grid` does (⌈√N⌉ columns, 2 px
/// black gaps), each value mapped like the PNG writer (`render::to_u8`).
fn to_rgba_grid(shape: &[usize; 4], data: &[f32]) -> (usize, usize, Vec<u8>) {
    let [n, c, h, w] = *shape;
    let gap = 2;
    let cols = (1..=n.max(1)).find(|k| k * k >= n).unwrap_or(1);
    let rows = n.div_ceil(cols);
    let width = cols * w + (cols - 1) * gap;
    let height = rows * h + (rows - 1) * gap;
    let mut px = vec![0u8; width * height * 4];
    for p in px.chunks_exact_mut(4) {
        p[3] = 255;
    }
    let plane = h * w;
    for k in 0..n {
        let (x0, y0) = ((k % cols) * (w + gap), (k / cols) * (h + gap));
        let base = k * c * plane;
        for y in 0..h {
            for xx in 0..w {
                let p = y * w + xx;
                let rgb = if c >= 3 {
                    [0, 1, 2].map(|ch| crate::render::to_u8(data[base + ch * plane + p]))
                } else {
                    [crate::render::to_u8(data[base + p]); 3]
                };
                let o = ((y0 + y) * width + x0 + xx) * 4;
                px[o..o + 3].copy_from_slice(&rgb);
            }
        }
    }
    (width, height, px)
}
