//! Splitting one op into several dispatches so that no storage binding exceeds
//! `maxStorageBufferBindingSize` (128 MiB on WebGPU's defaults and on lavapipe: a batch of 4
//! SD latents at 64×64 with 320 channels already needs 20 MiB per activation, and an
//! attention's q/k/v at 1024×1024 images several hundred MiB).
//!
//! The work of a chunkable op is a grid of `batches × rows` (matmul: batch items × output
//! rows; attention: batch items × query rows). Each operand is described by how many bytes
//! one batch item occupies and whether a subset of its rows is a contiguous byte range.
//! [`plan`] is a pure function (unit-tested with limits of a few KB) that picks the fewest
//! chunks: the whole tensor if everything fits, else groups of whole batch items, else
//! (one batch item at a time) groups of rows. [`Chunk::binding`] then gives each operand's
//! byte range, bound from an offset rounded down to `minStorageBufferOffsetAlignment`; the
//! shader adds the remainder (in elements) back through its params.
//!
//! `split` (used by the norms) splits one outer axis into ranges whose starts are already
//! aligned; matmul and attention need two levels and operands that must be bound whole
//! for every row (b, keys, values), and their rows are rarely a multiple of the alignment,
//! hence this planner.

use std::ops::Range;

/// How one storage binding of a chunkable op is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    /// Named in `Error::Limit` when it cannot be split small enough.
    pub name: &'static str,
    /// Bytes of one batch item.
    pub item_bytes: u64,
    /// `true` when each batch item has its own slice, laid out one after the other;
    /// `false` when one slice is shared by every item (broadcast weights, a bias).
    pub batched: bool,
    /// Bytes per row when any range of rows of an item is a contiguous sub-range of it
    /// (row-major activations); `None` when every row needs the whole item (keys and values,
    /// channel-first layouts, a bias).
    pub row_bytes: Option<u64>,
}

/// One dispatch's share of the work: a range of batch items and a range of rows. Either
/// `rows` covers every row, or `batches` holds a single item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub batches: Range<usize>,
    pub rows: Range<usize>,
}

/// An operand that does not fit even in the smallest chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    /// Index into the operand list.
    pub operand: usize,
    /// Bytes the smallest possible binding of it needs (including alignment slack).
    pub needed: u64,
}

/// A byte range to bind plus the element offset the shader adds to reach the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Byte offset of the binding, a multiple of the alignment.
    pub offset: u64,
    /// Bytes bound.
    pub size: u64,
    /// f32 elements from the binding start to the first byte of the chunk's data.
    pub skip: u32,
}

impl Chunk {
    /// Byte range `[start, start + len)` of `op`'s data that this chunk reads or writes, for
    /// an op with `rows` rows per item.
    pub fn range(&self, op: &Operand, rows: usize) -> (u64, u64) {
        let nb = (self.batches.end - self.batches.start) as u64;
        let all_rows = self.rows.start == 0 && self.rows.end == rows;
        let item_start = if op.batched {
            self.batches.start as u64 * op.item_bytes
        } else {
            0
        };
        match op.row_bytes {
            Some(rb) if !all_rows => (
                item_start + self.rows.start as u64 * rb,
                (self.rows.end - self.rows.start) as u64 * rb,
            ),
            _ if op.batched => (item_start, nb * op.item_bytes),
            _ => (0, op.item_bytes),
        }
    }

    /// The binding covering `range(op, rows)`, its offset rounded down to `align` bytes.
    pub fn binding(&self, op: &Operand, rows: usize, align: u64) -> Binding {
        let (start, len) = self.range(op, rows);
        let offset = start - start % align.max(1);
        Binding {
            offset,
            size: (start - offset + len).max(4),
            skip: ((start - offset) / 4) as u32,
        }
    }

    /// Whether `op`'s binding for this chunk holds whole batch items, so that a row index
    /// into it is the item's global row rather than the chunk-local one.
    pub fn binds_whole_items(&self, op: &Operand, rows: usize) -> bool {
        op.row_bytes.is_none() || (self.rows.start == 0 && self.rows.end == rows)
    }
}

