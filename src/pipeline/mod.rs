//! Whole pipelines over several models: Stable Diffusion repositories ([`repo`]), their
//! memory plan ([`plan`]), their configs ([`sd`]) and text-to-image / image-to-image
//! sampling ([`sd_run`]).

pub mod plan;
pub mod repo;
pub mod sd;
pub mod sd_run;

pub use plan::{MemoryPlan, PlanInputs, PlanLimits, VaeTiling};
pub use repo::SdRepo;
pub use sd_run::{Request, SdOutput, SdPipeline, SdStep};
