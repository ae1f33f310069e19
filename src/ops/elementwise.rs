//! Elementwise ops: unary activations with scale and shift, broadcasting binary ops, and
//! GEGLU (diffusers' gated GELU feed-forward).

use bytemuck::{Pod, Zeroable};

use super::{expect_inputs, grid_1d, GpuArg, Op};
use crate::error::{Error, Result};
use crate::gpu::{BindingLayout, BufferSlice, GpuContext, PipelineKey, Recorder};

pub const SHADER: &str = "elementwise";
pub const BINARY_SHADER: &str = "binary";
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ElementwiseParams {
    pub n: u32,
    pub op: u32,
    pub alpha: f32,
    pub beta: f32,
    pub shape: [u32; 4],
    pub a_strides: [u32; 4],
    pub b_strides: [u32; 4],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Identity = 0,
    Silu = 1,
    Relu = 2,
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))` (PyTorch's default).
    GeluErf = 3,
    /// GELU's tanh approximation (`approximate="tanh"`).
    GeluTanh = 4,
    /// `x · sigmoid(1.702·x)`, OpenAI CLIP's activation (transformers' `quick_gelu`).
    QuickGelu = 5,
    /// `eˣ` (the VAE posterior's standard deviation from its log-variance).
    Exp = 6,
    /// `tanh(x)` (TAESD's soft clamp of its input latents, `3·tanh(x/3)`).
    Tanh = 7,
}

impl UnaryOp {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Identity => x,
            UnaryOp::Silu => x / (1.0 + (-x).exp()),
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::GeluErf => gelu_erf(x),
            UnaryOp::GeluTanh => {
                let x64 = x as f64;
                let u = (2.0f64 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
                (0.5 * x64 * (1.0 + u.tanh())) as f32
            }
            UnaryOp::QuickGelu => {
                let x64 = x as f64;
                (x64 / (1.0 + (-1.702 * x64).exp())) as f32
            }
            UnaryOp::Exp => x.exp(),
            UnaryOp::Tanh => (x as f64).tanh() as f32,
        }
    }
}

pub(crate) fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

/// `out = alpha · f(x) + beta`.
#[derive(Clone, Copy, Debug)]
pub struct Unary {
    pub op: UnaryOp,
    pub alpha: f32,
    pub beta: f32,
}

impl Unary {
    pub fn new(op: UnaryOp) -> Self {
        Self {
            op,
            alpha: 1.0,
            beta: 0.0,
        }
    }
    /// `alpha · x + beta`.
    pub fn affine(alpha: f32, beta: f32) -> Self {
        Self {
            op: UnaryOp::Identity,
            alpha,
            beta,
        }
    }
}

fn record_1d(
    ctx: &GpuContext,
    rec: &mut Recorder,
    shader: &'static str,
    entry: &'static str,
    params: ElementwiseParams,
    inputs: &[&wgpu::Buffer],
    out: &wgpu::Buffer,
) -> Result<()> {
    let layout = BindingLayout {
        inputs: inputs.len() as u32,
        outputs: 1,
    };
    let pipeline = ctx.pipeline(
        &PipelineKey::new(shader, entry).with("WG", WG as f64),
        layout,
    )?;
    let ins: Vec<_> = inputs.iter().map(|b| BufferSlice::whole(b)).collect();
    rec.dispatch(
        ctx,
        &pipeline,
        bytemuck::bytes_of(&params),
        &ins,
        &[BufferSlice::whole(out)],
        grid_1d(ctx, params.n as usize, WG),
    )
}

impl Op for Unary {
    fn name(&self) -> &'static str {
        "unary"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        expect_inputs(self.name(), inputs, 1)?;
        check_u32(self.name(), inputs[0])?;
        Ok(inputs[0].to_vec())
    }
    fn cpu(&self, _shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(inputs[0]) {
            *o = self.alpha * self.op.apply(x) + self.beta;
        }
    }
    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &[GpuArg<'_>],
        out: &GpuArg<'_>,
    ) -> Result<()> {
        let params = ElementwiseParams {
            n: super::super::tensor::numel(out.shape) as u32,
            op: self.op as u32,
            alpha: self.alpha,
            beta: self.beta,
            ..Default::default()
        };
        record_1d(
            ctx,
            rec,
            SHADER,
            "unary",
            params,
            &[inputs[0].buffer],
            out.buffer,
        )
    }
}

/// `x (..., 2·f) -> x[..., :f] · gelu(x[..., f:])`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Geglu;

impl Op for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        expect_inputs(self.name(), inputs, 1)?;
        let s = inputs[0];
        match s.last() {
            Some(&last) if last % 2 == 0 && last > 0 => {
                check_u32(self.name(), s)?;
                let mut o = s.to_vec();
                *o.last_mut().unwrap() = last / 2;
                Ok(o)
            }
            _ => Err(Error::shape(
                self.name(),
                "input",
                "(..., 2·features) with an even last dimension",
                s,
            )),
        }
    }
    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let f = shapes[0].last().copied().unwrap_or(0) / 2;
        if f == 0 {
            return;
        }
        for (row, o) in inputs[0].chunks(2 * f).zip(out.chunks_mut(f)) {
            for j in 0..f {
                o[j] = row[j] * gelu_erf(row[f + j]);
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
        let f = *out.shape.last().unwrap_or(&1) as u32;
        let params = ElementwiseParams {
            n: super::super::tensor::numel(out.shape) as u32,
            shape: [1, 1, 1, f],
            ..Default::default()
        };
        record_1d(
            ctx,
            rec,
            SHADER,
            "geglu",
            params,
            &[inputs[0].buffer],
            out.buffer,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + alpha·b`
    Add = 0,
    Mul = 1,
    Div = 2,
    Max = 3,
}

