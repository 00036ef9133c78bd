//! Finding a GPU: listing adapters and choosing one (discrete, then integrated, then virtual,
//! then software), honouring `WGPU_BACKEND` (`vulkan`, `metal`, `dx12`, comma-separated).

use crate::error::GpuError;

/// Which adapter [`WgpuBackend::new`](crate::WgpuBackend::new) opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdapterChoice {
    /// Only adapters whose name contains this (case-insensitively); `None` takes the best one.
    pub name_contains: Option<String>,
}

/// One adapter as listed by [`list_adapters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// The device name reported by the driver.
    pub name: String,
    /// The API it is reached through.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version, when reported.
    pub driver: String,
    /// Whether it runs compute shaders (the backend needs them).
    pub compute: bool,
    /// The limits and optional features that size and select the kernels.
    pub capabilities: Capabilities,
}

/// What an adapter offers the kernels: the limits the backend requests in full, and the
/// optional shader features that enable faster kernel variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Workgroup (shared) memory per workgroup, in bytes.
    pub workgroup_memory: u32,
    /// Invocations per workgroup.
    pub workgroup_invocations: u32,
    /// The largest buffer, in bytes.
    pub largest_buffer: u64,
    /// The largest storage-buffer binding (hence the largest tensor), in bytes.
    pub largest_storage_binding: u64,
    /// Storage buffers one shader stage may bind (the multi-tensor kernels' width).
    pub storage_buffers_per_stage: u32,
    /// `SHADER_F16`: WGSL `enable f16;`.
    pub shader_f16: bool,
    /// `SUBGROUP`: subgroup operations in compute shaders.
    pub subgroups: bool,
    /// Cooperative-matrix shapes `M×N×K` with f16 inputs and f32 accumulation (empty: none).
    pub f16_cooperative_matrices: Vec<[u32; 3]>,
    /// The fewest and the most invocations a subgroup may have (0 where unknown).
    pub subgroup_sizes: [u32; 2],
}

/// A configuration the cooperative-matrix matmul (`matmul_cooperative.wgsl`) runs in: square
/// f16 × f16 → f32 matrices of `side` (16 on NVIDIA's tensor cores, 8 on Mesa's lavapipe) on
/// workgroups of one subgroup of exactly `threads` invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CooperativeShape {
    /// The side of the A, B and accumulator matrices (one step along k is this deep).
    pub side: u32,
    /// Invocations of a workgroup: the adapter's one subgroup width.
    pub threads: u32,
}

impl CooperativeShape {
    /// 16×16×16 matrices on 32-wide subgroups: what NVIDIA's drivers report.
    pub const TENSOR_CORES: Self = CooperativeShape {
        side: 16,
        threads: 32,
    };

    /// The side of the tile of C a workgroup of `split` × `split` subgroups computes, each
    /// subgroup with `block` × `block` accumulators.
    pub const fn tile(self, split: u32, block: u32) -> u32 {
        block * self.side * split
    }

    /// Groups of four operands of A (and of B) each thread of a workgroup of `split` × `split`
    /// subgroups of `block` × `block` accumulators stages per step, if they come out whole: a
    /// step's `tile × side` operands of each matrix over the workgroup's `split² · threads`
    /// invocations.
    pub const fn groups(self, split: u32, block: u32) -> Option<u32> {
        let operands = self.tile(split, block) * self.side;
        let per_group_round = 4 * split * split * self.threads;
        match operands % per_group_round {
            0 => Some(operands / per_group_round),
            _ => None,
        }
    }
}

impl Capabilities {
    /// The configuration the cooperative-matrix matmul (`matmul_cooperative.wgsl`) runs in on
    /// this adapter, if any: f16 shaders, subgroups (the kernel reads its subgroup's index),
    /// square f16 → f32 cooperative matrices of side 16 or 8 (naga's two sizes; 16 preferred),
    /// and one subgroup width (the kernel's workgroups are whole subgroups) that divides a step's
    /// operands into 1 to 16 groups of four per thread of a one-subgroup workgroup.
    pub fn cooperative_matmul(&self) -> Option<CooperativeShape> {
        let [threads, widest] = self.subgroup_sizes;
        if !self.shader_f16 || !self.subgroups || threads == 0 || threads != widest {
            return None;
        }
        [16, 8]
            .into_iter()
            .map(|side| CooperativeShape { side, threads })
            .find(|shape| {
                let side = shape.side;
                self.f16_cooperative_matrices.contains(&[side, side, side])
                    && matches!(shape.groups(1, 4), Some(1..=16))
            })
    }

