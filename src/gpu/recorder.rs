//! Ops record dispatches here; nothing is submitted until the caller (the model step, or a
//! readback) finishes the recording. Consecutive dispatches share one compute pass.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::{CachedPipeline, GpuContext, PooledBuffer};
use crate::error::{Error, Result};

/// A byte range of a buffer to bind as one storage binding.
#[derive(Debug, Clone, Copy)]
pub struct BufferSlice<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    /// Bytes; `None` binds to the end of the buffer.
    pub size: Option<u64>,
}

impl<'a> BufferSlice<'a> {
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            size: None,
        }
    }
}

pub(super) enum Command {
    Dispatch {
        pipeline: Arc<CachedPipeline>,
        bind_group: wgpu::BindGroup,
        workgroups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
}

/// A list of GPU commands being built for one submit.
#[derive(Default)]
pub struct Recorder {
    pub(super) commands: Vec<Command>,
    dispatches: usize,
    /// Pooled buffers the commands use that must not return to a pool before the submit
    /// (see `gpu::pool`'s hazards).
    pub(super) held: Vec<Arc<PooledBuffer>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Dispatches recorded so far.
    pub fn dispatch_count(&self) -> usize {
        self.dispatches
    }

    /// Record one dispatch. `params` is the op's uniform struct (bytes, padded to 16);
    /// `inputs` and `outputs` follow the binding convention of `BindingLayout`.
    pub fn dispatch(
        &mut self,
        ctx: &GpuContext,
        pipeline: &Arc<CachedPipeline>,
        params: &[u8],
        inputs: &[BufferSlice<'_>],
        outputs: &[BufferSlice<'_>],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let layout = pipeline.layout;
        if inputs.len() != layout.inputs as usize || outputs.len() != layout.outputs as usize {
            return Err(Error::invalid(
                "recorder",
                format!(
                    "pipeline {}::{} takes {} inputs and {} outputs, got {} and {}",
                    pipeline.key.shader,
                    pipeline.key.entry,
                    layout.inputs,
                    layout.outputs,
                    inputs.len(),
                    outputs.len()
                ),
            ));
        }
        let max = ctx.caps.max_workgroups();
        if workgroups.iter().any(|&w| w > max) {
            return Err(Error::Limit {
                op: pipeline.key.shader,
                what: format!("dispatch of {workgroups:?} workgroups"),
                limit: "maxComputeWorkgroupsPerDimension",
                value: max as u64,
                needed: *workgroups.iter().max().unwrap() as u64,
                hint: "this is an engine bug: ops must fold large grids",
            });
        }
        for s in inputs.iter().chain(outputs) {
            let bytes = s.size.unwrap_or(s.buffer.size() - s.offset);
            ctx.check_binding(pipeline.key.shader, "a storage binding", bytes)?;
        }
        let label = pipeline.key.entry;
        // A fresh uniform buffer per dispatch, initialised at creation: a queued write into
        // a shared uniform buffer would land before earlier dispatches of this recording.
        let mut padded = params.to_vec();
        padded.resize(params.len().next_multiple_of(16).max(16), 0);
        let uniform = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &padded,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, s) in inputs.iter().chain(outputs).enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: s.buffer,
                    offset: s.offset,
                    size: s.size.and_then(wgpu::BufferSize::new),
                }),
            });
        }
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.bind_group_layout,
            entries: &entries,
        });
        self.commands.push(Command::Dispatch {
            pipeline: pipeline.clone(),
            bind_group,
            workgroups,
        });
        self.dispatches += 1;
        Ok(())
    }

    /// Keep `buffer` out of its pool until this recording has been submitted: for scratch
    /// buffers an op uses and then drops, and for inputs owned by another pool.
    pub fn hold(&mut self, buffer: Arc<PooledBuffer>) {
        self.held.push(buffer);
    }

    /// Record a buffer-to-buffer copy.
    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) {
        self.commands.push(Command::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            size,
        });
    }

    /// Encode everything recorded into one command buffer. The held buffers come back with
    /// it: drop them only after `queue.submit`.
    pub fn finish(self, ctx: &GpuContext) -> (wgpu::CommandBuffer, Vec<Arc<PooledBuffer>>) {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("webdiffusion step"),
            });
        let cmds = &self.commands;
        let mut i = 0;
        while i < cmds.len() {
            if let Command::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                size,
            } = &cmds[i]
            {
                encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                i += 1;
                continue;
            }
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("webdiffusion ops"),
                timestamp_writes: None,
            });
            while let Some(Command::Dispatch {
                pipeline,
                bind_group,
                workgroups: [x, y, z],
            }) = cmds.get(i)
            {
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(*x, *y, *z);
                i += 1;
            }
        }
        (encoder.finish(), self.held)
    }
}

impl GpuContext {
    /// Submit a recording.
    pub fn submit(&self, rec: Recorder) -> Result<()> {
        if rec.is_empty() {
            return Ok(());
        }
        let (cb, held) = rec.finish(self);
        self.queue.submit([cb]);
        drop(held);
        self.take_error("submit")
    }

    /// Submit `rec` plus copies of the given byte ranges into a staging buffer, then map it
    /// and return the bytes of each range. Natively this blocks on the device; on the web it
    /// awaits the browser's map callback and never blocks the thread.
    pub async fn submit_and_read(
        &self,
        mut rec: Recorder,
        ranges: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Vec<Vec<u8>>> {
        let total: u64 = ranges
            .iter()
            .map(|r| r.2.next_multiple_of(4))
            .sum::<u64>()
            .max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback staging"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut at = 0;
        for (buf, off, len) in ranges {
            let len4 = len.next_multiple_of(4);
            rec.copy(buf, *off, &staging, at, len4);
            at += len4;
        }
        let (cb, held) = rec.finish(self);
        self.queue.submit([cb]);
        drop(held);
        self.take_error("submit before readback")?;

        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        crate::platform::poll_wait(&self.device).map_err(Error::Readback)?;
        rx.await
            .map_err(|_| Error::Readback("the map callback was dropped (device lost?)".into()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        let mut out = Vec::with_capacity(ranges.len());
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::Readback(e.to_string()))?;
            let mut at = 0usize;
            for (_, _, len) in ranges {
                out.push(view[at..at + *len as usize].to_vec());
                at += len.next_multiple_of(4) as usize;
            }
        }
        staging.unmap();
        self.take_error("readback")?;
        Ok(out)
    }
}
