//! Releasing components early (what `hoa generate` does for its last prompt): stage 1 alone,
//! then the text encoders dropped, gives the same images as one `generate`, and a later
//! encode is a clear error.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use common::ctx;
use hoa::model_files::DirFiles;
use hoa::pipeline::{GenerateOptions, Pipeline, TextEncoder};
use hoa::DType;

#[test]
fn encode_then_release_gives_the_same_images_and_refuses_a_second_prompt() {
    let Some(c) = ctx() else { return };
    let files = DirFiles::open(fixture::dir("pipeline_tiny")).unwrap();
    let mut p = Pipeline::load(c, &files, DType::F32).unwrap();
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        negative_prompt: "green".into(),
        width: 32,
        height: 24,
        steps: 3,
        guidance: 4.0,
        seed: 5,
        ..Default::default()
    };
    let whole = pollster::block_on(p.generate(c, &opts, &mut |_| {})).unwrap();
    let encoded = pollster::block_on(p.encode(c, &opts, &mut |_| {})).unwrap();
    p.release_text_encoders();
    c.trim_pool();
    assert!(p.text_encoders_released());
    assert!(matches!(p.text_encoder, TextEncoder::None));
    let after = pollster::block_on(p.generate_encoded(c, &opts, encoded, &mut |_| {})).unwrap();
    assert_eq!(whole.len(), after.len());
    for (a, b) in whole.iter().zip(&after) {
        assert!(
            a.data == b.data,
            "the images differ after releasing the encoder"
        );
    }
    let e = match pollster::block_on(p.generate(c, &opts, &mut |_| {})) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a released pipeline encoded a prompt"),
    };
    assert!(e.contains("text encoders were released"), "{e}");
}
