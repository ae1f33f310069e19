//! Whole pipelines over several models: Stable Diffusion repositories ([`repo`]), their
//! memory plan ([`plan`]) and text-to-image / image-to-image sampling ([`sd`]).

pub mod plan;
pub mod repo;
pub mod sd;

pub use plan::{MemoryPlan, PlanInputs, PlanLimits};
pub use repo::SdRepo;
