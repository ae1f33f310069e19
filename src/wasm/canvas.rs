//! The page's canvas (an `HTMLCanvasElement`, or an `OffscreenCanvas` in a worker) as a wgpu
//! surface, drawn by the same render pass as the native preview window (`render.rs`): the
//! tensors are read by the fragment shader where they are, nothing comes back to the CPU.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js::{self, Code, WdError, WdResult};
use crate::gpu::GpuContext;
use crate::render::{Layout, RenderMode, Renderer};
use crate::tensor::Tensor;

pub struct CanvasTarget {
    canvas: JsValue,
    surface: wgpu::Surface<'static>,
    renderer: Renderer,
    /// The configuration in effect (re-made when the canvas is resized).
    config: Option<wgpu::SurfaceConfiguration>,
    /// How the loaded model's samples are shown (grey/RGB, relief, asinh).
    mode: RenderMode,
    _instance: wgpu::Instance,
}

/// The canvas format the browser prefers (`navigator.gpu.getPreferredCanvasFormat()`);
/// WebGPU canvases take `bgra8unorm` or `rgba8unorm`.
fn preferred_format() -> wgpu::TextureFormat {
    let name = js::navigator_gpu()
        .and_then(|gpu| js::call(&gpu, "getPreferredCanvasFormat", &[]).ok())
        .and_then(|v| v.as_string());
    match name.as_deref() {
        Some("rgba8unorm") => wgpu::TextureFormat::Rgba8Unorm,
        _ => wgpu::TextureFormat::Bgra8Unorm,
    }
}

impl CanvasTarget {
    pub fn new(ctx: &GpuContext, canvas: &JsValue) -> WdResult<Self> {
        let target = if js::instance_of(canvas, "OffscreenCanvas") {
            wgpu::SurfaceTarget::OffscreenCanvas(canvas.clone().unchecked_into())
        } else if js::instance_of(canvas, "HTMLCanvasElement") {
            wgpu::SurfaceTarget::Canvas(canvas.clone().unchecked_into())
        } else {
            return Err(WdError::bad_option(format!(
                "canvas must be an HTMLCanvasElement or an OffscreenCanvas, got {}",
                js::describe(canvas)
            )));
        };
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let surface = instance.create_surface(target).map_err(|e| {
            WdError::new(
                Code::BadOption,
                format!(
                    "cannot draw on this canvas with WebGPU ({e}); a canvas that already has a 2d or webgl context cannot get a webgpu one: pass a fresh canvas"
                ),
            )
        })?;
        let renderer = Renderer::new(ctx, preferred_format())?;
        Ok(Self {
            canvas: canvas.clone(),
            surface,
            renderer,
            config: None,
            mode: RenderMode::Image,
            _instance: instance,
        })
    }

    pub fn set_mode(&mut self, mode: RenderMode) {
        self.mode = mode;
    }

    fn size(&self) -> (u32, u32) {
        let dim = |k| js::get(&self.canvas, k).as_f64().unwrap_or(0.0).max(0.0) as u32;
        (dim("width"), dim("height"))
    }

    /// Draws `panels` (one or two GPU tensors of one shape; none clears) over the canvas and
    /// submits. The browser shows it when the current task ends.
    pub fn draw(&mut self, ctx: &GpuContext, panels: &[&Tensor]) -> WdResult<()> {
        let (w, h) = self.size();
        if w == 0 || h == 0 {
            return Ok(());
        }
        let max = ctx.caps.limits.max_texture_dimension_2d;
        if w > max || h > max {
            return Err(WdError::new(
                Code::Limit,
                format!("the canvas is {w}×{h} pixels but the adapter's maxTextureDimension2D is {max}; make the canvas smaller"),
            ));
        }
        if self
            .config
            .as_ref()
            .is_none_or(|c| (c.width, c.height) != (w, h))
        {
            let config = wgpu::SurfaceConfiguration {
                usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                format: self.renderer.format(),
                color_space: wgpu::SurfaceColorSpace::Auto,
                width: w,
                height: h,
                present_mode: wgpu::PresentMode::Fifo,
                desired_maximum_frame_latency: 2,
                alpha_mode: wgpu::CompositeAlphaMode::Opaque,
                view_formats: vec![],
            };
            self.surface.configure(&ctx.device, &config);
            ctx.take_error("configuring the canvas")?;
            self.config = Some(config);
        }
        let frame = match self.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t)
            | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            _ => {
                // A lost or outdated canvas context is re-configured on the next draw.
                self.config = None;
                return Ok(());
            }
        };
        let view = frame
            .texture
            .create_view(&wgpu::TextureViewDescriptor::default());
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("canvas frame"),
            });
        self.renderer.draw_mode(
            ctx,
            &mut encoder,
            &view,
            (w, h),
            panels,
            &Layout::default(),
            self.mode,
        )?;
        ctx.submit_commands([encoder.finish()]);
        ctx.queue.present(frame);
        ctx.take_error("drawing on the canvas")?;
        Ok(())
    }
}
