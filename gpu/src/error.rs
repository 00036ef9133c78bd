//! Errors of the wgpu backend. Setting up a device fails with a [`GpuError`] that says what was
//! found; kernel calls return `deberta_core::Error` like every backend, with
//! [`deberta_core::Error::Device`] for failures of the device itself.

use std::fmt;

/// Why the wgpu backend could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuError {
    /// No adapter with compute shaders matched the request.
    NoAdapter {
        /// The requested name fragment, if any.
        name_contains: Option<String>,
        /// Every adapter that was found (`name (backend, type)`), usable or not.
        found: Vec<String>,
    },
    /// The adapter refused to open a device.
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// The file of measured matmul tile sizes could not be read or parsed
    /// ([`crate::WgpuBackend::keep_matmul_tiles_in`]).
    TileCache {
        /// The file.
        path: String,
        /// The line at fault (1-based), if one is.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A `DEBERTA_WGPU_*` switch ([`crate::DeviceOptions::from_env`]) holds none of the values
    /// it takes.
    Environment {
        /// The variable.
        variable: &'static str,
        /// What it holds.
        value: String,
        /// The values it takes, e.g. `on or off`.
        expected: &'static str,
    },
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoAdapter {
                name_contains,
                found,
            } => {
                match name_contains {
                    Some(name) => {
                        write!(f, "no GPU adapter with compute support matches \"{name}\"")?
                    }
                    None => write!(f, "no GPU adapter with compute support was found")?,
                }
                if found.is_empty() {
                    write!(
                        f,
                        " (no adapters at all: install a Vulkan, Metal or DX12 driver, e.g. Mesa's \
                         lavapipe with `apt-get install mesa-vulkan-drivers libvulkan1`; \
                         WGPU_BACKEND restricts the backends searched)"
                    )
                } else {
                    write!(f, "; adapters found: {}", found.join("; "))
                }
            }
            GpuError::TileCache {
                path,
                line,
                message,
            } => match line {
                Some(line) => write!(f, "matmul tile file {path}, line {line}: {message}"),
                None => write!(f, "matmul tile file {path}: {message}"),
            },
            GpuError::Environment {
                variable,
                value,
                expected,
            } => {
                write!(f, "{variable}={value:?}: expected {expected}")
            }
            GpuError::RequestDevice { adapter, message } => {
                write!(
                    f,
                    "adapter \"{adapter}\" could not open a device: {message}"
                )
            }
        }
    }
}

impl std::error::Error for GpuError {}

impl From<GpuError> for deberta_core::Error {
    fn from(error: GpuError) -> Self {
        deberta_core::Error::Device {
            what: match error {
                GpuError::NoAdapter { .. } => "no GPU adapter with compute support",
                GpuError::RequestDevice { .. } => "the GPU adapter could not open a device",
                GpuError::TileCache { .. } => "the matmul tile file could not be read",
                GpuError::Environment { .. } => "a DEBERTA_WGPU_* variable holds no value it takes",
            },
        }
    }
}

/// A [`deberta_core::Error::Device`] with a fixed message.
pub(crate) fn device_error(what: &'static str) -> deberta_core::Error {
    deberta_core::Error::Device { what }
}

/// The first error message the device reported (validation, out of memory, shader
/// compilation), kept for [`WgpuBackend::device_error`](crate::WgpuBackend::device_error).
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorLog(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl ErrorLog {
    /// Records `message` unless an earlier one is kept.
    pub(crate) fn record(&self, message: String) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(message);
        }
    }

    /// The kept message.
    pub(crate) fn first(&self) -> Option<String> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}
