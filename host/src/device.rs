//! Choosing the compute backend (`--backend cpu|wgpu|auto`, `--adapter NAME`) and running
//! backend-generic work on it.

use deberta_core::simd::SimdLevel;
use deberta_core::{Backend, CpuBackend};
#[cfg(feature = "gpu")]
use deberta_gpu::{AdapterChoice, DeviceOptions, MatmulTiles, WgpuBackend, list_adapters};

use crate::error::{Error, Result};

/// Sizes the CPU thread pool: the CPU backend splits all its work, sgemm included, across
/// rayon's global pool. Must run before any model work; returns the thread count.
pub fn set_threads(threads: Option<usize>) -> usize {
    let threads = threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    // An error means the pool already exists (a second call in one process): keep it.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    threads
}

/// A resolved backend request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// The CPU backend.
    Cpu,
    /// The wgpu backend on the first adapter (in order of preference) whose name contains
    /// this fragment, or the best adapter.
    Wgpu(Option<String>),
}

impl BackendChoice {
    /// Resolves `cpu`, `wgpu` or `auto` (wgpu when a hardware adapter — discrete, integrated or
    /// virtual GPU — exists, else the CPU; software adapters such as lavapipe are slower than
    /// the CPU backend and are used only when asked for with `wgpu`).
    pub fn resolve(name: &str, adapter: Option<&str>) -> Result<Self> {
        let wgpu = || BackendChoice::Wgpu(adapter.map(str::to_string));
        match name {
            "cpu" => {
                if adapter.is_some() {
                    return Err(Error::Usage(
                        "--adapter needs --backend wgpu or auto".into(),
                    ));
                }
                Ok(BackendChoice::Cpu)
            }
            "wgpu" => Ok(wgpu()),
            "auto" => Ok(if hardware_adapter(adapter) {
                wgpu()
            } else {
                BackendChoice::Cpu
            }),
            other => Err(Error::Usage(format!(
                "--backend {other}: choose cpu, wgpu or auto"
            ))),
        }
    }
}

/// Whether a hardware GPU adapter (discrete, integrated or virtual) with compute support, and
/// whose name contains `name` when given, exists.
#[cfg(feature = "gpu")]
fn hardware_adapter(name: Option<&str>) -> bool {
    list_adapters().into_iter().any(|a| {
        a.compute
            && !matches!(
                a.device_type,
                deberta_gpu::DeviceType::Cpu | deberta_gpu::DeviceType::Other
            )
            && name.is_none_or(|n| a.name.to_lowercase().contains(&n.to_lowercase()))
    })
}

/// Without the `gpu` feature there is no GPU to choose.
#[cfg(not(feature = "gpu"))]
fn hardware_adapter(_name: Option<&str>) -> bool {
    false
}

/// Work that runs on any backend.
pub trait BackendTask {
    /// What the work produces.
    type Output;
    /// Runs the work on `backend` (whose name is `backend.name()`).
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output>;
}

/// Creates the chosen backend and runs `task` on it. The CPU backend's work runs on a thread
/// of rayon's global pool: its kernels then split into pieces without handing every one of
/// them from an outside thread to the pool and back (with one thread, no handoff at all).
pub fn dispatch<T>(choice: &BackendChoice, task: T) -> Result<T::Output>
where
    T: BackendTask + Send,
    T::Output: Send,
{
    match choice {
        BackendChoice::Cpu => {
            deberta_core::simd::set_max_simd_level(cpu_simd_from_env()?);
            deberta_core::kernels::set_bf16_instructions(cpu_bf16_from_env()?);
            #[cfg(target_arch = "x86_64")]
            deberta_core::kernels::set_amx(cpu_amx_from_env()?);
            rayon::scope(|_| task.run(&CpuBackend::new()))
        }
        #[cfg(feature = "gpu")]
        BackendChoice::Wgpu(adapter) => {
            let options = DeviceOptions::from_env().map_err(|e| Error::Usage(e.to_string()))?;
            let choice = AdapterChoice {
                name_contains: adapter.clone(),
            };
            let backend = WgpuBackend::with_options(choice, options)
                .map_err(|e| Error::Usage(format!("--backend wgpu: {e}")))?;
            let tiles = matmul_tiles_from_env()?;
            backend.set_matmul_tiles(tiles);
            eprintln!("wgpu adapter: {}", backend.adapter());
            if let Some(line) = f16_products_notice(&backend, &options) {
                eprintln!("{line}");
            }
            if tiles == MatmulTiles::Measured {
                keep_matmul_tiles(&backend);
            }
            let output = task.run(&backend);
            if let Some(failure) = backend.matmul_tile_file_error() {
                eprintln!("warning: the measured matmul tile sizes were not saved: {failure}");
            }
            output
        }
        #[cfg(not(feature = "gpu"))]
        BackendChoice::Wgpu(_) => Err(Error::Usage(
            "--backend wgpu: this deberta was built without the `gpu` feature".into(),
        )),
    }
}

