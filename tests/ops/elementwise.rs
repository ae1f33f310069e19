use webdiffusion::ops::{Binary, BinaryOp, Geglu, Unary, UnaryOp};
use webdiffusion::{Error, Exec};

use crate::common::{check_op, Rng};

#[test]
fn unary_ops_match_cpu() {
    let mut rng = Rng::new(1);
    // 67·131·45 = 394,965 elements: not a multiple of the 256-wide workgroup.
    let mut x = rng.tensor(&[67, 131, 45]);
    x = x.reshape(&[67, 131, 45]).unwrap();
    let scaled: Vec<f32> = x.cpu_data().unwrap().iter().map(|v| v * 8.0).collect();
    let x = webdiffusion::Tensor::from_vec(&[67, 131, 45], scaled).unwrap();
    for op in [
        UnaryOp::Identity,
        UnaryOp::Silu,
        UnaryOp::Relu,
        UnaryOp::GeluErf,
        UnaryOp::GeluTanh,
        UnaryOp::QuickGelu,
        UnaryOp::Tanh,
    ] {
        let u = Unary {
            op,
            alpha: 1.5,
            beta: -0.25,
        };
        check_op(&format!("unary {op:?}"), &u, &[&x], 1e-5, 2e-6);
    }
    // Exp over [-2, 2]: WGSL allows exp an error growing with |x|, so keep arguments small.
    let small: Vec<f32> = x.cpu_data().unwrap().iter().map(|v| v / 4.0).collect();
    let small = webdiffusion::Tensor::from_vec(&[67, 131, 45], small).unwrap();
    let u = Unary {
        op: UnaryOp::Exp,
        alpha: 0.5,
        beta: 0.0,
    };
    check_op("unary Exp", &u, &[&small], 1e-5, 2e-6);
    assert!((UnaryOp::Exp.apply(1.0) - std::f32::consts::E).abs() < 1e-6);
}

#[test]
fn gelu_reference_values() {
    // PyTorch: torch.nn.functional.gelu(torch.tensor([-3., -1., 0., 0.5, 2.]))
    let want = [-0.0040496597, -0.15865526, 0.0, 0.34573123, 1.9544997];
    for (x, w) in [-3.0f32, -1.0, 0.0, 0.5, 2.0].iter().zip(want) {
        let g = UnaryOp::GeluErf.apply(*x);
        assert!((g - w).abs() < 1e-7, "gelu({x}) = {g}, want {w}");
    }
    // approximate="tanh": gelu(1.0) = 0.8411920, gelu(-2.0) = -0.04540231
    assert!((UnaryOp::GeluTanh.apply(1.0) - 0.841192).abs() < 1e-6);
    assert!((UnaryOp::GeluTanh.apply(-2.0) + 0.04540231).abs() < 1e-6);
    // torch.tanh(torch.tensor([-20., -1.5, 0.25, 3.])) (float64 printed to f32 precision);
    // -20 is past the shader's ±10 clamp, where tanh is ±1 in f32.
    for (x, w) in [
        (-20.0f32, -1.0f32),
        (-1.5, -0.905_148_24),
        (0.25, 0.244_918_67),
        (3.0, 0.995_054_8),
    ] {
        let g = UnaryOp::Tanh.apply(x);
        assert!((g - w).abs() < 1e-7, "tanh({x}) = {g}, want {w}");
    }
    // transformers' QuickGELUActivation in float64 at -3, 1, 2.5.
    for (x, w) in [
        (-3.0f32, -0.018_071_31_f32),
        (1.0, 0.845_795_8),
        (2.5, 2.465_013_8),
    ] {
        let g = UnaryOp::QuickGelu.apply(x);
        assert!((g - w).abs() < 2e-7, "quick_gelu({x}) = {g}, want {w}");
    }
}

#[test]
fn binary_broadcasting_matches_cpu() {
    let mut rng = Rng::new(2);
    let a = rng.tensor(&[3, 37, 13, 11]);
    for (shape_b, op) in [
        (vec![3, 37, 13, 11], Binary::new(BinaryOp::Add)),
        (vec![3, 37, 1, 1], Binary::new(BinaryOp::Add)), // time embedding onto a feature map
        (vec![37, 1, 1], Binary::sub()),
        (vec![11], Binary::new(BinaryOp::Mul)),
        (vec![1, 37, 13, 1], Binary::new(BinaryOp::Max)),
    ] {
        let b = rng.tensor(&shape_b);
        check_op(
            &format!("binary {:?} with b {shape_b:?}", op.op),
            &op,
            &[&a, &b],
            1e-6,
            1e-6,
        );
    }
    // Broadcasting on the left operand too.
    let a1 = rng.tensor(&[3, 1, 13, 1]);
    let b1 = rng.tensor(&[37, 1, 11]);
    let out = check_op(
        "binary two-sided broadcast",
        &Binary::new(BinaryOp::Add),
        &[&a1, &b1],
        1e-6,
        1e-6,
    );
    assert_eq!(out.len(), 3 * 37 * 13 * 11);
    // Division, with b kept away from zero.
    let d: Vec<f32> = rng.vec(37, 0.5, 2.0);
    let d = webdiffusion::Tensor::from_vec(&[37, 1, 1], d).unwrap();
    check_op(
        "binary div",
        &Binary::new(BinaryOp::Div),
        &[&a, &d],
        1e-6,
        1e-6,
    );
}

#[test]
fn binary_rejects_incompatible_shapes() {
    let mut rng = Rng::new(3);
    let a = rng.tensor(&[2, 3, 4]);
    let b = rng.tensor(&[2, 5, 4]);
    let err = Exec::cpu()
        .run(&Binary::new(BinaryOp::Add), &[&a, &b])
        .unwrap_err();
    assert!(matches!(err, Error::Shape { op: "binary", .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("(2, 5, 4)") && msg.contains("[2, 3, 4]"),
        "{msg}"
    );
}

#[test]
fn geglu_matches_cpu() {
    let mut rng = Rng::new(4);
    let x = rng.tensor(&[5, 77, 2 * 131]);
    check_op("geglu", &Geglu, &[&x], 1e-5, 1e-6);
    let odd = rng.tensor(&[4, 7]);
    assert!(Exec::cpu().run(&Geglu, &[&odd]).is_err());
}
