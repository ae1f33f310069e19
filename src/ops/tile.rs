//! The two pieces of tiled VAE decoding and encoding (diffusers' `AutoencoderKL.tiled_decode`
//! / `tiled_encode`, see [`crate::models::vae`]):
//!
//! - [`Crop2d`]: `x[:, :, top:top + h, left:left + w]` of an (N, C, H, W) tensor — the
//!   overlapping latent (or image) tiles, and each blended tile's kept part.
//! - [`BlendEdge`]: `blend_v(a, b, e)` / `blend_h(a, b, e)`: b with its first `e` rows (or
//!   columns) cross-faded from the last `e` rows (columns) of its upper (left) neighbour a,
//!   `out[t] = a[A − e + t]·(1 − t/e) + b[t]·(t/e)`, `e = min(extent, A, B)`.
//!
//! Both split their dispatches over image planes (N·C) when a binding would exceed the
//! limit (`ops/chunk.rs`).

use bytemuck::{Pod, Zeroable};

use super::chunk::{self, Operand};
use super::{expect_inputs, expect_rank, grid_1d, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, GpuContext, PipelineKey, Recorder};

pub const CROP_SHADER: &str = "tile_crop";
pub const BLEND_SHADER: &str = "tile_blend";
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CropParams {
    pub total: u32,
    pub h: u32,
    pub w: u32,
    pub ho: u32,
    pub wo: u32,
    pub top: u32,
    pub left: u32,
    pub x_off: u32,
    pub out_off: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlendParams {
    pub total: u32,
    pub ha: u32,
    pub wa: u32,
    pub hb: u32,
    pub wb: u32,
    pub e: u32,
    pub cols: u32,
    pub a_off: u32,
    pub b_off: u32,
    pub out_off: u32,
    pub _pad: [u32; 2],
}

/// `x[:, :, top:top + height, left:left + width]` of an (N, C, H, W) tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop2d {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl Crop2d {
    pub fn new(top: usize, left: usize, height: usize, width: usize) -> Self {
        Self {
            top,
            left,
            height,
            width,
        }
    }
}

impl Op for Crop2d {
    fn name(&self) -> &'static str {
        "crop2d"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        expect_inputs(op, inputs, 1)?;
        let x = inputs[0];
        expect_rank(op, "input", x, 4, "(N, C, H, W)")?;
        let fits = |start: usize, len: usize, n: usize| {
            len > 0 && start.checked_add(len).is_some_and(|end| end <= n)
        };
        if x[0] == 0
            || x[1] == 0
            || !fits(self.top, self.height, x[2])
            || !fits(self.left, self.width, x[3])
        {
            return Err(Error::shape(
                op,
                "input",
                format!(
                    "(N, C, H, W) holding rows {}..{} and columns {}..{}",
                    self.top,
                    self.top.saturating_add(self.height),
                    self.left,
                    self.left.saturating_add(self.width)
                ),
                x,
            ));
        }
        let out = vec![x[0], x[1], self.height, self.width];
        super::elementwise::check_u32(op, x)?;
        Ok(out)
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let (h, w) = (shapes[0][2], shapes[0][3]);
        let (ho, wo) = (self.height, self.width);
        for (xp, op) in inputs[0].chunks(h * w).zip(out.chunks_mut(ho * wo)) {
            for (y, row) in op.chunks_mut(wo).enumerate() {
                let s = (self.top + y) * w + self.left;
                row.copy_from_slice(&xp[s..s + wo]);
            }
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let i = inputs[0].shape;
        let (h, w, ho, wo) = (i[2], i[3], self.height, self.width);
        let pipeline = ctx.pipeline(
            &PipelineKey::new(CROP_SHADER, "crop").with("WG", WG as f64),
            BindingLayout {
                inputs: 1,
                outputs: 1,
            },
        )?;
        let xs = Operand::items("x", (h * w) as u64 * 4);
        let ys = Operand::items("out", (ho * wo) as u64 * 4);
        let (max_binding, align) = chunk::limits(ctx);
        for part in chunk::plan(self.name(), i[0] * i[1], 1, &[xs, ys], max_binding, align)? {
            let total = part.batches.len() * ho * wo;
            let (xb, ob) = (part.binding(&xs, 1, align), part.binding(&ys, 1, align));
            let params = CropParams {
                total: total as u32,
                h: h as u32,
                w: w as u32,
                ho: ho as u32,
                wo: wo as u32,
                top: self.top as u32,
                left: self.left as u32,
                x_off: xb.skip,
                out_off: ob.skip,
                _pad: [0; 3],
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[xb.of(inputs[0].buffer)],
                &[ob.of(out.buffer)],
                grid_1d(ctx, total, WG),
            )?;
        }
        Ok(())
    }
}

