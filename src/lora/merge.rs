//! Matching LoRA modules to a model's tensors, and the merge itself on the device: PEFT's
//! `get_delta_weight` + `merge` (`W += scale · alpha/rank · up @ down`; a conv update's
//! `[out, rank, 1, 1] x [rank, in, kh, kw]` is the same product on the flattened kernels), in
//! f32 with hoa's matmul, the sum stored in the model's dtype by the axpy kernel.

use super::keys::{self, Component, Module};
use super::{capped_list, Group, LoraFile, LoraSet};
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::elementwise::axpy;
use crate::kernels::matmul::{matmul, MatmulOptions};
use crate::single_file::{self, keys::UNetLayout};
use crate::weights::{Patch, Weights};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

/// One low-rank update of one tensor.
struct Delta<'l> {
    file: &'l LoraFile,
    down: &'l str,
    up: &'l str,
    rank: usize,
    /// The user's scale x alpha / rank.
    scale: f32,
}

/// The merges of one component, by the full key of the tensor they change; a
/// [`Patch`] for its [`crate::weights::Loader`].
pub struct Patches<'l> {
    by_key: HashMap<String, Vec<Delta<'l>>>,
    applied: RefCell<BTreeSet<String>>,
}

impl Patches<'_> {
    /// How many tensors change.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Errors when a matched tensor was never loaded (the model reads it some other way, so
    /// the LoRA would be silently dropped).
    pub fn finish(&self) -> Result<()> {
        let applied = self.applied.borrow();
        let left: Vec<String> = self
            .by_key
            .keys()
            .filter(|k| !applied.contains(*k))
            .cloned()
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        Err(Error::Checkpoint(format!(
            "LoRA updates of tensors the model does not load as weights: {}",
            capped_list(left)
        )))
    }
}

impl Patch for Patches<'_> {
    fn patches(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    fn apply(&self, ctx: &Context, key: &str, w: Tensor, dtype: DType) -> Result<Tensor> {
        let Some(deltas) = self.by_key.get(key) else {
            return Err(Error::Checkpoint(format!("no LoRA update for `{key}`")));
        };
        self.applied.borrow_mut().insert(key.to_string());
        let shape = w.shape().to_vec();
        let out = shape[0];
        let k = w.numel() / out.max(1);
        let mut acc = w.reshape(&[out, k])?;
        for (i, d) in deltas.iter().enumerate() {
            let up = d.file.weights.read_f32(d.up)?;
            let down = d.file.weights.read_f32(d.down)?;
            let up = Tensor::from_f32(ctx, &up, &[out, d.rank], DType::F32)?;
            let down = Tensor::from_f32(ctx, &down, &[d.rank, k], DType::F32)?;
            let o = MatmulOptions {
                alpha: d.scale,
                ..Default::default()
            };
            let delta = matmul(ctx, &up, &down, &o)?;
            let last = i + 1 == deltas.len();
            acc = axpy(
                ctx,
                &acc,
                &delta,
                1.0,
                if last { dtype } else { DType::F32 },
            )?;
        }
        acc.reshape(&shape)
    }
}

/// A component's modules by the names LoRA files use: every `<module>.weight` of 2 or 4 dims,
/// by its dotted path and by kohya's flattened one. CLIP's `text_model.` prefix is dropped on
/// both sides (transformers 5 saves without it, SD checkpoints and kohya names have it).
struct ModuleIndex<'w> {
    dotted: HashMap<String, &'w str>,
    /// `None`: two modules flatten to the same name.
    flat: HashMap<String, Option<&'w str>>,
    /// The U-Net's `layers_per_block`, for kohya names in the LDM layout.
    ldm: Option<UNetLayout>,
}

fn strip_text_model(component: Component, m: &str) -> &str {
    match component {
        Component::Unet => m,
        _ => keys::strip_text_model(m),
    }
}

