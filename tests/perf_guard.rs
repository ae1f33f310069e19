//! A performance regression guard that is not a timing test: for the bundled model it
//! counts, per sampling step after warm-up, the GPU dispatches, the queue submits, the
//! bytes of buffers newly allocated and the bind groups and uniform buffers created, and
//! holds them to fixed numbers (a warm step only writes its uniforms: zero new objects). A change that adds a
//! dispatch or an allocation to every step fails here with the numbers before and after;
//! if the change is intended (a new kernel that replaces two, a fused op), update the
//! expected counts below and say why in the commit.

use std::sync::Arc;

use webdiffusion::exec::Exec;
use webdiffusion::models::UNet;
use webdiffusion::platform::block_on;
use webdiffusion::sampling::solvers::{
    initial_noise, solver_from_name, Noise, Solver, SolverOptions, StepContext,
};
use webdiffusion::{bundled, GpuContext, GpuOptions};

/// Ops of one bundled-UNet forward at batch 1, and how many of them are compute
/// dispatches (the rest are buffer copies: concatenations of skip connections).
const UNET_FORWARD_OPS: usize = 137;
const UNET_FORWARD_DISPATCHES: usize = 129;

/// (solver, the solver's own dispatches per step besides the UNet forward).
const EXPECTED: &[(&str, usize)] = &[("dpmpp_2m", 4), ("ddim", 4)];

/// Steps run before counting: the first steps of a multistep solver fill its history, the
/// pool its free lists and the recorder its bind-group cache (measured: dpmpp_2m allocates
/// 4 KiB in steps 1 and 2 for its history, nothing from step 3 on; the latent and the
/// solver history rotate through a few buffers, so the last new bind groups appear when
/// each rotation has come round once: measured 124, 42, 5, 2, 2, 2, 1 new bind groups in
/// steps 0 to 6, none from step 7 on). The schedule has one step more than is run, as
/// multistep solvers' last step (lower order) binds different buffers.
const WARMUP: usize = 7;
const COUNTED: usize = 3;

/// Per-step bytes the context's upload path may allocate: none, since the UNet's timestep
/// and class labels travel in the step's data block (`Exec::tensor_staged`) instead of a
/// new buffer each forward (they took 512 bytes a step before).
const UPLOAD_BYTES_PER_STEP: u64 = 0;

