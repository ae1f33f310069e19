//! Everything that differs between native and wasm32 lives here (and in the wasm front end).

/// `Send` natively, nothing on wasm32 (where GPU objects are not `Send`).
pub use wgpu::WasmNotSend;

/// Drive the device until pending callbacks (buffer maps) have run.
///
/// Natively this blocks the calling thread until the queue is idle. On the web the browser
/// runs callbacks from its event loop, so this does nothing and the caller simply awaits.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn poll_wait(device: &wgpu::Device) -> Result<(), String> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn poll_wait(_device: &wgpu::Device) -> Result<(), String> {
    Ok(())
}

/// Run a future to completion on the current thread (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// Milliseconds from a monotonic clock, for timings reported to users.
#[cfg(not(target_arch = "wasm32"))]
pub fn now_ms() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
}

#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}
