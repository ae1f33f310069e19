//! UNet variants wired from diffusers `config.json` (the configs live in [`config`]).

pub mod config;
