//! The wgpu backend that test suites share (this crate's and the workspace's model suite),
//! with one policy for a machine without an adapter.

use std::io::Write;
use std::sync::OnceLock;

use crate::{AdapterChoice, WgpuBackend};

/// The default adapter's backend, created once per test binary, or `None` when this machine
/// has no adapter. Under `CI=true` (or `CI=1`) a missing adapter panics, failing the test;
/// otherwise a notice goes straight to the terminal (past the test harness's capture), so a
/// skip is never silent.
pub fn test_backend() -> Option<&'static WgpuBackend> {
    static GPU: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let backend = GPU.get_or_init(|| match WgpuBackend::new(AdapterChoice::default()) {
        Ok(backend) => {
            let _ = writeln!(std::io::stderr(), "wgpu tests run on {}", backend.adapter());
            Ok(backend)
        }
        Err(error) => {
            if !ci {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: the wgpu tests found no GPU adapter (set CI=true to make this a \
                     failure): {error}"
                );
            }
            Err(error.to_string())
        }
    });
    match backend {
        Ok(backend) => Some(backend),
        Err(message) if ci => {
            panic!("CI=true requires a GPU adapter for the wgpu tests: {message}")
        }
        Err(_) => None,
    }
}
