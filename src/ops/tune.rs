//! A small kernel autotuner: for each (adapter, kernel, shape bucket) it times a handful of
//! tile configurations once and remembers the fastest.
//!
//! The best tile shape of a register-blocked kernel depends on the adapter (warp width,
//! register file, cache sizes; a software rasterizer such as lavapipe prefers different
//! workgroups from a discrete GPU) and on the problem's shape (a 4-channel output conv
//! wastes half of an 8-channel block). Rather than guess per vendor, the first use of a
//! bucket times every candidate that fits the adapter's limits on scratch buffers of the
//! real size and keeps the winner: in memory, and natively also in
//! `$XDG_CACHE_HOME/webdiffusion/tune.json` (or `~/.cache/webdiffusion/tune.json`), so later
//! runs do not pay for it again. Candidates compute the same sums in the same order, so the
//! choice changes the speed and never the result.
//!
//! `WEBDIFFUSION_TUNE=off` skips timing and uses each kernel's fixed default. On wasm a
//! kernel cannot block inside `record` to time anything, so the default is used there too.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::Result;
use crate::gpu::GpuContext;

/// Which variant of a tiled kernel an op records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The autotuner's choice for this adapter and shape (the default).
    #[default]
    Tuned,
    /// The plain 16×16 workgroup-memory tiled kernel, the yardstick of
    /// `webdiffusion bench --kernels`.
    Baseline,
    /// A fixed register-blocked configuration, meaning per kernel: matmul (WG_X, WG_Y),
    /// conv2d (WG, TC).
    Tiles(u32, u32),
}

/// The tile choices remembered so far, by key (see `key`).
static CACHE: Mutex<Option<HashMap<String, (u32, u32)>>> = Mutex::new(None);

/// Whether `WEBDIFFUSION_TUNE` allows timing candidates.
pub fn enabled() -> bool {
    if cfg!(target_arch = "wasm32") {
        return false;
    }
    !matches!(
        std::env::var("WEBDIFFUSION_TUNE").as_deref(),
        Ok("off") | Ok("0") | Ok("false")
    )
}

/// Rounds up to a power of two: shapes within a factor of two share a choice.
pub fn bucket(v: usize) -> usize {
    v.max(1).next_power_of_two()
}

/// The cache key of a kernel on this adapter for a shape bucket.
pub fn key(ctx: &GpuContext, kernel: &str, bucket: &str) -> String {
    format!(
        "{} ({})|{kernel}|{bucket}",
        ctx.caps.adapter_name, ctx.caps.backend
    )
}

#[cfg(not(target_arch = "wasm32"))]
fn cache_file() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("webdiffusion").join("tune.json"))
}

