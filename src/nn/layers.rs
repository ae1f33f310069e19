//! Basic layers: `nn.Linear`, `nn.Conv2d`, `nn.GroupNorm`, `nn.LayerNorm`, `nn.Embedding`.

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::{Conv2d as Conv2dOp, GroupNorm as GroupNormOp, LayerNorm as LayerNormOp, Matmul};
use crate::tensor::Tensor;
use crate::weights::{round_f16, WeightDtype, Weights};

/// Takes `name` with `shape` from the checkpoint and puts it on the executor's backend.
pub(crate) fn take(
    exec: &mut Exec,
    w: &mut Weights,
    name: &str,
    shape: &[usize],
) -> Result<Tensor> {
    let t = w.take(name, shape)?;
    w.add_device_bytes(t.byte_len());
    exec.upload(&t)
}

/// Takes a Linear or Conv2d weight in the storage the checkpoint asks for
/// ([`Weights::weight_dtype`]); the flag says whether it is packed f16 on the GPU (the op
/// must be told). On the CPU a packed weight is f32 values rounded through f16, so the two
/// backends agree.
pub(crate) fn take_weight(
    exec: &mut Exec,
    w: &mut Weights,
    name: &str,
    shape: &[usize],
) -> Result<(Tensor, bool)> {
    if w.weight_dtype() != WeightDtype::F16Packed {
        return Ok((take(exec, w, name, shape)?, false));
    }
    if let Some(ctx) = exec.gpu_context().cloned() {
        let words = w.take_f16_words(name, shape)?;
        let buf = ctx.upload(name, bytemuck::cast_slice(&words))?;
        w.add_device_bytes(words.len() as u64 * 4);
        return Ok((Tensor::from_gpu(shape.to_vec(), buf), true));
    }
    let t = w.take(name, shape)?;
    let values = t.cpu_data().ok_or_else(|| {
        Error::invalid(
            "weights",
            format!("tensor `{name}` is already on the GPU; it cannot be used by the CPU executor"),
        )
    })?;
    w.add_device_bytes(t.byte_len());
    Ok((Tensor::from_vec(shape, round_f16(values))?, true))
}

/// `nn.Linear(in_features, out_features, bias)`: x (…, in) → (…, out); weight `<p>.weight`
/// (out, in), bias `<p>.bias` (out).
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The weight is packed f16 on the GPU.
    packed: bool,
}

impl Linear {
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let (weight, packed) = take_weight(
            exec,
            w,
            &format!("{prefix}.weight"),
            &[out_features, in_features],
        )?;
        let bias = if bias {
            Some(take(exec, w, &format!("{prefix}.bias"), &[out_features])?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            packed,
        })
    }

    /// A layer from host tensors already split or adjusted by the caller.
    pub(crate) fn from_tensors(
        exec: &mut Exec,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        let weight = exec.upload(&weight)?;
        let bias = bias.map(|b| exec.upload(&b)).transpose()?;
        Ok(Self {
            weight,
            bias,
            packed: false,
        })
    }

    pub fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => exec.run(
                &Matmul::linear(true).with_packed_b(self.packed),
                &[x, &self.weight, b],
            ),
            None => exec.run(
                &Matmul::linear(false).with_packed_b(self.packed),
                &[x, &self.weight],
            ),
        }
    }

    /// `linear(x) + residual` in one pass (residual of the output's shape).
    pub fn forward_residual(
        &self,
        exec: &mut Exec,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let op = Matmul::linear(self.bias.is_some())
            .with_residual()
            .with_packed_b(self.packed);
        match &self.bias {
            Some(b) => exec.run(&op, &[x, &self.weight, b, residual]),
            None => exec.run(&op, &[x, &self.weight, residual]),
        }
    }
}

/// `nn.LayerNorm(dim, eps)` over the last dimension, with weight and bias (`<p>.weight`,
/// `<p>.bias`, both (dim)).
pub struct LayerNorm {
    op: LayerNormOp,
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            op: LayerNormOp::new(&[dim], eps as f32),
            weight: take(exec, w, &format!("{prefix}.weight"), &[dim])?,
            bias: take(exec, w, &format!("{prefix}.bias"), &[dim])?,
        })
    }

    pub fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        exec.run(&self.op, &[x, &self.weight, &self.bias])
    }
}

