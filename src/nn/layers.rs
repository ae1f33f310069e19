//! Basic layers: `nn.Linear`, `nn.Conv2d`, `nn.GroupNorm`, `nn.LayerNorm`, `nn.Embedding`.

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::ops::{Conv2d as Conv2dOp, GroupNorm as GroupNormOp, LayerNorm as LayerNormOp, Matmul};
use crate::tensor::Tensor;
use crate::weights::{pack_f16, round_f16, Dtype, Stored, Weights};

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
/// backends agree. A weight the browser loader already put on the GPU is used as it is
/// (packed or not, as the loader chose with the same rule).
pub(crate) fn take_weight(
    exec: &mut Exec,
    w: &mut Weights,
    name: &str,
    shape: &[usize],
) -> Result<(Tensor, bool)> {
    match w.take_stored(name, shape)? {
        Stored::Device { tensor, packed, .. } => {
            let n = tensor.numel() as u64;
            w.add_device_bytes(if packed { n.div_ceil(2) * 4 } else { n * 4 });
            Ok((tensor, packed))
        }
        Stored::Host(t) => {
            if !w.weight_dtype().packs(t.dtype(), true) {
                let host = t.into_tensor()?;
                w.add_device_bytes(host.byte_len());
                return Ok((exec.upload(&host)?, false));
            }
            if let Some(ctx) = exec.gpu_context().cloned() {
                let words = t.to_f16_words()?;
                let buf = ctx.upload(name, bytemuck::cast_slice(&words))?;
                w.add_device_bytes(words.len() as u64 * 4);
                return Ok((Tensor::from_gpu(shape.to_vec(), buf), true));
            }
            let host = t.into_tensor()?;
            w.add_device_bytes(host.byte_len());
            let values = host.cpu_data().unwrap_or_default();
            Ok((Tensor::from_vec(shape, round_f16(values))?, true))
        }
    }
}

/// A Linear or Conv2d weight the model assembled on the host from checkpoint tensors
/// (q/k/v stacked, a projection split, constants folded in), stored as the weight storage
/// says: `stored` is the dtype of its sources (f16 only when all of them were), `exact`
/// whether its values are still theirs (stacking and splitting keep them; folding does not).
/// Returns the tensor and whether it is packed f16.
pub(crate) fn place_weight(
    exec: &mut Exec,
    w: &mut Weights,
    name: &str,
    weight: Tensor,
    stored: Dtype,
    exact: bool,
) -> Result<(Tensor, bool)> {
    let Some(values) = weight.cpu_data() else {
        // Already on the GPU as f32 (a loader that uploaded it whole).
        w.add_device_bytes(weight.byte_len());
        return Ok((weight, false));
    };
    if !w.weight_dtype().packs(stored, exact) {
        w.add_device_bytes(weight.byte_len());
        return Ok((exec.upload(&weight)?, false));
    }
    let rounded = round_f16(values);
    if let Some(ctx) = exec.gpu_context().cloned() {
        let words = pack_checked(name, &rounded)?;
        let buf = ctx.upload(name, bytemuck::cast_slice(&words))?;
        w.add_device_bytes(words.len() as u64 * 4);
        return Ok((Tensor::from_gpu(weight.shape().to_vec(), buf), true));
    }
    w.add_device_bytes(weight.byte_len());
    Ok((Tensor::from_vec(weight.shape(), rounded)?, true))
}

/// `values` (already rounded through f16) packed, or an error naming `name` when some are
/// beyond f16's range.
fn pack_checked(name: &str, values: &[f32]) -> Result<Vec<u32>> {
    if let Some((i, x)) = values.iter().enumerate().find(|(_, x)| x.is_infinite()) {
        return Err(Error::invalid(
            "weights",
            format!(
                "weight `{name}` has a value beyond float16's range (±65504) at index {i} ({x}); load it with the weight storage `f32`"
            ),
        ));
    }
    Ok(pack_f16(values))
}

/// The dtype a weight assembled from `parts` counts as stored in: f16 only when every part
/// was.
pub(crate) fn joint_dtype(parts: impl IntoIterator<Item = Dtype>) -> Dtype {
    let mut all_f16 = true;
    for d in parts {
        all_f16 &= d == Dtype::F16;
    }
    if all_f16 {
        Dtype::F16
    } else {
        Dtype::F32
    }
}

/// A bias or other small tensor assembled on the host, uploaded as f32 and counted.
pub(crate) fn place(exec: &mut Exec, w: &mut Weights, t: &Tensor) -> Result<Tensor> {
    w.add_device_bytes(t.byte_len());
    exec.upload(t)
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

    /// A layer from a weight already placed ([`take_weight`] or [`place_weight`]: the
    /// tensor and whether it is packed f16) and a host bias, which is uploaded.
    pub(crate) fn from_parts(
        exec: &mut Exec,
        w: &mut Weights,
        (weight, packed): (Tensor, bool),
        bias: Option<Tensor>,
    ) -> Result<Self> {
        let bias = bias.map(|b| place(exec, w, &b)).transpose()?;
        Ok(Self {
            weight,
            bias,
            packed,
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

    /// A 1×1 convolution from a weight already placed ([`take_weight`] or [`place_weight`]:
    /// (Cout, Cin, 1, 1) and whether it is packed f16) and a host bias (Cout).
    pub(crate) fn pointwise_from(
        exec: &mut Exec,
        w: &mut Weights,
        (weight, packed): (Tensor, bool),
        bias: Tensor,
    ) -> Result<Self> {
        Ok(Self {
            op: Conv2dOp::new(1, 0).with_bias().with_packed_weight(packed),
            weight,
            bias: place(exec, w, &bias)?,
        })
    }

    /// A 1×1 convolution with f32 weights not from a checkpoint (a fixed projection).
    pub(crate) fn pointwise_f32(exec: &mut Exec, weight: Tensor, bias: Tensor) -> Result<Self> {
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