/// The lines (one or two) a wgpu command prints about mixed precision's f16 products where
/// they do what the user may not expect (the kernels round the operands, cooperative matrices
/// are on, a probe refused them, `on` could not be honoured); `None` where there is nothing to
/// say.
#[cfg(feature = "gpu")]
fn f16_products_notice(backend: &WgpuBackend, options: &DeviceOptions) -> Option<String> {
    if !backend.f16_products() {
        return None;
    }
    let rounding =
        (backend.f16_rounded_by_kernels() && options.f16_rounding.is_none()).then(|| {
            "f16 products: this driver's f32 → f16 conversion does not round to nearest even; \
             the kernels round each operand themselves"
                .to_string()
        });
    let kernel = match backend.cooperative_matrices() {
        Some(shape) => Some(format!(
            "mixed precision's f16 products on cooperative matrices ({side}×{side}×{side}, \
             {threads}-wide subgroups)",
            side = shape.side,
            threads = shape.threads
        )),
        None if backend.cooperative_probe_failed() => Some(
            "cooperative matrices: the cooperative-matrix matmul got its probe products wrong \
             or failed on this driver; f16 products keep the register-blocked kernels"
                .to_string(),
        ),
        None if options.cooperative_matrices == Some(true) => Some(
            "DEBERTA_WGPU_COOPERATIVE=on: this adapter cannot run the cooperative-matrix matmul \
             (it needs f16 shaders, subgroups, square 16×16 or 8×8 f16 cooperative matrices and \
             subgroups of one width); f16 products keep the register-blocked kernels"
                .to_string(),
        ),
        None => None,
    };
    match (rounding, kernel) {
        (Some(rounding), Some(kernel)) => Some(format!("{rounding}\n{kernel}")),
        (rounding, kernel) => rounding.or(kernel),
    }
}

/// What `--backend wgpu` opens on this machine with the environment's options, in one line:
/// the adapter, then how mixed precision multiplies there (f16 or f32 products; which kernels;
/// who rounds to f16, as the probes at opening found), whether the reductions use subgroups
/// and whether the optimizer updates several tensors per kernel; `None` without the `gpu`
/// feature or without an adapter.
pub fn describe_wgpu_device() -> Result<Option<String>> {
    #[cfg(feature = "gpu")]
    {
        if list_adapters().is_empty() {
            return Ok(None);
        }
        let options = DeviceOptions::from_env().map_err(|e| Error::Usage(e.to_string()))?;
        let backend = match WgpuBackend::with_options(AdapterChoice::default(), options) {
            Ok(backend) => backend,
            Err(e) => return Ok(Some(format!("fails to open: {e}"))),
        };
        let products = match backend.f16_products() {
            false => "f32 products (no SHADER_F16, or DEBERTA_WGPU_F16=off)".to_string(),
            true => {
                let kernels = match backend.cooperative_matrices() {
                    Some(shape) => format!(
                        "on cooperative matrices ({side}×{side}×{side}, {threads}-wide \
                         subgroups)",
                        side = shape.side,
                        threads = shape.threads
                    ),
                    None if backend.cooperative_probe_failed() => "on the register-blocked \
                        kernels (the cooperative matmul failed its probe on this driver)"
                        .to_string(),
                    None => "on the register-blocked kernels".to_string(),
                };
                let rounding = match backend.f16_rounded_by_kernels() {
                    true => "operands rounded to f16 by the kernels",
                    false => "operands rounded to f16 by the driver's conversion",
                };
                format!("f16 products {kernels}, {rounding}")
            }
        };
        let yes_no = |on: bool| if on { "yes" } else { "no" };
        Ok(Some(format!(
            "{}: mixed precision's {products}; subgroup reductions {}; fused attention {}; \
             optimizer tensors per kernel {}",
            backend.adapter().name,
            yes_no(backend.subgroup_reductions()),
            yes_no(backend.fused_attention()),
            if backend.multi_tensor() {
                "seven"
            } else {
                "one"
            },
        )))
    }
    #[cfg(not(feature = "gpu"))]
    Ok(None)
}

