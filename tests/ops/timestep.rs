//! Sinusoidal timestep embedding: GPU vs CPU (f64 sin/cos of PyTorch's float32 argument),
//! and the CPU reference vs values from numpy mirroring diffusers' float32 code.

use webdiffusion::ops::TimestepEmbedding;
use webdiffusion::{Error, Exec, Tensor};

use crate::common::{assert_close, gpu};
use crate::norms::{check_report, dispatches};

const TIMESTEPS: [f32; 5] = [0.0, 1.0, 999.0, 0.5, 981.25];

fn timesteps() -> Tensor {
    Tensor::from_vec(&[5], TIMESTEPS.to_vec()).unwrap()
}

// Generated with numpy 2.4 in float32, line by line as diffusers' get_timestep_embedding:
//   half = dim // 2
//   exponent = np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32)
//   exponent = exponent / np.float32(half - shift)
//   e = np.exp(exponent)                      # float32
//   e = t[:, None] * e[None, :]               # t float32
//   e = np.concatenate([np.sin(e), np.cos(e)], -1)
//   if flip: e = np.concatenate([e[:, half:], e[:, :half]], -1)
//   if dim % 2: e = np.pad(e, ((0, 0), (0, 1)))
// for t = [0, 1, 999, 0.5, 981.25].
// dim 32, flip_sin_to_cos = False, downscale_freq_shift = 1 (diffusers' defaults):
#[rustfmt::skip]
const DIM32: [[f32; 32]; 5] = [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.841471, 0.51513875, 0.2886959, 0.15782663, 0.08566448, 0.046399217, 0.025116222, 0.013593147, 0.0073563578, 0.0039810594, 0.0021544322, 0.0011659142, 0.0006309573, 0.00034145487, 0.00018478505, 9.999999e-5, 0.5403023, 0.8571068, 0.9574208, 0.9874668, 0.99632406, 0.998923, 0.9996845, 0.9999076, 0.99997294, 0.9999921, 0.9999977, 0.99999934, 0.9999998, 0.99999994, 1.0, 1.0],
        [-0.026460754, 0.27098918, -0.39261892, 0.94936013, -0.7583829, 0.68486977, -0.038987067, 0.84874195, 0.8752161, -0.74162966, 0.83564895, 0.918689, 0.58940846, 0.33453655, 0.1835536, 0.09973391, 0.9996499, 0.9625824, -0.9197012, 0.31418988, -0.6518093, -0.72866553, 0.99923974, 0.5288073, 0.4837321, -0.67080957, -0.54926383, 0.39498156, 0.80783516, 0.94238275, 0.9830097, 0.99501413],
        [0.47942555, 0.26729497, 0.14590949, 0.07916175, 0.042871658, 0.023205858, 0.012559101, 0.0067967307, 0.0036782036, 0.0019905337, 0.0010772167, 0.0005829572, 0.00031547868, 0.00017072744, 9.2392525e-5, 4.9999995e-5, 0.87758255, 0.96361476, 0.9892979, 0.99686176, 0.9990806, 0.9997307, 0.99992114, 0.9999769, 0.99999326, 0.99999803, 0.9999994, 0.9999998, 0.99999994, 1.0, 1.0, 1.0],
        [0.8786809, -0.093288705, -0.9966015, -0.99996126, 0.6143634, 0.9999718, -0.46608174, 0.6977956, 0.8047806, -0.692416, 0.8560374, 0.9103188, 0.58032435, 0.32881883, 0.18032841, 0.097967595, 0.47740957, -0.9956391, -0.08237386, 0.008802694, -0.7890232, 0.0075115887, 0.88474166, 0.7162969, 0.5935724, -0.7214985, -0.5169139, 0.4139079, 0.8143855, 0.94439304, 0.98360646, 0.9951896],
];
// dim 320, flip = True, shift = 0 (UNet2DConditionModel, i.e. SD), columns:
const COLS320: [usize; 9] = [0, 1, 2, 80, 159, 160, 161, 240, 319];
#[rustfmt::skip]
const DIM320: [[f32; 9]; 5] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        [0.5403023, 0.58650374, 0.6284395, 0.99995, 1.0, 0.841471, 0.8099465, 0.009999832, 0.00010592538],
        [0.9996499, 0.8026775, -0.27812076, -0.8444703, 0.99440634, -0.026460754, 0.59641325, -0.53560233, 0.10562207],
        [0.87758255, 0.8906469, 0.90234125, 0.9999875, 1.0, 0.47942555, 0.4546956, 0.0049999785, 5.296269e-5],
        [0.47740957, -0.9170843, 0.38349345, -0.9257731, 0.99460316, 0.8786809, 0.39869335, -0.37807965, 0.10375223],
];
// dim 321, flip = False, shift = 1, columns (320 is the zero pad):
const COLS321: [usize; 7] = [0, 1, 159, 160, 161, 319, 320];
#[rustfmt::skip]
const DIM321: [[f32; 7]; 5] = [
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],
        [0.841471, 0.80974597, 9.999999e-5, 0.5403023, 0.58678055, 1.0, 0.0],
        [-0.026460754, 0.29322132, 0.09973391, 0.9996499, 0.9560446, 0.99501413, 0.0],
        [0.47942555, 0.4545434, 4.9999995e-5, 0.87758255, 0.8907246, 1.0, 0.0],
        [0.8786809, 0.6783244, 0.097967595, 0.47740957, -0.73476255, 0.9951896, 0.0],
];
// np.exp of the dim-320, shift-0 exponents at j = 0, 1, 2, 40, 80, 159:
#[rustfmt::skip]
const FREQS320: [f32; 6] = [1.0, 0.94406086, 0.8912509, 0.099999994, 0.009999999, 0.00010592538];

