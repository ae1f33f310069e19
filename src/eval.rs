//! Sample-quality measurement for the bundled digit model: the small digit classifier that
//! `scripts/train/train_mnist.py` trains on the real digits, run by this engine (so the
//! numbers measure what the engine produces), and the Fréchet distance between Gaussian fits
//! of its 128 penultimate features (the FID recipe of Heusel et al. 2017, arXiv:1706.08500,
//! with this classifier in place of Inception).

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::nn::{Conv2d, Linear};
use crate::ops::{AvgPool2x, Unary, UnaryOp};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Feature width of [`DigitClassifier::features`].
pub const FEATURES: usize = 128;

/// Three (conv 3×3, ReLU, 2×2 average pool) stages, linear → 128, ReLU (the features),
/// linear 128 → 10 (logits), on (N, 1, 32, 32) in [-1, 1]. The conv widths are read from the
/// weights.
pub struct DigitClassifier {
    convs: [Conv2d; 3],
    /// Channels after the last conv.
    last: usize,
    fc1: Linear,
    fc2: Linear,
}

impl DigitClassifier {
    /// Builds the classifier from `classifier.safetensors` (as PyTorch names it).
    pub fn from_weights(exec: &mut Exec, w: &mut Weights) -> Result<Self> {
        let width = |w: &Weights, name: &str| {
            w.shape(name)
                .and_then(|s| s.first().copied())
                .ok_or_else(|| {
                    Error::invalid(
                        "digit classifier",
                        format!("{} has no tensor {name}", w.source()),
                    )
                })
        };
        let c1 = width(w, "conv1.weight")?;
        let c2 = width(w, "conv2.weight")?;
        let c3 = width(w, "conv3.weight")?;
        let convs = [
            Conv2d::load(exec, w, "conv1", 1, c1, 3, 1, 1)?,
            Conv2d::load(exec, w, "conv2", c1, c2, 3, 1, 1)?,
            Conv2d::load(exec, w, "conv3", c2, c3, 3, 1, 1)?,
        ];
        let fc1 = Linear::load(exec, w, "fc1", c3 * 4 * 4, FEATURES, true)?;
        let fc2 = Linear::load(exec, w, "fc2", FEATURES, 10, true)?;
        w.finish_unused(false)?;
        Ok(Self {
            convs,
            last: c3,
            fc1,
            fc2,
        })
    }

    /// The 128 features (N, 128) of images (N, 1, 32, 32).
    pub fn features(&self, exec: &mut Exec, x: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        if s.len() != 4 || s[1] != 1 || s[2] != 32 || s[3] != 32 {
            return Err(Error::shape(
                "digit classifier",
                "images",
                "(N, 1, 32, 32)",
                s,
            ));
        }
        let relu = Unary::new(UnaryOp::Relu);
        let mut h = x.clone();
        for conv in &self.convs {
            let c = conv.forward(exec, &h)?;
            let r = exec.run(&relu, &[&c])?;
            h = exec.run(&AvgPool2x, &[&r])?;
        }
        let h = h.reshape(&[s[0], self.last * 4 * 4])?;
        let f = self.fc1.forward(exec, &h)?;
        exec.run(&relu, &[&f])
    }

    /// Logits (N, 10) from features (N, 128).
    pub fn logits(&self, exec: &mut Exec, features: &Tensor) -> Result<Tensor> {
        self.fc2.forward(exec, features)
    }
}

/// The held-out real digits (`eval/heldout.safetensors`: `images` uint8 (N, 28, 28),
/// `labels` int64 (N)) as the model sees them: (N, 1, 32, 32) in [-1, 1], padded by 2 with
/// the background, as the training script does; plus the labels.
pub fn heldout_digits(bytes: &[u8]) -> Result<(Tensor, Vec<usize>)> {
    let bad = |what: String| Error::invalid("heldout digits", what);
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let images = st.tensor("images").map_err(|e| bad(e.to_string()))?;
    let labels = st.tensor("labels").map_err(|e| bad(e.to_string()))?;
    if images.dtype() != safetensors::Dtype::U8 || labels.dtype() != safetensors::Dtype::I64 {
        return Err(bad("expected uint8 images and int64 labels".into()));
    }
    let n = images.shape().first().copied().unwrap_or(0);
    if images.shape() != [n, 28, 28] || labels.shape() != [n] {
        return Err(bad(format!(
            "expected images (N, 28, 28) and labels (N), got {:?} and {:?}",
            images.shape(),
            labels.shape()
        )));
    }
    let mut x = vec![-1f32; n * 32 * 32];
    for (i, px) in images.data().chunks(28 * 28).enumerate() {
        for y in 0..28 {
            for xx in 0..28 {
                x[i * 1024 + (y + 2) * 32 + xx + 2] = px[y * 28 + xx] as f32 / 127.5 - 1.0;
            }
        }
    }
    let labels = labels
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
        .collect();
    Ok((Tensor::from_vec(&[n, 1, 32, 32], x)?, labels))
}

/// Index of the largest logit of each row of a (N, 10) host array.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

