//! Every shader family, in every dtype variant, parses and validates with naga.

use hoa::kernels::SHADERS;
use hoa::DType;

#[test]
fn every_shader_validates_with_naga() {
    assert!(!SHADERS.is_empty());
    for family in SHADERS {
        for dtype in [DType::F32, DType::F16] {
            let src = family.source_for(dtype);
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
                panic!(
                    "{} ({}): {}",
                    family.name,
                    dtype.name(),
                    e.emit_to_string(&src)
                )
            });
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| {
                panic!(
                    "{} ({}): {}",
                    family.name,
                    dtype.name(),
                    e.emit_to_string(&src)
                )
            });
        }
    }
}