fn gpu() -> Option<Arc<GpuContext>> {
    match block_on(GpuContext::new(&GpuOptions::default())) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("WEBDIFFUSION_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("WEBDIFFUSION_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("skipping GPU counts: {e}");
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StepCounts {
    ops: usize,
    dispatches: usize,
    submits: usize,
    /// Bytes of new buffers from the executor's pool (op outputs).
    pool_bytes: u64,
    /// Bytes of new buffers from the context's upload path.
    upload_bytes: u64,
    /// Bind groups created (the recorder's cache missed).
    bind_groups: u64,
    /// Uniform/data buffers created by the recorder.
    data_buffers: u64,
}

fn snapshot(exec: &Exec) -> StepCounts {
    StepCounts {
        ops: exec.ops_run(),
        dispatches: exec.dispatches(),
        submits: exec.submits(),
        pool_bytes: exec.pool_stats().map_or(0, |s| s.created_bytes),
        upload_bytes: exec
            .gpu_context()
            .map_or(0, |c| c.pool.stats().created_bytes),
        bind_groups: exec.record_stats().bind_groups_created,
        data_buffers: exec.record_stats().data_buffers_created,
    }
}

fn delta(a: StepCounts, b: StepCounts) -> StepCounts {
    StepCounts {
        ops: b.ops - a.ops,
        dispatches: b.dispatches - a.dispatches,
        submits: b.submits - a.submits,
        pool_bytes: b.pool_bytes - a.pool_bytes,
        upload_bytes: b.upload_bytes - a.upload_bytes,
        bind_groups: b.bind_groups - a.bind_groups,
        data_buffers: b.data_buffers - a.data_buffers,
    }
}

/// Counts of each step after the warm-up, stepping as `sample()` does (one submit a step).
fn count_steps(exec: &mut Exec, unet: &mut UNet, solver: &str) -> Vec<StepCounts> {
    let sched = bundled::scheduler_config().expect("bundled scheduler config");
    let mut s: Box<dyn Solver> = solver_from_name(
        solver,
        &sched,
        WARMUP + COUNTED + 1,
        SolverOptions::default(),
    )
    .expect("solver");
    let mut x = initial_noise(exec, s.as_ref(), &[1, 1, 32, 32], 3).expect("noise");
    let mut noise = Noise::Philox { seed: 3 };
    let mut counts = Vec::new();
    for i in 0..WARMUP + COUNTED {
        let before = snapshot(exec);
        let out = {
            let mut ctx = StepContext {
                exec,
                noise: &mut noise,
                step: i as u32,
            };
            s.step(&mut ctx, unet, i, &x).expect("step")
        };
        x = out.prev_sample;
        drop(out.x0);
        exec.submit().expect("submit");
        if i >= WARMUP {
            counts.push(delta(before, snapshot(exec)));
        }
    }
    let v = block_on(exec.read(&x)).expect("read");
    assert!(
        v.iter().all(|a| a.is_finite()),
        "{solver}: non-finite sample"
    );
    counts
}

#[test]
fn gpu_step_counts_are_fixed() {
    let Some(ctx) = gpu() else { return };
    let mut exec = Exec::gpu(ctx);
    let mut unet = bundled::load(&mut exec)
        .expect("bundled model")
        .into_inner();
    unet.set_class_labels(Some(vec![3]));
    for &(solver, own) in EXPECTED {
        let (ops, dispatches) = (UNET_FORWARD_OPS + own, UNET_FORWARD_DISPATCHES + own);
        let counts = count_steps(&mut exec, &mut unet, solver);
        for (k, c) in counts.iter().enumerate() {
            eprintln!("{solver}, step {}: {c:?}", WARMUP + k);
        }
        for (k, c) in counts.iter().enumerate() {
            let step = WARMUP + k;
            let msg = |what: &str, expected: String| {
                format!(
                    "{solver}, step {step} (after {WARMUP} warm-up steps): {what}: expected \
                     {expected}, got {c:?}. A change added work to every sampling step; if \
                     that is intended, update tests/perf_guard.rs and say why."
                )
            };
            assert_eq!(c.ops, ops, "{}", msg("ops per step", ops.to_string()));
            assert_eq!(
                c.dispatches,
                dispatches,
                "{}",
                msg("compute dispatches per step", dispatches.to_string())
            );
            assert_eq!(c.submits, 1, "{}", msg("submits per step", "1".into()));
            assert_eq!(
                c.pool_bytes,
                0,
                "{}",
                msg("new op-output buffer bytes per step", "0".into())
            );
            assert_eq!(
                c.bind_groups,
                0,
                "{}",
                msg("bind groups created per step", "0".into())
            );
            assert_eq!(
                c.data_buffers,
                0,
                "{}",
                msg("uniform buffers created per step", "0".into())
            );
            assert_eq!(
                c.upload_bytes,
                UPLOAD_BYTES_PER_STEP,
                "{}",
                msg(
                    "new upload buffer bytes per step",
                    UPLOAD_BYTES_PER_STEP.to_string()
                )
            );
        }
    }
}

/// The op count holds on the CPU reference too (each op there is the same command the GPU
/// would record), so a machine without an adapter still guards it.
#[test]
fn cpu_step_op_count_is_fixed() {
    let mut exec = Exec::cpu();
    let mut unet = bundled::load(&mut exec)
        .expect("bundled model")
        .into_inner();
    unet.set_class_labels(Some(vec![3]));
    let sched = bundled::scheduler_config().expect("bundled scheduler config");
    let (solver, own) = EXPECTED[1];
    let mut s = solver_from_name(solver, &sched, 2, SolverOptions::default()).expect("solver");
    let x = initial_noise(&mut exec, s.as_ref(), &[1, 1, 32, 32], 3).expect("noise");
    let mut noise = Noise::Philox { seed: 3 };
    let before = exec.ops_run();
    let mut ctx = StepContext {
        exec: &mut exec,
        noise: &mut noise,
        step: 0,
    };
    s.step(&mut ctx, &mut unet, 0, &x).expect("step");
    let got = exec.ops_run() - before;
    assert_eq!(
        got,
        UNET_FORWARD_OPS + own,
        "{solver} on the CPU executor: ops per step changed from {} to {got}; if that is \
         intended, update tests/perf_guard.rs and say why",
        UNET_FORWARD_OPS + own
    );
}
