//! The opened device and everything shared by the tensors and kernels of one backend: queue,
//! limits, buffer pools, pipeline cache, command recorder and the first reported error.

use std::sync::{Arc, Mutex};

use deberta_core::Error;

use crate::adapter::{AdapterChoice, AdapterSummary, CooperativeShape, instance, select};
use crate::error::{ErrorLog, GpuError, device_error};
use crate::kernels::Variant;
use crate::measured_tiles::{MatmulCode, MeasuredTiles};
use crate::ops::matmul::TilePolicy;
use crate::pipelines::Pipelines;
use crate::pool::{Pool, PooledBuffer};
use crate::recorder::{ARENA_BYTES, Recorder};

/// Buffer usages of every tensor.
const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// One device and its shared state.
#[derive(Debug)]
pub(crate) struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) adapter: AdapterSummary,
    pub(crate) limits: wgpu::Limits,
    /// Tensors and indices.
    pub(crate) pool: Arc<Pool>,
    /// Host-mappable staging buffers for downloads.
    pub(crate) readback: Pool,
    pub(crate) pipelines: Pipelines,
    pub(crate) recorder: Mutex<Recorder>,
    /// Kernel parameters of the commands being recorded (dynamic uniform offsets).
    pub(crate) arena: wgpu::Buffer,
    /// Bytes between two parameter blocks in the arena.
    pub(crate) slot: u64,
    /// Whether recorded kernels are submitted every
    /// [`EARLY_SUBMIT_DISPATCHES`](crate::recorder::EARLY_SUBMIT_DISPATCHES)
    /// ([`DeviceOptions::early_submission`]).
    pub(crate) early_submission: bool,
    /// Whether the kernels of a submission share one compute pass
    /// ([`DeviceOptions::shared_pass`]).
    pub(crate) shared_pass: bool,
    /// Whether an optimizer's tensors share kernels ([`DeviceOptions::multi_tensor`]).
    pub(crate) multi_tensor: bool,
    /// Bound where a kernel's optional read-only operand is absent.
    pub(crate) absent_input: PooledBuffer,
    /// Bound where a kernel's optional output is absent.
    pub(crate) absent_output: PooledBuffer,
    pub(crate) errors: ErrorLog,
    /// Which tiled matmul kernel products use.
    pub(crate) matmul_tiles: TilePolicy,
    /// The tile size measured fastest per product shape ([`MatmulTiles::Measured`]).
    ///
    /// [`MatmulTiles::Measured`]: crate::MatmulTiles::Measured
    pub(crate) measured_tiles: MeasuredTiles,
    /// Whether the device was opened with `SHADER_F16`, so that f16 products can run.
    pub(crate) f16_products: bool,
    /// Whether the workgroup reductions use subgroup operations: the device was opened with
    /// `SUBGROUP` and [`DeviceOptions::subgroup_reductions`] asks for them.
    pub(crate) subgroup_reductions: bool,
    /// Whether the device was opened with `TIMESTAMP_QUERY`, so that kernels can be timed.
    pub(crate) timestamps: bool,
    /// Whether the kernels are compiled with naga's loop bounds ([`DeviceOptions::loop_bounds`]).
    pub(crate) loop_bounds: bool,
    /// The configuration of the cooperative matrices the device was opened with, if any: f16
    /// products run on them.
    pub(crate) cooperative: Option<CooperativeShape>,
    /// Whether the device would have had cooperative matrices by default but was opened again
    /// without them because the probe's products were not exact or failed
    /// ([`DeviceOptions::cooperative_matrices`]).
    pub(crate) cooperative_probe_failed: bool,
    /// Whether the tiled matmuls prefetch ([`DeviceOptions::matmul_prefetch`]).
    pub(crate) matmul_prefetch: bool,
    /// Whether attention runs the fused kernels where they take the shape
    /// ([`DeviceOptions::fused_attention`]).
    pub(crate) fused_attention: bool,
    /// Whether the f16 matmuls round their operands before converting them
    /// ([`DeviceOptions::f16_rounding`]).
    pub(crate) f16_rounded: bool,
    /// Whether the tiled matmuls read operands that allow it four elements at a time
    /// ([`DeviceOptions::matmul_vector_loads`]).
    pub(crate) matmul_vector_loads: bool,
}

