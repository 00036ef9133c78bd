//! The file of measured matmul tile sizes (`WgpuBackend::keep_matmul_tiles_in`): written as
//! shapes are measured, reused by a later device instead of timing again, and replaced when it
//! is broken; a directory that cannot be written is reported, never fatal.

mod common;

use common::{assert_close, data, down, gpu, up};
use deberta_core::kernels::MatmulSpec;
use deberta_core::{Backend, CpuBackend};
use deberta_gpu::{AdapterChoice, GpuError, MeasuredTile, WgpuBackend};

/// The product shapes of the tests: `m × n × k`, all on tiled kernels.
const SHAPES: [(usize, usize, usize); 3] = [(96, 130, 40), (200, 64, 70), (128, 256, 33)];

/// A fresh device of its own (its measurements must not leak into other tests), or `None`
/// where the suite skips (see `common::gpu`).
fn own_device() -> Option<WgpuBackend> {
    gpu()?;
    Some(WgpuBackend::new(AdapterChoice::default()).expect("second device"))
}

/// Runs every product of [`SHAPES`] on `backend` (β = 0) and checks it against the CPU.
fn run_products(backend: &WgpuBackend) -> Vec<Vec<f32>> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, &(m, n, k))| {
            let a = data(m * k, 3 * i as u64 + 1, 1.0);
            let b = data(k * n, 3 * i as u64 + 2, 1.0);
            let spec = MatmulSpec::dense(m, n, k);
            let cpu = CpuBackend::new();
            let mut expected = cpu.zeros(m * n).unwrap();
            cpu.matmul(&up(&cpu, &a), &up(&cpu, &b), &mut expected, &spec)
                .unwrap();
            let mut found = backend.zeros(m * n).unwrap();
            backend
                .matmul(&up(backend, &a), &up(backend, &b), &mut found, &spec)
                .unwrap();
            let found = down(backend, &found);
            assert_close(
                &format!("{m}×{n}×{k}"),
                &down(&cpu, &expected),
                &found,
                1e-5 * k as f32,
            );
            found
        })
        .collect()
}

fn sorted(mut tiles: Vec<MeasuredTile>) -> Vec<MeasuredTile> {
    tiles.sort_by_key(|t| (t.m, t.n, t.k, t.entries, t.f16_operands));
    tiles
}

/// A fresh directory under the target's temporary directory.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_later_device_reuses_the_saved_tile_sizes_instead_of_measuring() {
    let Some(first) = own_device() else {
        return;
    };
    let dir = scratch_dir("tile-file-reuse");
    assert_eq!(first.keep_matmul_tiles_in(&dir).unwrap(), 0, "no file yet");
    let bits = run_products(&first);
    let measured = sorted(first.measured_matmul_tiles());
    assert_eq!(measured.len(), SHAPES.len(), "{measured:?}");
    let file = first.matmul_tile_file(&dir);
    let text = std::fs::read_to_string(&file).expect("the tile file was written");
    assert_eq!(first.matmul_tile_file_error(), None);
    // Change every saved choice to another strided size that every adapter runs (32 for any
    // other, 64 for 32), so that a device which measured again instead of reading the file
    // would be seen to.
    let edited: String = text
        .lines()
        .map(
            |line| match line.starts_with(|c: char| c.is_ascii_digit()) {
                true => {
                    let (shape, tile) = line.rsplit_once(' ').unwrap();
                    let other = if tile == "32" { "64" } else { "32" };
                    format!("{shape} {other}\n")
                }
                false => format!("{line}\n"),
            },
        )
        .collect();
    std::fs::write(&file, &edited).unwrap();

    let second = own_device().unwrap();
    assert_eq!(second.keep_matmul_tiles_in(&dir).unwrap(), SHAPES.len());
    let expected: Vec<MeasuredTile> = measured
        .iter()
        .map(|t| MeasuredTile {
            tile: if t.tile == 32 { 64 } else { 32 },
            vec4_loads: false,
            ..*t
        })
        .collect();
    assert_eq!(sorted(second.measured_matmul_tiles()), expected);
    // The products run on the loaded sizes (nothing measured, the file unchanged) and give the
    // same bits as on the measured ones.
    let again = run_products(&second);
    assert_eq!(sorted(second.measured_matmul_tiles()), expected);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), edited);
    for ((shape, a), b) in SHAPES.iter().zip(&bits).zip(&again) {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{shape:?}: other bits on the loaded tile size");
    }
}

#[test]
fn a_broken_file_is_an_error_naming_its_line_and_is_replaced() {
    let Some(backend) = own_device() else {
        return;
    };
    let dir = scratch_dir("tile-file-broken");
    let file = backend.matmul_tile_file(&dir);
    // A format no version writes.
    std::fs::write(&file, "# deberta wgpu matmul tile sizes\n\nformat 0\n").unwrap();
    match backend.keep_matmul_tiles_in(&dir) {
        Err(GpuError::TileCache {
            path,
            line: Some(3),
            message,
        }) => {
            assert_eq!(path, file.display().to_string());
            assert!(message.starts_with("format \"format 0\""), "{message}");
        }
        other => panic!("expected a tile-file error at line 3, got {other:?}"),
    }
    run_products(&backend);
    let reader = own_device().unwrap();
    assert_eq!(reader.keep_matmul_tiles_in(&dir).unwrap(), SHAPES.len());
    assert_eq!(
        sorted(reader.measured_matmul_tiles()),
        sorted(backend.measured_matmul_tiles())
    );
}

#[test]
fn a_directory_that_cannot_be_written_is_reported_and_the_products_still_run() {
    let Some(backend) = own_device() else {
        return;
    };
    // A regular file where the directory should be: nothing can be created under it.
    let blocked = scratch_dir("tile-file-blocked").join("not-a-directory");
    std::fs::write(&blocked, "").unwrap();
    // Reading under it fails too (not a directory): an error, the products go on.
    assert!(matches!(
        backend.keep_matmul_tiles_in(&blocked),
        Err(GpuError::TileCache { line: None, .. })
    ));
    run_products(&backend);
    let failure = backend
        .matmul_tile_file_error()
        .expect("the failed write is reported");
    assert!(failure.contains("not-a-directory"), "{failure}");
    assert_eq!(backend.measured_matmul_tiles().len(), SHAPES.len());
}
