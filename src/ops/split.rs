//! Splitting an op's work along an outer axis so that every storage binding stays within
//! `maxStorageBufferBindingSize`: each part binds a sub-range of each buffer at an offset
//! that is a multiple of `minStorageBufferOffsetAlignment`.
//!
//! Ops whose work is independent per outer unit (a normalisation row, an image plane, a
//! concat slab) describe each buffer by its bytes per unit; `outer_ranges` returns the unit
//! ranges, one dispatch (or dispatch sequence) each. In the common case that is one range.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::{BufferSlice, GpuContext};

/// Split `units` outer units into ranges such that, for every buffer with `unit_bytes[b]`
/// bytes per unit, a range binds at most `max_binding` bytes and starts at a byte offset
/// that is a multiple of `align`.
pub(crate) fn outer_ranges(
    op: &'static str,
    units: usize,
    unit_bytes: &[u64],
    max_binding: u64,
    align: u64,
) -> Result<Vec<Range<usize>>> {
    let widest = unit_bytes.iter().copied().max().unwrap_or(0);
    if units == 0 || widest == 0 || units as u64 * widest <= max_binding {
        return Ok(std::iter::once(0..units).collect());
    }
    // Range starts must be multiples of `step` units so that every buffer's offset is
    // aligned: the least common multiple over buffers of align / gcd(bytes, align).
    let align = align.max(1);
    let step = unit_bytes
        .iter()
        .filter(|&&b| b > 0)
        .map(|&b| align / gcd(b, align))
        .fold(1u64, lcm);
    let per = (max_binding / widest) / step * step;
    if per == 0 {
        return Err(Error::Limit {
            op,
            what: format!(
                "binding {step} unit(s) of {widest} bytes (the smallest aligned part of the work)"
            ),
            limit: "maxStorageBufferBindingSize",
            value: max_binding,
            needed: step * widest,
            hint: "use a smaller resolution or channel count, or an adapter with larger bindings",
        });
    }
    let per = per as usize;
    Ok((0..units)
        .step_by(per)
        .map(|s| s..(s + per).min(units))
        .collect())
}

/// `outer_ranges` with the context's limits.
pub(crate) fn ranges_for(
    ctx: &GpuContext,
    op: &'static str,
    units: usize,
    unit_bytes: &[u64],
) -> Result<Vec<Range<usize>>> {
    outer_ranges(
        op,
        units,
        unit_bytes,
        ctx.caps.max_binding(),
        ctx.caps.limits.min_storage_buffer_offset_alignment as u64,
    )
}

/// The bytes of `buffer` holding units `r` of `unit_bytes` each. Always an explicit size:
/// a pooled buffer can be larger than its tensor, and binding the tail could exceed the
/// binding limit for nothing.
pub(crate) fn slice<'a>(
    buffer: &'a wgpu::Buffer,
    r: &Range<usize>,
    unit_bytes: u64,
) -> BufferSlice<'a> {
    BufferSlice {
        buffer,
        offset: r.start as u64 * unit_bytes,
        size: Some(((r.end - r.start) as u64 * unit_bytes).max(4)),
    }
}

/// `bytes` (at least 4) from the start of `buffer`.
pub(crate) fn head(buffer: &wgpu::Buffer, bytes: u64) -> BufferSlice<'_> {
    BufferSlice {
        buffer,
        offset: 0,
        size: Some(bytes.max(4)),
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::outer_ranges;

    #[test]
    fn one_range_when_everything_fits() {
        let r = outer_ranges("t", 10, &[400, 1600], 16_000, 256).unwrap();
        assert_eq!(r, vec![0..10]);
    }

    #[test]
    fn ranges_are_aligned_and_within_the_limit() {
        // 1326 floats per row: 5304 bytes, gcd with 256 is 8 → starts every 32 rows.
        for (units, bytes, max) in [
            (1000usize, vec![5304u64], 1u64 << 20),
            (200, vec![884, 3536], 300_000),
            (5, vec![256], 600),
            (200, vec![12, 36], 4000),
        ] {
            let r = outer_ranges("t", units, &bytes, max, 256).unwrap();
            assert_eq!(r.first().unwrap().start, 0);
            assert_eq!(r.last().unwrap().end, units);
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            for part in &r {
                for &b in &bytes {
                    assert_eq!(part.start as u64 * b % 256, 0, "{part:?} x {b}");
                    assert!((part.end - part.start) as u64 * b <= max);
                }
            }
            assert!(r.len() > 1);
        }
    }

    #[test]
    fn too_large_a_unit_is_a_limit_error() {
        let e = outer_ranges("norm", 4, &[1 << 20], 1 << 19, 256).unwrap_err();
        assert!(e.to_string().contains("maxStorageBufferBindingSize"), "{e}");
        assert!(e.to_string().starts_with("norm:"), "{e}");
    }
}
