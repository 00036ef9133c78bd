//! Kernel timing (`Backend::time_kernels`, `Backend::drain_kernel_times`): on an adapter with
//! timestamp queries (lavapipe has them), every dispatch of a timed stretch is counted under
//! its kernel with a positive device time, nothing is counted while timing is off, a drain
//! forgets what it handed out, and timed products give the same bits as untimed ones.

mod common;

use common::data;
use deberta_core::Backend;
use deberta_core::kernels::MatmulSpec;
use deberta_gpu::{AdapterChoice, MatmulTiles, WgpuBackend, test_backend};

/// The drained times as (kernel, dispatches, nanoseconds).
fn drain(backend: &WgpuBackend) -> Vec<(String, u64, u64)> {
    let mut times = Vec::new();
    backend
        .drain_kernel_times(&mut |kernel, dispatches, nanos| {
            times.push((kernel.to_string(), dispatches, nanos))
        })
        .unwrap();
    times
}

#[test]
fn timed_kernels_are_counted_by_kernel_and_change_nothing() {
    // A backend of its own: the shared one runs other tests' kernels concurrently.
    if test_backend().is_none() {
        return;
    }
    let backend = WgpuBackend::new(AdapterChoice::default()).unwrap();
    backend.set_matmul_tiles(MatmulTiles::Tiles32);
    let (m, n, k) = (64, 96, 80);
    let a = backend.upload(&data(m * k, 1, 1.0)).unwrap();
    let b = backend.upload(&data(k * n, 2, 1.0)).unwrap();
    let mut c = backend.zeros(m * n).unwrap();
    let spec = MatmulSpec::dense(m, n, k);
    let product = |c: &mut _| {
        backend.matmul(&a, &b, c, &spec).unwrap();
        let mut out = vec![0.0f32; m * n];
        backend.download(c, &mut out).unwrap();
        out
    };

    let untimed = product(&mut c);
    assert!(
        drain(&backend).is_empty(),
        "nothing is timed before timing is on"
    );
    assert!(
        backend.time_kernels(true).unwrap(),
        "{} has no timestamp queries",
        backend.adapter()
    );
    let mut timed = Vec::new();
    for _ in 0..3 {
        timed = product(&mut c);
    }
    backend.fill(&mut c, 1.0).unwrap();
    let times = drain(&backend);
    let count = |kernel: &str| {
        times
            .iter()
            .find(|(name, ..)| name == kernel)
            .unwrap_or_else(|| panic!("{kernel} missing from {times:?}"))
    };
    let (_, dispatches, nanos) = count("MatmulTiled32");
    assert_eq!(*dispatches, 3, "{times:?}");
    assert!(*nanos > 0, "{times:?}");
    assert_eq!(count("Fill").1, 1, "{times:?}");
    assert_eq!(times.len(), 2, "only the kernels that ran: {times:?}");
    assert!(
        drain(&backend).is_empty(),
        "a drain forgets what it handed out"
    );
    assert_eq!(
        untimed.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        timed.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "timing changed a product"
    );

    assert!(!backend.time_kernels(false).unwrap());
    product(&mut c);
    assert!(
        drain(&backend).is_empty(),
        "nothing is timed after timing is off"
    );
}
