//! The GPU layer: device creation, capabilities, the buffer pool, the pipeline cache, the
//! dispatch recorder and readback. Nothing here knows what a diffusion model is.

mod context;
mod pipeline;
mod pool;
mod profile;
mod recorder;

pub use context::{Capabilities, GpuContext, GpuOptions};
pub use pipeline::{BindingLayout, CachedPipeline, PipelineKey};
pub use pool::{BufferPool, PoolStats, PooledBuffer};
pub use profile::OpTime;
pub use recorder::{BufferSlice, RecordStats, Recorder};

/// Workgroup counts for `n` workgroups of a 1-D problem, folded into (x, y) so that neither
/// exceeds `max_per_dim` (`maxComputeWorkgroupsPerDimension`, 65535 in WebGPU's defaults).
/// Shaders recover the linear workgroup index as `wg.x + wg.y * num_workgroups.x`.
/// Requires `n <= max_per_dim²` (always true for a u32 count and the WebGPU minimum 65535).
pub fn fold_workgroups(n: u32, max_per_dim: u32) -> [u32; 3] {
    if n <= max_per_dim {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max_per_dim);
        let x = n.div_ceil(y);
        [x, y, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::fold_workgroups;

    #[test]
    fn fold_covers_every_workgroup_and_respects_limit() {
        for &(n, max) in &[
            (1, 65535),
            (65535, 65535),
            (65536, 65535),
            (1_000_003, 65535),
            (16, 4),
            (13, 4),
        ] {
            let [x, y, _] = fold_workgroups(n, max);
            assert!(x <= max && y <= max, "n={n} -> ({x},{y})");
            assert!((x as u64) * (y as u64) >= n as u64, "n={n} -> ({x},{y})");
        }
    }
}
