//! Compute-pipeline cache. A pipeline is compiled once per (shader family, entry point, dtype,
//! override constants) and kept: compiling costs seconds on lavapipe (LLVM), so shapes never
//! enter shader text; they travel in a params uniform.
//!
//! Shader text is assembled from a small explicit template: a dtype header that defines the
//! storage types `T`/`T4` (f32 or f16), then `shaders/common.wgsl`, then the family's includes
//! (shared snippets such as `shaders/row_reduce.wgsl`), then the family's file.

use super::{Context, DType};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;

/// One `shaders/<name>.wgsl` file.
#[derive(Clone, Copy, Debug)]
pub struct ShaderFamily {
    pub name: &'static str,
    pub source: &'static str,
    /// Shared WGSL placed between common.wgsl and the family's file (e.g. row_reduce.wgsl).
    pub includes: &'static [&'static str],
}

const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// Row reductions shared by group_norm, layer_norm and softmax.
pub const ROW_REDUCE: &str = include_str!("../../shaders/row_reduce.wgsl");

impl ShaderFamily {
    /// The full WGSL text for `dtype`.
    pub fn source_for(&self, dtype: DType) -> String {
        let header = match dtype {
            DType::F32 => "alias T = f32;\nalias T4 = vec4<f32>;\n",
            DType::F16 => "enable f16;\nalias T = f16;\nalias T4 = vec4<f16>;\n",
        };
        format!(
            "{header}{COMMON}\n{}\n{}",
            self.includes.concat(),
            self.source
        )
    }
}

/// What identifies a pipeline; its `label()` is also the wgpu label, so a validation error
/// names the variant (`matmul.main_f32_TM=8`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub family: &'static str,
    pub entry: &'static str,
    pub dtype: DType,
    pub constants: Vec<(&'static str, u32)>,
}

impl PipelineKey {
    pub fn label(&self) -> String {
        let mut s = format!("{}.{}_{}", self.family, self.entry, self.dtype.name());
        for (k, v) in &self.constants {
            s.push_str(&format!("_{k}={v}"));
        }
        s
    }
}

#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<(&'static str, DType), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Context {
    /// Returns the cached pipeline for `key`, compiling it on first use.
    pub fn pipeline(
        &self,
        family: &ShaderFamily,
        key: PipelineKey,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = self.pipelines.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        if key.dtype == DType::F16 && !self.has_f16() {
            return Err(Error::MissingFeature {
                op: family.name,
                feature: "shader-f16",
                hint: "use f32 on this adapter",
            });
        }
        let label = key.label();
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = self.pipelines.modules.lock().unwrap();
            modules
                .entry((family.name, key.dtype))
                .or_insert_with(|| {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(family.name),
                            source: wgpu::ShaderSource::Wgsl(family.source_for(key.dtype).into()),
                        })
                })
                .clone()
        };
        let constants: Vec<(&str, f64)> =
            key.constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: None,
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Kernels write every workgroup-memory element they read.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                context: format!("compiling pipeline {label}"),
                msg: e.to_string(),
            });
        }
        self.pipelines
            .pipelines
            .lock()
            .unwrap()
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Number of distinct compute pipelines compiled so far.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.len()
    }
}
