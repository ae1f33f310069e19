//! Layers that own their weights, built from a [`Weights`](crate::weights::Weights) set with
//! the tensor names diffusers gives them, each a `forward` composed only of ops, so the same
//! code runs on the CPU reference backend and on the GPU.
//!
//! Weights are taken with the shape the config implies (a missing tensor or a wrong shape is
//! the weights module's error, naming the tensor) and uploaded once at load time.

pub(crate) mod blocks;
pub(crate) mod layers;
mod transformer;

pub use blocks::{AttentionBlock, Downsample2D, ResnetBlock2D, TimeEmbedding, Upsample2D};
pub use layers::{Conv2d, Embedding, GroupNorm, LayerNorm, Linear};
pub use transformer::{Transformer2D, Transformer2DConfig};