/// numpy's float32 exp and PyTorch's are each within about one ulp of the true value,
/// not always the same ulp (numpy differs from a correctly rounded exp on 54 of these 160
/// frequencies), and at t ≈ 1000 one ulp of the frequency moves the argument by ~6e-5.
/// So the reference agrees with numpy to 1e-4 at large t; at t ≤ 1 it agrees to 1e-6.
const ATOL_LARGE_T: f32 = 1e-4;

fn check_columns(what: &str, got: &[f32], dim: usize, cols: &[usize], want: &[&[f32]]) {
    for (r, w) in want.iter().enumerate() {
        let g: Vec<f32> = cols.iter().map(|&c| got[r * dim + c]).collect();
        let atol = if TIMESTEPS[r] > 1.0 {
            ATOL_LARGE_T
        } else {
            1e-6
        };
        assert_close(&format!("{what} t={}", TIMESTEPS[r]), &g, w, 0.0, atol);
    }
}

#[test]
fn timestep_reference_matches_numpy_float32() {
    let mut cpu = Exec::cpu();
    let t = timesteps();
    let e = cpu
        .run(&TimestepEmbedding::diffusers(32, false, 1.0), &[&t])
        .unwrap();
    assert_eq!(e.shape(), [5, 32]);
    let all: Vec<usize> = (0..32).collect();
    let want: Vec<&[f32]> = DIM32.iter().map(|r| &r[..]).collect();
    check_columns("dim 32", e.cpu_data().unwrap(), 32, &all, &want);

    let e = cpu
        .run(&TimestepEmbedding::diffusers(320, true, 0.0), &[&t])
        .unwrap();
    let want: Vec<&[f32]> = DIM320.iter().map(|r| &r[..]).collect();
    check_columns("dim 320", e.cpu_data().unwrap(), 320, &COLS320, &want);

    let e = cpu
        .run(&TimestepEmbedding::diffusers(321, false, 1.0), &[&t])
        .unwrap();
    assert_eq!(e.shape(), [5, 321]);
    let want: Vec<&[f32]> = DIM321.iter().map(|r| &r[..]).collect();
    check_columns("dim 321", e.cpu_data().unwrap(), 321, &COLS321, &want);

    // Frequencies within one ulp of numpy's float32 exp.
    let f = TimestepEmbedding::diffusers(320, true, 0.0).frequencies();
    for (&j, &w) in [0usize, 1, 2, 40, 80, 159].iter().zip(&FREQS320) {
        let ulps = (f[j].to_bits() as i64 - w.to_bits() as i64).abs();
        assert!(ulps <= 1, "freq {j}: {} vs numpy {w}", f[j]);
    }

    // guided-diffusion's timestep_embedding is the flip = True, shift = 0 case.
    let gd = cpu
        .run(&TimestepEmbedding::guided_diffusion(320), &[&t])
        .unwrap();
    let sd = cpu
        .run(&TimestepEmbedding::diffusers(320, true, 0.0), &[&t])
        .unwrap();
    assert_eq!(gd.cpu_data(), sd.cpu_data());
}

#[test]
fn timestep_embedding_matches_cpu() {
    let t = timesteps();
    // The shader's Cody–Waite reduction and polynomials against f64 sin/cos of the same
    // float32 argument (arguments up to 999 rad).
    for (dim, flip, shift) in [
        (32, false, 1.0),
        (320, true, 0.0),
        (321, false, 1.0),
        (256, true, 0.0),
        (1, false, 0.0),
        (3, true, 0.0),
    ] {
        check_report(
            &format!("timestep dim {dim} flip {flip} shift {shift}"),
            &TimestepEmbedding::diffusers(dim, flip, shift),
            &[&t],
            0.0,
            1e-6,
        );
    }
    // More than one params table of frequencies (1025 + 1), non-unit scale, another period.
    let mut emb = TimestepEmbedding::diffusers(2051, false, 1.0);
    emb.scale = 2.5;
    emb.max_period = 5000.0;
    check_report("timestep dim 2051 scale 2.5", &emb, &[&t], 0.0, 1e-6);
    if let Some(ctx) = gpu() {
        assert_eq!(dispatches(&ctx, &emb, &[&t]), 2, "1024 + 1 frequencies");
    }
    // Many fractional timesteps, negative ones and large arguments (flow-matching models
    // feed t·1000 as floats; scale 100 takes arguments to ~1e5 rad).
    let many: Vec<f32> = (0..97).map(|i| i as f32 * 10.4237 - 3.7).collect();
    let many = Tensor::from_vec(&[97], many).unwrap();
    check_report(
        "timestep 97 timesteps",
        &TimestepEmbedding::guided_diffusion(128),
        &[&many],
        0.0,
        1e-6,
    );
    let mut big = TimestepEmbedding::guided_diffusion(64);
    big.scale = 100.0;
    check_report("timestep args up to 1e5", &big, &[&many], 0.0, 2e-6);
}

#[test]
fn timestep_rejects_bad_arguments() {
    let mut cpu = Exec::cpu();
    let t2 = Tensor::from_vec(&[1, 5], TIMESTEPS.to_vec()).unwrap();
    let e = cpu
        .run(&TimestepEmbedding::diffusers(32, false, 1.0), &[&t2])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "timestep_embedding",
                ..
            }
        ),
        "{e}"
    );
    let t = timesteps();
    let e = cpu
        .run(&TimestepEmbedding::diffusers(2, false, 1.0), &[&t])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "timestep_embedding",
                ..
            }
        ),
        "{e}"
    );
    let e = cpu
        .run(&TimestepEmbedding::diffusers(0, false, 0.0), &[&t])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "timestep_embedding",
                ..
            }
        ),
        "{e}"
    );
}
