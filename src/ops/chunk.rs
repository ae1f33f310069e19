//! Splitting one op into several dispatches so that no storage binding exceeds
//! `maxStorageBufferBindingSize` (128 MiB on WebGPU's defaults and on lavapipe: a batch of 4
//! SD latents at 64×64 with 320 channels already needs 20 MiB per activation, and an
//! attention's q/k/v at 1024×1024 images several hundred MiB). Every op that can exceed
//! the limit plans with this module.
//!
//! The work of a chunkable op is a grid of `batches × rows`: matmul's batch items × output
//! rows, attention's batch items × query rows; ops that never split one item (a
//! convolution's samples, a normalisation's rows, a resampling's image planes, a
//! concatenation's outer blocks) have one row per item. Each operand is described by how
//! many bytes one batch item occupies and whether a subset of its rows is a contiguous byte
//! range. [`plan`] is a pure function (unit-tested with limits of a few KB) that picks the
//! fewest equal chunks: the whole tensor if everything fits, else groups of whole batch
//! items, else (one batch item at a time) groups of rows. [`Chunk::binding`] then gives each
//! operand's byte range, bound from an offset rounded down to
//! `minStorageBufferOffsetAlignment`; the shader adds the remainder (the binding's `skip`,
//! in elements) back through its params.
//!
//! Why every shader takes a skip rather than the planner choosing aligned chunk starts:
//! matmul and attention need it anyway (their rows are rarely a multiple of the
//! alignment), and `plan` counts the slack a chunk size can really cause, which is none when
//! every start of that size lands on an aligned offset. So it finds any chunk size an
//! aligned-starts planner would, plus the unaligned ones, with a single rule.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::{BufferSlice, GpuContext};

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

impl Operand {
    /// `item_bytes` per batch item, one item after the other, never split within an item.
    pub fn items(name: &'static str, item_bytes: u64) -> Self {
        Self {
            name,
            item_bytes,
            batched: true,
            row_bytes: None,
        }
    }

    /// `bytes` shared by every batch item, always bound whole.
    pub fn shared(name: &'static str, bytes: u64) -> Self {
        Self {
            name,
            item_bytes: bytes,
            batched: false,
            row_bytes: None,
        }
    }
}

/// One dispatch's share of the work: a range of batch items and a range of rows. Either
/// `rows` covers every row, or `batches` holds a single item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub batches: Range<usize>,
    pub rows: Range<usize>,
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

impl Binding {
    /// This byte range of `buffer`. Always an explicit size: a pooled buffer can be larger
    /// than its tensor, and binding the tail could exceed the limit for nothing.
    pub fn of<'a>(&self, buffer: &'a wgpu::Buffer) -> BufferSlice<'a> {
        BufferSlice {
            buffer,
            offset: self.offset,
            size: Some(self.size),
        }
    }
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

    /// Each operand's binding for this chunk as a slice of its buffer (`buffers[i]` holds
    /// `operands[i]`), with its skip.
    pub fn slices<'a>(
        &self,
        operands: &[Operand],
        buffers: &[&'a wgpu::Buffer],
        rows: usize,
        align: u64,
    ) -> Vec<(BufferSlice<'a>, u32)> {
        operands
            .iter()
            .zip(buffers)
            .map(|(o, b)| {
                let bind = self.binding(o, rows, align);
                (bind.of(b), bind.skip)
            })
            .collect()
    }

    /// Whether `op`'s binding for this chunk holds whole batch items, so that a row index
    /// into it is the item's global row rather than the chunk-local one.
    pub fn binds_whole_items(&self, op: &Operand, rows: usize) -> bool {
        op.row_bytes.is_none() || (self.rows.start == 0 && self.rows.end == rows)
    }
}