/// Mean and covariance (unbiased, as numpy's `np.cov`) of `n` rows of `d` features.
pub fn gaussian_fit(rows: &[f32], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if d == 0 || !rows.len().is_multiple_of(d) || rows.len() / d < 2 {
        return Err(Error::invalid(
            "gaussian_fit",
            format!(
                "need at least 2 rows of {d} features, got {} values",
                rows.len()
            ),
        ));
    }
    let n = rows.len() / d;
    let mut mean = vec![0f64; d];
    for r in rows.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0f64; d * d];
    for r in rows.chunks(d) {
        for i in 0..d {
            let di = r[i] as f64 - mean[i];
            for j in i..d {
                cov[i * d + j] += di * (r[j] as f64 - mean[j]);
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    Ok((mean, cov))
}

/// Eigen-decomposition of a symmetric `d × d` matrix by cyclic Jacobi rotations: returns
/// (eigenvalues, eigenvectors as columns of a row-major matrix).
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        let scale: f64 = (0..d).map(|i| a[i * d + i] * a[i * d + i]).sum::<f64>();
        if off <= 1e-30 * scale.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let akp = a[k * d + p];
                    let akq = a[k * d + q];
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let apk = a[p * d + k];
                    let aqk = a[q * d + k];
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let vkp = v[k * d + p];
                    let vkq = v[k * d + q];
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// The symmetric positive semi-definite square root (negative eigenvalues from rounding are
/// clamped to 0).
fn sqrt_psd(a: &[f64], d: usize) -> Vec<f64> {
    let (w, v) = symmetric_eigen(a, d);
    let mut out = vec![0f64; d * d];
    for (k, &wk) in w.iter().enumerate() {
        let s = wk.max(0.0).sqrt();
        for i in 0..d {
            let vik = v[i * d + k] * s;
            for j in 0..d {
                out[i * d + j] += vik * v[j * d + k];
            }
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0f64; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
/// ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½ (the symmetric form of tr √(Σ₁Σ₂)).
pub fn frechet_distance(m1: &[f64], c1: &[f64], m2: &[f64], c2: &[f64]) -> f64 {
    let d = m1.len();
    let mean_term: f64 = m1.iter().zip(m2).map(|(a, b)| (a - b) * (a - b)).sum();
    let s1 = sqrt_psd(c1, d);
    let inner = matmul(&matmul(&s1, c2, d), &s1, d);
    // Symmetrise: rounding leaves inner slightly asymmetric.
    let inner: Vec<f64> = (0..d * d)
        .map(|k| 0.5 * (inner[k] + inner[(k % d) * d + k / d]))
        .collect();
    let (w, _) = symmetric_eigen(&inner, d);
    let tr_sqrt: f64 = w.iter().map(|x| x.max(0.0).sqrt()).sum();
    let tr1: f64 = (0..d).map(|i| c1[i * d + i]).sum();
    let tr2: f64 = (0..d).map(|i| c2[i * d + i]).sum();
    mean_term + tr1 + tr2 - 2.0 * tr_sqrt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_reconstructs_a_symmetric_matrix() {
        let d = 5;
        let mut a = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] = ((i * 7 + j * 3) % 5) as f64 + if i == j { 4.0 } else { 0.0 };
            }
        }
        for i in 0..d {
            for j in 0..i {
                a[i * d + j] = a[j * d + i];
            }
        }
        let (w, v) = symmetric_eigen(&a, d);
        for i in 0..d {
            for j in 0..d {
                let r: f64 = (0..d).map(|k| v[i * d + k] * w[k] * v[j * d + k]).sum();
                assert!(
                    (r - a[i * d + j]).abs() < 1e-10,
                    "({i},{j}): {r} vs {}",
                    a[i * d + j]
                );
            }
        }
    }

    #[test]
    fn frechet_distance_of_known_gaussians() {
        // Diagonal covariances: FD = ‖μ₁−μ₂‖² + Σ (√a − √b)².
        let d = 3;
        let m1 = [0.0, 1.0, 2.0];
        let m2 = [1.0, 1.0, 0.0];
        let (a, b) = ([1.0, 4.0, 9.0], [4.0, 1.0, 9.0]);
        let diag = |v: &[f64; 3]| {
            let mut c = vec![0.0; 9];
            for i in 0..3 {
                c[i * 3 + i] = v[i];
            }
            c
        };
        let fd = frechet_distance(&m1, &diag(&a), &m2, &diag(&b));
        let expect = 1.0 + 4.0 + (1.0f64 - 2.0).powi(2) + (2.0f64 - 1.0).powi(2);
        assert!((fd - expect).abs() < 1e-9, "{fd} vs {expect}");
        assert!(frechet_distance(&m1, &diag(&a), &m1, &diag(&a)).abs() < 1e-9);
        let _ = d;
    }

    #[test]
    fn argmax_and_fit() {
        assert_eq!(argmax_rows(&[0.0, 2.0, 1.0, 5.0, -1.0, 0.0], 3), vec![1, 0]);
        let (m, c) = gaussian_fit(&[1.0, 2.0, 3.0, 6.0], 2).unwrap();
        assert_eq!(m, vec![2.0, 4.0]);
        assert_eq!(c, vec![2.0, 4.0, 4.0, 8.0]);
        assert!(gaussian_fit(&[1.0, 2.0], 2).is_err());
    }
}
