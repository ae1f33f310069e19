//! `Engine.load`: where a model's files come from (a folder URL, a list of file URLs, or
//! `File`/`Blob` objects, among them a picked Stable Diffusion repository folder), reading
//! them as streams (`fetch` → `ReadableStream` reader, or `Blob.stream()`), and feeding the
//! safetensors bytes to [`SafetensorsStream`] chunk by chunk: the header is parsed from the
//! first bytes and every tensor is complete (and widened from f16/bf16) as soon as its last
//! byte arrives, so the raw file is never held whole.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use js_sys::{Function, Object, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js::{self, Code, WdError, WdResult};
use crate::exec::Exec;
use crate::weights::{Dtype, SafetensorsStream, ShardIndex, ShardTracker, WeightDtype, Weights};

/// The standard diffusers file names.
pub const CONFIG: &str = "config.json";
pub const SCHEDULER: &str = "scheduler_config.json";
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
pub const WEIGHTS_INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";
/// A diffusers pipeline repository's root file (Stable Diffusion, see [`super::sd`]).
pub const MODEL_INDEX: &str = "model_index.json";

/// One file: a URL to fetch or a `File`/`Blob` the page handed over.
#[derive(Clone)]
pub enum Item {
    Url(String),
    /// `name`: the file's path as picked (`webkitRelativePath`, or the `path` of a
    /// `{ path, file }` item), else its plain name.
    Blob {
        name: String,
        blob: JsValue,
    },
}

impl Item {
    /// The name shown in errors and progress events (the URL, or the file name).
    pub fn label(&self) -> &str {
        match self {
            Item::Url(u) => u,
            Item::Blob { name, .. } => name,
        }
    }

    fn base_name(&self) -> &str {
        let s = match self {
            Item::Url(u) => u.split(['?', '#']).next().unwrap_or(u),
            Item::Blob { name, .. } => name,
        };
        s.rsplit('/').next().unwrap_or(s)
    }
}

/// A Stable Diffusion repository picked as local files: the folder holding
/// `model_index.json`, chosen with `<input type="file" webkitdirectory>` (or given as
/// `{ path, file }` items), so every file keeps its path (`unet/config.json`).
#[derive(Clone)]
pub struct LocalRepo {
    /// The folder's path as picked, with a trailing `/` when not empty (labels in errors).
    pub root: String,
    /// The files by their path under that folder.
    pub files: HashMap<String, Item>,
}

/// Where a pipeline repository's files are: a folder URL (with a trailing `/`) or a picked
/// folder.
#[derive(Clone, Copy)]
pub enum RepoRoot<'a> {
    Url(&'a str),
    Local(&'a LocalRepo),
}

impl RepoRoot<'_> {
    /// `rel`'s name in errors: the URL, or the path as picked.
    pub fn label(&self, rel: &str) -> String {
        match self {
            RepoRoot::Url(base) => format!("{base}{rel}"),
            RepoRoot::Local(repo) => format!("{}{rel}", repo.root),
        }
    }

    /// The repository's own name in errors.
    pub fn name(&self) -> &str {
        match self {
            RepoRoot::Url(base) => base,
            RepoRoot::Local(repo) if repo.root.is_empty() => "the picked files",
            RepoRoot::Local(repo) => &repo.root,
        }
    }

    /// The file at `rel` (`None`: not among the picked files).
    pub fn item(&self, rel: &str) -> Option<Item> {
        match self {
            RepoRoot::Url(base) => Some(Item::Url(format!("{base}{rel}"))),
            RepoRoot::Local(repo) => repo.files.get(rel).cloned(),
        }
    }

    /// The picked files in `rel`'s folder (the shards next to a sharded index).
    fn siblings(&self, rel: &str) -> Vec<Item> {
        let RepoRoot::Local(repo) = self else {
            return Vec::new();
        };
        let dir = rel.rfind('/').map_or("", |i| &rel[..=i]);
        repo.files
            .iter()
            .filter(|(p, _)| p.strip_prefix(dir).is_some_and(|f| !f.contains('/')))
            .map(|(_, item)| item.clone())
            .collect()
    }

    /// Reads the text file at `rel`; the inner `Err` when the server answered 404 or the
    /// file is not among the picked ones.
    pub async fn read_text_or_404(
        &self,
        ctx: &LoadCtx,
        rel: &str,
    ) -> WdResult<Result<String, WdError>> {
        match self.item(rel) {
            Some(item) => read_text_or_404(ctx, &item).await,
            None => Ok(Err(WdError::bad_option(format!(
                "{}: not among the picked files",
                self.label(rel)
            )))),
        }
    }
}

