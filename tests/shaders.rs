//! GPU-free shader checks: every embedded shader validates with naga (the version wgpu
//! uses), and every op's `*Params` struct has the size naga lays out for the WGSL struct
//! bound at `@group(0) @binding(0)`.

use naga::valid::{Capabilities, ValidationFlags, Validator};

fn parse(name: &str) -> naga::Module {
    let src =
        webdiffusion::shaders::source(name).unwrap_or_else(|| panic!("shader {name} not embedded"));
    naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)))
}

#[test]
fn every_shader_validates() {
    let mut n = 0;
    for name in webdiffusion::shaders::names() {
        let module = parse(name);
        assert!(!module.entry_points.is_empty(), "{name}: no entry points");
        // As build.rs: `unpack2x16float` (packed-f16 weights) needs SHADER_FLOAT16_IN_FLOAT32,
        // which every WebGPU adapter grants.
        let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if name.ends_with("_f16") {
            caps |= Capabilities::SHADER_FLOAT16;
        }
        if name.ends_with("_subgroup") {
            caps |= Capabilities::SUBGROUP;
        }
        Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        n += 1;
    }
    assert!(n >= 3, "only {n} shaders embedded");
}

#[test]
fn params_structs_match_wgsl_layout() {
    for (shader, rust_size) in webdiffusion::ops::param_layouts() {
        let module = parse(shader);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let (_, var) = module
            .global_variables
            .iter()
            .find(|(_, v)| {
                v.binding
                    .as_ref()
                    .is_some_and(|b| b.group == 0 && b.binding == 0)
            })
            .unwrap_or_else(|| panic!("{shader}: no @group(0) @binding(0)"));
        assert_eq!(
            var.space,
            naga::AddressSpace::Uniform,
            "{shader}: binding 0 must be the uniform params"
        );
        let wgsl_size = layouter[var.ty].size as usize;
        assert_eq!(
            rust_size, wgsl_size,
            "{shader}: Rust params are {rust_size} bytes, WGSL struct is {wgsl_size}"
        );
    }
}