/// Split `batches × rows` into chunks whose bindings each fit `limit` bytes, with binding
/// offsets aligned down to `align` bytes. Returns at least one chunk when both counts are
/// positive and no chunk when either is zero.
pub fn plan(
    batches: usize,
    rows: usize,
    operands: &[Operand],
    limit: u64,
    align: u64,
) -> Result<Vec<Chunk>, Overflow> {
    if batches == 0 || rows == 0 {
        return Ok(Vec::new());
    }
    let whole = Chunk {
        batches: 0..batches,
        rows: 0..rows,
    };
    // Everything in one dispatch, bound at offset 0: no alignment slack.
    if operands.iter().all(|o| whole.range(o, rows).1 <= limit) {
        return Ok(vec![whole]);
    }
    // A sub-range starts at a multiple of 4 bytes and is bound from the aligned offset
    // below it, which can add up to `align - 4` bytes.
    let room = limit.saturating_sub(align.max(4) - 4);
    let item_bytes = |o: &Operand| o.item_bytes;

    // Groups of whole batch items.
    if operands.iter().all(|o| item_bytes(o) <= room) {
        let per = operands
            .iter()
            .filter(|o| o.batched && o.item_bytes > 0)
            .map(|o| (room / o.item_bytes) as usize)
            .min()
            .unwrap_or(batches)
            .clamp(1, batches);
        return Ok((0..batches)
            .step_by(per)
            .map(|b| Chunk {
                batches: b..(b + per).min(batches),
                rows: 0..rows,
            })
            .collect());
    }

    // One batch item at a time, split over rows. Operands without rows must fit whole.
    let mut per_rows = rows;
    for (i, o) in operands.iter().enumerate() {
        match o.row_bytes {
            Some(rb) if rb > 0 => {
                let r = (room / rb) as usize;
                if r == 0 {
                    return Err(Overflow {
                        operand: i,
                        needed: rb + (align.max(4) - 4),
                    });
                }
                per_rows = per_rows.min(r);
            }
            _ => {
                if o.item_bytes > room {
                    return Err(Overflow {
                        operand: i,
                        needed: o.item_bytes + (align.max(4) - 4),
                    });
                }
            }
        }
    }
    let mut chunks = Vec::new();
    for b in 0..batches {
        for r in (0..rows).step_by(per_rows) {
            chunks.push(Chunk {
                batches: b..b + 1,
                rows: r..(r + per_rows).min(rows),
            });
        }
    }
    Ok(chunks)
}

/// The binding limit an op plans with: the adapter's `maxStorageBufferBindingSize`, an
/// optional lower cap (tests force chunking with it), and at most 2^32 bytes so that every
/// element index inside a binding fits the shaders' u32 arithmetic.
pub fn binding_limit(max_binding: u64, cap: Option<u64>) -> u64 {
    max_binding.min(cap.unwrap_or(u64::MAX)).min(1 << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_op(name: &'static str, rows: u64, row: u64) -> Operand {
        Operand {
            name,
            item_bytes: rows * row,
            batched: true,
            row_bytes: Some(row),
        }
    }

    #[test]
    fn everything_fits_in_one_chunk() {
        let ops = [rows_op("a", 10, 40)];
        let c = plan(3, 10, &ops, 1200, 256).unwrap();
        assert_eq!(
            c,
            vec![Chunk {
                batches: 0..3,
                rows: 0..10
            }]
        );
    }

    #[test]
    fn zero_work_means_no_chunks() {
        assert!(plan(0, 5, &[rows_op("a", 5, 4)], 16, 4).unwrap().is_empty());
    }

    #[test]
    fn alignment_slack_is_reserved() {
        let ops = [rows_op("a", 10, 40)]; // 400 bytes an item
                                          // room = 1000 - 252 = 748: one item per chunk although two would fit unaligned.
        let c = plan(3, 10, &ops, 1000, 256).unwrap();
        assert_eq!(c.len(), 3);
        for ch in &c {
            let b = ch.binding(&ops[0], 10, 256);
            assert_eq!(b.offset % 256, 0);
            assert!(b.size <= 1000);
            assert_eq!(b.offset + 4 * b.skip as u64, ch.batches.start as u64 * 400);
        }
    }
}
