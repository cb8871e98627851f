//! Bind groups kept across launches, keyed by what they bind: a U-Net step that repeats with
//! the same pooled buffers and the same params slots creates none.
//!
//! The key holds the buffers themselves, not ids: a cached entry keeps its buffers alive (the
//! bind group would anyway), so a buffer dropped and created again can never match an entry
//! made for the old one. That is also why [`Context::trim_pool`](super::Context::trim_pool)
//! clears the cache: otherwise it would keep trimmed buffers' memory.

use super::uniform_arena::Slot;
use std::collections::HashMap;

/// More entries than one step of SD-1.5 launches; past it the cache starts over.
const MAX_ENTRIES: usize = 16384;

#[derive(PartialEq, Eq, Hash)]
struct Key {
    pipeline: wgpu::ComputePipeline,
    buffers: Vec<wgpu::Buffer>,
    params: wgpu::Buffer,
    slot: Slot,
}

/// Lookups served from the cache and bind groups created, since the context was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindGroupStats {
    pub hits: u64,
    pub created: u64,
    /// Entries held now.
    pub cached: usize,
}

#[derive(Default)]
pub(crate) struct BindGroupCache {
    map: HashMap<Key, wgpu::BindGroup>,
    hits: u64,
    created: u64,
}

impl BindGroupCache {
    /// The bind group for `pipeline` with `buffers` at bindings 0.. and the params slot of
    /// `params` after them: the binding convention of every kernel (inputs, output, params).
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        pipeline: &wgpu::ComputePipeline,
        label: &str,
        buffers: &[&wgpu::Buffer],
        params: &wgpu::Buffer,
        slot: Slot,
    ) -> wgpu::BindGroup {
        let key = Key {
            pipeline: pipeline.clone(),
            buffers: buffers.iter().map(|&b| b.clone()).collect(),
            params: params.clone(),
            slot,
        };
        if let Some(g) = self.map.get(&key) {
            self.hits += 1;
            return g.clone();
        }
        let mut entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: buffers.len() as u32,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: params,
                offset: slot.offset,
                size: wgpu::BufferSize::new(slot.size),
            }),
        });
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        if self.map.len() >= MAX_ENTRIES {
            self.map.clear();
        }
        self.created += 1;
        self.map.insert(key, group.clone());
        group
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn stats(&self) -> BindGroupStats {
        BindGroupStats {
            hits: self.hits,
            created: self.created,
            cached: self.map.len(),
        }
    }
}
