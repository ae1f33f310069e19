//! Tensor data as read from the file, and its conversions: widened to f32 (exact for f16 and
//! bf16) or packed two f16 per `u32` for an f16 weight path (WGSL `unpack2x16float` reads
//! element `2i` from the low half of word `i`, so no `shader-f16` feature is needed).

use half::{bf16, f16};

use super::Dtype;

/// The elements of one tensor in the dtype they were stored in.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl TensorData {
    pub(crate) fn empty(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F32 => TensorData::F32(Vec::new()),
            Dtype::F16 => TensorData::F16(Vec::new()),
            Dtype::BF16 => TensorData::BF16(Vec::new()),
        }
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            TensorData::F32(_) => Dtype::F32,
            TensorData::F16(_) => Dtype::F16,
            TensorData::BF16(_) => Dtype::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::BF16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes as stored.
    pub fn byte_len(&self) -> u64 {
        self.len() as u64 * self.dtype().size() as u64
    }

    /// Reserves room for `additional` more elements; `false` when the allocation fails
    /// (reported as an error by the caller rather than aborting the process).
    pub(crate) fn try_reserve(&mut self, additional: usize) -> bool {
        match self {
            TensorData::F32(v) => v.try_reserve_exact(additional).is_ok(),
            TensorData::F16(v) => v.try_reserve_exact(additional).is_ok(),
            TensorData::BF16(v) => v.try_reserve_exact(additional).is_ok(),
        }
    }

    /// Appends little-endian elements; `bytes.len()` must be a multiple of the element size
    /// (the stream keeps partial elements back).
    pub(crate) fn extend_le(&mut self, bytes: &[u8]) {
        match self {
            TensorData::F32(v) => v.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            TensorData::F16(v) => v.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))),
            ),
            TensorData::BF16(v) => v.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))),
            ),
        }
    }

    /// The values as f32. f16 and bf16 widen exactly; f32 data is moved, not copied.
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            TensorData::F32(v) => v,
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// The values as f32 (a copy).
    pub fn to_f32(&self) -> Vec<f32> {
        self.clone().into_f32()
    }

    /// The values rounded to f16 (nearest even) and packed two per `u32`, element `2i` in the
    /// low 16 bits of word `i`; an odd count is padded with +0. Also returns how many finite
    /// values became infinite because they exceed f16's range (±65504).
    pub fn to_f16_words(&self) -> (Vec<u32>, usize) {
        let halves: Vec<f16> = match self {
            TensorData::F16(v) => v.clone(),
            TensorData::F32(v) => v.iter().map(|&x| f16::from_f32(x)).collect(),
            TensorData::BF16(v) => v.iter().map(|x| f16::from_f32(x.to_f32())).collect(),
        };
        let overflowed = match self {
            TensorData::F16(_) => 0,
            _ => {
                let src = self.to_f32_iter();
                src.zip(&halves)
                    .filter(|(x, h)| x.is_finite() && !h.is_finite())
                    .count()
            }
        };
        let words = halves
            .chunks(2)
            .map(|p| {
                let lo = p[0].to_bits() as u32;
                let hi = p.get(1).map_or(0, |h| h.to_bits() as u32);
                lo | (hi << 16)
            })
            .collect();
        (words, overflowed)
    }

    fn to_f32_iter(&self) -> Box<dyn Iterator<Item = f32> + '_> {
        match self {
            TensorData::F32(v) => Box::new(v.iter().copied()),
            TensorData::F16(v) => Box::new(v.iter().map(|x| x.to_f32())),
            TensorData::BF16(v) => Box::new(v.iter().map(|x| x.to_f32())),
        }
    }

    /// `(count, first index, first value)` of NaN/±inf elements, or `None` if all are finite.
    pub fn non_finite(&self) -> Option<(usize, usize, f32)> {
        match self {
            TensorData::F32(v) => scan_non_finite(v.iter().copied()),
            TensorData::F16(v) => scan_non_finite(v.iter().map(|x| x.to_f32())),
            TensorData::BF16(v) => scan_non_finite(v.iter().map(|x| x.to_f32())),
        }
    }
}

fn scan_non_finite(values: impl Iterator<Item = f32>) -> Option<(usize, usize, f32)> {
    let mut count = 0usize;
    let mut first = None;
    for (i, x) in values.enumerate() {
        if !x.is_finite() {
            count += 1;
            if first.is_none() {
                first = Some((i, x));
            }
        }
    }
    first.map(|(i, x)| (count, i, x))
}
