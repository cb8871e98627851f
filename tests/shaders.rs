//! Every `.wgsl` file in `shaders/` is part of a registered shader family, and every family, in
//! every dtype variant, validates with naga against what WebGPU has: the core capabilities,
//! plus `shader-f16` only for the f16 variant and subgroups only for the `*_sg` families
//! (both are optional features in the browser). Capabilities WebGPU never has (f64, push
//! constants, subgroup barriers, ...) are never granted.

use hoa::gpu::ShaderFamily;
use hoa::kernels::SHADERS;
use hoa::DType;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use std::path::Path;

/// What every WebGPU device has: wgpu's mapping of a WebGPU-compliant downlevel with no
/// optional features (`wgpu_naga_bridge::features_to_naga_capabilities`).
const WEBGPU_CORE: Capabilities = Capabilities::CUBE_ARRAY_TEXTURES
    .union(Capabilities::MULTISAMPLED_SHADING)
    .union(Capabilities::SHADER_FLOAT16_IN_FLOAT32);

/// Families that need the `subgroups` feature; by convention (DESIGN.md) they and only they
/// are named `*_sg`, so the runtime can fall back to the plain family.
fn needs_subgroups(family: &ShaderFamily) -> bool {
    family.name.ends_with("_sg")
}

fn capabilities(family: &ShaderFamily, dtype: DType) -> Capabilities {
    let mut caps = WEBGPU_CORE;
    if dtype == DType::F16 {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if needs_subgroups(family) {
        caps |= Capabilities::SUBGROUP;
    }
    caps
}

fn validate(family: &ShaderFamily, dtype: DType, caps: Capabilities) -> Result<(), String> {
    let src = family.source_for(dtype);
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src))?;
    Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map(drop)
        .map_err(|e| e.emit_to_string(&src))
}

/// `(file name, text)` of every `.wgsl` file in `shaders/`.
fn shader_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Files whose text is in no family's assembled shader (neither a family's own file, nor
/// common.wgsl, nor an include): nothing would validate or use them.
fn uncovered(files: &[(String, String)], families: &[ShaderFamily]) -> Vec<String> {
    let assembled: Vec<String> = families.iter().map(|f| f.source_for(DType::F32)).collect();
    files
        .iter()
        .filter(|(_, text)| !assembled.iter().any(|a| a.contains(text.as_str())))
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn every_file_in_shaders_is_a_registered_family_or_include() {
    let files = shader_files();
    assert!(files.len() >= SHADERS.len(), "{files:?}");
    let missing = uncovered(&files, SHADERS);
    assert!(
        missing.is_empty(),
        "shaders/{missing:?} belong to no family in hoa::kernels::SHADERS, so no test validates \
         them: register the family (or add the file to a family's includes)"
    );
    // Each family's own file is `shaders/<name>.wgsl`, so a failure names the file to open.
    for f in SHADERS {
        let file = format!("{}.wgsl", f.name);
        let text = files.iter().find(|(n, _)| *n == file).map(|(_, t)| t);
        assert_eq!(text.map(String::as_str), Some(f.source), "{file}");
    }
}

#[test]
fn a_file_outside_every_family_is_reported() {
    let registered = (
        format!("{}.wgsl", SHADERS[0].name),
        SHADERS[0].source.to_string(),
    );
    let new = ("new_kernel.wgsl".into(), "fn unregistered() {}\n".into());
    assert_eq!(uncovered(&[registered, new], SHADERS), ["new_kernel.wgsl"]);
}

#[test]
fn every_shader_validates_with_webgpu_capabilities() {
    assert!(!SHADERS.is_empty());
    for family in SHADERS {
        for dtype in [DType::F32, DType::F16] {
            let caps = capabilities(family, dtype);
            validate(family, dtype, caps)
                .unwrap_or_else(|e| panic!("{} ({}): {e}", family.name, dtype.name()));
        }
    }
}

/// The optional features are granted only where they are needed, and needed where granted:
/// an f32 variant must not use f16 and a family that does not end in `_sg` must not use
/// subgroups (the browser may have neither); an `_sg` family that needs no subgroups is
/// misnamed.
#[test]
fn optional_features_are_needed_exactly_where_granted() {
    for family in SHADERS {
        let without_f16 = capabilities(family, DType::F32);
        assert!(
            validate(family, DType::F16, without_f16).is_err(),
            "{} (f16) validates without shader-f16",
            family.name
        );
        if needs_subgroups(family) {
            let without_sg = capabilities(family, DType::F32) - Capabilities::SUBGROUP;
            assert!(
                validate(family, DType::F32, without_sg).is_err(),
                "{} is named *_sg but validates without subgroups",
                family.name
            );
        }
    }
}
