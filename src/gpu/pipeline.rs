//! Compute pipelines cached by (shader, entry point, override constants), with explicit
//! bind-group layouts derived from the binding convention every shader follows:
//! `@binding(0)` the uniform params, then read-only inputs, then read-write outputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::GpuContext;
use crate::error::{Error, Result};

/// The shape of a shader's bind group 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BindingLayout {
    /// Read-only storage buffers after the uniform (bindings 1..=inputs).
    pub inputs: u32,
    /// Read-write storage buffers after the inputs.
    pub outputs: u32,
}

/// Identifies one compiled pipeline. Override constants are kept sorted by name and stored
/// as bit patterns so the key is hashable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub shader: &'static str,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, u64)>,
}

impl PipelineKey {
    pub fn new(shader: &'static str, entry: &'static str) -> Self {
        Self {
            shader,
            entry,
            constants: Vec::new(),
        }
    }

    /// Set a WGSL `override` constant (workgroup size, tile, fusion flag).
    pub fn with(mut self, name: &'static str, value: f64) -> Self {
        self.constants.retain(|(n, _)| *n != name);
        self.constants.push((name, value.to_bits()));
        self.constants.sort_by_key(|(n, _)| *n);
        self
    }
}

pub struct CachedPipeline {
    pub key: PipelineKey,
    pub layout: BindingLayout,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group_layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<BindingLayout, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<CachedPipeline>>>,
}

impl GpuContext {
    /// The shader files compiled on this context so far, sorted (which kernel family a
    /// device really ran, e.g. `conv2d_f16` where it has `shader-f16`).
    pub fn compiled_shaders(&self) -> Vec<&'static str> {
        let modules = self
            .pipelines
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<&'static str> = modules.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The pipeline for `key`, compiled on first use.
    pub fn pipeline(
        &self,
        key: &PipelineKey,
        layout: BindingLayout,
    ) -> Result<Arc<CachedPipeline>> {
        let cache = &self.pipelines;
        if let Some(p) = cache
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(p.clone());
        }
        let module = {
            let mut modules = cache.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(key.shader) {
                Some(m) => m.clone(),
                None => {
                    let src = crate::shaders::source(key.shader)
                        .ok_or_else(|| Error::MissingShader(key.shader.to_string()))?;
                    let m = self
                        .device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(key.shader),
                            source: wgpu::ShaderSource::Wgsl(src.into()),
                        });
                    modules.insert(key.shader, m.clone());
                    m
                }
            }
        };
        let (bgl, pl) = {
            let mut layouts = cache.layouts.lock().unwrap_or_else(|p| p.into_inner());
            layouts
                .entry(layout)
                .or_insert_with(|| self.create_layouts(layout))
                .clone()
        };
        let constants: Vec<(&str, f64)> = key
            .constants
            .iter()
            .map(|(n, bits)| (*n, f64::from_bits(*bits)))
            .collect();
        let label = format!("{}::{}", key.shader, key.entry);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        self.take_error(&format!("creating pipeline {label}"))?;
        let cached = Arc::new(CachedPipeline {
            key: key.clone(),
            layout,
            pipeline,
            bind_group_layout: bgl,
        });
        cache
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), cached.clone());
        Ok(cached)
    }

    fn create_layouts(
        &self,
        layout: BindingLayout,
    ) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                // Every dispatch's params live in one buffer per recording (see `recorder`).
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        }];
        for i in 0..layout.inputs {
            entries.push(storage(1 + i, true));
        }
        for i in 0..layout.outputs {
            entries.push(storage(1 + layout.inputs + i, false));
        }
        let label = format!("bgl u1 r{} w{}", layout.inputs, layout.outputs);
        let bgl = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
        (bgl, pl)
    }

    /// Number of distinct pipelines compiled so far.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines
            .pipelines
            .lock()
            .map(|p| p.len())
            .unwrap_or(0)
    }
}