/// Split `batches × rows` into chunks whose bindings each fit `limit` bytes, with binding
/// offsets aligned down to `align` bytes. Returns at least one chunk when both counts are
/// positive and no chunk when either is zero; `Error::Limit` (for `op`, naming the operand)
/// when one row of one item, or an operand bound whole, does not fit.
pub fn plan(
    op: &'static str,
    batches: usize,
    rows: usize,
    operands: &[Operand],
    limit: u64,
    align: u64,
) -> Result<Vec<Chunk>> {
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
    let align = align.max(1);

    // Groups of whole batch items: chunk `j` of `p` items binds `p` items of each batched
    // operand from byte `j·p·item_bytes`, and shared operands whole from 0.
    let by_items: Vec<Growth> = operands
        .iter()
        .map(|o| {
            if o.batched {
                Growth::from_zero(o.item_bytes, 0)
            } else {
                Growth::fixed(o.item_bytes, 0)
            }
        })
        .collect();
    if let Some(per) = largest(batches, &by_items, limit, align) {
        return Ok((0..batches)
            .step_by(per)
            .map(|b| Chunk {
                batches: b..(b + per).min(batches),
                rows: 0..rows,
            })
            .collect());
    }

    // One batch item at a time, split over rows; operands without rows are bound whole.
    // Item `b` of a batched operand starts at byte `b·item_bytes`.
    let item_step = |o: &Operand| {
        if o.batched && batches > 1 {
            o.item_bytes
        } else {
            0
        }
    };
    let by_rows: Vec<Growth> = operands
        .iter()
        .map(|o| match o.row_bytes {
            Some(rb) => Growth::from_zero(rb, item_step(o)),
            None => Growth::fixed(o.item_bytes, item_step(o)),
        })
        .collect();
    let Some(per) = largest(rows, &by_rows, limit, align) else {
        // Nothing fits, so some operand overflows with a single row: name the first.
        let (name, needed) = operands
            .iter()
            .zip(&by_rows)
            .map(|(o, g)| (o.name, g.need(1, align)))
            .find(|&(_, n)| n > limit)
            .unwrap_or(("?", 0));
        return Err(Error::Limit {
            op,
            what: format!(
                "binding `{name}` for the smallest part the work splits into (with offset-alignment slack)"
            ),
            limit: "maxStorageBufferBindingSize",
            value: limit,
            needed,
            hint: "use a smaller batch or resolution, or an adapter with larger bindings",
        });
    };
    let mut chunks = Vec::new();
    for b in 0..batches {
        for r in (0..rows).step_by(per) {
            chunks.push(Chunk {
                batches: b..b + 1,
                rows: r..(r + per).min(rows),
            });
        }
    }
    Ok(chunks)
}

/// One operand's binding in a chunk of `p` units (items or rows): `fixed + p·unit` bytes
/// whose start is a multiple of `gcd(p·unit, step)` bytes, where `step` is the distance
/// between the starts of the enclosing items (0 when every chunk is inside the first).
#[derive(Debug, Clone, Copy)]
struct Growth {
    fixed: u64,
    unit: u64,
    step: u64,
}

impl Growth {
    fn from_zero(unit: u64, step: u64) -> Self {
        Self {
            fixed: 0,
            unit,
            step,
        }
    }

    fn fixed(bytes: u64, step: u64) -> Self {
        Self {
            fixed: bytes,
            unit: 0,
            step,
        }
    }

    /// Bytes to bind for `p` units, with the most slack that rounding any possible start
    /// down to `align` can add: `align − gcd(p·unit, step, align)`. That is 0 when every
    /// start is aligned, and at most `align − 4` for f32 data.
    fn need(&self, p: u64, align: u64) -> u64 {
        let len = self.fixed + p * self.unit;
        len + align - gcd(gcd(p * self.unit, self.step), align)
    }
}