/// `nn.Conv2d(cin, cout, k, stride, padding)` with bias: x (N, Cin, H, W) → (N, Cout, Ho, Wo);
/// weight `<p>.weight` (Cout, Cin, k, k), bias `<p>.bias` (Cout).
pub struct Conv2d {
    op: Conv2dOp,
    weight: Tensor,
    bias: Tensor,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (weight, packed) = take_weight(
            exec,
            w,
            &format!("{prefix}.weight"),
            &[cout, cin, kernel, kernel],
        )?;
        let bias = take(exec, w, &format!("{prefix}.bias"), &[cout])?;
        Ok(Self {
            op: Conv2dOp::new(stride, padding)
                .with_bias()
                .with_packed_weight(packed),
            weight,
            bias,
        })
    }

    /// A 1×1 convolution from host tensors (weight (Cout, Cin, 1, 1), bias (Cout)).
    pub(crate) fn pointwise_from(exec: &mut Exec, weight: Tensor, bias: Tensor) -> Result<Self> {
        Ok(Self {
            op: Conv2dOp::new(1, 0).with_bias(),
            weight: exec.upload(&weight)?,
            bias: exec.upload(&bias)?,
        })
    }

    pub fn forward(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        exec.run(&self.op, &[x, &self.weight, &self.bias])
    }

    /// `conv(x) + residual` in one pass (residual of the output's shape).
    pub fn forward_residual(
        &self,
        exec: &mut Exec,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        exec.run(
            &self.op.with_residual(),
            &[x, &self.weight, &self.bias, residual],
        )
    }

    /// `(conv(x) + residual) · scale` in one pass: a resnet's or attention block's
    /// `(h + skip) / output_scale_factor` without a separate scaling dispatch.
    pub fn forward_residual_scaled(
        &self,
        exec: &mut Exec,
        x: &Tensor,
        residual: &Tensor,
        scale: f32,
    ) -> Result<Tensor> {
        exec.run(
            &self.op.with_residual().with_scale(scale),
            &[x, &self.weight, &self.bias, residual],
        )
    }
}

/// `nn.GroupNorm(groups, channels, eps)` (affine), optionally fused with the SiLU after it.
pub struct GroupNorm {
    op: GroupNormOp,
    weight: Tensor,
    bias: Tensor,
}

impl GroupNorm {
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        channels: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            op: GroupNormOp::new(groups, eps as f32),
            weight: take(exec, w, &format!("{prefix}.weight"), &[channels])?,
            bias: take(exec, w, &format!("{prefix}.bias"), &[channels])?,
        })
    }

    /// `group_norm(x)`, then SiLU when `silu`.
    pub fn forward(&self, exec: &mut Exec, x: &Tensor, silu: bool) -> Result<Tensor> {
        let op = if silu { self.op.with_silu() } else { self.op };
        exec.run(&op, &[x, &self.weight, &self.bias])
    }
}

/// `nn.Embedding(num, dim)`: rows of `<p>.weight` (num, dim) picked by integer labels.
/// The lookup is a one-hot (N, num) × (num, dim) product, built on the host from the labels
/// (user input, so known there), which also lets it add onto another tensor in the same pass.
pub struct Embedding {
    weight: Tensor,
    num: usize,
}

impl Embedding {
    pub fn load(
        exec: &mut Exec,
        w: &mut Weights,
        prefix: &str,
        num: usize,
        dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: take(exec, w, &format!("{prefix}.weight"), &[num, dim])?,
            num,
        })
    }

    /// `weight[labels] + add` (add (N, dim), N = labels.len()).
    pub fn forward_add(&self, exec: &mut Exec, labels: &[usize], add: &Tensor) -> Result<Tensor> {
        let mut one_hot = vec![0f32; labels.len() * self.num];
        for (i, &l) in labels.iter().enumerate() {
            if l >= self.num {
                return Err(Error::invalid(
                    "embedding",
                    format!(
                        "class label {l} is out of range: the model has {} classes (0 to {})",
                        self.num,
                        self.num - 1
                    ),
                ));
            }
            one_hot[i * self.num + l] = 1.0;
        }
        let one_hot = exec.tensor_staged(&[labels.len(), self.num], &one_hot)?;
        exec.run(
            &Matmul::new().with_residual(),
            &[&one_hot, &self.weight, add],
        )
    }
}
