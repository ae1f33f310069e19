//! The native live preview window (winit + a wgpu surface), drawn with the same render
//! shader as the browser canvas (`render.rs`).
//!
//! [`run`] opens the window on the calling thread (the main thread: macOS requires it, and
//! winit allows one event loop per process), creates the GPU context on an adapter that can
//! present to it, and runs `work` (the sampling) on a second thread with that context and a
//! [`PreviewSink`]. Each [`PreviewSink::show`] copies the tensors on the GPU (no readback),
//! submits the executor's recording and wakes the window, which draws the newest frame and
//! shows "step k/N" in its title. When `work` returns successfully the last frame stays until
//! the user closes the window; an error from `work` closes it at once and is returned.
//! Closing the window while `work` runs makes the next `show` fail, so sampling stops.
//!
//! ```no_run
//! use webdiffusion::preview::{self, PreviewOptions};
//! use webdiffusion::{Exec, Tensor};
//! # fn main() -> webdiffusion::Result<()> {
//! let opts = PreviewOptions::new("webdiffusion: sampling");
//! let image: Vec<f32> = preview::run(&opts, |ctx, sink| {
//!     let mut exec = Exec::gpu(ctx);
//!     // ... load the model on `exec`, and in the sampling callback:
//!     let x = exec.tensor(&[1, 1, 32, 32], &[0.0; 32 * 32])?;
//!     sink.show(&mut exec, &x, &x, 1, 1)?;
//!     webdiffusion::platform::block_on(exec.read(&x))
//! })?;
//! # Ok(()) }
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use winit::application::ApplicationHandler;
use winit::dpi::PhysicalSize;
use winit::event::WindowEvent;
use winit::event_loop::{ActiveEventLoop, EventLoop, EventLoopProxy};
use winit::window::{Window, WindowId};

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::gpu::{GpuContext, GpuOptions};
use crate::platform::block_on;
use crate::render::{self, Layout, Renderer};
use crate::sampling::solvers::{Control, StepInfo};
use crate::tensor::Tensor;

/// Read by [`run`] when [`PreviewOptions::close_after_frames`] is `None`: close the window by
/// itself once the work is done and this many frames were presented after it (CI runs the
/// `--preview` path this way under Xvfb).
pub const CLOSE_AFTER_ENV: &str = "WEBDIFFUSION_PREVIEW_CLOSE_AFTER";

/// How the preview window looks and behaves.
#[derive(Debug, Clone)]
pub struct PreviewOptions {
    /// Window title; the step ("step 3/20") is appended.
    pub title: String,
    /// Adapter and features for the context `run` creates and hands to the work.
    pub gpu: GpuOptions,
    pub layout: Layout,
    /// Close by itself once the work has finished and this many frames were presented after
    /// that (`Some(0)`: as soon as it finishes). `None`: read [`CLOSE_AFTER_ENV`], and when
    /// that is unset too, stay open until the user closes the window.
    pub close_after_frames: Option<u32>,
    /// Read every presented frame back and keep the last in [`PreviewReport::last_capture`]
    /// (tests; needs a surface that allows copies).
    pub capture: bool,
    /// The largest inner size, in physical pixels, the window takes when it fits itself to
    /// the first frame.
    pub max_size: (u32, u32),
}

impl PreviewOptions {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            gpu: GpuOptions::default(),
            layout: Layout::default(),
            close_after_frames: None,
            capture: false,
            max_size: (1024, 640),
        }
    }

    fn close_after(&self) -> Result<Option<u32>> {
        if self.close_after_frames.is_some() {
            return Ok(self.close_after_frames);
        }
        match std::env::var(CLOSE_AFTER_ENV) {
            Err(_) => Ok(None),
            Ok(v) => v.trim().parse().map(Some).map_err(|_| {
                preview_error(format!(
                    "{CLOSE_AFTER_ENV}={v:?} is not a frame count; set it to a whole number (e.g. 3) or unset it"
                ))
            }),
        }
    }
}

/// A frame read back from the window (RGBA bytes, row-major), for tests.
#[derive(Debug, Clone)]
pub struct Capture {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
    /// The frame's sequence number (`show`'s return value; 0 before the first frame).
    pub seq: u64,
}

