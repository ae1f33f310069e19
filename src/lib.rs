//! webdiffusion: diffusion-model sampling on the GPU through WebGPU, natively (wgpu) and in
//! the browser (wasm32). See ARCHITECTURE.md for the layers.

#[cfg(not(target_arch = "wasm32"))]
pub mod bundled;
pub mod error;
pub mod eval;
pub mod exec;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod image;
pub mod models;
pub mod nn;
pub mod npy;
pub mod ops;
pub mod pipeline;
pub mod platform;
#[cfg(not(target_arch = "wasm32"))]
pub mod preview;
pub mod render;
pub mod sampling;
pub mod selfcheck;
pub mod shaders;
pub mod tensor;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
pub use exec::{Backend, Exec};
pub use gpu::{Capabilities, GpuContext, GpuOptions};
pub use tensor::Tensor;

#[cfg(target_arch = "wasm32")]
pub mod wasm;
#[cfg(target_arch = "wasm32")]
pub mod wasm_bench;
