//! The tile sizes [`MatmulTiles::Measured`] chose, per product shape: kept for the device's
//! lifetime and, where the caller names a directory, in a file per adapter, driver and matmul
//! kernel text, so that later processes on the same device reuse them instead of timing again.
//!
//! The file is a cache: every tile size gives the same bits, so a stale or edited file can only
//! make products slower, never different. It is plain text, one choice per line:
//!
//! ```text
//! # deberta wgpu matmul tile sizes … (delete the file to measure again)
//! format 2
//! adapter NVIDIA H200
//! backend Vulkan
//! driver NVIDIA 565.57.01
//! kernels 3f1c9a0b2d4e5f60
//! # m n k entries f16_operands a_k_contiguous b_k_contiguous sequential tiling
//! 1024 1536 384 1 0 1 1 0 64
//! 2048 1536 384 1 1 1 1 0 128v
//! ```
//!
//! [`MatmulTiles::Measured`]: crate::MatmulTiles::Measured

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use deberta_core::Error;

use crate::adapter::AdapterSummary;
use crate::error::{GpuError, device_error};
use crate::matmul_source::{BlockLayout, Operands, matmul_source};
use crate::ops::matmul::Tiling;

/// What makes two products the same for [`MatmulTiles::Measured`]: sizes, batch entries, the
/// operand format and the layout properties the kernel's loads depend on.
///
/// [`MatmulTiles::Measured`]: crate::MatmulTiles::Measured
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ProductShape {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) entries: usize,
    pub(crate) f16_operands: bool,
    pub(crate) a_k_contiguous: bool,
    pub(crate) b_k_contiguous: bool,
    /// The entries run one dispatch each (they accumulate into one C).
    pub(crate) sequential: bool,
}

/// A tile size [`MatmulTiles::Measured`] chose: the product's `m × n × k` over `entries` batch
/// entries, whether its operands were f16, and the tile side it runs on.
///
/// [`MatmulTiles::Measured`]: crate::MatmulTiles::Measured
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredTile {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Batch entries.
    pub entries: usize,
    /// Whether the operands were rounded to f16.
    pub f16_operands: bool,
    /// The side of the tiles it runs on (32, 64 or 128).
    pub tile: u32,
    /// Whether each thread holds a contiguous block of outputs, its operands read from
    /// workgroup memory as vec4s (else outputs 16 apart, operands read one at a time).
    pub vec4_loads: bool,
}

/// The version of the file's layout.
const FORMAT: u32 = 2;

/// The measured choices of one device, and the file they are kept in (if any).
#[derive(Debug, Default)]
pub(crate) struct MeasuredTiles(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// Per product shape, the tiled kernel measured fastest (or loaded from the file).
    choices: HashMap<ProductShape, Tiling>,
    /// Where the choices are written whenever one is added, with the header naming the device.
    file: Option<(PathBuf, String)>,
    /// The first failure to write the file (later choices are still kept in memory).
    write_error: Option<String>,
}

impl MeasuredTiles {
    /// The tiled kernel kept for `shape`, if any.
    pub(crate) fn get(&self, shape: &ProductShape) -> Result<Option<Tiling>, Error> {
        Ok(self.lock()?.choices.get(shape).copied())
    }

    /// Keeps `tiling` for `shape` and rewrites the file, if one is named (a write failure is
    /// kept for [`MeasuredTiles::write_error`], not returned: the product itself succeeded).
    pub(crate) fn insert(&self, shape: ProductShape, tiling: Tiling) -> Result<(), Error> {
        let mut state = self.lock()?;
        state.choices.insert(shape, tiling);
        if let Some((path, header)) = &state.file {
            let text = file_text(header, &state.choices);
            if let Err(e) = write_atomically(path, &text)
                && state.write_error.is_none()
            {
                state.write_error = Some(format!("{}: {e}", path.display()));
            }
        }
        Ok(())
    }