    /// What `adapter` offers.
    fn of(adapter: &wgpu::Adapter) -> Self {
        let limits = adapter.limits();
        let features = adapter.features();
        let f16_cooperative_matrices =
            if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                adapter
                    .cooperative_matrix_properties()
                    .iter()
                    .filter(|p| {
                        p.ab_type == wgpu::CooperativeScalarType::F16
                            && p.cr_type == wgpu::CooperativeScalarType::F32
                    })
                    .map(|p| [p.m_size, p.n_size, p.k_size])
                    .collect()
            } else {
                Vec::new()
            };
        Capabilities {
            workgroup_memory: limits.max_compute_workgroup_storage_size,
            workgroup_invocations: limits.max_compute_invocations_per_workgroup,
            largest_buffer: limits.max_buffer_size,
            largest_storage_binding: limits.max_storage_buffer_binding_size,
            storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            f16_cooperative_matrices,
            subgroup_sizes: {
                let info = adapter.get_info();
                [info.subgroup_min_size, info.subgroup_max_size]
            },
        }
    }
}

impl std::fmt::Display for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "workgroup memory {} B, workgroup invocations {}, largest buffer {} B, \
             largest storage binding {} B, storage buffers per stage {}, f16 shaders {}, \
             subgroups {}{}, f16 cooperative matrices ",
            self.workgroup_memory,
            self.workgroup_invocations,
            self.largest_buffer,
            self.largest_storage_binding,
            self.storage_buffers_per_stage,
            yes_no(self.shader_f16),
            yes_no(self.subgroups),
            match self.subgroup_sizes {
                [0, _] | [_, 0] => String::new(),
                [min, max] if min == max => format!(" ({min} wide)"),
                [min, max] => format!(" ({min}–{max} wide)"),
            },
        )?;
        if self.f16_cooperative_matrices.is_empty() {
            return write!(f, "none");
        }
        for (i, [m, n, k]) in self.f16_cooperative_matrices.iter().enumerate() {
            write!(f, "{}{m}×{n}×{k}", if i == 0 { "" } else { ", " })?;
        }
        match self.cooperative_matmul() {
            Some(CooperativeShape { side, threads }) => write!(
                f,
                " (the cooperative matmul takes {side}×{side}×{side} on {threads}-wide subgroups)"
            ),
            None => write!(
                f,
                " (none the cooperative matmul takes: it needs f16 shaders, square 16×16 or 8×8 \
                 matrices and subgroups of one width)"
            ),
        }
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}{}{})",
            self.name,
            self.backend,
            self.device_type,
            if self.driver.is_empty() { "" } else { ", " },
            self.driver
        )?;
        if !self.compute {
            write!(f, " [no compute shaders]")?;
        }
        Ok(())
    }
}

/// A wgpu instance over the backends `WGPU_BACKEND` names (all native backends by default).
pub(crate) fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// What `adapter` is.
pub(crate) fn summary(adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    AdapterSummary {
        name: info.name,
        backend: info.backend,
        device_type: info.device_type,
        driver,
        compute: adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
        capabilities: Capabilities::of(adapter),
    }
}

/// Every adapter wgpu can see on this machine (for `deberta info`), in enumeration order.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = instance();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .map(summary)
        .collect()
}

