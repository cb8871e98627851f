// common.wgsl: prepended to every family (after the dtype header that defines T and T4).
// Activation ids match `kernels::Activation`; all math is f32 whatever the storage type.

const ACT_NONE: u32 = 0u;
const ACT_GELU: u32 = 1u;       // exact: 0.5 x (1 + erf(x / sqrt 2))
const ACT_GELU_TANH: u32 = 2u;  // tanh approximation
const ACT_SILU: u32 = 3u;
const ACT_QUICK_GELU: u32 = 4u; // x * sigmoid(1.702 x), CLIP
const ACT_RELU: u32 = 5u;
const ACT_EXP: u32 = 6u;       // the VAE posterior's std = exp(logvar / 2)

// Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: below f32 GELU's own rounding.
fn erf_f32(x: f32) -> f32 {
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}

fn sigmoid_f32(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn activate(x: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return 0.5 * x * (1.0 + erf_f32(x * 0.7071067811865476)); }
        case 2u: {
            // tanh saturates long before 15; clamping keeps exp-based tanh from inf/inf.
            let u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
            return 0.5 * x * (1.0 + tanh(u));
        }
        case 3u: { return x * sigmoid_f32(x); }
        case 4u: { return x * sigmoid_f32(1.702 * x); }
        case 5u: { return max(x, 0.0); }
        case 6u: { return exp(x); }
        default: { return x; }
    }
}

fn activate4(x: vec4<f32>, act: u32) -> vec4<f32> {
    return vec4<f32>(activate(x.x, act), activate(x.y, act), activate(x.z, act), activate(x.w, act));
}