    /// From now on keeps the choices in `path` (named for `adapter` and the kernels' `code` by
    /// [`file_name`]) and adds the choices it already holds: their number, 0
    /// where there is no file yet. A file that cannot be read, is not in this format or names
    /// another adapter, driver or kernel text is an error; it is replaced at the next
    /// measurement all the same.
    pub(crate) fn keep_in(
        &self,
        path: &Path,
        adapter: &AdapterSummary,
        code: MatmulCode,
    ) -> Result<usize, GpuError> {
        let header = header(adapter, code);
        let mut state = self
            .lock()
            .map_err(|e| cache_error(path, None, e.to_string()))?;
        state.file = Some((path.to_path_buf(), header.clone()));
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(cache_error(path, None, e.to_string())),
        };
        let loaded = parse(&text, &header).map_err(|(line, why)| cache_error(path, line, why))?;
        let count = loaded.len();
        state.choices.extend(loaded);
        Ok(count)
    }

    /// The first failure to write the file, as `path: reason`.
    pub(crate) fn write_error(&self) -> Option<String> {
        self.0.lock().ok()?.write_error.clone()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, Error> {
        self.0
            .lock()
            .map_err(|_| device_error("measured matmul tiles lock poisoned"))
    }

    /// Every choice so far (largest products first).
    pub(crate) fn choices(&self) -> Vec<MeasuredTile> {
        let Ok(state) = self.0.lock() else {
            return Vec::new();
        };
        let mut out: Vec<MeasuredTile> = state
            .choices
            .iter()
            .map(|(shape, tiling)| MeasuredTile {
                m: shape.m,
                n: shape.n,
                k: shape.k,
                entries: shape.entries,
                f16_operands: shape.f16_operands,
                tile: tiling.side,
                vec4_loads: tiling.layout == BlockLayout::Contiguous,
            })
            .collect();
        out.sort_by_key(|t| {
            (
                std::cmp::Reverse(t.m * t.n * t.k * t.entries),
                t.f16_operands,
            )
        });
        out
    }
}

/// What the device's matmul kernels do besides their tiles, which the measured choices depend
/// on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MatmulCode {
    /// The kernels prefetch each step's operands ([`crate::DeviceOptions::matmul_prefetch`]).
    pub(crate) prefetched: bool,
    /// They read operands four at a time ([`crate::DeviceOptions::matmul_vector_loads`]).
    pub(crate) vector_loads: bool,
    /// The f16 kernels round their operands before converting ([`Operands::F16`]).
    pub(crate) f16_rounded: bool,
}

/// The file's name in a cache directory for `adapter`: one per adapter, driver and matmul
/// kernel `code` (a hash of the header), so that a driver update or a changed kernel measures
/// again instead of reusing choices made for other code.
pub(crate) fn file_name(adapter: &AdapterSummary, code: MatmulCode) -> String {
    format!(
        "wgpu-matmul-tiles-{:016x}.txt",
        fnv1a(header(adapter, code).as_bytes())
    )
}

/// The lines that name what the choices were measured on.
fn header(adapter: &AdapterSummary, code: MatmulCode) -> String {
    let mut kernels = Vec::new();
    for (block, layout) in [
        (2, BlockLayout::Strided),
        (4, BlockLayout::Strided),
        (8, BlockLayout::Strided),
        (4, BlockLayout::Contiguous),
        (8, BlockLayout::Contiguous),
    ] {
        for operands in [
            Operands::F32,
            Operands::F16 {
                rounded: code.f16_rounded,
            },
        ] {
            let text = matmul_source(block, layout, operands, code.prefetched);
            kernels.extend_from_slice(text.as_bytes());
        }
    }
    if !code.vector_loads {
        kernels.extend_from_slice(b"scalar operand loads");
    }
    let one_line = |s: &str| s.replace(['\n', '\r'], " ");
    format!(
        "format {FORMAT}\nadapter {}\nbackend {:?}\ndriver {}\nkernels {:016x}\n",
        one_line(&adapter.name),
        adapter.backend,
        one_line(&adapter.driver),
        fnv1a(&kernels)
    )
}