/// Which optional device features the backend uses where the adapter has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Ask for `SHADER_F16`, so that mixed precision multiplies f16 operands (else f32).
    pub f16_products: bool,
    /// Ask for `SUBGROUP`, so that the workgroup reductions of softmax, layer norm, the losses
    /// and sums combine each subgroup with one subgroup operation (else a tree in workgroup
    /// memory). The sums are then added in another order: other bits, the same tolerances.
    pub subgroup_reductions: bool,
    /// Compile the kernels with naga's loop bounds: a 64-bit iteration counter added to every
    /// loop, which wgpu inserts by default so that an untrusted shader's infinite loop cannot be
    /// undefined behaviour. Ours all terminate, and the counter can keep a driver's compiler
    /// from unrolling loops of a constant trip count (gfx-rs/wgpu#7698), which then leaves the
    /// arrays they index in local memory; off by default. Results are the same either way.
    pub loop_bounds: bool,
    /// Ask for `EXPERIMENTAL_COOPERATIVE_MATRIX` where the adapter can run the
    /// cooperative-matrix matmul ([`Capabilities::cooperative_matmul`]), so that the f16
    /// products of mixed precision run on it (tensor cores) instead of the register-blocked
    /// kernels, once a probe at opening (`cooperative_probe.rs`: products whose exact result
    /// any order of addition gives) has found the kernel exact on this driver. `None` (the
    /// default): on a GPU, and where the device does not open with the feature or the probe
    /// fails, the register-blocked kernels ([`WgpuBackend::cooperative_probe_failed`] says
    /// which); off on a software adapter, which runs the matrices as subgroup operations.
    /// `Some(true)`: on every adapter that can run it, software ones too (CI runs it on Mesa
    /// 26's lavapipe), and a failed probe is an error. `Some(false)`: off.
    ///
    /// [`Capabilities::cooperative_matmul`]: crate::Capabilities::cooperative_matmul
    /// [`WgpuBackend::cooperative_probe_failed`]: crate::WgpuBackend::cooperative_probe_failed
    pub cooperative_matrices: Option<bool>,
    /// The tiled matmuls read each step's operands into registers during the step before,
    /// while the current step's multiply-adds run (hiding the device-memory latency behind
    /// them), instead of at the step itself. The same sums either way; on by default.
    pub matmul_prefetch: bool,
    /// The tiled matmuls read each group of four neighbouring operands with one vec4 load from
    /// device memory where the operand's layout allows it (a unit stride along the group, the
    /// offset and other strides multiples of 4), instead of four scalar loads. The same values
    /// either way; on by default.
    pub matmul_vector_loads: bool,
    /// Submit the recorded kernels every 64, so that the device
    /// runs them while the host records the next ones, instead of only when the host waits for
    /// a result (a loss, sampled tokens) or 4,096 are recorded, which leaves the device idle
    /// while the host records each phase of a training step. The same kernels in the same
    /// order; on by default.
    pub early_submission: bool,
    /// Record the kernels of a submission into one compute pass instead of a pass each: the
    /// host's cost of recording and finishing a kernel is about 40 % lower (wgpu encodes and
    /// validates every pass on its own). wgpu orders each dispatch after the writes it reads
    /// either way; the same kernels in the same order. On by default.
    pub shared_pass: bool,
    /// Several tensors of an optimizer per kernel: the first stages of their gradients' squared
    /// norms seven to a dispatch (`reduce_squares_many`) and their Adam updates seven to a
    /// dispatch (`adam_update_many`, where the adapter binds its 29 storage buffers), instead
    /// of a kernel per tensor: the same arithmetic, the same bits; a nano 4×128 step has 204
    /// fewer kernels. `None` (the default): on a GPU, off on a software adapter (lavapipe),
    /// which runs every branch of the kernel that picks a workgroup's tensor, its accesses
    /// masked, and so is slower with them (a nano 1×32 step 155–179 against 141–164 ms).
    pub multi_tensor: Option<bool>,
    /// The f16 matmuls round each operand to nearest even in integer arithmetic before
    /// converting it (`Some(true)`), or leave the rounding to the driver's conversion
    /// (`Some(false)`: wrong on a driver that truncates, for measurements only). `None` (the
    /// default): the driver's conversion where a probe at opening finds it rounds to nearest
    /// even with overflow to infinity (`f16_probe.rs`), else the kernels' rounding. The same
    /// bits on a driver that rounds to nearest even.
    pub f16_rounding: Option<bool>,
    /// Attention (inference, and training's forward and backward) on the fused tiled kernels
    /// where they take the shape: one pass over key tiles, no probabilities kept, O(S) memory
    /// per query row. Off: the provided composition of matmuls (mixed precision's f16 products,
    /// so on cooperative matrices where the device has them), relative-score, softmax and
    /// dropout kernels, with its O(S²) probabilities, as PyTorch runs it — a measurement of
    /// what the fused kernels' f32 arithmetic costs against tensor cores. On by default.
    pub fused_attention: bool,
}