/// Where the weights are.
pub enum WeightsSource {
    /// A folder URL: `diffusion_pytorch_model.safetensors`, else the sharded index.
    FolderGuess {
        base: String,
    },
    Single(Item),
    /// The index and every other item the caller gave (the shards are looked up among them
    /// by name, or fetched next to the index when it is a URL).
    Sharded {
        index: Item,
        others: Vec<Item>,
    },
    /// A picked Stable Diffusion repository folder (the source's `config` is its
    /// `model_index.json`).
    Repo(LocalRepo),
}

pub struct Source {
    pub config: Item,
    /// `None`: look for it next to the config when that is a folder URL, else no scheduler.
    pub scheduler: Option<Item>,
    pub scheduler_optional_url: Option<String>,
    pub weights: WeightsSource,
}

/// Turns the `source` argument of `load` into files.
pub fn resolve_source(source: &JsValue) -> WdResult<Source> {
    if let Some(url) = source.as_string() {
        if url.is_empty() {
            return Err(WdError::bad_option(
                "load(source): the model URL is empty; give the URL of a model folder (…/models/mnist/)",
            ));
        }
        // A pipeline repository may be named by its model_index.json.
        let url = match url.strip_suffix(MODEL_INDEX) {
            Some(dir) if dir.ends_with('/') => dir.to_string(),
            _ => url,
        };
        let base = if url.ends_with('/') {
            url
        } else {
            format!("{url}/")
        };
        return Ok(Source {
            config: Item::Url(format!("{base}{CONFIG}")),
            scheduler: None,
            scheduler_optional_url: Some(format!("{base}{SCHEDULER}")),
            weights: WeightsSource::FolderGuess { base },
        });
    }
    let items: Vec<JsValue> = if js_sys::Array::is_array(source) {
        source.unchecked_ref::<js_sys::Array>().iter().collect()
    } else if js::instance_of(source, "FileList") {
        js_sys::Array::from(source).iter().collect()
    } else {
        return Err(WdError::bad_option(format!(
            "load(source): expected a model folder URL (string), an array of file URLs, or an array of File/Blob objects; got {}",
            js::describe(source)
        )));
    };
    let mut files = Vec::with_capacity(items.len());
    // Whether the files came with their paths (a picked folder).
    let mut with_paths = false;
    for (i, v) in items.iter().enumerate() {
        if let Some(u) = v.as_string() {
            files.push(Item::Url(u));
            continue;
        }
        // `{ path, file }`: a file and its path in the folder (what the package makes of a
        // picked folder's files, whose webkitRelativePath a worker would not see).
        let (blob, path) = match js::get(v, "file") {
            f if js::instance_of(&f, "Blob") && !js::instance_of(v, "Blob") => {
                let path = js::get(v, "path").as_string().filter(|p| !p.is_empty());
                let Some(path) = path else {
                    return Err(WdError::bad_option(format!(
                        "load(source): item {i} is {{ file }} without a `path`; give the file's path in the model folder (`{{ path: \"unet/config.json\", file }}`)"
                    )));
                };
                (f, Some(path))
            }
            _ if js::instance_of(v, "Blob") => {
                let rel = js::get(v, "webkitRelativePath")
                    .as_string()
                    .filter(|p| !p.is_empty());
                (v.clone(), rel)
            }
            _ => {
                return Err(WdError::bad_option(format!(
                "load(source): item {i} is {}, expected a URL string, a File or {{ path, file }}",
                js::describe(v)
            )))
            }
        };
        with_paths |= path.is_some();
        let name = path.or_else(|| js::get(&blob, "name").as_string().filter(|n| !n.is_empty()));
        let Some(name) = name else {
            return Err(WdError::bad_option(format!(
                "load(source): item {i} is a Blob without a name; pass File objects (or `new File([blob], \"config.json\")`) so the engine can tell config from weights"
            )));
        };
        files.push(Item::Blob { name, blob });
    }
    if let Some(repo) = local_repo(&files)? {
        return Ok(repo);
    }
    if with_paths {
        // A picked model folder also holds READMEs, licences, .bin checkpoints and
        // subfolders: only its own .json and .safetensors files are considered.
        files.retain(|f| match f {
            Item::Blob { name, .. } => {
                name.matches('/').count() <= 1
                    && (name.ends_with(".json") || name.ends_with(".safetensors"))
            }
            Item::Url(_) => true,
        });
    }
    classify(files)
}

