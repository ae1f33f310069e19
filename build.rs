//! Validates every `shaders/*.wgsl` with naga (the version wgpu uses) and embeds them.
//! A shader that does not validate fails the build with naga's own diagnostic.

use std::{env, fs, path::Path};

fn main() {
    // Read at run time, not with `env!`: a target dir copied from another checkout (a git
    // worktree seeded from main's) would otherwise keep embedding that checkout's shaders.
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("shaders");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .expect("shaders/ directory is missing")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    entries.sort();

    let mut failures = Vec::new();
    let mut table = String::from("/// (name, WGSL source) of every shader in `shaders/`.\npub static SHADERS: &[(&str, &str)] = &[\n");
    for path in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let src = fs::read_to_string(path).expect("read shader");
        if let Err(msg) = validate(&name, &src) {
            failures.push(msg);
        }
        table.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    table.push_str("];\n");
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{f}");
        }
        panic!(
            "{} shader(s) failed naga validation (see above)",
            failures.len()
        );
    }
    let out = Path::new(&env::var("OUT_DIR").unwrap()).join("shaders.rs");
    fs::write(out, table).unwrap();
}

fn validate(name: &str, src: &str) -> Result<(), String> {
    let file = format!("shaders/{name}.wgsl");
    let module =
        naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string_with_path(src, &file))?;
    if module.entry_points.is_empty() {
        return Err(format!("{file}: no entry points"));
    }
    // WebGPU's baseline: no optional capabilities. A shader that needs `shader-f16` or
    // subgroups must say so in its file name (`*_f16.wgsl`, `*_subgroup.wgsl`).
    // `pack2x16float`/`unpack2x16float` are core WGSL (the packed-f16 weight path); naga
    // files them under SHADER_FLOAT16_IN_FLOAT32, which wgpu grants on every WebGPU and
    // Vulkan/Metal/D3D12 adapter (only some GLES ones lack it).
    let mut caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if name.ends_with("_f16") {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    if name.ends_with("_subgroup") {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| e.emit_to_string_with_path(src, &file))?;
    Ok(())
}
