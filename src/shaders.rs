//! WGSL sources embedded at build time. `build.rs` validated every file with naga before
//! this list was written, so a shader here always parses.

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

/// The source of `shaders/<name>.wgsl`.
pub fn source(name: &str) -> Option<&'static str> {
    SHADERS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Names of all embedded shaders.
pub fn names() -> impl Iterator<Item = &'static str> {
    SHADERS.iter().map(|(n, _)| *n)
}