/// The picked files as a Stable Diffusion repository when one of them is `model_index.json`:
/// the others are keyed by their path under its folder.
fn local_repo(files: &[Item]) -> WdResult<Option<Source>> {
    let indexes: Vec<&Item> = files
        .iter()
        .filter(|f| matches!(f, Item::Blob { .. }) && f.base_name() == MODEL_INDEX)
        .collect();
    let index = match indexes.as_slice() {
        [] => return Ok(None),
        [one] => (*one).clone(),
        many => {
            return Err(WdError::bad_option(format!(
                "load(source): {} files named {MODEL_INDEX} ({}); pick one Stable Diffusion repository folder",
                many.len(),
                many.iter().map(|f| f.label()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let root = index.label()[..index.label().len() - MODEL_INDEX.len()].to_string();
    let files: HashMap<String, Item> = files
        .iter()
        .filter_map(|f| match f {
            Item::Blob { name, .. } => name
                .strip_prefix(root.as_str())
                .map(|rel| (rel.to_string(), f.clone())),
            Item::Url(_) => None,
        })
        .collect();
    Ok(Some(Source {
        config: index,
        scheduler: None,
        scheduler_optional_url: None,
        weights: WeightsSource::Repo(LocalRepo { root, files }),
    }))
}

fn classify(files: Vec<Item>) -> WdResult<Source> {
    let mut config = None;
    let mut scheduler = None;
    let mut single = Vec::new();
    let mut index = None;
    let mut others = Vec::new();
    let mut other_json = Vec::new();
    for f in files {
        let name = f.base_name().to_string();
        if name == SCHEDULER || name.ends_with("scheduler_config.json") {
            scheduler = Some(f);
        } else if name.ends_with(".safetensors.index.json") {
            index = Some(f);
        } else if name == CONFIG {
            config = Some(f);
        } else if name.ends_with(".json") {
            other_json.push(f);
        } else if name.ends_with(".safetensors") {
            single.push(f.clone());
            others.push(f);
        } else {
            return Err(WdError::bad_option(format!(
                "load(source): do not know what {} is; give config.json, scheduler_config.json (optional) and the .safetensors weights (or a *.safetensors.index.json with its shards)",
                f.label()
            )));
        }
    }
    // A config saved under another name (unet_config.json) is used when it is the only one.
    if config.is_none() && other_json.len() == 1 {
        config = other_json.pop();
    }
    let config = config.ok_or_else(|| {
        WdError::bad_option(
            "load(source): no config.json among the files; a diffusers model needs its config.json next to the weights",
        )
    })?;
    let weights = match (index, single.len()) {
        (Some(index), _) => WeightsSource::Sharded { index, others },
        (None, 1) => WeightsSource::Single(single.remove(0)),
        (None, 0) => {
            return Err(WdError::bad_option(
                "load(source): no .safetensors weights among the files; add diffusion_pytorch_model.safetensors",
            ))
        }
        (None, n) => {
            return Err(WdError::bad_option(format!(
                "load(source): {n} .safetensors files but no *.safetensors.index.json saying which tensor is where; add the index of the sharded checkpoint"
            )))
        }
    };
    Ok(Source {
        config,
        scheduler,
        scheduler_optional_url: None,
        weights,
    })
}

/// What every read of one `load` shares: the fetch function, cancellation and progress.
pub struct LoadCtx {
    pub fetch: Function,
    /// The signal handed to `fetch` (ours, or ours combined with the caller's).
    pub signal: JsValue,
    pub user_signal: JsValue,
    pub aborted: std::rc::Rc<Cell<bool>>,
    pub on_progress: Option<Function>,
    pub tensors_ready: Cell<usize>,
    pub tensors_total: Cell<Option<usize>>,
    pub bytes_read: Cell<u64>,
    /// The adapter's `maxBufferSize`: no tensor may be larger (as float32).
    pub max_buffer_size: u64,
    /// Where tensors go as soon as their bytes have arrived.
    pub exec: RefCell<Exec>,
    /// Tensors uploaded while their file was still arriving.
    pub uploaded: Cell<usize>,
    /// The reader being read, so `abort()` can cancel a pending read.
    pub reader: RefCell<Option<JsValue>>,
    /// Which tensors the model's builder reads on the host (see [`keep_on_host`]).
    pub keep_on_host: Cell<fn(&str) -> bool>,
    /// How Linear/Conv2d weights are stored on the GPU (see [`packs_on_device`]); the
    /// `Weights` sets read here carry it to the model builder.
    pub weight_dtype: Cell<WeightDtype>,
    /// A Stable Diffusion repository's preview decoder: the folder URL of a tiny
    /// autoencoder (`load`'s `previewDecoder`).
    pub preview_decoder: RefCell<Option<String>>,
}

impl LoadCtx {
    /// An empty set with this load's weight storage.
    fn new_weights(&self, source: &str) -> Weights {
        let mut w = Weights::new(source);
        w.set_weight_dtype(self.weight_dtype.get());
        w
    }

    pub fn check(&self) -> WdResult<()> {
        let user = js::get(&self.user_signal, "aborted").as_bool() == Some(true);
        if self.aborted.get() || user {
            return Err(WdError::aborted("load"));
        }
        Ok(())
    }

    fn progress(&self, file: &str, loaded: u64, total: Option<u64>) {
        let Some(f) = &self.on_progress else {
            return;
        };
        let p = Object::new();
        js::set(&p, "file", file);
        js::set(&p, "loaded", loaded as f64);
        js::set(
            &p,
            "total",
            total.map_or(JsValue::NULL, |t| JsValue::from_f64(t as f64)),
        );
        js::set(&p, "tensorsReady", self.tensors_ready.get() as f64);
        js::set(
            &p,
            "tensorsTotal",
            self.tensors_total
                .get()
                .map_or(JsValue::NULL, |t| JsValue::from_f64(t as f64)),
        );
        // A throwing progress handler is the page's bug; it must not break the load.
        if let Err(e) = f.call1(&JsValue::NULL, &p) {
            web_sys::console::warn_1(&format!("onProgress threw: {}", js::js_message(&e)).into());
        }
    }
}

/// An open file: a stream reader and its length when known.
struct Opened {
    label: String,
    reader: JsValue,
    len: Option<u64>,
}

enum OpenError {
    /// HTTP 404 (a folder's optional file is absent).
    NotFound(WdError),
    Other(WdError),
}

impl From<OpenError> for WdError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::NotFound(e) | OpenError::Other(e) => e,
        }
    }
}

async fn open(ctx: &LoadCtx, item: &Item) -> Result<Opened, OpenError> {
    ctx.check().map_err(OpenError::Other)?;
    match item {
        Item::Blob { name, blob } => {
            let stream = js::call(blob, "stream", &[]).map_err(|e| {
                OpenError::Other(WdError::new(
                    Code::BadOption,
                    format!("{name}: cannot read this File ({})", js::js_message(&e)),
                ))
            })?;
            let reader = js::call(&stream, "getReader", &[])
                .map_err(|e| OpenError::Other(WdError::new(Code::Internal, js::js_message(&e))))?;
            Ok(Opened {
                label: name.clone(),
                reader,
                len: js::get(blob, "size").as_f64().map(|s| s as u64),
            })
        }
        Item::Url(url) => {
            let init = Object::new();
            if !js::is_absent(&ctx.signal) {
                js::set(&init, "signal", ctx.signal.clone());
            }
            let called = ctx
                .fetch
                .call2(&JsValue::NULL, &JsValue::from_str(url), &init);
            let resp = match called {
                Ok(p) => js::await_value(p).await,
                Err(e) => Err(e),
            };
            let resp = resp.map_err(|e| {
                if js::is_abort_error(&e) || ctx.aborted.get() {
                    OpenError::Other(WdError::aborted("load"))
                } else {
                    OpenError::Other(WdError::new(
                        Code::Network,
                        format!(
                            "could not fetch {url}: {} (the network failed, the server is unreachable, or a CORS policy blocked it: a server on another origin must send Access-Control-Allow-Origin)",
                            js::js_message(&e)
                        ),
                    ))
                }
            })?;
            let ok = js::get(&resp, "ok").as_bool().unwrap_or(false);
            let status = js::get(&resp, "status").as_f64().unwrap_or(0.0) as u32;
            if !ok {
                let text = js::get(&resp, "statusText").as_string().unwrap_or_default();
                let e = WdError::new(
                    Code::Http,
                    format!(
                        "{url}: the server answered HTTP {status}{}{}; check the URL (a model folder holds {CONFIG} and {WEIGHTS})",
                        if text.is_empty() { "" } else { " " },
                        text
                    ),
                );
                return Err(if status == 404 {
                    OpenError::NotFound(e)
                } else {
                    OpenError::Other(e)
                });
            }
            let body = js::get(&resp, "body");
            if js::is_absent(&body) {
                return Err(OpenError::Other(WdError::new(
                    Code::Network,
                    format!("{url}: the response has no body to read"),
                )));
            }
            let reader = js::call(&body, "getReader", &[]).map_err(|e| {
                OpenError::Other(WdError::new(
                    Code::Network,
                    format!("{url}: cannot read the response ({})", js::js_message(&e)),
                ))
            })?;
            let headers = js::get(&resp, "headers");
            let header = |name: &str| {
                js::call(&headers, "get", &[JsValue::from_str(name)])
                    .ok()
                    .and_then(|v| v.as_string())
            };
            // A compressed body's Content-Length counts compressed bytes, not the file's.
            let identity = header("content-encoding")
                .is_none_or(|e| e.trim().is_empty() || e.eq_ignore_ascii_case("identity"));
            let len = if identity {
                header("content-length").and_then(|l| l.trim().parse::<u64>().ok())
            } else {
                None
            };
            Ok(Opened {
                label: url.clone(),
                reader,
                len,
            })
        }
    }
}

/// Reads `opened` to the end, handing each chunk to `on_chunk`. Returns the bytes read.
async fn read_all(
    ctx: &LoadCtx,
    opened: &Opened,
    mut on_chunk: impl FnMut(&[u8]) -> WdResult<()>,
) -> WdResult<u64> {
    *ctx.reader.borrow_mut() = Some(opened.reader.clone());
    let r = read_loop(ctx, opened, &mut on_chunk).await;
    *ctx.reader.borrow_mut() = None;
    if r.is_err() {
        // Stop the download (and free the connection) when we give up on it.
        if let Ok(p) = js::call(&opened.reader, "cancel", &[]) {
            if let Ok(p) = p.dyn_into::<js_sys::Promise>() {
                // Nothing to do if cancelling fails; awaiting keeps it from being an unhandled
                // rejection.
                wasm_bindgen_futures::spawn_local(async move {
                    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
                });
            }
        }
    }
    r
}

async fn read_loop(
    ctx: &LoadCtx,
    opened: &Opened,
    on_chunk: &mut dyn FnMut(&[u8]) -> WdResult<()>,
) -> WdResult<u64> {
    let mut n = 0u64;
    loop {
        ctx.check()?;
        let p = js::call(&opened.reader, "read", &[])
            .map_err(|e| WdError::new(Code::Internal, js::js_message(&e)))?;
        let r = js::await_value(p).await.map_err(|e| {
            if js::is_abort_error(&e) || ctx.aborted.get() {
                WdError::aborted("load")
            } else {
                WdError::new(
                    Code::Network,
                    format!(
                        "{}: the download failed after {n} bytes: {}",
                        opened.label,
                        js::js_message(&e)
                    ),
                )
            }
        })?;
        ctx.check()?;
        if js::get(&r, "done").as_bool() == Some(true) {
            return Ok(n);
        }
        let value = js::get(&r, "value");
        let Some(chunk) = value.dyn_ref::<Uint8Array>() else {
            return Err(WdError::new(
                Code::Network,
                format!(
                    "{}: the stream gave {} instead of bytes",
                    opened.label,
                    js::describe(&value)
                ),
            ));
        };
        let bytes = chunk.to_vec();
        n += bytes.len() as u64;
        ctx.bytes_read
            .set(ctx.bytes_read.get() + bytes.len() as u64);
        on_chunk(&bytes)?;
    }
}

/// A whole small file (JSON) as text.
async fn read_text(ctx: &LoadCtx, item: &Item) -> Result<String, OpenError> {
    let opened = open(ctx, item).await?;
    let mut bytes = Vec::new();
    ctx.progress(&opened.label, 0, opened.len);
    read_all(ctx, &opened, |c| {
        bytes.extend_from_slice(c);
        ctx.progress(&opened.label, bytes.len() as u64, opened.len);
        Ok(())
    })
    .await
    .map_err(OpenError::Other)?;
    String::from_utf8(bytes).map_err(|_| {
        OpenError::Other(WdError::new(
            Code::BadModel,
            format!("{}: not UTF-8 text (expected JSON)", item.label()),
        ))
    })
}

/// A whole small file as text; `Ok(Err(e))` when the server answered 404 (`e` says so), for
/// files whose absence the caller handles.
pub async fn read_text_or_404(ctx: &LoadCtx, item: &Item) -> WdResult<Result<String, WdError>> {
    match read_text(ctx, item).await {
        Ok(t) => Ok(Ok(t)),
        Err(OpenError::NotFound(e)) => Ok(Err(e)),
        Err(OpenError::Other(e)) => Err(e),
    }
}

/// The first of `candidates` (paths in the repository `root`) that is there (the server has
/// it, or it was picked), streamed into a [`Weights`] set (a `*.index.json` as a sharded
/// checkpoint next to its shards). `None` when none of them is.
pub async fn read_first_weights(
    ctx: &LoadCtx,
    root: RepoRoot<'_>,
    candidates: &[String],
) -> WdResult<Option<(String, Weights)>> {
    for rel in candidates {
        let Some(item) = root.item(rel) else {
            continue;
        };
        let label = item.label().to_string();
        // Progress counts this component's tensors, as `tensorsTotal` does.
        ctx.tensors_ready.set(0);
        if rel.ends_with(".index.json") {
            match read_sharded(ctx, &item, &root.siblings(rel)).await {
                Ok(w) => return Ok(Some((label, w))),
                Err(ShardErr::IndexNotFound) => continue,
                Err(ShardErr::Other(e)) => return Err(e),
            }
        }
        match open(ctx, &item).await {
            Ok(opened) => {
                let mut w = ctx.new_weights(&label);
                stream_one(ctx, &opened, &mut w, None).await?;
                return Ok(Some((label, w)));
            }
            Err(OpenError::NotFound(_)) => continue,
            Err(OpenError::Other(e)) => return Err(e),
        }
    }
    Ok(None)
}

/// The text files of a model.
pub struct Texts {
    pub config_file: String,
    pub config: String,
    pub scheduler: Option<(String, String)>,
}

pub async fn read_texts(ctx: &LoadCtx, src: &Source) -> WdResult<Texts> {
    let config = read_text(ctx, &src.config).await?;
    read_texts_after(ctx, src, config).await
}

/// [`read_texts`] with the config already read.
pub async fn read_texts_after(ctx: &LoadCtx, src: &Source, config: String) -> WdResult<Texts> {
    let scheduler = match (&src.scheduler, &src.scheduler_optional_url) {
        (Some(item), _) => Some((item.label().to_string(), read_text(ctx, item).await?)),
        (None, Some(url)) => {
            // In the model folder, else in ../scheduler/ (a diffusers pipeline's layout), as
            // the CLI looks for it.
            let pipeline = url
                .strip_suffix(SCHEDULER)
                .map(|base| format!("{base}../scheduler/{SCHEDULER}"));
            let mut found = None;
            for u in std::iter::once(url.clone()).chain(pipeline) {
                match read_text(ctx, &Item::Url(u.clone())).await {
                    Ok(t) => {
                        found = Some((u, t));
                        break;
                    }
                    Err(OpenError::NotFound(_)) => {}
                    Err(OpenError::Other(e)) => return Err(e),
                }
            }
            found
        }
        (None, None) => None,
    };
    Ok(Texts {
        config_file: src.config.label().to_string(),
        config,
        scheduler,
    })
}

/// Streams the weights into a [`Weights`] set.
pub async fn read_weights(ctx: &LoadCtx, src: &Source) -> WdResult<Weights> {
    match &src.weights {
        WeightsSource::Single(item) => {
            let mut w = ctx.new_weights(item.label());
            let opened = open(ctx, item).await?;
            stream_one(ctx, &opened, &mut w, None).await?;
            Ok(w)
        }
        WeightsSource::FolderGuess { base } => {
            let single = Item::Url(format!("{base}{WEIGHTS}"));
            match open(ctx, &single).await {
                Ok(opened) => {
                    let mut w = ctx.new_weights(single.label());
                    stream_one(ctx, &opened, &mut w, None).await?;
                    Ok(w)
                }
                Err(OpenError::NotFound(first)) => {
                    let index = Item::Url(format!("{base}{WEIGHTS_INDEX}"));
                    match read_sharded(ctx, &index, &[]).await {
                        Err(ShardErr::IndexNotFound) => Err(WdError::new(
                            Code::Http,
                            format!(
                                "{} (and no sharded {WEIGHTS_INDEX} either); is {base} a diffusers model folder?",
                                first.message
                            ),
                        )),
                        Err(ShardErr::Other(e)) => Err(e),
                        Ok(w) => Ok(w),
                    }
                }
                Err(OpenError::Other(e)) => Err(e),
            }
        }
        WeightsSource::Sharded { index, others } => {
            read_sharded(ctx, index, others).await.map_err(|e| match e {
                ShardErr::IndexNotFound => WdError::new(
                    Code::Http,
                    format!("{}: HTTP 404 (not found)", index.label()),
                ),
                ShardErr::Other(e) => e,
            })
        }
        WeightsSource::Repo(repo) => Err(WdError::new(
            Code::Internal,
            format!(
                "{}: a pipeline repository's weights are read per component",
                RepoRoot::Local(repo).name()
            ),
        )),
    }
}

enum ShardErr {
    IndexNotFound,
    Other(WdError),
}

impl From<WdError> for ShardErr {
    fn from(e: WdError) -> Self {
        ShardErr::Other(e)
    }
}

async fn read_sharded(
    ctx: &LoadCtx,
    index_item: &Item,
    others: &[Item],
) -> Result<Weights, ShardErr> {
    let text = match read_text(ctx, index_item).await {
        Ok(t) => t,
        Err(OpenError::NotFound(_)) => return Err(ShardErr::IndexNotFound),
        Err(OpenError::Other(e)) => return Err(e.into()),
    };
    let index = ShardIndex::parse(index_item.label(), &text).map_err(WdError::from)?;
    ctx.tensors_total.set(Some(index.weight_map.len()));
    let shards = index.shard_files();
    let mut tracker = ShardTracker::new(index);
    let mut w = ctx.new_weights(index_item.label());
    for shard in &shards {
        let item = match index_item {
            Item::Url(u) => {
                let dir = u.rfind('/').map_or("", |i| &u[..=i]);
                Item::Url(format!("{dir}{shard}"))
            }
            Item::Blob { .. } => others
                .iter()
                .find(|o| o.base_name() == shard)
                .cloned()
                .ok_or_else(|| {
                    WdError::bad_option(format!(
                        "{}: lists the shard {shard}, which is not among the files given; select every shard of the model",
                        index_item.label()
                    ))
                })?,
        };
        let opened = open(ctx, &item).await.map_err(WdError::from)?;
        stream_one(ctx, &opened, &mut w, Some((&mut tracker, shard.as_str()))).await?;
    }
    tracker.finish().map_err(WdError::from)?;
    Ok(w)
}

/// One safetensors file through the push parser.
async fn stream_one(
    ctx: &LoadCtx,
    opened: &Opened,
    w: &mut Weights,
    mut shard: Option<(&mut ShardTracker, &str)>,
) -> WdResult<()> {
    let label = opened.label.clone();
    let mut stream = SafetensorsStream::new(label.clone());
    let mut header_seen = false;
    let base_ready = ctx.tensors_ready.get();
    ctx.progress(&label, 0, opened.len);
    let got = read_all(ctx, opened, |chunk| {
        stream
            .push_with(chunk, |t| {
                if (ctx.keep_on_host.get())(&t.name) {
                    return w.insert(t);
                }
                let (file, name, dtype) = (t.file.clone(), t.name.clone(), t.dtype());
                if packs_on_device(ctx.weight_dtype.get(), &name, &t.shape, dtype) {
                    let words = t.to_f16_words()?;
                    let gpu = ctx.exec.borrow().upload_words(&name, &t.shape, &words)?;
                    ctx.uploaded.set(ctx.uploaded.get() + 1);
                    return w.insert_device_packed(file, name, dtype, gpu);
                }
                let host = t.into_tensor()?;
                let gpu = ctx.exec.borrow_mut().upload(&host)?;
                ctx.uploaded.set(ctx.uploaded.get() + 1);
                w.insert_device(file, name, dtype, gpu)
            })
            .map_err(WdError::from)?;
        if !header_seen {
            if let Some(h) = stream.header() {
                header_seen = true;
                // A tensor no buffer of this adapter can hold fails now, before its bytes
                // are downloaded.
                for t in h.tensors() {
                    let packed = packs_on_device(ctx.weight_dtype.get(), &t.name, &t.shape, t.dtype);
                    let (bytes, as_what) = match packed {
                        true => ((t.numel() as u64).div_ceil(2) * 4, "as packed float16"),
                        false => (t.numel() as u64 * 4, "as float32"),
                    };
                    if bytes > ctx.max_buffer_size {
                        return Err(WdError::new(
                            Code::Limit,
                            format!(
                                "{label}: the model is too large for this GPU: tensor `{}` needs {bytes} bytes {as_what} but the adapter's maxBufferSize is {}; use a smaller model or a GPU with larger limits",
                                t.name, ctx.max_buffer_size
                            ),
                        ));
                    }
                }
                if let Some((tracker, name)) = shard.as_mut() {
                    tracker.check_header(name, h).map_err(WdError::from)?;
                } else {
                    ctx.tensors_total.set(Some(h.tensors().len()));
                }
                // The server already said how long the file is: a file cut short is known now,
                // not after the whole download.
                if let Some(len) = opened.len {
                    if len < h.total_len() {
                        return Err(truncated(&label, h.total_len(), len, "the server sends"));
                    }
                }
            }
        }
        let p = stream.progress();
        ctx.tensors_ready.set(base_ready + p.tensors_done);
        ctx.progress(&label, p.bytes_done, opened.len.or(p.bytes_total));
        Ok(())
    })
    .await;
    // A connection that drops mid-file is a truncated file when we know how long it is.
    let got = match got {
        Err(e) if e.code == Code::Network => match stream.header() {
            Some(h) => {
                let mut t = truncated(
                    &label,
                    h.total_len(),
                    stream.progress().bytes_done,
                    "the download ended after",
                );
                t.message.push_str(&format!(" ({})", e.message));
                return Err(t);
            }
            None => return Err(e),
        },
        r => r?,
    };
    if !stream.is_done() {
        let expected = stream.header().map(|h| h.total_len());
        return Err(match expected {
            Some(exp) => truncated(&label, exp, got, "the download ended after"),
            None => WdError::from(stream.finish().err().unwrap_or_else(|| {
                crate::Error::invalid("load", format!("{label}: the file ended early"))
            })),
        });
    }
    stream.finish().map_err(WdError::from)?;
    Ok(())
}

/// Whether a tensor streamed to the GPU goes there as packed f16 words: the Linear and
/// Conv2d weights (2-D and up) when the storage asks for it ([`WeightDtype::packs`]), never
/// embedding tables (read as f32 by index). The layers take what was uploaded as it is, so
/// this only has to agree with which tensors they read through the packed-weight path; one
/// that does not is a clear error when the model is built, not a wrong image.
pub fn packs_on_device(mode: WeightDtype, name: &str, shape: &[usize], stored: Dtype) -> bool {
    crate::weights::is_packable(name, shape) && mode.packs(stored, true)
}

/// Tensors the `nn` layers combine on the host before uploading (q/k/v into one matrix, the
/// scale-shift time projection split in two): they wait in the `Weights` set as bytes. Every
/// other tensor goes to the GPU the moment its last byte arrives.
pub fn keep_on_host(name: &str) -> bool {
    [".to_q.", ".to_k.", ".to_v.", "time_emb_proj."]
        .iter()
        .any(|k| name.contains(k))
}

fn truncated(file: &str, expected: u64, got: u64, what: &str) -> WdError {
    WdError::new(
        Code::Truncated,
        format!(
            "{file}: TRUNCATED: its header describes {expected} bytes but {what} {got} bytes ({} missing); the download was cut short or the server holds a partial file: download it again",
            expected.saturating_sub(got)
        ),
    )
}