/// The largest `p ≤ n` for which every operand's binding fits `limit`, if any.
fn largest(n: usize, growth: &[Growth], limit: u64, align: u64) -> Option<usize> {
    let top = growth
        .iter()
        .filter(|g| g.unit > 0)
        .map(|g| limit / g.unit)
        .fold(n as u64, u64::min);
    // A count that leaves `align − 1` bytes for slack fits whenever anything does, and lies
    // at most `align − 1` below `top` (a unit is at least a byte): no need to look lower.
    (1..=top)
        .rev()
        .take(align as usize + 1)
        .find(|&p| growth.iter().all(|g| g.need(p, align) <= limit))
        .map(|p| p as usize)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The adapter's `(maxStorageBufferBindingSize, minStorageBufferOffsetAlignment)`, the
/// `limit` and `align` that `plan` and `Chunk::binding` take.
pub(crate) fn limits(ctx: &GpuContext) -> (u64, u64) {
    (
        ctx.caps.max_binding(),
        ctx.caps.limits.min_storage_buffer_offset_alignment as u64,
    )
}

/// The binding limit matmul and attention plan with: the adapter's
/// `maxStorageBufferBindingSize`, an optional lower cap (tests force chunking with it), and
/// at most 2^32 bytes so that every element index inside a binding fits the shaders' u32
/// arithmetic.
pub fn binding_limit(max_binding: u64, cap: Option<u64>) -> u64 {
    max_binding.min(cap.unwrap_or(u64::MAX)).min(1 << 32)
}

/// 4 bytes of `buffer` for a binding slot the shader never reads (an absent optional input).
pub(crate) fn placeholder(buffer: &wgpu::Buffer) -> BufferSlice<'_> {
    BufferSlice {
        buffer,
        offset: 0,
        size: Some(4),
    }
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

    /// Every (batch, row) covered exactly once, each binding within `limit`, aligned, and
    /// reaching the chunk's data through its skip.
    fn check_plan(chunks: &[Chunk], batches: usize, rows: usize, ops: &[Operand], limit: u64) {
        let mut seen = vec![0u8; batches * rows];
        for c in chunks {
            assert!(c.batches.len() == 1 || c.rows == (0..rows), "{c:?}");
            for b in c.batches.clone() {
                for r in c.rows.clone() {
                    seen[b * rows + r] += 1;
                }
            }
            for o in ops {
                let bind = c.binding(o, rows, 256);
                assert_eq!(bind.offset % 256, 0, "{c:?} {o:?}");
                assert!(bind.size <= limit, "{c:?} {o:?}: {bind:?}");
                let (start, _) = c.range(o, rows);
                assert_eq!(bind.offset + 4 * bind.skip as u64, start, "{c:?} {o:?}");
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "not covered exactly once");
    }

    #[test]
    fn everything_fits_in_one_chunk() {
        let ops = [rows_op("a", 10, 40)];
        let c = plan("t", 3, 10, &ops, 1200, 256).unwrap();
        assert_eq!(
            c,
            vec![Chunk {
                batches: 0..3,
                rows: 0..10
            }]
        );
        // Items of different sizes per operand, no rows (resample planes, concat blocks).
        let ops = [Operand::items("x", 400), Operand::items("out", 1600)];
        assert_eq!(plan("t", 10, 1, &ops, 16_000, 256).unwrap().len(), 1);
    }

    #[test]
    fn zero_work_means_no_chunks() {
        assert!(plan("t", 0, 5, &[rows_op("a", 5, 4)], 16, 4)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn alignment_slack_is_reserved() {
        // 400 bytes an item: two from an unaligned start need 800 + 224 > 1000 bytes, so
        // one item per chunk although two would fit unaligned.
        let ops = [rows_op("a", 10, 40)];
        let c = plan("t", 3, 10, &ops, 1000, 256).unwrap();
        assert_eq!(c.len(), 3);
        check_plan(&c, 3, 10, &ops, 1000);
    }

    #[test]
    fn aligned_starts_need_no_slack() {
        // Items of exactly the limit start on aligned offsets: one per chunk, no slack.
        let ops = [Operand::items("x", 1 << 18), Operand::shared("w", 64)];
        let c = plan("t", 3, 1, &ops, 1 << 18, 256).unwrap();
        assert_eq!(c.len(), 3);
        check_plan(&c, 3, 1, &ops, 1 << 18);
        // 1280-byte rows (a multiple of 256): 204 whole rows in 256 KiB.
        let ops = [Operand::items("x", 1280)];
        let c = plan("t", 700, 1, &ops, 1 << 18, 256).unwrap();
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|c| c.batches.len() <= 204));
    }

    #[test]
    fn item_only_chunks_are_aligned_and_within_the_limit() {
        // Outer units of ops that never split an item: norm rows of 5304 bytes, resample
        // planes in and out, concat blocks.
        for (units, bytes, max) in [
            (1000usize, vec![5304u64], 1u64 << 20),
            (200, vec![884, 3536], 300_000),
            (5, vec![256], 600),
            (200, vec![12, 36], 4000),
        ] {
            let ops: Vec<Operand> = bytes.iter().map(|&b| Operand::items("x", b)).collect();
            let c = plan("t", units, 1, &ops, max, 256).unwrap();
            assert!(c.len() > 1);
            check_plan(&c, units, 1, &ops, max);
        }
    }

    /// Never more chunks than the planners this one replaced: uniform groups with
    /// `align − 4` bytes of slack (matmul, attention, convolutions), and groups starting at
    /// aligned offsets with no shader offset (norms, resampling, concatenation).
    #[test]
    fn never_more_chunks_than_slack_or_aligned_starts() {
        let align = 256u64;
        let gcd = super::gcd;
        for units in [1usize, 2, 3, 7, 64, 700, 4096] {
            for a in [4u64, 128, 384, 1280, 5304, 17_408] {
                for b in [4u64, 256, 884, 3536] {
                    for limit in [1u64 << 14, 1 << 18, 300_000] {
                        let ops = [Operand::items("a", a), Operand::items("b", b)];
                        let Ok(c) = plan("t", units, 1, &ops, limit, align) else {
                            // Then even one item with the least possible slack is too big.
                            assert!(
                                ops.iter().any(
                                    |o| o.item_bytes + align - gcd(o.item_bytes, align) > limit
                                ),
                                "{units} × ({a}, {b}) in {limit}"
                            );
                            continue;
                        };
                        check_plan(&c, units, 1, &ops, limit);
                        if (units as u64) * a.max(b) <= limit {
                            assert_eq!(c.len(), 1);
                            continue;
                        }
                        let slack = ((limit - (align - 4)) / a.max(b)) as usize;
                        if slack > 0 {
                            assert!(c.len() <= units.div_ceil(slack), "{units} {a} {b} {limit}");
                        }
                        let step = [a, b]
                            .iter()
                            .map(|&x| align / gcd(x, align))
                            .fold(1, |l, s| l / gcd(l, s) * s);
                        let aligned = (limit / a.max(b)) / step * step;
                        if aligned > 0 {
                            let n = units.div_ceil(aligned as usize);
                            assert!(c.len() <= n, "{units} {a} {b} {limit}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rows_split_when_an_item_does_not_fit() {
        // Items of 40 rows × 524 bytes (20,960) in 8 KiB, beside a shared 3 KB operand that
        // is bound whole in every chunk.
        let ops = [rows_op("a", 40, 524), Operand::shared("w", 3000)];
        let c = plan("t", 2, 40, &ops, 8192, 256).unwrap();
        check_plan(&c, 2, 40, &ops, 8192);
        // (8192 − 252) / 524 = 15 rows: 3 chunks per item.
        assert_eq!(c.len(), 6, "{c:?}");
    }

    #[test]
    fn too_large_a_unit_is_a_limit_error() {
        let e = plan("norm", 4, 1, &[Operand::items("x", 1 << 20)], 1 << 19, 256).unwrap_err();
        assert!(e.to_string().contains("maxStorageBufferBindingSize"), "{e}");
        assert!(e.to_string().starts_with("norm:"), "{e}");
        assert!(e.to_string().contains("`x`"), "{e}");
        // A shared operand that does not fit names itself, however small the rows.
        let ops = [rows_op("a", 4, 8), Operand::shared("w", 2000)];
        let e = plan("t", 2, 4, &ops, 1024, 256).unwrap_err();
        assert!(
            matches!(&e, Error::Limit { needed: 2000, value: 1024, what, .. } if what.contains("`w`")),
            "{e}"
        );
    }
}