impl<'w> ModuleIndex<'w> {
    fn new(component: Component, weights: &'w Weights) -> ModuleIndex<'w> {
        let mut ix = ModuleIndex {
            dotted: HashMap::new(),
            flat: HashMap::new(),
            ldm: None,
        };
        for key in weights.names() {
            let Some(m) = key.strip_suffix(".weight") else {
                continue;
            };
            if !matches!(weights.shape(key).map(<[usize]>::len), Some(2 | 4)) {
                continue;
            }
            let m = strip_text_model(component, m);
            ix.dotted.insert(m.to_string(), key);
            ix.flat
                .entry(m.replace('.', "_"))
                .and_modify(|v| *v = None)
                .or_insert(Some(key));
        }
        if component == Component::Unet {
            let layers = (0..)
                .take_while(|j| {
                    ix.dotted
                        .contains_key(&format!("down_blocks.0.resnets.{j}.conv1"))
                })
                .count();
            ix.ldm = (layers > 0).then_some(UNetLayout { layers });
        }
        ix
    }

    /// The key of the weight `module` changes.
    fn find(&self, component: Component, module: &Module) -> Option<&'w str> {
        let m = strip_text_model(component, module.as_str());
        match module {
            Module::Dotted(_) => self.dotted.get(m).copied(),
            Module::Flat(_) => self.flat.get(m).copied().flatten().or_else(|| {
                let d = ldm_to_diffusers_flat(m, self.ldm?)?;
                self.flat.get(&d).copied().flatten()
            }),
        }
    }
}

/// A kohya U-Net name in the LDM layout (SDXL's, `input_blocks_4_1_transformer_blocks_0_attn1_to_q`)
/// as the flattened diffusers name, through the single-file loader's LDM -> diffusers map. The
/// block indices are numbers, so where they end is clear; inside a block only the ResBlock's
/// layer names (`in_layers_2`, ...) need their dots back, the transformer's names are flattened
/// on both sides anyway.
fn ldm_to_diffusers_flat(flat: &str, layout: UNetLayout) -> Option<String> {
    const TOP: [(&str, &str); 5] = [
        ("time_embed_0", "time_embed.0"),
        ("time_embed_2", "time_embed.2"),
        ("label_emb_0_0", "label_emb.0.0"),
        ("label_emb_0_2", "label_emb.0.2"),
        ("out_2", "out.2"),
    ];
    const RES: [(&str, &str); 3] = [
        ("in_layers_2", "in_layers.2"),
        ("emb_layers_1", "emb_layers.1"),
        ("out_layers_3", "out_layers.3"),
    ];
    let index = |s: &str| -> Option<(usize, String)> {
        let (i, rest) = s.split_once('_').unwrap_or((s, ""));
        Some((i.parse().ok()?, rest.to_string()))
    };
    let dotted = if let Some((_, d)) = TOP.iter().find(|(f, _)| *f == flat) {
        d.to_string()
    } else {
        let (block, rest) = ["input_blocks", "output_blocks", "middle_block"]
            .iter()
            .find_map(|b| Some((*b, flat.strip_prefix(b)?.strip_prefix('_')?)))?;
        let (k, rest) = index(rest)?;
        let (idx, rest) = match block {
            "middle_block" => (k.to_string(), rest),
            _ => {
                let (m, rest) = index(&rest)?;
                (format!("{k}.{m}"), rest)
            }
        };
        let rest = RES
            .iter()
            .find(|(f, _)| *f == rest)
            .map_or(rest.clone(), |(_, d)| d.to_string());
        match rest.as_str() {
            "" => format!("{block}.{idx}"),
            r => format!("{block}.{idx}.{r}"),
        }
    };
    let (name, _) = single_file::keys::unet(&format!("{dotted}.weight"), layout)
        .into_iter()
        .next()?;
    let m = name.strip_suffix(".weight")?;
    (m != dotted).then(|| m.replace('.', "_"))
}

