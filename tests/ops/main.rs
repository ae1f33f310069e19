//! Every op on the GPU (lavapipe in CI) against the CPU reference, on shapes that are not
//! multiples of any tile size. One test binary, one module per op family.

mod common;

mod attention;
mod conv;
mod elementwise;
mod exec;
mod gather;
mod layout;
mod matmul;
mod norms;
mod resample;
mod solver_update;
mod threshold;
mod timestep;
