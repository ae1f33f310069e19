//! Tensors: a shape plus f32 data that lives either on the CPU or in a GPU buffer.
//! Always contiguous, row-major (PyTorch's NCHW for images).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::PooledBuffer;

#[derive(Clone)]
pub(crate) enum Data {
    Cpu(Arc<Vec<f32>>),
    Gpu(Arc<PooledBuffer>),
}

/// A contiguous f32 tensor. Cloning shares the data.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    pub(crate) data: Data,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?} on {}", self.shape, self.backend_name())
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The element count in 64 bits, saturating: on wasm32 `usize` is 32 bits, and a shape of
/// 2^32 elements or more must be refused by the size checks, not wrap to a small buffer.
pub fn numel_u64(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
}

impl Tensor {
    /// A CPU tensor; `data.len()` must equal the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        if numel(shape) != data.len() {
            return Err(Error::invalid(
                "tensor",
                format!(
                    "shape {:?} holds {} elements but {} values were given",
                    shape,
                    numel(shape),
                    data.len()
                ),
            ));
        }
        Ok(Self {
            shape: shape.to_vec(),
            data: Data::Cpu(Arc::new(data)),
        })
    }

    pub(crate) fn from_gpu(shape: Vec<usize>, buffer: Arc<PooledBuffer>) -> Self {
        Self {
            shape,
            data: Data::Gpu(buffer),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Bytes of f32 data.
    pub fn byte_len(&self) -> u64 {
        numel_u64(&self.shape).saturating_mul(4)
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self.data, Data::Gpu(_))
    }

    pub fn backend_name(&self) -> &'static str {
        match self.data {
            Data::Cpu(_) => "cpu",
            Data::Gpu(_) => "gpu",
        }
    }

    /// The values, if this tensor is on the CPU.
    pub fn cpu_data(&self) -> Option<&[f32]> {
        match &self.data {
            Data::Cpu(v) => Some(v),
            Data::Gpu(_) => None,
        }
    }

    /// The buffer, if this tensor is on the GPU.
    pub fn gpu_buffer(&self) -> Option<&Arc<PooledBuffer>> {
        match &self.data {
            Data::Gpu(b) => Some(b),
            Data::Cpu(_) => None,
        }
    }

    /// The same data under another shape with the same element count (free: no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                "tensor",
                format!("{} elements to match {:?}", numel(shape), shape),
                &self.shape,
            ));
        }
        Ok(Self {
            shape: shape.to_vec(),
            data: self.data.clone(),
        })
    }
}