/// A one-line description of what `--backend auto` chooses on this machine.
pub fn describe_auto() -> Result<String> {
    Ok(match BackendChoice::resolve("auto", None)? {
        BackendChoice::Cpu => "cpu (no hardware GPU adapter)".to_string(),
        #[cfg(feature = "gpu")]
        BackendChoice::Wgpu(_) => match WgpuBackend::new(AdapterChoice::default()) {
            Ok(backend) => format!("wgpu on {}", backend.adapter()),
            Err(e) => format!("wgpu, which fails: {e}"),
        },
        #[cfg(not(feature = "gpu"))]
        BackendChoice::Wgpu(_) => "cpu (built without the `gpu` feature)".to_string(),
    })
}

/// The wgpu adapters found, one description each (none without the `gpu` feature): the
/// adapter, then on a second line its limits and optional features.
pub fn adapter_descriptions() -> Vec<String> {
    #[cfg(feature = "gpu")]
    return list_adapters()
        .iter()
        .map(|adapter| format!("{adapter}\n    {}", adapter.capabilities))
        .collect();
    #[cfg(not(feature = "gpu"))]
    Vec::new()
}

/// The wgpu backend's options as the environment sets them (`DeviceOptions::from_env`: the
/// `DEBERTA_WGPU_*` variables, each on or off; anything else is a usage error naming the
/// variable); `None` without the `gpu` feature.
pub fn wgpu_options() -> Result<Option<String>> {
    #[cfg(feature = "gpu")]
    return DeviceOptions::from_env()
        .map(|options| Some(options.to_string()))
        .map_err(|e| Error::Usage(e.to_string()));
    #[cfg(not(feature = "gpu"))]
    Ok(None)
}

/// `DEBERTA_CPU_SIMD`: `auto` (default: the widest the CPU has), `avx512`, `avx2` or `baseline`
/// caps the instruction set of the CPU backend's own kernels (a tuning knob: the results are
/// the same bits).
fn cpu_simd_from_env() -> Result<Option<SimdLevel>> {
    const VAR: &str = "DEBERTA_CPU_SIMD";
    let levels = [SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Baseline];
    match std::env::var(VAR).as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(None),
        Ok(name) => match levels.into_iter().find(|l| l.name() == name) {
            Some(level) => Ok(Some(level)),
            None => Err(Error::Usage(format!(
                "{VAR}={name}: expected auto, avx512, avx2 or baseline"
            ))),
        },
    }
}