impl Default for DeviceOptions {
    /// Every feature the adapter offers; no loop bounds, cooperative matrices on a GPU,
    /// prefetching matmuls reading operands four at a time.
    fn default() -> Self {
        DeviceOptions {
            f16_products: true,
            subgroup_reductions: true,
            loop_bounds: false,
            cooperative_matrices: None,
            matmul_prefetch: true,
            matmul_vector_loads: true,
            early_submission: true,
            shared_pass: true,
            multi_tensor: None,
            f16_rounding: None,
            fused_attention: true,
        }
    }
}

impl std::fmt::Display for DeviceOptions {
    /// Every option with its environment variable and state, e.g. `DEBERTA_WGPU_F16 on, ...`
    /// (`deberta info` prints it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options = [
            ("DEBERTA_WGPU_F16", self.f16_products),
            ("DEBERTA_WGPU_SUBGROUPS", self.subgroup_reductions),
            ("DEBERTA_WGPU_LOOP_BOUNDS", self.loop_bounds),
            ("DEBERTA_WGPU_MATMUL_PREFETCH", self.matmul_prefetch),
            ("DEBERTA_WGPU_MATMUL_VECTOR_LOADS", self.matmul_vector_loads),
            ("DEBERTA_WGPU_EARLY_SUBMIT", self.early_submission),
            ("DEBERTA_WGPU_SHARED_PASS", self.shared_pass),
            ("DEBERTA_WGPU_FUSED_ATTENTION", self.fused_attention),
        ];
        for (i, (name, on)) in options.into_iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{name} {}", if on { "on" } else { "off" })?;
        }
        let automatic = |switch: Option<bool>, auto: &'static str| match switch {
            Some(true) => "on",
            Some(false) => "off",
            None => auto,
        };
        let cooperative = automatic(
            self.cooperative_matrices,
            "auto (on for a GPU whose cooperative matrices the matmul takes, once its probe \
             products are exact)",
        );
        let multi_tensor = automatic(
            self.multi_tensor,
            "auto (on for a GPU, off for a software adapter)",
        );
        let f16_rounding = automatic(
            self.f16_rounding,
            "auto (on unless the driver's f16 conversion rounds to nearest even)",
        );
        write!(
            f,
            ", DEBERTA_WGPU_COOPERATIVE {cooperative}, DEBERTA_WGPU_MULTI_TENSOR {multi_tensor}, \
             DEBERTA_WGPU_F16_ROUNDING {f16_rounding}"
        )
    }
}