/// The file: a comment, the header, then one line per choice (sorted, so that equal choices
/// give equal files).
fn file_text(header: &str, choices: &HashMap<ProductShape, Tiling>) -> String {
    let mut lines: Vec<String> = choices
        .iter()
        .map(|(s, tiling)| {
            let flag = |b: bool| u8::from(b);
            format!(
                "{} {} {} {} {} {} {} {} {}",
                s.m,
                s.n,
                s.k,
                s.entries,
                flag(s.f16_operands),
                flag(s.a_k_contiguous),
                flag(s.b_k_contiguous),
                flag(s.sequential),
                tiling_name(*tiling)
            )
        })
        .collect();
    lines.sort();
    let mut text = String::from(
        "# deberta wgpu matmul tile sizes, measured per product shape on the adapter below \
         (a cache: delete the file to measure again)\n",
    );
    text.push_str(header);
    text.push_str(
        "# m n k entries f16_operands a_k_contiguous b_k_contiguous sequential tiling (tile side; \
         v: contiguous blocks read as vec4s)\n",
    );
    for line in lines {
        let _ = writeln!(text, "{line}");
    }
    text
}

/// The choices of a file whose header must be `header`; `Err((line, why))` otherwise.
fn parse(
    text: &str,
    header: &str,
) -> Result<HashMap<ProductShape, Tiling>, (Option<usize>, String)> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
    for expected in header.lines() {
        match lines.next() {
            Some((_, line)) if line == expected => {}
            Some((number, line))
                if line.starts_with("format ") && expected.starts_with("format ") =>
            {
                return Err((
                    Some(number),
                    format!("format \"{line}\", expected \"{expected}\""),
                ));
            }
            Some((number, line)) => {
                return Err((
                    Some(number),
                    format!(
                        "measured for another device or kernels: \"{line}\", expected \"{expected}\""
                    ),
                ));
            }
            None => return Err((None, format!("ends before \"{expected}\""))),
        }
    }
    let mut choices = HashMap::new();
    for (number, line) in lines {
        let shape_error = || {
            (
                Some(number),
                format!("\"{line}\" is not 8 whole numbers and a tiling"),
            )
        };
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [shape_fields @ .., tile] = &fields[..] else {
            return Err(shape_error());
        };
        let numbers: Vec<usize> = shape_fields
            .iter()
            .map(|f| f.parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| shape_error())?;
        let [m, n, k, entries, f16, a_k, b_k, sequential] = numbers[..] else {
            return Err(shape_error());
        };
        let flag = |value: usize| match value {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err((
                Some(number),
                format!("\"{line}\": a flag other than 0 or 1"),
            )),
        };
        let tiling = parse_tiling(tile).ok_or_else(|| {
            (
                Some(number),
                format!("\"{line}\": tiling {tile} is not 32, 64, 128, 64v or 128v"),
            )
        })?;
        let shape = ProductShape {
            m,
            n,
            k,
            entries,
            f16_operands: flag(f16)?,
            a_k_contiguous: flag(a_k)?,
            b_k_contiguous: flag(b_k)?,
            sequential: flag(sequential)?,
        };
        choices.insert(shape, tiling);
    }
    Ok(choices)
}

/// A tiling as the file names it: the tile side, with `v` for contiguous blocks read as vec4s.
fn tiling_name(tiling: Tiling) -> String {
    match tiling.layout {
        BlockLayout::Strided => tiling.side.to_string(),
        BlockLayout::Contiguous => format!("{}v", tiling.side),
    }
}

