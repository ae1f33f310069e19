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

/// The text of WGSL function `name` in `src`: from `fn name(` to the closing brace at the
/// start of a line.
fn wgsl_fn<'a>(src: &'a str, name: &str) -> Option<&'a str> {
    let start = src.find(&format!("\nfn {name}("))? + 1;
    let end = src[start..].find("\n}\n")? + start + 2;
    Some(&src[start..end])
}

/// The native-f16 kernels are their f32 files' register-blocked kernels with only the
/// weight load changed: every other function must stay textually identical, so a fix to
/// one cannot silently miss the other.
#[test]
fn f16_kernels_match_their_f32_twins() {
    for (f32_name, f16_name, load, fns) in [
        (
            "conv2d",
            "conv2d_f16",
            "load_w",
            &["tap", "load_x", "epilogue", "store", "conv2d"][..],
        ),
        ("matmul", "matmul_f16", "load_b", &["store", "matmul"][..]),
    ] {
        let a = webdiffusion::shaders::source(f32_name).unwrap();
        let b = webdiffusion::shaders::source(f16_name).unwrap();
        assert!(b.contains("enable f16;"), "{f16_name}: no `enable f16;`");
        assert!(
            wgsl_fn(b, load).is_some_and(|f| f.contains("f32(") && !f.contains("unpack2x16float")),
            "{f16_name}: {load} must convert f16 natively"
        );
        for f in fns {
            let (x, y) = (wgsl_fn(a, f), wgsl_fn(b, f));
            assert!(x.is_some(), "{f32_name}: fn {f} not found");
            assert_eq!(
                x, y,
                "fn {f} differs between {f32_name}.wgsl and {f16_name}.wgsl"
            );
        }
        // The params struct and the overrides other than the packing flag are the same too.
        let head = |s: &str| -> Vec<String> {
            let st = s.find("\nstruct ").unwrap();
            let end = s[st..].find("\n}\n").unwrap() + st;
            let mut v: Vec<String> = s[st..end].lines().map(str::to_string).collect();
            v.extend(
                s.lines()
                    .filter(|l| l.starts_with("override ") && !l.contains("PACKED_"))
                    .map(str::to_string),
            );
            v
        };
        let (ha, hb) = (head(a), head(b));
        assert!(ha.len() > 10, "{f32_name}: header not found");
        assert_eq!(
            ha, hb,
            "params struct / overrides differ: {f32_name} vs {f16_name}"
        );
    }
}
