//! The op library. Each op is a small struct in its own file that
//! 1. checks input shapes (`output_shape`, an `Error` naming the op, never a panic),
//! 2. computes on the CPU in plain Rust (`cpu`: the reference and fallback backend),
//! 3. records its GPU dispatches (`record`: pick pipeline, fill params, bind, dispatch;
//!    never submit, never read back).
//!
//! Shaders follow the binding convention in `gpu::BindingLayout`; each op's `*Params`
//! struct matches its WGSL struct byte for byte (checked by `tests/shaders.rs`).

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Recorder};

pub mod attention;
pub mod cfg_update;
pub mod chunk;
pub mod concat;
pub mod conv2d;
pub mod conv_transpose2d;
pub mod elementwise;
pub mod gather;
pub mod gms_update;
pub mod group_norm;
pub mod layer_norm;
pub mod matmul;
pub mod norm;
pub mod philox;
pub mod reduce;
pub mod resample;
pub mod resize;
pub mod slice;
pub mod solver_update;
pub mod threshold;
pub mod tile;
pub mod timestep;
pub mod transpose;
pub mod tune;

pub use attention::{Attention, AttentionKernel, QkvLayout};
pub use cfg_update::{CfgUpdate, PairOp};
pub use concat::Concat;
pub use conv2d::Conv2d;
pub use conv_transpose2d::ConvTranspose2d;
pub use elementwise::{Binary, BinaryOp, Geglu, Unary, UnaryOp};
pub use gather::GatherRows;
pub use gms_update::GmsUpdate;
pub use group_norm::GroupNorm;
pub use layer_norm::LayerNorm;
pub use matmul::Matmul;
pub use reduce::SampleStd;
pub use resample::{AvgPool2x, Upsample2x};
pub use resize::ResizeNearest;
pub use slice::SliceBatch;
pub use solver_update::SolverUpdate;
pub use threshold::{AbsQuantile, Clamp, ThresholdRows};
pub use tile::{BlendEdge, Crop2d, Edge};
pub use timestep::TimestepEmbedding;
pub use transpose::Transpose;

/// A GPU input or output of an op: its shape and its buffer.
pub struct GpuArg<'a> {
    pub shape: &'a [usize],
    pub buffer: &'a wgpu::Buffer,
}

pub trait Op {
    /// Used in errors and labels.
    fn name(&self) -> &'static str;

    /// Validate the input shapes and return the output shape.
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>>;

    /// The CPU reference. Shapes were validated by `output_shape`.
    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]);

    /// Record the GPU dispatches computing `out` from `inputs`.
    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()>;
}

/// `(shader name, size_of::<Params>())` for every op, so a test can compare each against
/// naga's layout of the WGSL struct bound at `@binding(0)`.
pub fn param_layouts() -> Vec<(&'static str, usize)> {
    vec![
        (
            crate::render::SHADER,
            std::mem::size_of::<crate::render::RenderParams>(),
        ),
        (
            elementwise::SHADER,
            std::mem::size_of::<elementwise::ElementwiseParams>(),
        ),
        (
            elementwise::BINARY_SHADER,
            std::mem::size_of::<elementwise::ElementwiseParams>(),
        ),
        (conv2d::SHADER, std::mem::size_of::<conv2d::Conv2dParams>()),
        (
            conv2d::SHADER_F16,
            std::mem::size_of::<conv2d::Conv2dParams>(),
        ),
        (
            conv_transpose2d::SHADER,
            std::mem::size_of::<conv_transpose2d::ConvTranspose2dParams>(),
        ),
        (
            cfg_update::SHADER,
            std::mem::size_of::<cfg_update::CfgUpdateParams>(),
        ),
        (
            solver_update::SHADER,
            std::mem::size_of::<solver_update::SolverUpdateParams>(),
        ),
        (
            threshold::SHADER,
            std::mem::size_of::<threshold::ThresholdParams>(),
        ),
        (norm::SHADER, std::mem::size_of::<norm::NormParams>()),
        (
            resample::SHADER,
            std::mem::size_of::<resample::ResampleParams>(),
        ),
        (
            timestep::SHADER,
            std::mem::size_of::<timestep::TimestepParams>(),
        ),
        (concat::SHADER, std::mem::size_of::<concat::ConcatParams>()),
        (matmul::SHADER, std::mem::size_of::<matmul::MatmulParams>()),
        (
            matmul::SHADER_F16,
            std::mem::size_of::<matmul::MatmulParams>(),
        ),
        (
            attention::SHADER,
            std::mem::size_of::<attention::AttentionParams>(),
        ),
        (
            transpose::SHADER,
            std::mem::size_of::<transpose::TransposeParams>(),
        ),
        (reduce::SHADER, std::mem::size_of::<reduce::ReduceParams>()),
        (resize::SHADER, std::mem::size_of::<resize::ResizeParams>()),
        (tile::CROP_SHADER, std::mem::size_of::<tile::CropParams>()),
        (tile::BLEND_SHADER, std::mem::size_of::<tile::BlendParams>()),
    ]
}

/// Check the number of inputs.
pub(crate) fn expect_inputs(op: &'static str, inputs: &[&[usize]], n: usize) -> Result<()> {
    if inputs.len() != n {
        return Err(Error::invalid(
            op,
            format!("takes {n} input tensor(s), got {}", inputs.len()),
        ));
    }
    Ok(())
}

/// Check that a shape has `rank` dimensions.
pub(crate) fn expect_rank(
    op: &'static str,
    what: &str,
    shape: &[usize],
    rank: usize,
    layout: &str,
) -> Result<()> {
    if shape.len() != rank {
        return Err(Error::shape(
            op,
            what,
            format!("rank {rank} {layout}"),
            shape,
        ));
    }
    Ok(())
}

/// Workgroups for `n` threads in groups of `wg`, folded to the adapter's per-dimension limit.
pub(crate) fn grid_1d(ctx: &GpuContext, n: usize, wg: u32) -> [u32; 3] {
    crate::gpu::fold_workgroups(
        (n as u64).div_ceil(wg as u64) as u32,
        ctx.caps.max_workgroups(),
    )
}