/// What the window did, from [`run_with_report`].
#[derive(Debug, Default)]
pub struct PreviewReport {
    /// Frames handed to the window by `show`.
    pub frames_received: u64,
    /// Surface textures presented.
    pub frames_presented: u64,
    pub surface_format: Option<wgpu::TextureFormat>,
    pub last_capture: Option<Capture>,
}

fn preview_error(message: impl Into<String>) -> Error {
    Error::invalid("preview", message)
}

fn closed_error() -> Error {
    preview_error("the preview window was closed before sampling finished")
}

struct Frame {
    panels: Vec<Tensor>,
    caption: String,
    seq: u64,
}

enum Msg {
    Frame(Frame),
    WorkDone { ok: bool },
}

#[derive(Default)]
struct Presented {
    frames: u64,
    last_seq: u64,
}

#[derive(Default)]
struct Shared {
    closed: AtomicBool,
    presented: Mutex<Presented>,
    cv: Condvar,
}

/// The work's handle on the window: hands it frames. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct PreviewSink {
    ctx: Arc<GpuContext>,
    proxy: EventLoopProxy<Msg>,
    shared: Arc<Shared>,
    next_seq: Arc<AtomicU64>,
}

impl PreviewSink {
    /// The context the window draws with; the work must run its executor on it
    /// (`Exec::gpu(sink.context().clone())`).
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Whether the user closed the window.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Show `x_t` and the x₀ prediction side by side as step `step` of `total` (both
    /// (N, C, H, W), same shape; see `render` for the layout). Records GPU copies into
    /// `exec`'s recording and **submits it** (the step's work with them), so the window never
    /// draws a frame whose data is not on the queue yet; the sampling loop's own submit then
    /// finds nothing left. Returns the frame's sequence number. Fails once the window was
    /// closed: stop sampling then.
    pub fn show(
        &self,
        exec: &mut Exec,
        x_t: &Tensor,
        x0: &Tensor,
        step: usize,
        total: usize,
    ) -> Result<u64> {
        self.send(exec, &[x_t, x0], format!("step {step}/{total}"))
    }

    /// A step callback for [`crate::sampling::solvers::sample`] that shows every step (x_t and
    /// x₀, "step k/N"). The first error (the window was closed, a GPU error) is stored in
    /// `error` and stops the loop; return it after `sample` does.
    pub fn step_callback<'a>(
        &'a self,
        error: &'a mut Option<Error>,
    ) -> impl FnMut(&mut Exec, &StepInfo<'_>) -> Control + 'a {
        move |exec, info| match self.show(exec, info.x, info.x0, info.index + 1, info.total) {
            Ok(_) => Control::Continue,
            Err(e) => {
                error.get_or_insert(e);
                Control::Stop
            }
        }
    }

    /// Show one image tensor (N, C, H, W) alone, captioned `caption` (e.g. the final sample).
    pub fn show_image(&self, exec: &mut Exec, image: &Tensor, caption: &str) -> Result<u64> {
        self.send(exec, &[image], caption.to_string())
    }

    /// Wait until the window has presented frame `seq` (or a later one); false on timeout or
    /// when the window is gone.
    pub fn wait_presented(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = self
            .shared
            .presented
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while p.last_seq < seq {
            let now = Instant::now();
            if now >= deadline || self.is_closed() {
                return false;
            }
            p = match self.shared.cv.wait_timeout(p, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    fn send(&self, exec: &mut Exec, panels: &[&Tensor], caption: String) -> Result<u64> {
        if self.is_closed() {
            return Err(closed_error());
        }
        let shape = panels[0].shape();
        // Validate here, where the caller can act on it, not in the window thread.
        self.ctx_layout_check(shape, panels)?;
        let mut copies = Vec::with_capacity(panels.len());
        for t in panels {
            let copy = match exec.gpu_context() {
                Some(c) if Arc::ptr_eq(c, &self.ctx) => render::snapshot(exec, t)?,
                Some(_) => {
                    return Err(preview_error(
                        "the tensors live on another GPU context than the preview window's; run the executor on `sink.context()`",
                    ))
                }
                None => {
                    let data = t.cpu_data().ok_or(Error::Backend {
                        op: "preview",
                        index: 0,
                        expected: "cpu",
                        got: "gpu",
                    })?;
                    Tensor::from_gpu(shape.to_vec(), self.ctx.upload("preview frame", data)?)
                }
            };
            copies.push(copy);
        }
        exec.submit()?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.proxy
            .send_event(Msg::Frame(Frame {
                panels: copies,
                caption,
                seq,
            }))
            .map_err(|_| closed_error())?;
        Ok(seq)
    }

    fn ctx_layout_check(&self, shape: &[usize], panels: &[&Tensor]) -> Result<()> {
        for (i, t) in panels.iter().enumerate() {
            if t.shape() != shape {
                return Err(Error::shape(
                    "preview",
                    format!("panel {i}"),
                    format!("{shape:?} like panel 0"),
                    t.shape(),
                ));
            }
            self.ctx
                .check_binding("preview", &format!("panel {i}"), t.byte_len())?;
        }
        Layout::default().params(shape, panels.len(), (1, 1))?;
        Ok(())
    }
}

/// Open the preview window, run `work` on another thread with the window's GPU context and a
/// sink for frames, and return `work`'s result once the window is closed (by the user, or
/// by itself per [`PreviewOptions::close_after_frames`]). Errors, never panics, when there is
/// no display or no adapter can present to the window.
pub fn run<T, F>(opts: &PreviewOptions, work: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Arc<GpuContext>, PreviewSink) -> Result<T> + Send,
{
    run_with_report(opts, work).map(|(t, _)| t)
}

/// [`run`], also returning what the window did (frames presented, the last capture).
pub fn run_with_report<T, F>(opts: &PreviewOptions, work: F) -> Result<(T, PreviewReport)>
where
    T: Send,
    F: FnOnce(Arc<GpuContext>, PreviewSink) -> Result<T> + Send,
{
    let close_after = opts.close_after()?;
    check_display()?;
    let event_loop = build_event_loop()?;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_with_display_handle(
        Box::new(event_loop.owned_display_handle()),
    ));
    let shared = Arc::new(Shared::default());
    std::thread::scope(|scope| {
        let mut app = App {
            opts: opts.clone(),
            close_after,
            scope,
            work: Some(work),
            worker: None,
            proxy: event_loop.create_proxy(),
            instance,
            win: None,
            error: None,
            frame: None,
            fitted: false,
            done: false,
            presented_after_done: 0,
            shared: shared.clone(),
            report: PreviewReport::default(),
        };
        let ran = event_loop.run_app(&mut app);
        // The window goes away now; a still-running work sees `closed` at its next `show`.
        app.win = None;
        shared.closed.store(true, Ordering::Release);
        shared.cv.notify_all();
        let worker = app.worker.take().map(|h| h.join());
        if let Some(e) = app.error.take() {
            return Err(e);
        }
        ran.map_err(|e| preview_error(format!("the window's event loop failed: {e}")))?;
        let report = std::mem::take(&mut app.report);
        match worker {
            None => Err(preview_error(
                "the window was closed before the sampling could start",
            )),
            Some(Ok(Ok(r))) => r.map(|t| (t, report)),
            Some(Err(p)) | Some(Ok(Err(p))) => Err(preview_error(format!(
                "the sampling thread panicked: {}",
                panic_text(&*p)
            ))),
        }
    })
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
))]
fn check_display() -> Result<()> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if !set("DISPLAY") && !set("WAYLAND_DISPLAY") && !set("WAYLAND_SOCKET") {
        return Err(preview_error(
            "no display for --preview (DISPLAY and WAYLAND_DISPLAY are unset); run without --preview, or under a virtual X server: `xvfb-run -a webdiffusion ...` (Debian package `xvfb`)",
        ));
    }
    Ok(())
}