/// Preference rank of a device type: lower is better.
fn rank(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The best adapter with compute shaders that matches `choice`.
pub(crate) fn select(
    instance: &wgpu::Instance,
    choice: &AdapterChoice,
) -> Result<wgpu::Adapter, GpuError> {
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let wanted = choice.name_contains.as_ref().map(|s| s.to_lowercase());
    let found: Vec<String> = adapters.iter().map(|a| summary(a).to_string()).collect();
    adapters
        .into_iter()
        .filter(|adapter| {
            let s = summary(adapter);
            s.compute
                && wanted
                    .as_ref()
                    .is_none_or(|w| s.name.to_lowercase().contains(w.as_str()))
        })
        .min_by_key(|adapter| rank(adapter.get_info().device_type))
        .ok_or(GpuError::NoAdapter {
            name_contains: choice.name_contains.clone(),
            found,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrete_beats_integrated_beats_software() {
        let order = [
            wgpu::DeviceType::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu,
            wgpu::DeviceType::VirtualGpu,
            wgpu::DeviceType::Other,
            wgpu::DeviceType::Cpu,
        ];
        for pair in order.windows(2) {
            assert!(rank(pair[0]) < rank(pair[1]));
        }
    }

    #[test]
    fn missing_adapter_message_names_what_was_searched() {
        let err = GpuError::NoAdapter {
            name_contains: Some("h100".into()),
            found: vec!["llvmpipe (Vulkan, Cpu)".into()],
        };
        let text = err.to_string();
        assert!(
            text.contains("\"h100\"") && text.contains("llvmpipe"),
            "{text}"
        );
        assert_eq!(
            deberta_core::Error::from(err),
            deberta_core::Error::Device {
                what: "no GPU adapter with compute support"
            }
        );
    }

    /// A workgroup of one subgroup or of 2 × 2 (4 × 4 accumulators each), or of one subgroup of
    /// 2 × 2 accumulators, shares a step's operands evenly in every configuration the chooser
    /// takes; in one it refuses, none does.
    #[test]
    fn cooperative_workgroups_share_a_step_in_whole_groups_of_four() {
        for (side, threads, one, four, small) in [
            (16, 32, Some(8), Some(4), Some(4)),
            (8, 8, Some(8), Some(4), Some(4)),
            (16, 64, Some(4), Some(2), Some(2)),
            (8, 32, Some(2), Some(1), Some(1)),
            (8, 128, None, None, None),
        ] {
            let shape = CooperativeShape { side, threads };
            assert_eq!(shape.groups(1, 4), one, "{shape:?}");
            assert_eq!(shape.groups(2, 4), four, "{shape:?}");
            assert_eq!(shape.groups(1, 2), small, "{shape:?}");
            assert_eq!(shape.tile(2, 4), 2 * shape.tile(1, 4));
            assert_eq!(shape.tile(1, 2), shape.tile(1, 4) / 2);
        }
    }

    /// The cooperative matmul's configuration for what drivers report: NVIDIA's (the H200 of
    /// 2026-12-04), Mesa 26's lavapipe, and adapters it cannot run on.
    #[test]
    fn the_cooperative_matmul_takes_square_matrices_on_one_subgroup_width() {
        let adapter =
            |matrices: Vec<[u32; 3]>, subgroup_sizes: [u32; 2], shader_f16: bool| Capabilities {
                workgroup_memory: 49_152,
                workgroup_invocations: 1024,
                largest_buffer: 1 << 32,
                largest_storage_binding: 1 << 31,
                storage_buffers_per_stage: 32,
                shader_f16,
                subgroups: true,
                f16_cooperative_matrices: matrices,
                subgroup_sizes,
            };
        let shape = |side, threads| Some(CooperativeShape { side, threads });
        let nvidia = vec![[16, 16, 16], [16, 8, 16], [16, 8, 8]];
        for (capabilities, expected) in [
            (adapter(nvidia.clone(), [32, 32], true), shape(16, 32)),
            (adapter(vec![[8, 8, 8]], [8, 8], true), shape(8, 8)),
            // Both sides: 16 first. 8×8 on 32 threads: two groups of four per thread.
            (
                adapter(vec![[8, 8, 8], [16, 16, 16]], [32, 32], true),
                shape(16, 32),
            ),
            (adapter(vec![[8, 8, 8]], [32, 32], true), shape(8, 32)),
            // No f16 shaders; subgroups of 32 to 64 (which width runs is the driver's choice);
            // no square matrices; a width the operands do not divide into 1–16 groups.
            (adapter(nvidia.clone(), [32, 32], false), None),
            (adapter(vec![[16, 16, 16]], [32, 64], true), None),
            (
                adapter(vec![[8, 16, 16], [16, 8, 16]], [16, 16], true),
                None,
            ),
            (adapter(vec![[8, 8, 8]], [128, 128], true), None),
            (adapter(Vec::new(), [32, 32], true), None),
            // No subgroup builtins.
            (
                Capabilities {
                    subgroups: false,
                    ..adapter(nvidia.clone(), [32, 32], true)
                },
                None,
            ),
        ] {
            assert_eq!(
                capabilities.cooperative_matmul(),
                expected,
                "{capabilities}"
            );
            let text = capabilities.to_string();
            match expected {
                Some(CooperativeShape { side, threads }) => assert!(
                    text.ends_with(&format!(
                        "(the cooperative matmul takes {side}×{side}×{side} on \
                         {threads}-wide subgroups)"
                    )),
                    "{text}"
                ),
                None if capabilities.f16_cooperative_matrices.is_empty() => {
                    assert!(text.ends_with("f16 cooperative matrices none"), "{text}")
                }
                None => assert!(
                    text.contains("(none the cooperative matmul takes"),
                    "{text}"
                ),
            }
        }
    }
}