impl DeviceOptions {
    /// [`DeviceOptions::default`], changed by the environment: `DEBERTA_WGPU_F16=off` (mixed
    /// precision then falls back to f32 products, as on an adapter without the feature),
    /// `DEBERTA_WGPU_SUBGROUPS=off` (the tree reductions), `DEBERTA_WGPU_LOOP_BOUNDS=on`
    /// (naga's loop bounds), `DEBERTA_WGPU_COOPERATIVE=on|off|auto` (cooperative matrices on
    /// every adapter that can run the kernel, or on none; unset or `auto`: on a GPU),
    /// `DEBERTA_WGPU_MATMUL_PREFETCH=off` (no prefetching),
    /// `DEBERTA_WGPU_MATMUL_VECTOR_LOADS=off` (scalar operand loads),
    /// `DEBERTA_WGPU_EARLY_SUBMIT=off` (submissions only when the host waits or the parameter
    /// arena is full), `DEBERTA_WGPU_SHARED_PASS=off` (a compute pass per kernel),
    /// `DEBERTA_WGPU_FUSED_ATTENTION=off` (attention composed of unfused kernels) and
    /// `DEBERTA_WGPU_MULTI_TENSOR=on|off|auto` (several tensors of an optimizer per kernel, or
    /// one; unset or `auto`: by adapter) and `DEBERTA_WGPU_F16_ROUNDING=on|off|auto` (the f16
    /// matmuls round their operands themselves, or leave it to the driver; unset or `auto`: by
    /// the probe). A variable set to anything else (an empty one counts as unset) is an error
    /// naming it, not a silent default.
    pub fn from_env() -> Result<Self, GpuError> {
        // `auto` (`automatic`) is unset for the switches whose default the device decides.
        let read = |name: &'static str, automatic: bool| -> Result<Option<bool>, GpuError> {
            let expected = match automatic {
                true => "on, off or auto",
                false => "on or off",
            };
            match std::env::var(name) {
                Err(std::env::VarError::NotPresent) => Ok(None),
                Ok(value) if value.is_empty() => Ok(None),
                Ok(value) if value == "on" => Ok(Some(true)),
                Ok(value) if value == "off" => Ok(Some(false)),
                Ok(value) if automatic && value == "auto" => Ok(None),
                Ok(value) => Err(GpuError::Environment {
                    variable: name,
                    value,
                    expected,
                }),
                Err(std::env::VarError::NotUnicode(value)) => Err(GpuError::Environment {
                    variable: name,
                    value: value.to_string_lossy().into_owned(),
                    expected,
                }),
            }
        };
        let switch = |name| read(name, false);
        let automatic = |name| read(name, true);
        let defaults = DeviceOptions::default();
        let or = |name, default: bool| Ok::<_, GpuError>(switch(name)?.unwrap_or(default));
        Ok(DeviceOptions {
            f16_products: or("DEBERTA_WGPU_F16", defaults.f16_products)?,
            subgroup_reductions: or("DEBERTA_WGPU_SUBGROUPS", defaults.subgroup_reductions)?,
            loop_bounds: or("DEBERTA_WGPU_LOOP_BOUNDS", defaults.loop_bounds)?,
            cooperative_matrices: automatic("DEBERTA_WGPU_COOPERATIVE")?,
            matmul_prefetch: or("DEBERTA_WGPU_MATMUL_PREFETCH", defaults.matmul_prefetch)?,
            matmul_vector_loads: or(
                "DEBERTA_WGPU_MATMUL_VECTOR_LOADS",
                defaults.matmul_vector_loads,
            )?,
            early_submission: or("DEBERTA_WGPU_EARLY_SUBMIT", defaults.early_submission)?,
            shared_pass: or("DEBERTA_WGPU_SHARED_PASS", defaults.shared_pass)?,
            multi_tensor: automatic("DEBERTA_WGPU_MULTI_TENSOR")?,
            f16_rounding: automatic("DEBERTA_WGPU_F16_ROUNDING")?,
            fused_attention: or("DEBERTA_WGPU_FUSED_ATTENTION", defaults.fused_attention)?,
        })
    }
}