#[cfg(not(target_arch = "wasm32"))]
fn load_file() -> HashMap<String, (u32, u32)> {
    // A missing or unreadable cache only means re-tuning, never an error.
    cache_file()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[cfg(target_arch = "wasm32")]
fn load_file() -> HashMap<String, (u32, u32)> {
    HashMap::new()
}

#[cfg(not(target_arch = "wasm32"))]
fn save_file(map: &HashMap<String, (u32, u32)>) {
    let Some(path) = cache_file() else { return };
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Merge with what other processes saved meanwhile, then replace the file atomically.
    let mut all = load_file();
    all.extend(map.iter().map(|(k, v)| (k.clone(), *v)));
    let Ok(text) = serde_json::to_string_pretty(&all) else {
        return;
    };
    let tmp = dir.join(format!("tune.json.{}", std::process::id()));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(target_arch = "wasm32")]
fn save_file(_: &HashMap<String, (u32, u32)>) {}

/// A remembered choice for `key`, if any.
pub fn cached(key: &str) -> Option<(u32, u32)> {
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(load_file).get(key).copied()
}

fn remember(key: String, choice: (u32, u32)) {
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(load_file);
    map.insert(key, choice);
    // Unit tests time fake kernels: keep them out of the user's cache file.
    if !cfg!(test) {
        save_file(map);
    }
}

/// Forgets every in-memory choice (the file stays): for tests and `bench --kernels --retune`.
pub fn clear_memory() {
    *CACHE.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
}

/// The tile configuration for `key`: the cached one, else the fastest of `candidates` as
/// timed by `time` (seconds for one run of the op with that candidate), else `default`
/// when tuning is off or nothing could be timed. A candidate whose timing fails (e.g. a
/// pipeline the adapter rejects) is skipped, not an error.
pub fn choose(
    key: String,
    candidates: &[(u32, u32)],
    default: (u32, u32),
    mut time: impl FnMut((u32, u32)) -> Result<f64>,
) -> (u32, u32) {
    if !enabled() {
        return default;
    }
    if let Some(c) = cached(&key) {
        if candidates.contains(&c) {
            return c;
        }
    }
    if candidates.len() <= 1 {
        return candidates.first().copied().unwrap_or(default);
    }
    let mut best: Option<((u32, u32), f64)> = None;
    for &c in candidates {
        // Two runs, the faster kept: the first may still pay for lazy driver work. A
        // candidate already 3× slower than the best gets no second run.
        let Ok(t1) = time(c) else { continue };
        let t = if best.is_some_and(|(_, b)| t1 > 3.0 * b) {
            t1
        } else {
            match time(c) {
                Ok(t2) => t1.min(t2),
                Err(_) => continue,
            }
        };
        if best.is_none_or(|(_, b)| t < b) {
            best = Some((c, t));
        }
    }
    match best {
        Some((c, _)) => {
            remember(key, c);
            c
        }
        None => default,
    }
}

/// Seconds for `ctx` to run `rec` (submit and wait), natively; `None` on wasm.
#[cfg(not(target_arch = "wasm32"))]
pub fn time_submit(ctx: &GpuContext, rec: crate::gpu::Recorder) -> Result<f64> {
    let t = std::time::Instant::now();
    ctx.submit(rec)?;
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| {
            crate::error::Error::invalid("autotune", format!("waiting for the GPU: {e}"))
        })?;
    Ok(t.elapsed().as_secs_f64())
}

#[cfg(target_arch = "wasm32")]
pub fn time_submit(_: &GpuContext, _: crate::gpu::Recorder) -> Result<f64> {
    Err(crate::error::Error::invalid(
        "autotune",
        "timing kernels needs a blocking wait, which the web does not have",
    ))
}

/// A zero-filled scratch storage buffer of `bytes` (at least 4) for timing candidates: the
/// real operands may still be written by an unsubmitted recording, so tuning never touches
/// them.
pub fn scratch(ctx: &GpuContext, bytes: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("autotune scratch"),
        size: bytes.max(4).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_to_powers_of_two() {
        assert_eq!(bucket(0), 1);
        assert_eq!(bucket(320), 512);
        assert_eq!(bucket(512), 512);
        assert_eq!(bucket(4097), 8192);
    }

    #[test]
    fn picks_the_fastest_candidate_once_and_remembers_it() {
        if !enabled() {
            return;
        }
        let times = [(1, 1), (2, 2), (3, 3)];
        let speed = |c: (u32, u32)| [3.0, 1.0, 2.0][c.0 as usize - 1];
        let mut calls = 0;
        let key = "unit test|kernel|fastest".to_string();
        let got = choose(key.clone(), &times, (1, 1), |c| {
            calls += 1;
            Ok(speed(c))
        });
        assert_eq!(got, (2, 2));
        assert!(calls >= 3, "every candidate timed, got {calls} runs");
        let again = choose(key, &times, (1, 1), |_| -> Result<f64> {
            panic!("a remembered choice must not be timed again")
        });
        assert_eq!(again, (2, 2));
    }

    #[test]
    fn failing_candidates_are_skipped() {
        if !enabled() {
            return;
        }
        let key = "unit test|kernel|failing".to_string();
        let got = choose(key, &[(1, 1), (2, 2)], (9, 9), |c| {
            if c == (1, 1) {
                Err(crate::error::Error::invalid("test", "rejected pipeline"))
            } else {
                Ok(5.0)
            }
        });
        assert_eq!(got, (2, 2));
    }
}
