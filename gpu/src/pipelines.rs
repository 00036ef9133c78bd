//! Compute pipelines, created on first use and cached for the life of the device: one shader
//! module per WGSL file, one bind-group layout and pipeline per entry point.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use deberta_core::Error;

use crate::error::{ErrorLog, device_error};
use crate::kernels::{Access, Kernel, Shader, Variant};

/// A ready pipeline and the layout of its bind group 0.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

/// The cache.
#[derive(Debug, Default)]
pub(crate) struct Pipelines {
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    kernels: Mutex<HashMap<Kernel, Arc<Compiled>>>,
    /// How the kernels are written (see [`Shader::source`]).
    variant: Variant,
    /// Whether naga bounds every loop ([`crate::DeviceOptions::loop_bounds`]).
    loop_bounds: bool,
}

/// The bind-group layout of a kernel: its `Params` uniform (dynamic offset into the uniform
/// arena) at binding 0, then its storage buffers.
fn layout_entries(kernel: Kernel) -> Vec<wgpu::BindGroupLayoutEntry> {
    let uniform = wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: NonZeroU64::new(kernel.shader().params_size()),
        },
        count: None,
    };
    let storage = kernel
        .bindings()
        .iter()
        .zip(1u32..)
        .map(|(access, binding)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: *access == Access::Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    std::iter::once(uniform).chain(storage).collect()
}

impl Pipelines {
    /// An empty cache whose shaders are written for `variant`, compiled with naga's loop bounds
    /// where `loop_bounds`.
    pub(crate) fn new(variant: Variant, loop_bounds: bool) -> Self {
        Pipelines {
            variant,
            loop_bounds,
            ..Pipelines::default()
        }
    }

    /// The pipeline of `kernel`,
    /// compiling it (and its shader module) on first use; a compilation error is recorded in
    /// `errors`.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        errors: &ErrorLog,
        kernel: Kernel,
    ) -> Result<Arc<Compiled>, Error> {
        let mut kernels = self
            .kernels
            .lock()
            .map_err(|_| device_error("pipeline cache lock poisoned"))?;
        if let Some(compiled) = kernels.get(&kernel) {
            return Ok(Arc::clone(compiled));
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let compiled = {
            let mut modules = self
                .modules
                .lock()
                .map_err(|_| device_error("shader cache lock poisoned"))?;
            let shader = kernel.shader();
            let module = modules.entry(shader).or_insert_with(|| {
                let descriptor = wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.entry()),
                    source: wgpu::ShaderSource::Wgsl(shader.source(self.variant)),
                };
                if self.loop_bounds {
                    return device.create_shader_module(descriptor);
                }
                let checks = wgpu::ShaderRuntimeChecks {
                    force_loop_bounding: false,
                    ..wgpu::ShaderRuntimeChecks::checked()
                };
                // SAFETY: every other runtime check stays on (out-of-bounds accesses are still
                // clamped); only the loop bounds are left out, and those guard against loops
                // that never end, which none of these kernels has: every loop advances its
                // counter by a positive constant towards a bound below 2³¹ (a constant or a size
                // of tensors that fit a storage binding, so the counter cannot wrap), halves a
                // stride down to 0, or clears one set bit of a word per iteration.
                unsafe { device.create_shader_module_trusted(descriptor, checks) }
            });
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(kernel.entry()),
                entries: &layout_entries(kernel),
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel.entry()),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry()),
                layout: Some(&pipeline_layout),
                module,
                entry_point: Some(kernel.entry()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Every kernel initialises the workgroup memory it reads.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            Compiled { pipeline, layout }
        };
        if let Some(error) = pollster::block_on(scope.pop()) {
            errors.record(format!("compiling `{}`: {error}", kernel.entry()));
            return Err(device_error("a WGSL kernel failed to compile"));
        }
        let compiled = Arc::new(compiled);
        kernels.insert(kernel, Arc::clone(&compiled));
        Ok(compiled)
    }
}
