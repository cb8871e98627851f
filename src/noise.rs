//! The seeded noise source: standard-normal numbers that are bit-identical on every platform
//! (x86, ARM, wasm32 in the browser), so a seed names one image everywhere.
//!
//! Counter-based, so any element can be computed on its own:
//! - element `i` of draw `d` under seed `s` takes two 64-bit words
//!   `w_k = splitmix64(splitmix64(s ^ splitmix64(d)) + 2·(i/2) + k)`, k = 0, 1
//!   (`splitmix64(x)`: add 0x9E3779B97F4A7C15, then Stafford's mix13 finalizer);
//! - `u1 = (top 53 bits of w_0 + 1) / 2^53` ∈ (0, 1], `u2 = (top 53 bits of w_1) / 2^53`;
//! - Box-Muller in f64: `r = sqrt(-2 ln u1)`, even `i` gets `r·cos(2π u2)`, odd `i` gets
//!   `r·sin(2π u2)`; rounded to f32.
//!
//! `ln`, `cos` and `sin` come from the `libm` crate (a pure-Rust port of musl's), never the
//! platform's math library, which is what makes the numbers portable. This is not PyTorch's
//! generator: to reproduce a diffusers image exactly, hand its noise in with `--latents`.

/// One image's noise stream: every tensor drawn from it (the initial latent, then each step's
/// noise) takes the next draw index.
#[derive(Clone, Debug)]
pub struct NoiseGenerator {
    seed: u64,
    draw: u64,
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl NoiseGenerator {
    pub fn new(seed: u64) -> Self {
        NoiseGenerator { seed, draw: 0 }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next `n` standard-normal numbers (one draw).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        let key = splitmix64(self.seed ^ splitmix64(self.draw));
        self.draw += 1;
        let mut out = Vec::with_capacity(n);
        for pair in 0..n.div_ceil(2) as u64 {
            let w0 = splitmix64(key.wrapping_add(2 * pair));
            let w1 = splitmix64(key.wrapping_add(2 * pair + 1));
            let u1 = ((w0 >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
            let u2 = (w1 >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let r = libm::sqrt(-2.0 * libm::log(u1));
            let theta = 2.0 * std::f64::consts::PI * u2;
            out.push((r * libm::cos(theta)) as f32);
            if out.len() < n {
                out.push((r * libm::sin(theta)) as f32);
            }
        }
        out
    }

    /// The next `n` numbers uniform in [0, 1) (one draw), for callers that need them.
    pub fn rand(&mut self, n: usize) -> Vec<f32> {
        let key = splitmix64(self.seed ^ splitmix64(self.draw));
        self.draw += 1;
        (0..n as u64)
            .map(|i| ((splitmix64(key.wrapping_add(i)) >> 40) as f32) * (1.0 / (1u32 << 24) as f32))
            .collect()
    }
}

/// Draws one tensor of `per_image` numbers from each image's generator and lays them out
/// batch-major, so image `k` of a batch is the image its own seed alone would give.
pub fn randn_batch(gens: &mut [NoiseGenerator], per_image: usize) -> Vec<f32> {
    gens.iter_mut().flat_map(|g| g.randn(per_image)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_normal() {
        let a = NoiseGenerator::new(42).randn(100_001);
        let b = NoiseGenerator::new(42).randn(100_001);
        assert_eq!(a, b);
        let c = NoiseGenerator::new(43).randn(100_001);
        assert_ne!(a, c);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        // Successive draws differ; a prefix of a draw does not depend on its length.
        let mut g = NoiseGenerator::new(42);
        let first = g.randn(10);
        assert_eq!(first, a[..10]);
        assert_ne!(g.randn(10), first);
    }

    #[test]
    fn pinned_values() {
        // The documented algorithm's output, pinned when it was written: these numbers must
        // never change, or every seed a user saved names another image. The browser build
        // runs the same check (same code, wasm32).
        assert_eq!(
            NoiseGenerator::new(0).randn(4),
            [-0.103178844, 1.9849691, 0.42211023, -0.96392345]
        );
        let mut g = NoiseGenerator::new(12345);
        g.randn(3);
        assert_eq!(g.randn(3), [-1.3826467, 0.6964586, 0.6386171]);
    }
}