#[cfg(not(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
)))]
fn check_display() -> Result<()> {
    Ok(())
}

fn build_event_loop() -> Result<EventLoop<Msg>> {
    let mut builder = EventLoop::<Msg>::with_user_event();
    // Linux windowing does not need the main thread; letting winit run elsewhere turns a
    // caller's mistake into a working window instead of a panic. (macOS does need it.)
    #[cfg(target_os = "linux")]
    {
        use winit::platform::x11::EventLoopBuilderExtX11;
        builder.with_any_thread(true);
    }
    let built = catch_unwind(AssertUnwindSafe(|| builder.build())).map_err(|p| {
        preview_error(format!(
            "the window system failed to start: {}",
            panic_text(&*p)
        ))
    })?;
    built.map_err(|e| match e {
        winit::error::EventLoopError::RecreationAttempt => preview_error(
            "a preview window was already opened by this process (winit allows one event loop per process)",
        ),
        e => {
            let display = std::env::var("DISPLAY").unwrap_or_default();
            let wayland = std::env::var("WAYLAND_DISPLAY").unwrap_or_default();
            preview_error(format!(
                "could not connect to the display (DISPLAY={display:?}, WAYLAND_DISPLAY={wayland:?}): {e}; run without --preview, or under a virtual X server: `xvfb-run -a webdiffusion ...`"
            ))
        }
    })
}