/// Which edge of `b` [`BlendEdge`] cross-fades.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// The first rows, from the bottom rows of the tile above (`blend_v`).
    Top,
    /// The first columns, from the right columns of the tile to the left (`blend_h`).
    Left,
}

/// Inputs (a, b), both (N, C, ·, ·): b with its `Edge` cross-faded over
/// `min(extent, a's and b's extent along that axis)` rows or columns from a's opposite
/// edge. a and b must agree in N, C and the other axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlendEdge {
    pub edge: Edge,
    pub extent: usize,
}

impl BlendEdge {
    pub fn top(extent: usize) -> Self {
        Self {
            edge: Edge::Top,
            extent,
        }
    }

    pub fn left(extent: usize) -> Self {
        Self {
            edge: Edge::Left,
            extent,
        }
    }

    /// Rows or columns actually blended for a (…, ha, wa) above/left of b (…, hb, wb).
    fn blended(&self, a: &[usize], b: &[usize]) -> usize {
        let axis = match self.edge {
            Edge::Top => 2,
            Edge::Left => 3,
        };
        self.extent.min(a[axis]).min(b[axis])
    }
}

impl Op for BlendEdge {
    fn name(&self) -> &'static str {
        "blend_edge"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        expect_inputs(op, inputs, 2)?;
        let (a, b) = (inputs[0], inputs[1]);
        expect_rank(op, "a", a, 4, "(N, C, H, W)")?;
        expect_rank(op, "b", b, 4, "(N, C, H, W)")?;
        let other = match self.edge {
            Edge::Top => 3,
            Edge::Left => 2,
        };
        if a[0] != b[0] || a[1] != b[1] || a[other] != b[other] || a.contains(&0) {
            return Err(Error::shape(
                op,
                "a",
                format!(
                    "non-empty (N, C, H, W) with N, C and {} equal to b's {:?}",
                    if other == 3 { "W" } else { "H" },
                    b
                ),
                a,
            ));
        }
        super::elementwise::check_u32(op, a)?;
        super::elementwise::check_u32(op, b)?;
        Ok(b.to_vec())
    }

    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let (sa, sb) = (shapes[0], shapes[1]);
        let (ha, wa, hb, wb) = (sa[2], sa[3], sb[2], sb[3]);
        let e = self.blended(sa, sb);
        out.copy_from_slice(inputs[1]);
        for (ap, op) in inputs[0].chunks(ha * wa).zip(out.chunks_mut(hb * wb)) {
            for t in 0..e {
                let s = t as f32 / e as f32;
                let mix = |a: f32, b: f32| a * (1.0 - s) + b * s;
                match self.edge {
                    Edge::Top => {
                        let arow = &ap[(ha - e + t) * wa..(ha - e + t + 1) * wa];
                        for (o, &a) in op[t * wb..(t + 1) * wb].iter_mut().zip(arow) {
                            *o = mix(a, *o);
                        }
                    }
                    Edge::Left => {
                        for y in 0..hb {
                            let o = &mut op[y * wb + t];
                            *o = mix(ap[y * wa + wa - e + t], *o);
                        }
                    }
                }
            }
        }
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let (sa, sb) = (inputs[0].shape, inputs[1].shape);
        let (ha, wa, hb, wb) = (sa[2], sa[3], sb[2], sb[3]);
        let pipeline = ctx.pipeline(
            &PipelineKey::new(BLEND_SHADER, "blend").with("WG", WG as f64),
            BindingLayout {
                inputs: 2,
                outputs: 1,
            },
        )?;
        let aso = Operand::items("a", (ha * wa) as u64 * 4);
        let bso = Operand::items("b", (hb * wb) as u64 * 4);
        let oso = Operand::items("out", (hb * wb) as u64 * 4);
        let (max_binding, align) = chunk::limits(ctx);
        let ops = [aso, bso, oso];
        for part in chunk::plan(self.name(), sb[0] * sb[1], 1, &ops, max_binding, align)? {
            let total = part.batches.len() * hb * wb;
            let [ab, bb, ob] = ops.map(|o| part.binding(&o, 1, align));
            let params = BlendParams {
                total: total as u32,
                ha: ha as u32,
                wa: wa as u32,
                hb: hb as u32,
                wb: wb as u32,
                e: self.blended(sa, sb) as u32,
                cols: (self.edge == Edge::Left) as u32,
                a_off: ab.skip,
                b_off: bb.skip,
                out_off: ob.skip,
                _pad: [0; 2],
            };
            rec.dispatch(
                ctx,
                &pipeline,
                bytemuck::bytes_of(&params),
                &[ab.of(inputs[0].buffer), bb.of(inputs[1].buffer)],
                &[ob.of(out.buffer)],
                grid_1d(ctx, total, WG),
            )?;
        }
        Ok(())
    }
}
