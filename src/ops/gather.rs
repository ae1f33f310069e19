//! Rows of a table picked by integer ids, `table[ids]`: table (num, dim) → (ids.len(), dim),
//! as `nn.Embedding` looks up token and position embeddings.
//!
//! The ids are host data (token ids come from the tokenizer), so they live in the op and the
//! GPU side is one buffer-to-buffer copy per run of consecutive ids: no kernel and no storage
//! binding, so the table's size is not limited by `maxStorageBufferBindingSize` (SD 1.x's
//! token table is 49408 × 768 f32 = 152 MB, above the 128 MiB WebGPU default).

use super::{expect_inputs, expect_rank, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Recorder};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatherRows {
    pub ids: Vec<u32>,
}

impl GatherRows {
    pub fn new(ids: impl Into<Vec<u32>>) -> Self {
        Self { ids: ids.into() }
    }

    /// `(first id, first output row, rows)` for each run of ids that are consecutive rows of
    /// the table, so a run of positions 0, 1, 2, … is a single copy.
    fn runs(&self) -> Vec<(usize, usize, usize)> {
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (i, &id) in self.ids.iter().enumerate() {
            match runs.last_mut() {
                Some((start, _, len)) if *start + *len == id as usize => *len += 1,
                _ => runs.push((id as usize, i, 1)),
            }
        }
        runs
    }
}

impl Op for GatherRows {
    fn name(&self) -> &'static str {
        "gather_rows"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        expect_inputs(op, inputs, 1)?;
        expect_rank(op, "table", inputs[0], 2, "(num, dim)")?;
        let (num, dim) = (inputs[0][0], inputs[0][1]);
        if self.ids.is_empty() {
            return Err(Error::invalid(op, "no ids to look up: pass at least one"));
        }
        if let Some((i, &id)) = self
            .ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= num)
        {
            return Err(Error::invalid(
                op,
                format!(
                    "id {id} (position {i}) is out of range: the table has {num} rows (0 to {}); \
                     the tokenizer and the text encoder must come from the same model",
                    num.saturating_sub(1)
                ),
            ));
        }
        Ok(vec![self.ids.len(), dim])
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let dim = shapes[0][1];
        for (row, &id) in out.chunks_exact_mut(dim.max(1)).zip(&self.ids) {
            let id = id as usize;
            row.copy_from_slice(&inputs[0][id * dim..(id + 1) * dim]);
        }
    }

    fn record(
        &self,
        _ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        // Row offsets are multiples of 4 bytes, as copies require.
        let row = inputs[0].shape[1] as u64 * 4;
        if row == 0 {
            return Ok(());
        }
        for (id, at, len) in self.runs() {
            rec.copy(
                inputs[0].buffer,
                id as u64 * row,
                out.buffer,
                at as u64 * row,
                len as u64 * row,
            );
        }
        Ok(())
    }
}
