//! Solvers (not written yet; see the samplers issue). The plan this module follows:
//!
//! * One file per solver family (`ddim.rs`, `euler.rs`, `dpm_solver.rs`, `unipc.rs`, …),
//!   each citing its paper and equation and mapping variable names to the paper's symbols.
//! * A solver takes a [`super::Schedule`] and [`super::Timesteps`] and yields, per step,
//!   the f64 coefficients of one linear update `x ← a·x + Σ bᵢ·outputᵢ + c·noise` that the
//!   GPU kernel `ops::SolverUpdate` applies; the model output is turned into x₀ or ε with
//!   [`super::PredictionType::x0_coefficients`] / `eps_coefficients`.
//! * Options that are not part of the schedule (`solver_order`, `thresholding`,
//!   `clip_sample`, …) arrive in [`super::SchedulerConfig::other`], exactly as found in
//!   `scheduler_config.json`.