struct Win {
    window: Arc<Window>,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    ctx: Arc<GpuContext>,
    renderer: Renderer,
    capture: bool,
    /// A resize or a lost frame asked for the surface to be configured again (next redraw).
    needs_configure: bool,
    /// Consecutive failed configurations; each is retried at the next redraw.
    configure_failures: u32,
}

/// A surface that fails to configure this many times in a row ends the preview.
const MAX_CONFIGURE_FAILURES: u32 = 10;

/// (Re)configure the window's surface. wgpu waits for the GPU to go idle first and fails if
/// another thread submits meanwhile, so the sampling thread's submissions are held off
/// ([`GpuContext::exclusive`]); any error is caught in an error scope on this thread instead
/// of landing in the sampling run's error list.
fn configure_surface(
    ctx: &GpuContext,
    surface: &wgpu::Surface<'static>,
    config: &wgpu::SurfaceConfiguration,
) -> Result<()> {
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    ctx.exclusive(|| surface.configure(&ctx.device, config));
    match block_on(scope.pop()) {
        None => Ok(()),
        Some(e) => Err(preview_error(format!(
            "could not configure the window surface at {}x{}: {e}",
            config.width, config.height
        ))),
    }
}

struct App<'scope, 'env, T, F> {
    opts: PreviewOptions,
    close_after: Option<u32>,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    work: Option<F>,
    worker: Option<std::thread::ScopedJoinHandle<'scope, std::thread::Result<Result<T>>>>,
    proxy: EventLoopProxy<Msg>,
    instance: wgpu::Instance,
    win: Option<Win>,
    error: Option<Error>,
    frame: Option<Frame>,
    fitted: bool,
    done: bool,
    presented_after_done: u32,
    shared: Arc<Shared>,
    report: PreviewReport,
}

/// The surface format to draw into: plain 8-bit first (the shader writes the bytes a PNG
/// holds), then the sRGB variants (the shader outputs linear values for them).
fn pick_format(formats: &[wgpu::TextureFormat]) -> Option<wgpu::TextureFormat> {
    use wgpu::TextureFormat as F;
    [
        F::Bgra8Unorm,
        F::Rgba8Unorm,
        F::Bgra8UnormSrgb,
        F::Rgba8UnormSrgb,
    ]
    .into_iter()
    .find(|f| formats.contains(f))
}

