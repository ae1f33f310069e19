//! Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror & Shaw, "Parallel
//! random numbers: as easy as 1, 2, 3" (SC'11), and the Box–Muller transform that turns its
//! words into Gaussian noise. This CPU version and `shaders/solver_update.wgsl` compute the
//! same integer stream, so a seed gives the same noise natively, in the browser and on the
//! CPU reference backend (the float transform agrees to a few ulps across platforms).
//!
//! Counter layout for element `e` of a tensor at sampling step `step`:
//! `(e / 4, 0, step, stream)` keyed by the 64-bit seed; the four output words give the
//! Gaussians of elements `4·(e/4) .. 4·(e/4)+3` (two Box–Muller pairs).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32 block with 10 rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c0);
        let (hi1, lo1) = mulhilo(M1, c2);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// A 24-bit uniform in (0, 1] (never 0, so its logarithm is finite).
#[inline]
pub fn uniform_open0(x: u32) -> f32 {
    ((x >> 8) as f32 + 1.0) * (1.0 / 16_777_216.0)
}

/// A 24-bit uniform in [0, 1).
#[inline]
pub fn uniform_closed0(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Box–Muller: two independent standard normals from two uniform words.
#[inline]
pub fn box_muller(a: u32, b: u32) -> (f32, f32) {
    let r = (-2.0 * uniform_open0(a).ln()).sqrt();
    // Angle in [-π, π), where GPU sin/cos precision is specified (same as the shader).
    let theta = std::f32::consts::PI * (2.0 * uniform_closed0(b) - 1.0);
    (r * theta.cos(), r * theta.sin())
}

/// The four Gaussians of counter block `block` (elements `4·block ..`).
pub fn gaussian4(seed: u64, step: u32, stream: u32, block: u32) -> [f32; 4] {
    let key = [seed as u32, (seed >> 32) as u32];
    let w = philox4x32_10([block, 0, step, stream], key);
    let (z0, z1) = box_muller(w[0], w[1]);
    let (z2, z3) = box_muller(w[2], w[3]);
    [z0, z1, z2, z3]
}

/// Fill `out` with the noise the GPU gives for the same (seed, step, stream).
pub fn fill_gaussian(seed: u64, step: u32, stream: u32, out: &mut [f32]) {
    for (block, chunk) in out.chunks_mut(4).enumerate() {
        let z = gaussian4(seed, step, stream, block as u32);
        chunk.copy_from_slice(&z[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors published with Random123 (tests/kat_vectors).
    #[test]
    fn random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn gaussian_moments() {
        let mut v = vec![0f32; 1 << 20];
        fill_gaussian(1234, 7, 0, &mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let m3 = v.iter().map(|&x| (x as f64 - mean).powi(3)).sum::<f64>() / n;
        let m4 = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n;
        // Standard errors at n = 2^20: mean 0.001, var 0.0014, skew 0.0024, kurtosis 0.0048.
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.007, "var {var}");
        assert!(m3.abs() < 0.012, "third moment {m3}");
        assert!((m4 - 3.0).abs() < 0.03, "fourth moment {m4}");
    }

    #[test]
    fn streams_differ() {
        let a = gaussian4(1, 0, 0, 0);
        assert_ne!(a, gaussian4(2, 0, 0, 0), "seed");
        assert_ne!(a, gaussian4(1, 1, 0, 0), "step");
        assert_ne!(a, gaussian4(1, 0, 1, 0), "stream");
        assert_ne!(a, gaussian4(1, 0, 0, 1), "block");
    }
}