/// Matches every module of every LoRA for `component` against `weights`.
pub(super) fn resolve<'l>(
    set: &'l LoraSet,
    component: Component,
    weights: &Weights,
) -> Result<Patches<'l>> {
    let ix = ModuleIndex::new(component, weights);
    let mut by_key: HashMap<String, Vec<Delta<'l>>> = HashMap::new();
    for (file, scale) in &set.loras {
        let mut unmatched = Vec::new();
        for ((c, module), g) in &file.groups {
            if *c != component {
                continue;
            }
            let Some(key) = ix.find(component, module) else {
                unmatched.push(format!(
                    "{} ({})",
                    module.as_str(),
                    g.down.as_deref().unwrap_or("")
                ));
                continue;
            };
            let target = weights.shape(key).unwrap_or_default();
            let rank = check_shapes(file, g, key, target)?;
            let s = scale * file.alpha_over_rank(component, module, g, rank)?;
            by_key.entry(key.to_string()).or_default().push(Delta {
                file,
                down: g.down.as_deref().unwrap_or_default(),
                up: g.up.as_deref().unwrap_or_default(),
                rank,
                scale: s as f32,
            });
        }
        if !unmatched.is_empty() {
            let n = unmatched.len();
            return Err(Error::Checkpoint(format!(
                "{}: {n} LoRA module(s) match no {} tensor of this model (a LoRA for another \
                 model family?): {}",
                file.name,
                component.name(),
                capped_list(unmatched)
            )));
        }
    }
    Ok(Patches {
        by_key,
        applied: RefCell::default(),
    })
}

/// The rank, once down `[r, ...]` and up `[out, r, (1, 1)]` fit the target `[out, ...]`.
fn check_shapes(file: &LoraFile, g: &Group, key: &str, target: &[usize]) -> Result<usize> {
    let (down_k, up_k) = (
        g.down.as_deref().unwrap_or(""),
        g.up.as_deref().unwrap_or(""),
    );
    let down = file.weights.shape(down_k).unwrap_or_default();
    let up = file.weights.shape(up_k).unwrap_or_default();
    let numel = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let fits = (|| {
        let (&out, &rank) = (target.first()?, down.first()?);
        let k = numel(target)? / out.max(1);
        let up_ok = up.first() == Some(&out)
            && up.get(1) == Some(&rank)
            && up[2..].iter().all(|&d| d == 1)
            && up.len() == down.len();
        (rank > 0 && numel(down)? == rank.checked_mul(k)? && up_ok).then_some(rank)
    })();
    fits.ok_or_else(|| {
        Error::Checkpoint(format!(
            "{}: is a LoRA for another model family: `{down_k}` {down:?} and `{up_k}` {up:?} do \
             not fit this model's `{key}` {target:?}",
            file.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldm_kohya_names_become_diffusers_names() {
        // SD 1.5's numbering: 2 resnets per down block.
        let sd15 = UNetLayout { layers: 2 };
        for (ldm, diffusers) in [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            (
                "input_blocks_4_1_proj_in",
                "down_blocks_1_attentions_0_proj_in",
            ),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            ("input_blocks_0_0", "conv_in"),
            (
                "input_blocks_1_0_in_layers_2",
                "down_blocks_0_resnets_0_conv1",
            ),
            ("output_blocks_2_1_conv", "up_blocks_0_upsamplers_0_conv"),
            (
                "output_blocks_5_0_skip_connection",
                "up_blocks_1_resnets_2_conv_shortcut",
            ),
            ("output_blocks_8_2_conv", "up_blocks_2_upsamplers_0_conv"),
            (
                "middle_block_2_emb_layers_1",
                "mid_block_resnets_1_time_emb_proj",
            ),
            (
                "middle_block_1_transformer_blocks_0_ff_net_2",
                "mid_block_attentions_0_transformer_blocks_0_ff_net_2",
            ),
            ("time_embed_0", "time_embedding_linear_1"),
            ("out_2", "conv_out"),
        ] {
            assert_eq!(
                ldm_to_diffusers_flat(ldm, sd15).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
        for other in [
            "down_blocks_0_resnets_0_conv1",
            "input_blocks_x_1_proj_in",
            "zz",
        ] {
            assert_eq!(ldm_to_diffusers_flat(other, sd15), None, "{other}");
        }
    }
}
