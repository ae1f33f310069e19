use std::sync::{Arc, Mutex, RwLock};

use super::{pipeline::PipelineCache, pool::BufferPool};
use crate::error::{Error, Result};

/// What the caller wants from the adapter.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// Prefer a high-performance adapter where there is a choice.
    pub high_performance: bool,
    /// Request `shader-f16` if the adapter offers it.
    pub want_f16: bool,
    /// Request subgroup operations if offered.
    pub want_subgroups: bool,
    /// Request timestamp queries if offered (benchmarks).
    pub want_timestamps: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            high_performance: true,
            want_f16: true,
            want_subgroups: true,
            want_timestamps: true,
        }
    }
}

/// What the device actually got: the adapter's real limits and the optional features that
/// were granted. Ops read their limits from here, never from WebGPU's defaults.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub adapter_name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamp_query: bool,
    pub limits: wgpu::Limits,
}

impl Capabilities {
    /// `maxStorageBufferBindingSize`: the most bytes one storage binding may cover.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }
    /// `maxBufferSize`.
    pub fn max_buffer(&self) -> u64 {
        self.limits.max_buffer_size
    }
    /// `maxComputeWorkgroupsPerDimension`.
    pub fn max_workgroups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }
    /// A few lines for `webdiffusion info` and logs.
    pub fn summary(&self) -> String {
        format!(
            "adapter: {} ({}, {}, driver {})\nfeatures: shader-f16={} subgroups={} timestamp-query={}\nlimits: maxBufferSize={} maxStorageBufferBindingSize={} maxComputeWorkgroupsPerDimension={} maxComputeInvocationsPerWorkgroup={} maxComputeWorkgroupStorageSize={} maxStorageBuffersPerShaderStage={}",
            self.adapter_name,
            self.backend,
            self.device_type,
            self.driver,
            self.shader_f16,
            self.subgroups,
            self.timestamp_query,
            self.limits.max_buffer_size,
            self.limits.max_storage_buffer_binding_size,
            self.limits.max_compute_workgroups_per_dimension,
            self.limits.max_compute_invocations_per_workgroup,
            self.limits.max_compute_workgroup_storage_size,
            self.limits.max_storage_buffers_per_shader_stage,
        )
    }
}

/// A device, its queue and the caches built on it. Cheap to share behind an `Arc`.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub caps: Capabilities,
    pub pool: BufferPool,
    pub(crate) pipelines: PipelineCache,
    /// Errors wgpu reported outside an error scope. They are surfaced as `Error::Gpu` at the
    /// next submit or readback instead of wgpu's default handler, which panics.
    errors: Arc<Mutex<Vec<String>>>,
    /// Held shared by every queue submission and exclusively while a window surface is
    /// (re)configured: wgpu waits for the GPU to go idle there and fails if another thread
    /// submits meanwhile (`Surface::configure`: "failed to wait for GPU to come idle").
    submit_gate: RwLock<()>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("caps", &self.caps)
            .finish()
    }
}

impl GpuContext {
    /// Find an adapter and create a device with the adapter's own limits.
    pub async fn new(opts: &GpuOptions) -> Result<Arc<Self>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: if opts.high_performance {
                    wgpu::PowerPreference::HighPerformance
                } else {
                    wgpu::PowerPreference::LowPower
                },
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        Self::from_adapter(adapter, opts).await
    }

    /// Create the device on a given adapter (the windowed front end picks one that can
    /// present to its surface).
    pub async fn from_adapter(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Arc<Self>> {
        let offered = adapter.features();
        let mut features = wgpu::Features::empty();
        if opts.want_f16 && offered.contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        if opts.want_subgroups && offered.contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        if opts.want_timestamps && offered.contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        // Ask for everything the adapter has: browsers hand out WebGPU's small defaults
        // (128 MiB bindings) unless the real limits are requested explicitly.
        let limits = adapter.limits();
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webdiffusion device"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;

        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));

        let granted = device.features();
        let caps = Capabilities {
            adapter_name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info),
            shader_f16: granted.contains(wgpu::Features::SHADER_F16),
            subgroups: granted.contains(wgpu::Features::SUBGROUP),
            timestamp_query: granted.contains(wgpu::Features::TIMESTAMP_QUERY),
            limits: device.limits(),
        };
        log::info!("{}", caps.summary());
        Ok(Arc::new(Self {
            pool: BufferPool::new(device.clone()),
            pipelines: PipelineCache::default(),
            device,
            queue,
            caps,
            errors,
            submit_gate: RwLock::new(()),
        }))
    }

    /// Submit command buffers to the queue. Every submission goes through here so that a
    /// surface reconfiguration ([`GpuContext::exclusive`]) never overlaps one.
    pub fn submit_commands<I: IntoIterator<Item = wgpu::CommandBuffer>>(&self, cbs: I) {
        let _shared = self.submit_gate.read().unwrap_or_else(|p| p.into_inner());
        self.queue.submit(cbs);
    }

    /// Run `f` while no other thread can submit work: for `Surface::configure`, which waits
    /// for the GPU to come idle and fails when a submission lands during the wait.
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        let _sole = self.submit_gate.write().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// Turn errors wgpu reported since the last check into an `Error`.
    pub fn take_error(&self, context: &str) -> Result<()> {
        let mut errs = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() {
            return Ok(());
        }
        let message = errs.join("\n");
        errs.clear();
        Err(Error::Gpu {
            context: context.to_string(),
            message,
        })
    }

    /// Check that one storage binding of `bytes` fits `maxStorageBufferBindingSize`.
    pub fn check_binding(&self, op: &'static str, what: &str, bytes: u64) -> Result<()> {
        let value = self.caps.max_binding();
        if bytes > value {
            return Err(Error::Limit {
                op,
                what: what.to_string(),
                limit: "maxStorageBufferBindingSize",
                value,
                needed: bytes,
                hint: "use a smaller batch or resolution, or an adapter with larger bindings",
            });
        }
        Ok(())
    }

    /// Upload f32 data into a new storage buffer (mapped at creation: no queue write, so it
    /// can never race with dispatches already recorded but not yet submitted).
    pub fn upload(&self, label: &str, data: &[f32]) -> Result<PooledBufferArc> {
        let bytes = (data.len() as u64 * 4).max(4);
        if bytes > self.caps.max_buffer() {
            return Err(Error::Limit {
                op: "upload",
                what: format!("tensor `{label}`"),
                limit: "maxBufferSize",
                value: self.caps.max_buffer(),
                needed: bytes,
                hint: "split the tensor or use a smaller batch or resolution",
            });
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: super::pool::bucket(bytes),
            usage: super::pool::STORAGE_USAGE,
            mapped_at_creation: true,
        });
        {
            let mut view = buf.get_mapped_range_mut(..).map_err(|e| Error::Gpu {
                context: format!("uploading `{label}`"),
                message: e.to_string(),
            })?;
            view.slice(..data.len() * 4)
                .copy_from_slice(bytemuck::cast_slice(data));
        }
        buf.unmap();
        Ok(Arc::new(self.pool.adopt(buf, bytes)))
    }
}

pub type PooledBufferArc = Arc<super::pool::PooledBuffer>;