impl Gpu {
    /// Opens the adapter `choice` selects, with the best limits it offers and the features of
    /// `options` it has.
    pub(crate) fn open(choice: &AdapterChoice, options: DeviceOptions) -> Result<Self, GpuError> {
        let instance = instance();
        let adapter = select(&instance, choice)?;
        let summary = crate::adapter::summary(&adapter);
        let wanted = |on: bool, feature: wgpu::Features| match on {
            true => feature,
            false => wgpu::Features::empty(),
        };
        // Cooperative matrices where the caller asked for them (or, by default, on a GPU) and
        // the adapter reports a configuration the kernel takes.
        let cooperative = summary.capabilities.cooperative_matmul().filter(|_| {
            options.f16_products
                && options
                    .cooperative_matrices
                    .unwrap_or(summary.device_type != wgpu::DeviceType::Cpu)
        });
        // Timestamps cost nothing until kernel timing is switched on.
        let features = adapter.features()
            & (wanted(options.f16_products, wgpu::Features::SHADER_F16)
                | wanted(
                    options.subgroup_reductions || cooperative.is_some(),
                    wgpu::Features::SUBGROUP,
                )
                | wgpu::Features::TIMESTAMP_QUERY);
        // Everything the adapter offers (workgroup memory, invocations, buffer sizes); should a
        // driver refuse its own maximum, WebGPU's defaults, which every adapter grants.
        let request = |cooperative: Option<CooperativeShape>, required_limits: wgpu::Limits| {
            let (required_features, experimental_features) = match cooperative {
                // SAFETY: the token unlocks only `EXPERIMENTAL_COOPERATIVE_MATRIX`, requested
                // where the adapter reports square f16 → f32 matrices of the shape's side and
                // subgroups of exactly the shape's width; the one kernel using it
                // (`matmul_cooperative.wgsl`, written for that shape) does no more than that
                // configuration allows: a whole subgroup, in uniform control flow, loads
                // matrices of that side from workgroup memory inside its arrays, multiply-adds
                // them and stores the results there, or into C where the whole tile lies inside
                // C with its rows on 16-byte boundaries (`stores_directly`); the probe at
                // opening checks the products before any other kernel reads them.
                Some(_) => (
                    features | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
                    unsafe { wgpu::ExperimentalFeatures::enabled() },
                ),
                None => (features, wgpu::ExperimentalFeatures::disabled()),
            };
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("deberta"),
                required_features,
                required_limits,
                experimental_features,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            }))
            .map(|(device, queue)| (device, queue, cooperative))
        };
        let multi_tensor = options
            .multi_tensor
            .unwrap_or(summary.device_type != wgpu::DeviceType::Cpu);
        let open_with = |cooperative| {
            request(cooperative, adapter.limits())
                .or_else(|_| request(cooperative, wgpu::Limits::default()))
        };
        // By default, a device that does not open with the experimental feature opens without.
        let (device, queue, cooperative) = open_with(cooperative)
            .or_else(|error| match (cooperative, options.cooperative_matrices) {
                (Some(_), None) => open_with(None),
                _ => Err(error),
            })
            .map_err(|e| GpuError::RequestDevice {
                adapter: summary.name.clone(),
                message: e.to_string(),
            })?;
        let limits = device.limits();
        let errors = ErrorLog::default();
        let log = errors.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            log.record(error.to_string())
        }));
        let max_tensor = limits
            .max_buffer_size
            .min(limits.max_storage_buffer_binding_size);
        let pool = Arc::new(Pool::new(device.clone(), TENSOR_USAGE, max_tensor));
        let readback = Pool::new(
            device.clone(),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            limits.max_buffer_size,
        );
        let slot = u64::from(limits.min_uniform_buffer_offset_alignment).max(256);
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kernel parameters"),
            size: ARENA_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let placeholder = |pool: &Pool| {
            pool.take(4).map_err(|e| GpuError::RequestDevice {
                adapter: summary.name.clone(),
                message: e.to_string(),
            })
        };
        let absent_input = placeholder(&pool)?;
        let absent_output = placeholder(&pool)?;
        // The reductions use subgroups where asked; the cooperative kernel reads its subgroup's
        // index, so a device opened for it has them either way.
        let subgroup_reductions =
            options.subgroup_reductions && features.contains(wgpu::Features::SUBGROUP);
        let variant = Variant {
            subgroup_reductions,
            matmul_prefetch: options.matmul_prefetch,
            cooperative: cooperative.unwrap_or(CooperativeShape::TENSOR_CORES),
            f16_rounded: options.f16_rounding.unwrap_or(true),
        };
        let mut gpu = Gpu {
            device,
            queue,
            adapter: summary,
            limits,
            pool,
            readback,
            pipelines: Pipelines::new(variant, options.loop_bounds),
            recorder: Mutex::new(Recorder::default()),
            arena,
            slot,
            early_submission: options.early_submission,
            shared_pass: options.shared_pass,
            multi_tensor,
            absent_input,
            absent_output,
            errors,
            matmul_tiles: TilePolicy::default(),
            measured_tiles: MeasuredTiles::default(),
            f16_products: features.contains(wgpu::Features::SHADER_F16),
            subgroup_reductions,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            loop_bounds: options.loop_bounds,
            cooperative,
            cooperative_probe_failed: false,
            matmul_prefetch: options.matmul_prefetch,
            fused_attention: options.fused_attention,
            matmul_vector_loads: options.matmul_vector_loads,
            f16_rounded: variant.f16_rounded,
        };
        if gpu.f16_products && options.f16_rounding.is_none() {
            // The kernels round until the probe has found the driver's conversion exact; the
            // pipelines are compiled on first use, so none of the other variant exists yet
            // (the probe's own module does not depend on it).
            let exact =
                gpu.conversion_rounds_to_nearest_even()
                    .map_err(|e| GpuError::RequestDevice {
                        adapter: gpu.adapter.name.clone(),
                        message: format!("probing the f16 conversion: {e}"),
                    })?;
            if exact {
                gpu.f16_rounded = false;
                gpu.pipelines = Pipelines::new(
                    Variant {
                        f16_rounded: false,
                        ..variant
                    },
                    options.loop_bounds,
                );
            }
        }
        if gpu.cooperative.is_some() {
            let probed = gpu.cooperative_products_exact();
            let refused = |message: String| GpuError::RequestDevice {
                adapter: gpu.adapter.name.clone(),
                message: format!("DEBERTA_WGPU_COOPERATIVE=on: {message} (set it to auto or off)"),
            };
            match (probed, options.cooperative_matrices) {
                (Ok(true), _) => {}
                (Ok(false), Some(true)) => {
                    return Err(refused(
                        "the cooperative-matrix matmul gives this driver's probe products wrong"
                            .into(),
                    ));
                }
                (Err(e), Some(true)) => {
                    return Err(refused(format!(
                        "probing the cooperative-matrix matmul failed: {e}"
                    )));
                }
                // By default, a kernel that computes wrong products or fails on this driver (a
                // shader it cannot compile leaves its error on the device, which fails every
                // later transfer) leaves the device: it opens again without cooperative
                // matrices.
                (_, _) => {
                    let without = DeviceOptions {
                        cooperative_matrices: Some(false),
                        ..options
                    };
                    let mut gpu = Gpu::open(choice, without)?;
                    gpu.cooperative_probe_failed = true;
                    return Ok(gpu);
                }
            }
        }
        Ok(gpu)
    }

    /// What the matmul kernels do besides their tiles (the measured tiles depend on it).
    pub(crate) fn matmul_code(&self) -> MatmulCode {
        MatmulCode {
            prefetched: self.matmul_prefetch,
            vector_loads: self.matmul_vector_loads,
            f16_rounded: self.f16_rounded,
        }
    }

    /// Submits everything recorded and waits until the device has run it.
    pub(crate) fn wait(&self) -> Result<(), Error> {
        self.flush()?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|_| Error::Device {
                what: "waiting for the GPU failed",
            })?;
        self.check_errors()
    }

    /// `Err` if the device has reported an error since it was opened.
    pub(crate) fn check_errors(&self) -> Result<(), Error> {
        match self.errors.first() {
            Some(_) => Err(device_error(
                "the GPU reported an error (WgpuBackend::device_error has its message)",
            )),
            None => Ok(()),
        }
    }

    /// The workgroup grid for `groups` workgroups of a 1-D launch: `x` up to the per-dimension
    /// limit, the rest in `y` (kernels linearise `wid.y · nwg.x + wid.x`).
    pub(crate) fn grid(&self, groups: u64) -> Result<[u32; 3], Error> {
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x).max(1);
        if y > max {
            return Err(device_error("launch exceeds the device's workgroup grid"));
        }
        Ok([x as u32, y as u32, 1])
    }
}