/// The tiling a file names, if it is one with a kernel.
fn parse_tiling(name: &str) -> Option<Tiling> {
    let (side, layout) = match name.strip_suffix('v') {
        Some(side) => (side, BlockLayout::Contiguous),
        None => (name, BlockLayout::Strided),
    };
    let tiling = Tiling {
        side: side.parse().ok()?,
        layout,
    };
    tiling.kernel().map(|_| tiling)
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`: a reader (or
/// another process sharing the cache) sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// 64-bit FNV-1a: a hash that is the same in every build (std's hashers promise no such
/// thing), for the file name and the kernel text.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn cache_error(path: &Path, line: Option<usize>, message: String) -> GpuError {
    GpuError::TileCache {
        path: path.display().to_string(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(m: usize, f16_operands: bool) -> ProductShape {
        ProductShape {
            m,
            n: 384,
            k: 1024,
            entries: 1,
            f16_operands,
            a_k_contiguous: true,
            b_k_contiguous: false,
            sequential: false,
        }
    }

    const HEADER: &str =
        "format 2\nadapter Some GPU\nbackend Vulkan\ndriver d 1.0\nkernels 00000000000000ff\n";

    #[test]
    fn a_file_gives_back_the_choices_it_was_written_with() {
        let strided = Tiling {
            side: 64,
            layout: BlockLayout::Strided,
        };
        let vec4 = Tiling {
            side: 128,
            layout: BlockLayout::Contiguous,
        };
        let choices = HashMap::from([(shape(1024, false), strided), (shape(2048, true), vec4)]);
        assert!(text_lines_end_with(
            &file_text(HEADER, &choices),
            &[" 64", " 128v"]
        ));
        let text = file_text(HEADER, &choices);
        assert_eq!(parse(&text, HEADER), Ok(choices.clone()));
        // Sorted lines: the same choices always give the same file (another map, another
        // iteration order).
        let again = HashMap::from([(shape(2048, true), vec4), (shape(1024, false), strided)]);
        assert_eq!(text, file_text(HEADER, &again));
        assert_eq!(parse(HEADER, HEADER), Ok(HashMap::new()));
    }

    #[test]
    fn files_of_other_devices_or_broken_lines_are_errors_with_their_line() {
        let tiling = Tiling {
            side: 64,
            layout: BlockLayout::Strided,
        };
        let text = file_text(HEADER, &HashMap::from([(shape(1024, false), tiling)]));
        let other_driver = HEADER.replace("driver d 1.0", "driver d 2.0");
        let (line, why) = parse(&text, &other_driver).unwrap_err();
        assert_eq!(line, Some(5));
        assert!(why.contains("another device"), "{why}");
        let newer = text.replace("format 2", "format 3");
        assert!(parse(&newer, HEADER).unwrap_err().1.contains("format"));
        for (bad, what) in [
            (
                "1024 384 1024 1 0 1 0 0 96",
                "is not 32, 64, 128, 64v or 128v",
            ),
            (
                "1024 384 1024 1 0 1 0 0 32v",
                "is not 32, 64, 128, 64v or 128v",
            ),
            ("1024 384 1024 1 2 1 0 0 64", "a flag other than 0 or 1"),
            ("1024 384 1024 1 0 1 0 64", "8 whole numbers and a tiling"),
            ("1024 384 x 1 0 1 0 0 64", "8 whole numbers and a tiling"),
            ("64", "8 whole numbers and a tiling"),
        ] {
            let broken = format!("{text}{bad}\n");
            let (line, why) = parse(&broken, HEADER).unwrap_err();
            assert_eq!(line, Some(broken.lines().count()), "{bad}");
            assert!(why.contains(what), "{bad}: {why}");
        }
        assert_eq!(parse("format 2\n", HEADER).unwrap_err().0, None);
    }

    /// Whether the choice lines (after the header) end with `endings`, in order.
    fn text_lines_end_with(text: &str, endings: &[&str]) -> bool {
        let choices: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        choices.len() == endings.len() && choices.iter().zip(endings).all(|(l, e)| l.ends_with(e))
    }

    proptest::proptest! {
        /// Any text is a result, never a panic; any choices come back from their file.
        #[test]
        fn any_text_parses_or_is_an_error_and_any_choices_round_trip(
            text in "[0-9 v#a-z\n]{0,200}",
            lines in proptest::collection::vec(
                (0usize..5000, 0usize..5000, 0usize..5000, 1usize..64, proptest::bool::ANY,
                 proptest::bool::ANY, 0usize..5),
                0..8,
            ),
        ) {
            let _ = parse(&text, HEADER);
            let _ = parse(&format!("{HEADER}{text}"), HEADER);
            let tilings = [
                (32, BlockLayout::Strided),
                (64, BlockLayout::Strided),
                (128, BlockLayout::Strided),
                (64, BlockLayout::Contiguous),
                (128, BlockLayout::Contiguous),
            ];
            let choices: HashMap<ProductShape, Tiling> = lines
                .into_iter()
                .map(|(m, n, k, entries, f16_operands, sequential, t)| {
                    let shape = ProductShape {
                        m,
                        n,
                        k,
                        entries,
                        f16_operands,
                        a_k_contiguous: !f16_operands,
                        b_k_contiguous: sequential,
                        sequential,
                    };
                    let (side, layout) = tilings[t];
                    (shape, Tiling { side, layout })
                })
                .collect();
            proptest::prop_assert_eq!(parse(&file_text(HEADER, &choices), HEADER), Ok(choices));
        }
    }

    #[test]
    fn the_hash_is_fnv1a() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
