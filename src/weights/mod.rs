//! Model weights: a streaming safetensors reader, sharded checkpoints, and the [`Weights`]
//! container that model code takes its tensors from.
//!
//! Format (<https://github.com/huggingface/safetensors#format>): an 8-byte little-endian
//! `u64` `n`, then `n` bytes of UTF-8 JSON
//! `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}` with
//! offsets counted from the first byte after the header, then the tensor data (little-endian,
//! C order).
//!
//! Why our own reader rather than `safetensors::SafeTensors`: that one needs the whole file as
//! one slice (an mmap natively), but in the browser the bytes arrive in chunks from a fetch
//! stream and a wasm32 heap cannot hold a multi-GB file next to the model.
//! [`SafetensorsStream`] parses the header as soon as its bytes are in and hands out each
//! tensor as soon as its span has arrived, so at most one tensor is buffered on top of what
//! the caller keeps. It accepts exactly what the crate accepts (header ≤ 100 MB; spans sorted,
//! contiguous and covering the data section exactly; shape × dtype size = span) except that
//! it also rejects dtypes other than F32/F16/BF16 and duplicate names; `tests/weights.rs`
//! checks the two agree on thousands of mutated files.
//!
//! Layers: nothing here knows a UNet; `models` asks for tensors by name and shape.

mod data;
mod file;
mod header;
mod set;
mod shards;
mod stream;

pub use data::TensorData;
pub use file::{
    find_model_weights, load_file, load_file_with_progress, load_sharded, ModelWeightsFile,
};
pub use header::{header_len_from_prefix, Header, TensorInfo, MAX_HEADER_BYTES};
pub(crate) use set::Stored;
pub use set::Weights;
pub use shards::{ShardIndex, ShardTracker};
pub use stream::{LoadOptions, Progress, ReadyTensor, SafetensorsStream};

use crate::error::Error;

/// Element types the reader accepts. Everything is computed in f32; f16 and bf16 are
/// widened exactly, or kept packed for an f16 weight path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// The safetensors name (`"F32"`, `"F16"`, `"BF16"`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }

    /// Parses a safetensors dtype name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How Linear and Conv2d weights are stored on the GPU. Biases, norms and embeddings stay
/// f32 either way (they are small).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// f32 as loaded (exact).
    #[default]
    F32,
    /// f16 pairs packed in u32 words, unpacked in the shader: half the memory and upload,
    /// at f16's ~3 significant digits. The CPU backend keeps f32 values rounded through f16
    /// so both backends compute the same thing.
    F16Packed,
    /// Packed f16 for the weights the checkpoint stores in f16 (lossless: the same values
    /// at half the memory of widening them), f32 for those stored in f32 or bf16. Weights
    /// combined on the host (stacked q/k/v, a split projection) follow their sources; ones
    /// folded with constants (which no longer equal stored f16 values) stay f32.
    Auto,
}

impl WeightDtype {
    /// Parses the CLI and JS spelling (`f32`, `f16`, `auto`).
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16Packed),
            "auto" => Ok(Self::Auto),
            _ => Err(Error::invalid(
                "--weights",
                format!("`{s}` is not a weight storage; use `f32`, `f16` or `auto`"),
            )),
        }
    }

    /// The spelling [`parse`](Self::parse) reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16Packed => "f16",
            Self::Auto => "auto",
        }
    }

    /// Whether a Linear/Conv2d weight stored as `stored` in the checkpoint is kept as packed
    /// f16 on the GPU; `exact` says whether the values are still the stored ones (false for
    /// a weight folded with constants on the host).
    pub fn packs(self, stored: Dtype, exact: bool) -> bool {
        match self {
            Self::F32 => false,
            Self::F16Packed => true,
            Self::Auto => exact && stored == Dtype::F16,
        }
    }
}

/// Whether a checkpoint tensor is a weight the packed-f16 storage applies to: a Linear or
/// Conv2d weight (2-D and up), not an embedding table (`…_embedding.weight`, read as f32 by
/// row). The browser loader uses it to upload packed words as the bytes arrive, and the
/// memory plan to count them.
pub fn is_packable(name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2 && !name.ends_with("_embedding.weight")
}

/// `values` rounded to f16 (nearest even) and packed two per u32 (`pack2x16float` layout:
/// element `2i` in the low half of word `i`; an odd count is padded with +0).
pub fn pack_f16(values: &[f32]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|p| {
            let lo = half::f16::from_f32(p[0]).to_bits() as u32;
            let hi = p
                .get(1)
                .map_or(0, |&x| half::f16::from_f32(x).to_bits() as u32);
            lo | (hi << 16)
        })
        .collect()
}

/// `values` rounded through f16 and widened back: what the shader sees of a packed weight.
pub fn round_f16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect()
}

pub(crate) const HINT_TRUNCATED: &str =
    "the file is truncated or its download was cut short; download it again";
pub(crate) const HINT_CORRUPT: &str =
    "the file is damaged or was not written by a safetensors writer; download it again or re-save it with the `safetensors` library";
pub(crate) const HINT_NOT_SAFETENSORS: &str =
    "this does not look like a safetensors file (PyTorch .bin/.ckpt pickles must be converted to .safetensors first)";
pub(crate) const HINT_DTYPE: &str =
    "only float32, float16 and bfloat16 weights are supported; re-save the model in one of them (e.g. `torch_dtype=torch.float16`)";
pub(crate) const HINT_NON_FINITE: &str =
    "the checkpoint is damaged or was saved after training diverged; use another copy, or turn `LoadOptions::check_finite` off to load it anyway";
pub(crate) const HINT_MEMORY: &str = "free memory or use a smaller (or f16) model";

pub(crate) fn format_error(
    file: &str,
    tensor: Option<&str>,
    expected: impl Into<String>,
    got: impl Into<String>,
    hint: &'static str,
) -> Error {
    Error::WeightsFormat {
        file: file.to_string(),
        tensor: tensor.map(str::to_string),
        expected: expected.into(),
        got: got.into(),
        hint,
    }
}
