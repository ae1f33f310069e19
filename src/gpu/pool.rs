//! A pool of storage buffers bucketed by size. Creating and first binding a buffer is
//! expensive in WebGPU, so op outputs reuse freed buffers of a close size.
//!
//! Reuse is safe inside one command buffer because WebGPU orders every dispatch after the
//! previous one's writes, and across command buffers because the queue runs them in submit
//! order. Two hazards remain, and the engine closes both:
//! - a buffer freed while an unsubmitted recording still reads it must not be handed to a
//!   *different* recording that could be submitted first: each `Exec` allocates its outputs
//!   from its own pool, holds every input it does not own (weights, other executors'
//!   tensors) until it submits, and ops' scratch buffers stay in the recording until
//!   after `queue.submit`;
//! - a `queue.write_buffer` into a buffer an unsubmitted recording uses would land first, so
//!   uploads never go through the queue (see `GpuContext::upload`), and the one queued
//!   write a recording makes (its uniforms and staged data, `gpu::recorder`) goes into a
//!   buffer only that executor's recordings use, right before that recording's submit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Round a request up to its bucket: sizes in [2^k, 2^(k+1)) are rounded up to a multiple of
/// 2^(k-2), so at most 25 % is wasted and nearby sizes share buffers.
pub(crate) fn bucket(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let k = 63 - bytes.leading_zeros() as u64;
    let step = 1u64 << k.saturating_sub(2);
    bytes.next_multiple_of(step)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created through the pool.
    pub created: u64,
    /// Bytes of those buffers (never decreases: counts allocations, not residency).
    pub created_bytes: u64,
    /// Requests served by a freed buffer.
    pub reused: u64,
    /// Bytes in buffers currently handed out.
    pub live_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_bytes: u64,
    /// Bytes parked in the free lists.
    pub free_bytes: u64,
}

struct Inner {
    /// Per bucket size, sorted by descending serial so `pop` hands out the oldest buffer.
    free: HashMap<u64, Vec<(u64, wgpu::Buffer)>>,
    /// Serial of the next buffer created or adopted.
    next_serial: u64,
    stats: PoolStats,
}

impl Inner {
    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }
}

/// Shared by every tensor of a context; buffers come back when their `PooledBuffer` drops.
pub struct BufferPool {
    device: wgpu::Device,
    inner: Arc<Mutex<Inner>>,
}

impl BufferPool {
    pub(crate) fn new(device: wgpu::Device) -> Self {
        Self {
            device,
            inner: Arc::new(Mutex::new(Inner {
                free: HashMap::new(),
                next_serial: 0,
                stats: PoolStats::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A storage buffer of at least `bytes` bytes (contents undefined).
    ///
    /// Of the free buffers of a size, the oldest is handed out. That makes the choice depend
    /// only on which buffers are free, not on the order they were freed in, so a sampling
    /// step that frees and requests the same sizes as the step before gets the same buffers
    /// (up to the few that rotate, like the latent) and the recorder's bind groups stay valid.
    pub fn get(&self, label: &str, bytes: u64) -> PooledBuffer {
        let size = bucket(bytes);
        let mut inner = self.lock();
        let reused = inner.free.get_mut(&size).and_then(|v| v.pop());
        let (serial, buffer) = match reused {
            Some(b) => {
                inner.stats.reused += 1;
                inner.stats.free_bytes -= size;
                b
            }
            None => {
                inner.stats.created += 1;
                inner.stats.created_bytes += size;
                let serial = inner.serial();
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                });
                (serial, buffer)
            }
        };
        inner.stats.live_bytes += size;
        inner.stats.peak_bytes = inner.stats.peak_bytes.max(inner.stats.live_bytes);
        PooledBuffer {
            buffer: Some(buffer),
            serial,
            size,
            len: bytes,
            pool: Arc::downgrade(&self.inner),
        }
    }

    /// Take ownership of a buffer created elsewhere (uploads) so it is recycled on drop.
    pub(crate) fn adopt(&self, buffer: wgpu::Buffer, len: u64) -> PooledBuffer {
        let size = buffer.size();
        debug_assert_eq!(
            bucket(size),
            size,
            "adopted buffers are created at a bucket size"
        );
        let mut inner = self.lock();
        inner.stats.created += 1;
        inner.stats.created_bytes += size;
        inner.stats.live_bytes += size;
        inner.stats.peak_bytes = inner.stats.peak_bytes.max(inner.stats.live_bytes);
        let serial = inner.serial();
        PooledBuffer {
            buffer: Some(buffer),
            serial,
            size,
            len,
            pool: Arc::downgrade(&self.inner),
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    /// Drop every parked buffer (frees GPU memory between models).
    pub fn trim(&self) {
        let mut inner = self.lock();
        inner.free.clear();
        inner.stats.free_bytes = 0;
    }
}

/// A buffer on loan from the pool; it returns there when dropped.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    /// Creation order within the pool (see `BufferPool::get`).
    serial: u64,
    size: u64,
    len: u64,
    pool: std::sync::Weak<Mutex<Inner>>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
    /// Bytes the tensor uses (the buffer may be larger).
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Allocated bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Whether this buffer returns to `pool` when dropped.
    pub fn belongs_to(&self, pool: &BufferPool) -> bool {
        std::ptr::eq(self.pool.as_ptr(), Arc::as_ptr(&pool.inner))
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut inner = pool.lock().unwrap_or_else(|p| p.into_inner());
        inner.stats.live_bytes -= self.size;
        inner.stats.free_bytes += self.size;
        let list = inner.free.entry(self.size).or_default();
        let at = list.partition_point(|(s, _)| *s > self.serial);
        list.insert(at, (self.serial, buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_waste_at_most_a_quarter() {
        for b in [
            1u64,
            255,
            256,
            257,
            1000,
            4096,
            4097,
            1 << 20,
            (1 << 20) + 1,
            123_456_789,
        ] {
            let s = bucket(b);
            assert!(s >= b);
            assert!(s as f64 <= (b.max(256) as f64) * 1.25 + 1.0, "{b} -> {s}");
            assert_eq!(bucket(s), s, "a bucket size is its own bucket");
        }
    }
}