/// `DEBERTA_CPU_BF16`: `auto` (default: the faster of the two on this CPU, measured once),
/// `fma` (bf16 pairs widened to f32 in registers, FMAs) or `vdpbf16ps` (AVX-512 BF16, where
/// the CPU has it) for the bf16 products at the AVX-512 level without AMX (a tuning knob: the
/// sums are the same).
fn cpu_bf16_from_env() -> Result<deberta_core::kernels::Bf16Instructions> {
    use deberta_core::kernels::Bf16Instructions;
    const VAR: &str = "DEBERTA_CPU_BF16";
    match std::env::var(VAR).as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(Bf16Instructions::Auto),
        Ok("fma") => Ok(Bf16Instructions::Fma),
        Ok("vdpbf16ps") => Ok(Bf16Instructions::Dpbf16),
        Ok(other) => Err(Error::Usage(format!(
            "{VAR}={other}: expected auto, fma or vdpbf16ps"
        ))),
    }
}

/// `DEBERTA_CPU_AMX`: `auto` (default: the bf16 and int8 products run on AMX tiles where the
/// CPU has AMX and the operating system grants it) or `off` (AVX-512 instead; a tuning and
/// comparison knob: int8 gives the same bits, bf16 sums in another order).
#[cfg(target_arch = "x86_64")]
fn cpu_amx_from_env() -> Result<bool> {
    const VAR: &str = "DEBERTA_CPU_AMX";
    match std::env::var(VAR).as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(true),
        Ok("off") => Ok(false),
        Ok(other) => Err(Error::Usage(format!("{VAR}={other}: expected auto or off"))),
    }
}

/// Keeps the measured matmul tile sizes in the directory `DEBERTA_WGPU_TILE_CACHE` names
/// (default: `$XDG_CACHE_HOME/deberta`, else `$HOME/.cache/deberta`; `off`: none), so that a
/// later run on the same adapter, driver and kernels reuses them. A file it cannot use is
/// one warning, then measured again and replaced: the sizes change speed, never results.
#[cfg(feature = "gpu")]
fn keep_matmul_tiles(backend: &WgpuBackend) {
    let Some(dir) = matmul_tile_dir_from_env() else {
        return;
    };
    match backend.keep_matmul_tiles_in(&dir) {
        Ok(0) => {}
        Ok(shapes) => eprintln!(
            "matmul tile sizes of {shapes} product shapes from {}",
            backend.matmul_tile_file(&dir).display()
        ),
        Err(e) => eprintln!("warning: {e}; measuring again"),
    }
}

/// The directory of the measured matmul tile sizes (see [`keep_matmul_tiles`]), if any.
#[cfg(feature = "gpu")]
fn matmul_tile_dir_from_env() -> Option<std::path::PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    match set("DEBERTA_WGPU_TILE_CACHE") {
        Some(value) if value == "off" => None,
        Some(dir) => Some(dir.into()),
        None => set("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .filter(|dir| dir.is_absolute())
            .or_else(|| set("HOME").map(|home| std::path::Path::new(&home).join(".cache")))
            .map(|cache| cache.join("deberta")),
    }
}

/// `DEBERTA_WGPU_MATMUL_TILES`: `measured` (default: each product shape's tiled kernel timed
/// on the device), `auto` (the occupancy rule), or `128`, `64`, `32` forcing the tile size of
/// the wgpu matrix products, `128v`, `64v` the tile size with contiguous blocks read as vec4s
/// (a tuning knob: the results are the same).
#[cfg(feature = "gpu")]
fn matmul_tiles_from_env() -> Result<MatmulTiles> {
    const VAR: &str = "DEBERTA_WGPU_MATMUL_TILES";
    match std::env::var(VAR).as_deref() {
        Err(_) | Ok("") | Ok("measured") => Ok(MatmulTiles::Measured),
        Ok("auto") => Ok(MatmulTiles::Auto),
        Ok("128") => Ok(MatmulTiles::Tiles128),
        Ok("64") => Ok(MatmulTiles::Tiles64),
        Ok("32") => Ok(MatmulTiles::Tiles32),
        Ok("128v") => Ok(MatmulTiles::Tiles128Vec4),
        Ok("64v") => Ok(MatmulTiles::Tiles64Vec4),
        Ok(other) => Err(Error::Usage(format!(
            "{VAR}={other}: expected measured, auto, 128, 64, 32, 128v or 64v"
        ))),
    }
}
