//! Executors and the buffer pool: buffers freed before a submit must not be reused by
//! another executor's recording that is submitted first.

use webdiffusion::ops::{Unary, UnaryOp};
use webdiffusion::platform::block_on;
use webdiffusion::{Exec, Tensor};

use crate::common::{assert_close, gpu, Rng};

#[test]
fn concurrent_executors_do_not_reuse_each_others_pending_buffers() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(77);
    let shape = [3, 8, 33, 35];
    let x = rng.tensor(&shape);
    let want: Vec<f32> = x
        .cpu_data()
        .unwrap()
        .iter()
        .map(|&v| 2.0 * UnaryOp::Silu.apply(UnaryOp::Silu.apply(v)))
        .collect();

    let mut a = Exec::gpu(ctx.clone());
    let mut b = Exec::gpu(ctx.clone());
    // A reads an uploaded tensor and a tensor it produced in an earlier submit, and drops
    // both before its own submit (as a model does with a one-hot label or an activation).
    let xa = a.upload(&x).unwrap();
    let y = a.run(&Unary::new(UnaryOp::Silu), &[&xa]).unwrap();
    a.submit().unwrap();
    let y2 = a.run(&Unary::new(UnaryOp::Silu), &[&y]).unwrap();
    let z = a.run(&Unary::affine(2.0, 0.0), &[&y2]).unwrap();
    drop((xa, y, y2));

    // B fills same-sized outputs with a constant and submits first.
    let xb = b.upload(&x).unwrap();
    let filled: Vec<Tensor> = (0..6)
        .map(|_| b.run(&Unary::affine(0.0, 123.0), &[&xb]).unwrap())
        .collect();
    let first = block_on(b.read(&filled[0])).unwrap();
    assert!(first.iter().all(|&v| v == 123.0));

    let got = block_on(a.read(&z)).unwrap();
    assert_close(
        "A's result after B submitted first",
        &got,
        &want,
        1e-5,
        1e-6,
    );
}

#[test]
fn an_executor_reuses_its_own_freed_buffers() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(78);
    let x = rng.tensor(&[2, 4, 17, 19]);
    let mut ex = Exec::gpu(ctx);
    let xg = ex.upload(&x).unwrap();
    let mut t = ex.run(&Unary::new(UnaryOp::Relu), &[&xg]).unwrap();
    for _ in 0..10 {
        t = ex.run(&Unary::affine(1.0, 0.5), &[&t]).unwrap();
    }
    let got = block_on(ex.read(&t)).unwrap();
    let want: Vec<f32> = x
        .cpu_data()
        .unwrap()
        .iter()
        .map(|&v| v.max(0.0) + 5.0)
        .collect();
    assert_close("chain", &got, &want, 1e-6, 1e-6);
    let stats = ex.pool_stats().unwrap();
    // A chain of 11 ops needs two live buffers at a time: the rest are reuses.
    assert!(stats.created <= 3, "{stats:?}");
    assert!(stats.reused >= 8, "{stats:?}");
}
