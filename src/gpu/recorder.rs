//! Ops record dispatches here; nothing is submitted until the caller (the model step, or a
//! readback) finishes the recording. Consecutive dispatches share one compute pass.
//!
//! A step is planned so that, once warm, it creates no GPU objects: every dispatch's uniform
//! params go into one per-recording data block at `minUniformBufferOffsetAlignment`
//! offsets, written with a single `queue.write_buffer` into a buffer the recorder keeps
//! across recordings and bound with a dynamic offset; bind groups are cached by (layout,
//! uniform size, storage ranges). The buffer pool hands a step the same buffers as the step
//! before it, so steady-state steps find every bind group in the cache. Small host data a
//! step needs (timesteps, labels) can travel in the same block and be copied into place
//! inside the recording (`Recorder::stage`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// A storage range a bind group binds: (buffer, offset, size; `None` = to the end).
type Binding = (wgpu::Buffer, u64, Option<u64>);

/// What makes two dispatches' bind groups interchangeable. The data buffer is not part of
/// the key: it is bound at a dynamic offset, and replacing it clears the cache.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct BindKey {
    layout: wgpu::BindGroupLayout,
    uniform_size: u64,
    storage: Vec<Binding>,
}

pub(super) enum Command {
    Dispatch {
        pipeline: Arc<CachedPipeline>,
        key: BindKey,
        /// Where this dispatch's params start in the recording's data block.
        uniform_offset: u32,
        workgroups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
    /// A copy out of the recording's data block (staged host data).
    CopyStaged {
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
}

/// Counts of the GPU objects recordings have created, for the per-step regression guard
/// (`tests/perf_guard.rs`): after warm-up a step must create none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordStats {
    /// Bind groups created (cache misses).
    pub bind_groups_created: u64,
    /// Dispatches whose bind group came from the cache.
    pub bind_groups_reused: u64,
    /// Data (uniform + staging) buffers created; one per growth of the block.
    pub data_buffers_created: u64,
    /// Bytes written into data buffers (one `queue.write_buffer` per recording).
    pub data_bytes_written: u64,
}

/// Cached bind groups unused for this many recordings are dropped, so buffers the pool has
/// let go of are not kept alive by the cache. Eight covers a step's buffers alternating
/// between two or three sets and the occasional readback recording in between.
const KEEP_RECORDINGS: u64 = 8;

/// State that outlives one recording: the data buffer and the bind-group cache. Shared by
/// the recordings of one `Exec` (see `Recorder::take`), which are finished and submitted
/// one after another, so a write into the data buffer always lands after the previous
/// recording's submit and before this one's.
#[derive(Default)]
struct Plan {
    data: Option<wgpu::Buffer>,
    groups: HashMap<BindKey, (wgpu::BindGroup, u64)>,
    recordings: u64,
    stats: RecordStats,
}

/// A recording resolved against its plan: a bind group per dispatch, in order, and the
/// data buffer that holds the uniforms and staged data.
pub(super) struct Prepared {
    pub(super) groups: Vec<wgpu::BindGroup>,
    pub(super) data: Option<wgpu::Buffer>,
}

/// A list of GPU commands being built for one submit.
pub struct Recorder {
    pub(super) commands: Vec<Command>,
    dispatches: usize,
    /// Pooled buffers the commands use that must not return to a pool before the submit
    /// (see `gpu::pool`'s hazards).
    pub(super) held: Vec<Arc<PooledBuffer>>,
    /// This recording's uniforms and staged data, written to the GPU in one piece.
    data: Vec<u8>,
    plan: Arc<Mutex<Plan>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            dispatches: 0,
            held: Vec::new(),
            data: Vec::new(),
            plan: Arc::new(Mutex::new(Plan::default())),
        }
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves what is recorded into a new recorder and leaves this one empty, both sharing
    /// the data buffer and bind-group cache. The caller must submit the returned recorder
    /// before finishing anything recorded later on this one.
    pub fn take(&mut self) -> Recorder {
        Recorder {
            commands: std::mem::take(&mut self.commands),
            dispatches: std::mem::take(&mut self.dispatches),
            held: std::mem::take(&mut self.held),
            data: std::mem::take(&mut self.data),
            plan: self.plan.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Dispatches recorded so far.
    pub fn dispatch_count(&self) -> usize {
        self.dispatches
    }

    /// GPU objects created by the recordings sharing this recorder's plan.
    pub fn stats(&self) -> RecordStats {
        self.plan.lock().unwrap_or_else(|p| p.into_inner()).stats
    }

    /// Append `bytes` to the data block at an offset aligned to `align`.
    fn push_data(&mut self, bytes: &[u8], align: u64, pad_to: usize) -> u64 {
        let at = (self.data.len() as u64).next_multiple_of(align.max(4));
        self.data.resize(at as usize, 0);
        self.data.extend_from_slice(bytes);
        self.data.resize(at as usize + pad_to.max(bytes.len()), 0);
        at
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
        if let Some(&needed) = workgroups.iter().find(|&&w| w > max) {
            return Err(Error::Limit {
                op: pipeline.key.shader,
                what: format!("dispatch of {workgroups:?} workgroups"),
                limit: "maxComputeWorkgroupsPerDimension",
                value: max as u64,
                needed: needed as u64,
                hint: "this is an engine bug: ops must fold large grids",
            });
        }
        let mut storage = Vec::with_capacity(inputs.len() + outputs.len());
        for s in inputs.iter().chain(outputs) {
            let bytes = s.size.unwrap_or(s.buffer.size() - s.offset);
            ctx.check_binding(pipeline.key.shader, "a storage binding", bytes)?;
            storage.push((s.buffer.clone(), s.offset, s.size));
        }
        let uniform_size = params.len().next_multiple_of(16).max(16);
        let align = ctx.caps.limits.min_uniform_buffer_offset_alignment as u64;
        let at = self.push_data(params, align, uniform_size);
        let uniform_offset = u32::try_from(at).map_err(|_| Error::Limit {
            op: pipeline.key.shader,
            what: "the uniforms of one recording".into(),
            limit: "dynamic offsets (u32)",
            value: u32::MAX as u64,
            needed: at,
            hint: "submit more often: one recording holds too many dispatches",
        })?;
        self.commands.push(Command::Dispatch {
            pipeline: pipeline.clone(),
            key: BindKey {
                layout: pipeline.bind_group_layout.clone(),
                uniform_size: uniform_size as u64,
                storage,
            },
            uniform_offset,
            workgroups,
        });
        self.dispatches += 1;
        Ok(())
    }

    /// Record a copy of host `bytes` into `dst` at `dst_offset`, carried in this
    /// recording's data block: it lands in order with the recording's dispatches (a queued
    /// write would land before all of them) and creates no buffer. For small per-step data;
    /// `bytes.len()` must be a multiple of 4.
    pub fn stage(&mut self, bytes: &[u8], dst: &wgpu::Buffer, dst_offset: u64) {
        let size = bytes.len() as u64;
        let at = self.push_data(bytes, wgpu::COPY_BUFFER_ALIGNMENT, bytes.len());
        self.commands.push(Command::CopyStaged {
            src_offset: at,
            dst: dst.clone(),
            dst_offset,
            size,
        });
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

    /// Writes the data block (growing the plan's buffer if it is too small) and finds or
    /// creates every dispatch's bind group. Queues the write: submit right after.
    pub(super) fn prepare(&mut self, ctx: &GpuContext) -> Prepared {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.recordings += 1;
        let now = plan.recordings;
        let data = if self.data.is_empty() {
            plan.data.clone()
        } else {
            self.data.resize(self.data.len().next_multiple_of(16), 0);
            let need = self.data.len() as u64;
            if plan.data.as_ref().is_none_or(|b| b.size() < need) {
                // Power-of-two growth: a model's steps settle on one size after the first.
                let size = need.next_power_of_two().max(4096);
                plan.data = Some(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("webdiffusion step data"),
                    size,
                    usage: wgpu::BufferUsages::UNIFORM
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }));
                // Cached bind groups name the old buffer.
                plan.groups.clear();
                plan.stats.data_buffers_created += 1;
            }
            let buf = plan.data.clone();
            if let Some(b) = &buf {
                ctx.queue.write_buffer(b, 0, &self.data);
                plan.stats.data_bytes_written += need;
            }
            buf
        };
        let mut groups = Vec::with_capacity(self.dispatches);
        for cmd in &self.commands {
            let Command::Dispatch { key, .. } = cmd else {
                continue;
            };
            if let Some((group, used)) = plan.groups.get_mut(key) {
                *used = now;
                groups.push(group.clone());
                plan.stats.bind_groups_reused += 1;
                continue;
            }
            // A dispatch always put its params into the block, so `data` is present.
            let Some(uniforms) = &data else { continue };
            let mut entries = Vec::with_capacity(1 + key.storage.len());
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: uniforms,
                    offset: 0,
                    size: wgpu::BufferSize::new(key.uniform_size),
                }),
            });
            for (i, (buffer, offset, size)) in key.storage.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: 1 + i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: *offset,
                        size: size.and_then(wgpu::BufferSize::new),
                    }),
                });
            }
            let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &key.layout,
                entries: &entries,
            });
            plan.groups.insert(key.clone(), (group.clone(), now));
            plan.stats.bind_groups_created += 1;
            groups.push(group);
        }
        if now.is_multiple_of(KEEP_RECORDINGS) {
            plan.groups
                .retain(|_, (_, used)| now - *used < KEEP_RECORDINGS);
        }
        Prepared { groups, data }
    }

    /// Encode everything recorded into one command buffer. The held buffers come back with
    /// it: drop them only after `queue.submit`, which must follow right away (the data
    /// block's write is queued).
    pub fn finish(mut self, ctx: &GpuContext) -> (wgpu::CommandBuffer, Vec<Arc<PooledBuffer>>) {
        let prepared = self.prepare(ctx);
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("webdiffusion step"),
            });
        let cmds = &self.commands;
        let mut groups = prepared.groups.iter();
        let mut i = 0;
        while i < cmds.len() {
            match &cmds[i] {
                Command::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => {
                    encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                    continue;
                }
                Command::CopyStaged {
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => {
                    if let Some(src) = &prepared.data {
                        encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    }
                    i += 1;
                    continue;
                }
                Command::Dispatch { .. } => {}
            }
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("webdiffusion ops"),
                timestamp_writes: None,
            });
            while let Some(Command::Dispatch {
                pipeline,
                uniform_offset,
                workgroups: [x, y, z],
                ..
            }) = cmds.get(i)
            {
                if let Some(group) = groups.next() {
                    pass.set_pipeline(&pipeline.pipeline);
                    pass.set_bind_group(0, group, &[*uniform_offset]);
                    pass.dispatch_workgroups(*x, *y, *z);
                }
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
        self.submit_commands([cb]);
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
        self.submit_commands([cb]);
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
