//! Choosing the compute backend (`--backend cpu|wgpu|auto`, `--adapter NAME`) and running
//! backend-generic work on it.

use deberta_core::{Backend, CpuBackend};
use deberta_gpu::{AdapterChoice, MatmulTiles, WgpuBackend, list_adapters};

use crate::error::{Error, Result};

/// A resolved backend request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// The CPU backend.
    Cpu,
    /// The wgpu backend on the adapter `choice` selects.
    Wgpu(AdapterChoice),
}

impl BackendChoice {
    /// Resolves `cpu`, `wgpu` or `auto` (wgpu when a hardware adapter — discrete, integrated or
    /// virtual GPU — exists, else the CPU; software adapters such as lavapipe are slower than
    /// the CPU backend and are used only when asked for with `wgpu`).
    pub fn resolve(name: &str, adapter: Option<&str>) -> Result<Self> {
        let wgpu = || {
            BackendChoice::Wgpu(AdapterChoice {
                name_contains: adapter.map(str::to_string),
            })
        };
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
            "auto" => {
                let hardware = list_adapters().into_iter().any(|a| {
                    a.compute
                        && !matches!(
                            a.device_type,
                            deberta_gpu::DeviceType::Cpu | deberta_gpu::DeviceType::Other
                        )
                        && adapter.is_none_or(|n| a.name.to_lowercase().contains(&n.to_lowercase()))
                });
                Ok(if hardware { wgpu() } else { BackendChoice::Cpu })
            }
            other => Err(Error::Usage(format!(
                "--backend {other}: choose cpu, wgpu or auto"
            ))),
        }
    }
}

/// Work that runs on any backend.
pub trait BackendTask {
    /// What the work produces.
    type Output;
    /// Runs the work on `backend` (whose name is `backend.name()`).
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output>;
}

/// Creates the chosen backend and runs `task` on it.
pub fn dispatch<T: BackendTask>(choice: &BackendChoice, task: T) -> Result<T::Output> {
    match choice {
        BackendChoice::Cpu => task.run(&CpuBackend::new()),
        BackendChoice::Wgpu(adapter) => {
            let backend = WgpuBackend::new(adapter.clone())
                .map_err(|e| Error::Usage(format!("--backend wgpu: {e}")))?;
            backend.set_matmul_tiles(matmul_tiles_from_env()?);
            eprintln!("wgpu adapter: {}", backend.adapter());
            task.run(&backend)
        }
    }
}

/// `DEBERTA_WGPU_MATMUL_TILES`: `auto` (default), `64` or `32` forces the tile size of the
/// wgpu matrix products (a tuning knob: the results are the same).
fn matmul_tiles_from_env() -> Result<MatmulTiles> {
    const VAR: &str = "DEBERTA_WGPU_MATMUL_TILES";
    match std::env::var(VAR).as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(MatmulTiles::Auto),
        Ok("64") => Ok(MatmulTiles::Large),
        Ok("32") => Ok(MatmulTiles::Small),
        Ok(other) => Err(Error::Usage(format!(
            "{VAR}={other}: expected auto, 64 or 32"
        ))),
    }
}
