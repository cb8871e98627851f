// embedding.wgsl: sinusoidal timestep embedding, diffusers `get_timestep_embedding`:
//   freq_j = exp(-ln(max_period) * j / (half - shift)), arg = scale * t * freq_j,
//   out = [sin(arg), cos(arg)] (or [cos, sin] with flip_sin_to_cos), zero-padded when dim is odd.
// Computed in f32 as PyTorch does.
//
// Dispatch: 1-D over outputs (B * dim), WG per workgroup, split over x/y (grid_1d).
// Bindings: 0 = timesteps [B] (always f32), 1 = out [B, dim], 2 = params. Overrides: WG.

override WG: u32 = 256u;

struct Params {
    n: u32,          // B * dim
    dim: u32,
    flip: u32,       // flip_sin_to_cos
    _pad: u32,
    shift: f32,      // downscale_freq_shift
    scale: f32,
    log_max_period: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<storage, read> t: array<f32>; // always f32: fractional timesteps
@group(0) @binding(1) var<storage, read_write> out: array<T>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn timestep_embedding(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let b = i / p.dim;
    let c = i % p.dim;
    let half = p.dim / 2u;
    if (c >= 2u * half) {
        out[i] = T(0.0);
        return;
    }
    let j = c % half;
    let first = c < half;
    let freq = exp(-p.log_max_period * f32(j) / (f32(half) - p.shift));
    let arg = p.scale * t[b] * freq;
    // Without flip the first half is sin; with flip it is cos.
    let use_sin = first != (p.flip != 0u);
    out[i] = T(select(cos(arg), sin(arg), use_sin));
}

// ---- token embedding lookup: out[i, :] = table[ids[i], :] (nn.Embedding) ----------------
// Dispatch: 1-D over outputs (ids * dim), split over x/y (grid_1d).
// Bindings: 0 = table [V, dim], 1 = ids (u32, validated < V on the host), 2 = out, 3 = params.

struct GatherParams {
    n: u32,    // ids * dim
    dim: u32,
    vocab: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> g_table: array<T>;
@group(0) @binding(1) var<storage, read> g_ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> g_out: array<T>;
@group(0) @binding(3) var<uniform> g_p: GatherParams;

@compute @workgroup_size(WG)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= g_p.n) { return; }
    let row = min(g_ids[i / g_p.dim], g_p.vocab - 1u);
    g_out[i] = g_table[row * g_p.dim + i % g_p.dim];
}