/// `a (op) b` with NumPy broadcasting over at most 4 dimensions.
#[derive(Clone, Copy, Debug)]
pub struct Binary {
    pub op: BinaryOp,
    /// Scale of `b` for `Add` (so `Sub` is `alpha = -1`).
    pub alpha: f32,
}

impl Binary {
    pub fn new(op: BinaryOp) -> Self {
        Self { op, alpha: 1.0 }
    }
    pub fn sub() -> Self {
        Self {
            op: BinaryOp::Add,
            alpha: -1.0,
        }
    }
}

/// Two shapes broadcast together: the rank-4 (left-padded) output shape, the element
/// strides of each operand over it (0 on broadcast dimensions), and the unpadded shape.
struct Broadcast {
    shape: [usize; 4],
    a_strides: [usize; 4],
    b_strides: [usize; 4],
    out: Vec<usize>,
}

/// Broadcast two shapes by NumPy's rules (rank at most 4).
fn broadcast(op: &'static str, a: &[usize], b: &[usize]) -> Result<Broadcast> {
    let rank = a.len().max(b.len());
    if rank > 4 {
        return Err(Error::shape(
            op,
            "input",
            "rank at most 4",
            if a.len() > 4 { a } else { b },
        ));
    }
    let pad = |s: &[usize]| {
        let mut p = [1usize; 4];
        p[4 - s.len()..].copy_from_slice(s);
        p
    };
    let (pa, pb) = (pad(a), pad(b));
    let mut shape = [1usize; 4];
    for d in 0..4 {
        shape[d] = match (pa[d], pb[d]) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    "second input",
                    format!("a shape broadcastable with {a:?}"),
                    b,
                ))
            }
        };
    }
    let strides = |p: [usize; 4]| {
        let mut s = [0usize; 4];
        let mut acc = 1;
        for d in (0..4).rev() {
            s[d] = if p[d] == 1 { 0 } else { acc };
            acc *= p[d];
        }
        s
    };
    Ok(Broadcast {
        shape,
        a_strides: strides(pa),
        b_strides: strides(pb),
        out: shape[4 - rank..].to_vec(),
    })
}

impl Op for Binary {
    fn name(&self) -> &'static str {
        "binary"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        expect_inputs(self.name(), inputs, 2)?;
        let out = broadcast(self.name(), inputs[0], inputs[1])?.out;
        check_u32(self.name(), &out)?;
        Ok(out)
    }
    fn cpu(&self, shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
        let Ok(Broadcast {
            shape,
            a_strides: sa,
            b_strides: sb,
            ..
        }) = broadcast(self.name(), shapes[0], shapes[1])
        else {
            return;
        };
        let (a, b) = (inputs[0], inputs[1]);
        let mut i = 0;
        for i0 in 0..shape[0] {
            for i1 in 0..shape[1] {
                for i2 in 0..shape[2] {
                    for i3 in 0..shape[3] {
                        let ia = i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3];
                        let ib = i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3];
                        let (x, y) = (a[ia], b[ib]);
                        out[i] = match self.op {
                            BinaryOp::Add => x + self.alpha * y,
                            BinaryOp::Mul => x * y,
                            BinaryOp::Div => x / y,
                            BinaryOp::Max => x.max(y),
                        };
                        i += 1;
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
        let Broadcast {
            shape,
            a_strides: sa,
            b_strides: sb,
            ..
        } = broadcast(self.name(), inputs[0].shape, inputs[1].shape)?;
        let u = |v: [usize; 4]| v.map(|x| x as u32);
        let params = ElementwiseParams {
            n: super::super::tensor::numel(out.shape) as u32,
            op: self.op as u32,
            alpha: self.alpha,
            beta: 0.0,
            shape: u(shape),
            a_strides: u(sa),
            b_strides: u(sb),
        };
        record_1d(
            ctx,
            rec,
            BINARY_SHADER,
            "binary",
            params,
            &[inputs[0].buffer, inputs[1].buffer],
            out.buffer,
        )
    }
}

/// Element counts are indexed with u32 in WGSL.
pub(crate) fn check_u32(op: &'static str, shape: &[usize]) -> Result<()> {
    let n = super::super::tensor::numel(shape) as u64;
    if n > u32::MAX as u64 {
        return Err(Error::shape(
            op,
            "tensor",
            "fewer than 2^32 elements",
            shape,
        ));
    }
    Ok(())
}