impl<'scope, 'env, T, F> App<'scope, 'env, T, F>
where
    T: Send + 'env,
    F: FnOnce(Arc<GpuContext>, PreviewSink) -> Result<T> + Send + 'env,
{
    fn open(&mut self, el: &ActiveEventLoop) -> Result<Win> {
        let (w, h) = self.opts.max_size;
        let attrs = Window::default_attributes()
            .with_title(&self.opts.title)
            .with_inner_size(PhysicalSize::new(
                w.clamp(64, 16384),
                (h * 5 / 8).clamp(64, 16384),
            ));
        let window = Arc::new(
            el.create_window(attrs)
                .map_err(|e| preview_error(format!("could not open the preview window: {e}")))?,
        );
        let surface = self.instance.create_surface(window.clone()).map_err(|e| {
            preview_error(format!(
                "could not create a GPU surface for the window: {e}"
            ))
        })?;
        let adapter = block_on(self.instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: if self.opts.gpu.high_performance {
                wgpu::PowerPreference::HighPerformance
            } else {
                wgpu::PowerPreference::LowPower
            },
            force_fallback_adapter: false,
            compatible_surface: Some(&surface),
            apply_limit_buckets: false,
        }))
        .map_err(|e| {
            Error::NoAdapter(format!(
                "no GPU adapter can present to the preview window: {e}"
            ))
        })?;
        let caps = surface.get_capabilities(&adapter);
        let format = pick_format(&caps.formats).ok_or_else(|| {
            preview_error(format!(
                "the window surface offers none of the formats the preview draws (Bgra8Unorm, Rgba8Unorm and their sRGB forms), only {:?}",
                caps.formats
            ))
        })?;
        let ctx = block_on(GpuContext::from_adapter(adapter, &self.opts.gpu))?;
        let capture = self.opts.capture && caps.usages.contains(wgpu::TextureUsages::COPY_SRC);
        if self.opts.capture && !capture {
            log::warn!("preview: this surface cannot be copied from; frames are not captured");
        }
        let size = window.inner_size();
        let config = wgpu::SurfaceConfiguration {
            usage: if capture {
                wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC
            } else {
                wgpu::TextureUsages::RENDER_ATTACHMENT
            },
            format,
            color_space: wgpu::SurfaceColorSpace::Auto,
            width: size.width.max(1),
            height: size.height.max(1),
            present_mode: wgpu::PresentMode::Fifo,
            desired_maximum_frame_latency: 2,
            alpha_mode: if caps.alpha_modes.contains(&wgpu::CompositeAlphaMode::Opaque) {
                wgpu::CompositeAlphaMode::Opaque
            } else {
                caps.alpha_modes
                    .first()
                    .copied()
                    .unwrap_or(wgpu::CompositeAlphaMode::Auto)
            },
            view_formats: vec![],
        };
        configure_surface(&ctx, &surface, &config)?;
        let renderer = Renderer::new(&ctx, format)?;
        self.report.surface_format = Some(format);
        Ok(Win {
            window,
            surface,
            config,
            ctx,
            renderer,
            capture,
            needs_configure: false,
            configure_failures: 0,
        })
    }

    fn start_work(&mut self, ctx: Arc<GpuContext>) {
        let Some(work) = self.work.take() else {
            return;
        };
        let sink = PreviewSink {
            ctx: ctx.clone(),
            proxy: self.proxy.clone(),
            shared: self.shared.clone(),
            next_seq: Arc::new(AtomicU64::new(0)),
        };
        let proxy = self.proxy.clone();
        self.worker = Some(self.scope.spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| work(ctx, sink)));
            let ok = matches!(r, Ok(Ok(_)));
            let _ = proxy.send_event(Msg::WorkDone { ok });
            r
        }));
    }

    fn fail(&mut self, el: &ActiveEventLoop, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        el.exit();
    }

    fn fit_to(&mut self, shape: &[usize], panels: usize) {
        let Some(win) = &self.win else { return };
        let Ok((lw, lh)) = self.opts.layout.natural_size(shape, panels) else {
            return;
        };
        let (mw, mh) = self.opts.max_size;
        let s = (mw as f64 / lw as f64).min(mh as f64 / lh as f64);
        // Whole multiples keep every source pixel the same size on screen.
        let s = if s >= 1.0 { s.floor() } else { s };
        let size = PhysicalSize::new(
            ((lw as f64 * s) as u32).max(64),
            ((lh as f64 * s) as u32).max(64),
        );
        if let Some(now) = win.window.request_inner_size(size) {
            self.resize(now);
        }
    }

    fn resize(&mut self, size: PhysicalSize<u32>) {
        let Some(win) = &mut self.win else { return };
        if size.width == 0 || size.height == 0 {
            return;
        }
        win.config.width = size.width;
        win.config.height = size.height;
        // Configured at the next redraw, where a failure can end the preview with an error.
        win.needs_configure = true;
        win.window.request_redraw();
    }

    /// Configure the surface if a resize or a lost frame asked for it. `Ok(false)`: it failed
    /// this time and the frame is skipped (the next redraw retries).
    fn reconfigure(win: &mut Win) -> Result<bool> {
        if !win.needs_configure {
            return Ok(true);
        }
        match configure_surface(&win.ctx, &win.surface, &win.config) {
            Ok(()) => {
                win.needs_configure = false;
                win.configure_failures = 0;
                Ok(true)
            }
            Err(e) if win.configure_failures + 1 < MAX_CONFIGURE_FAILURES => {
                win.configure_failures += 1;
                log::warn!(
                    "preview: {e} (try {} of {MAX_CONFIGURE_FAILURES}); retrying at the next frame",
                    win.configure_failures
                );
                win.window.request_redraw();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn redraw(&mut self, el: &ActiveEventLoop) -> Result<()> {
        let Some(win) = &mut self.win else {
            return Ok(());
        };
        if !Self::reconfigure(win)? {
            return Ok(());
        }
        let texture = match win.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t)
            | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            wgpu::CurrentSurfaceTexture::Timeout | wgpu::CurrentSurfaceTexture::Occluded => {
                return Ok(())
            }
            wgpu::CurrentSurfaceTexture::Outdated | wgpu::CurrentSurfaceTexture::Lost => {
                win.needs_configure = true;
                win.window.request_redraw();
                return Ok(());
            }
            other => {
                return Err(preview_error(format!(
                    "could not get the window's next frame ({})",
                    match other {
                        wgpu::CurrentSurfaceTexture::Validation => "validation error",
                        _ => "unknown status",
                    }
                )))
            }
        };
        let view = texture
            .texture
            .create_view(&wgpu::TextureViewDescriptor::default());
        let mut encoder = win
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("preview frame"),
            });
        let panels: Vec<&Tensor> = self
            .frame
            .as_ref()
            .map(|f| f.panels.iter().collect())
            .unwrap_or_default();
        win.renderer.draw(
            &win.ctx,
            &mut encoder,
            &view,
            (win.config.width, win.config.height),
            &panels,
            &self.opts.layout,
        )?;
        win.ctx.submit_commands([encoder.finish()]);
        let seq = self.frame.as_ref().map_or(0, |f| f.seq);
        if win.capture {
            let rgba = block_on(render::read_rgba(&win.ctx, &texture.texture))?;
            self.report.last_capture = Some(Capture {
                width: win.config.width,
                height: win.config.height,
                rgba,
                seq,
            });
        }
        win.window.pre_present_notify();
        win.ctx.queue.present(texture);
        win.ctx.take_error("drawing the preview")?;
        self.report.frames_presented += 1;
        {
            let mut p = self
                .shared
                .presented
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            p.frames += 1;
            p.last_seq = p.last_seq.max(seq);
        }
        self.shared.cv.notify_all();
        if self.done {
            if let Some(n) = self.close_after {
                self.presented_after_done += 1;
                if self.presented_after_done >= n {
                    el.exit();
                } else {
                    win.window.request_redraw();
                }
            }
        }
        Ok(())
    }
}

