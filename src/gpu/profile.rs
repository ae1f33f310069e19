//! Per-dispatch GPU time from timestamp queries, for `webdiffusion bench`. The normal
//! submit keeps consecutive dispatches in one compute pass; WebGPU without
//! `TIMESTAMP_QUERY_INSIDE_PASSES` only timestamps pass boundaries, so a timed submit gives
//! every dispatch its own pass. That adds a pass boundary per dispatch, which is why it is
//! a separate path and never the one sampling uses.

use super::recorder::{Command, Recorder};
use super::GpuContext;
use crate::error::{Error, Result};

/// GPU time of one dispatch.
#[derive(Debug, Clone)]
pub struct OpTime {
    /// `shader::entry` of the pipeline.
    pub kernel: String,
    pub nanos: f64,
}

/// Timestamps one query set holds, two per dispatch.
const PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES;

impl GpuContext {
    /// Submits `rec` with timestamps around every dispatch, waits and returns the times in
    /// dispatch order. Requires the device to have `TIMESTAMP_QUERY`.
    pub async fn submit_timed(&self, rec: Recorder) -> Result<Vec<OpTime>> {
        if !self.caps.timestamp_query {
            return Err(Error::invalid(
                "submit_timed",
                "the device has no TIMESTAMP_QUERY; time dispatches by wall clock instead",
            ));
        }
        let n = rec.dispatch_count() as u32;
        if n == 0 {
            self.submit(rec)?;
            return Ok(Vec::new());
        }
        let per_set_dispatches = PER_SET / 2;
        let sets: Vec<wgpu::QuerySet> = (0..n.div_ceil(per_set_dispatches))
            .map(|_| {
                self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: PER_SET,
                })
            })
            .collect();
        let set_bytes = PER_SET as u64 * 8;
        let total = set_bytes * sets.len() as u64;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench timestamp resolve"),
            size: total,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench timestamp staging"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("webdiffusion timed step"),
            });
        let mut rec = rec;
        let prepared = rec.prepare(self);
        let mut groups = prepared.groups.iter();
        let mut kernels = Vec::with_capacity(n as usize);
        for cmd in &rec.commands {
            match cmd {
                Command::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size),
                Command::CopyStaged {
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => {
                    if let Some(src) = &prepared.data {
                        encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    }
                }
                Command::Dispatch {
                    pipeline,
                    uniform_offset,
                    workgroups: [x, y, z],
                    ..
                } => {
                    let Some(bind_group) = groups.next() else {
                        continue;
                    };
                    let i = kernels.len() as u32;
                    let at = (i % per_set_dispatches) * 2;
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(pipeline.key.entry),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &sets[(i / per_set_dispatches) as usize],
                            beginning_of_pass_write_index: Some(at),
                            end_of_pass_write_index: Some(at + 1),
                        }),
                    });
                    pass.set_pipeline(&pipeline.pipeline);
                    pass.set_bind_group(0, bind_group, &[*uniform_offset]);
                    pass.dispatch_workgroups(*x, *y, *z);
                    kernels.push(format!("{}::{}", pipeline.key.shader, pipeline.key.entry));
                }
            }
        }
        for (s, set) in sets.iter().enumerate() {
            let used = (n - s as u32 * per_set_dispatches).min(per_set_dispatches) * 2;
            encoder.resolve_query_set(set, 0..used, &resolve, s as u64 * set_bytes);
        }
        encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, total);
        self.submit_commands([encoder.finish()]);
        drop(rec);
        self.take_error("timed submit")?;

        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        crate::platform::poll_wait(&self.device).map_err(Error::Readback)?;
        rx.await
            .map_err(|_| Error::Readback("the map callback was dropped (device lost?)".into()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        let ticks: Vec<u64> = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view[..])
        };
        staging.unmap();
        let period = self.queue.get_timestamp_period() as f64;
        Ok(kernels
            .into_iter()
            .enumerate()
            .map(|(i, kernel)| {
                let s = i / per_set_dispatches as usize;
                let at = s * PER_SET as usize + (i % per_set_dispatches as usize) * 2;
                let nanos = ticks[at + 1].saturating_sub(ticks[at]) as f64 * period;
                OpTime { kernel, nanos }
            })
            .collect())
    }
}