impl<'scope, 'env, T, F> ApplicationHandler<Msg> for App<'scope, 'env, T, F>
where
    T: Send + 'env,
    F: FnOnce(Arc<GpuContext>, PreviewSink) -> Result<T> + Send + 'env,
{
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.win.is_some() || self.error.is_some() {
            return;
        }
        match self.open(el) {
            Ok(win) => {
                let ctx = win.ctx.clone();
                win.window.request_redraw();
                self.win = Some(win);
                self.start_work(ctx);
            }
            Err(e) => self.fail(el, e),
        }
    }

    fn user_event(&mut self, el: &ActiveEventLoop, msg: Msg) {
        match msg {
            Msg::Frame(frame) => {
                self.report.frames_received += 1;
                if !self.fitted {
                    self.fitted = true;
                    let shape = frame.panels[0].shape().to_vec();
                    self.fit_to(&shape, frame.panels.len());
                }
                if let Some(win) = &self.win {
                    win.window
                        .set_title(&format!("{} — {}", self.opts.title, frame.caption));
                    win.window.request_redraw();
                }
                self.frame = Some(frame);
            }
            Msg::WorkDone { ok } => {
                self.done = true;
                if !ok || self.close_after == Some(0) {
                    el.exit();
                    return;
                }
                if let Some(win) = &self.win {
                    let caption = self.frame.as_ref().map_or("", |f| f.caption.as_str());
                    win.window
                        .set_title(&format!("{} — {caption} (done)", self.opts.title));
                    win.window.request_redraw();
                }
            }
        }
    }

    fn window_event(&mut self, el: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested | WindowEvent::Destroyed => {
                self.shared.closed.store(true, Ordering::Release);
                self.shared.cv.notify_all();
                el.exit();
            }
            WindowEvent::Resized(size) => self.resize(size),
            WindowEvent::RedrawRequested => {
                if let Err(e) = self.redraw(el) {
                    self.fail(el, e);
                }
            }
            _ => {}
        }
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn send<S: Send>() {}
    send::<PreviewSink>();
    send::<Exec>();
    send::<Arc<GpuContext>>();
    send::<Tensor>();
}
