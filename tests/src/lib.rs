//! Shared helpers of the cross-crate test suites: fixture paths, tensor comparison with
//! reported worst errors, and running the `deberta` binary.

use std::path::{Path, PathBuf};

use deberta_core::model::{AttentionProbs, HostBatch};
use deberta_core::{Backend, Precision};
use deberta_host::checkpoint::{TensorMap, read_tensor_file};
use deberta_host::inference::Session;
use deberta_host::model_dir::load_model_dir;
use deberta_host::tensor::HostTensor;

/// The fixture sets produced by Hugging Face transformers (see `fixtures/README.md`).
pub const MODEL_FIXTURES: &[&str] = &["tiny", "long", "c2p-only", "p2c-only", "v2style"];

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Reads a tensor file, panicking with its path on failure (tests only).
pub fn load(path: &Path) -> TensorMap {
    read_tensor_file(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The float values of a tensor (integers converted), panicking if absent.
pub fn values(map: &TensorMap, name: &str) -> Vec<f64> {
    let t = map
        .get(name)
        .unwrap_or_else(|| panic!("tensor `{name}` missing"));
    match &t.data {
        deberta_host::tensor::TensorData::Float(v) => v.iter().map(|&x| x as f64).collect(),
        deberta_host::tensor::TensorData::Int(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

/// The integer values of a tensor, panicking if absent or float.
pub fn ints(map: &TensorMap, name: &str) -> Vec<i64> {
    map.get(name)
        .and_then(HostTensor::as_int)
        .unwrap_or_else(|| panic!("integer tensor `{name}` missing"))
        .to_vec()
}

/// The bundled sonnets (`data/shakespeare/texts/sonnets.txt`) copied into `dir` as a
/// one-file corpus; returns its path (a small corpus for the quick pretraining runs).
pub fn sonnets_corpus(dir: &Path) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/shakespeare/texts/sonnets.txt"),
    )
    .unwrap();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Every forward output of fixture model `model_dir` on the inputs of fixture `inputs_dir`
/// (`inputs.safetensors`), through an inference session at `precision` keeping the attention
/// probabilities `probs`, and those inputs.
pub fn fixture_forward<B: Backend>(
    backend: &B,
    (model_dir, inputs_dir): (&str, &str),
    probs: AttentionProbs,
    precision: Precision,
) -> (TensorMap, TensorMap) {
    let loaded = load_model_dir(&fixture(model_dir)).unwrap_or_else(|e| panic!("{model_dir}: {e}"));
    let inputs = load(&fixture(inputs_dir).join("inputs.safetensors"));
    let ids = ints(&inputs, "input_ids");
    let mask = ints(&inputs, "attention_mask");
    let shape = inputs["input_ids"].shape.clone();
    let host = HostBatch {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
        batch: shape[0],
        len: shape[1],
    };
    let session = Session::with_precision(backend, &loaded, precision)
        .unwrap_or_else(|e| panic!("{model_dir}: {e}"));
    let outputs = session
        .outputs_with(&host, probs)
        .unwrap_or_else(|e| panic!("{model_dir}: {e}"));
    (outputs, inputs)
}

/// Largest `|a − b|` over the positions where `keep(i)` holds (NaN anywhere counts as
/// infinitely wrong); panics on length mismatch.
pub fn max_abs_diff(a: &[f64], b: &[f64], keep: impl Fn(usize) -> bool) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, (x, y))| {
            let d = (x - y).abs();
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// The `deberta` binary of the same build profile as the running test (`target/<profile>/`),
/// which `cargo test --workspace` builds before running any test.
pub fn deberta_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/deberta
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join(format!("deberta{}", std::env::consts::EXE_SUFFIX));
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("debug");
    let build = match profile {
        "release" => "cargo build --release -p deberta-host",
        _ => "cargo build -p deberta-host",
    };
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is not built: run `{build}` first", bin.display()));
    // `cargo test` does not rebuild another package's binary: refuse to test a stale one.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    if let Some(newer) = ["core/src", "host/src", "host/Cargo.toml", "core/Cargo.toml"]
        .iter()
        .flat_map(|dir| newest_files(&root.join(dir)))
        .find(|(_, modified)| *modified > built)
    {
        panic!(
            "{} is older than {}: run `{build}` before the tests",
            bin.display(),
            newer.0.display()
        );
    }
    bin
}

/// Every file under `path` (or `path` itself) with its modification time.
fn newest_files(path: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            out.extend(newest_files(&entry.path()));
        }
    } else if let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) {
        out.push((path.to_path_buf(), modified));
    }
    out
}

/// Output of one `deberta` invocation.
pub struct CliRun {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `deberta` with arguments and captures everything.
pub fn deberta(args: &[&str]) -> CliRun {
    deberta_with_env(args, &[])
}

/// Runs `deberta` with arguments and extra environment variables, and captures everything.
/// Under `DEBERTA_TEST_RUNNER` (a program and its arguments, split at whitespace) the binary
/// runs as that command's last argument: `scripts/lavapipe-next.sh` runs it under another C
/// library's dynamic loader that way, to reach another Vulkan driver.
pub fn deberta_with_env(args: &[&str], env: &[(&str, &str)]) -> CliRun {
    let runner = std::env::var("DEBERTA_TEST_RUNNER").unwrap_or_default();
    let mut runner = runner.split_whitespace();
    let mut command = match runner.next() {
        Some(program) => {
            let mut command = std::process::Command::new(program);
            command.args(runner).arg(deberta_bin());
            command
        }
        None => std::process::Command::new(deberta_bin()),
    };
    let out = command
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("running deberta");
    CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh empty directory under the system temp dir, unique to this process and `name`,
/// removed with everything in it when the guard is dropped (a test's runs and checkpoints
/// would otherwise pile up in the temp dir, run after run).
pub fn temp_dir(name: &str) -> TempDir {
    let path = std::env::temp_dir().join(format!("deberta-tests-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("creating temp dir");
    TempDir { path }
}

/// A fresh empty directory for what the tests of one process share (a run made once and read by
/// several tests): `target/test-scratch/<name>`, emptied when the next process asks for it
/// rather than left in the system temp dir. Tests that run at once must use other names.
pub fn process_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/test-scratch/<name>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>");
    let dir = target.join("test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a test-scratch directory");
    dir
}

/// A directory of [`temp_dir`], removed on drop; derefs to its path.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Failures of the tensors of `reference` selected by `keep` against `ours` at
/// `|a − r| ≤ abs + rel·|r|` element-wise (a missing tensor, another shape or a NaN fails),
/// and the worst one as `(name, multiple of the tolerance, absolute error)`.
pub fn tensor_failures(
    label: &str,
    ours: &TensorMap,
    reference: &TensorMap,
    keep: impl Fn(&str) -> bool,
    (abs, rel): (f64, f64),
) -> (Vec<String>, (String, f64, f64)) {
    let mut failures = Vec::new();
    let mut worst = (String::new(), 0.0f64, 0.0f64);
    for (name, tensor) in reference.iter().filter(|(n, _)| keep(n)) {
        let Some(mine) = ours.get(name) else {
            failures.push(format!("{label}: `{name}` missing from our output"));
            continue;
        };
        if mine.shape != tensor.shape {
            failures.push(format!(
                "{label}: `{name}` shape {:?} vs {:?}",
                mine.shape, tensor.shape
            ));
            continue;
        }
        let (a, r) = (values(ours, name), values(reference, name));
        let (mut ratio, mut largest) = (0.0f64, 0.0f64);
        for (x, y) in a.iter().zip(&r) {
            let d = (x - y).abs();
            let d = if d.is_nan() { f64::INFINITY } else { d };
            ratio = ratio.max(d / (abs + rel * y.abs()));
            largest = largest.max(d);
        }
        if ratio > 1.0 {
            failures.push(format!(
                "{label}: `{name}` off by {largest:.3e} ({ratio:.2}x the tolerance)"
            ));
        }
        if ratio >= worst.1 {
            worst = (name.clone(), ratio, largest);
        }
    }
    (failures, worst)
}

/// Per-step losses of a training trajectory within this relative error of the reference.
pub const TRAJECTORY_LOSS_REL: f64 = 1e-4;
/// Final parameters of a training trajectory within `abs + rel·|ref|` of the reference.
pub const TRAJECTORY_PARAM_TOL: (f64, f64) = (3e-5, 1e-4);

/// Failures of a training trajectory (`loss_mlm`/`loss_rtd` per step, `param.<name>` after
/// the last) against a reference file of `fixtures/<set>/train/`; prints its worst figures.
pub fn trajectory_failures(label: &str, ours: &TensorMap, reference: &TensorMap) -> Vec<String> {
    let mut failures = Vec::new();
    let mut report = format!("{label:<40}");
    for key in ["loss_mlm", "loss_rtd"] {
        let (a, r) = (values(ours, key), values(reference, key));
        if a.len() != r.len() {
            failures.push(format!(
                "{label}: `{key}` has {} steps, not {}",
                a.len(),
                r.len()
            ));
            continue;
        }
        let (mut worst, mut at) = (0.0f64, 0);
        for (k, (x, y)) in a.iter().zip(&r).enumerate() {
            let rel = (x - y).abs() / y.abs();
            let rel = if rel.is_nan() { f64::INFINITY } else { rel };
            if rel > worst {
                (worst, at) = (rel, k);
            }
        }
        if worst > TRAJECTORY_LOSS_REL {
            failures.push(format!(
                "{label}: `{key}` step {at} off by {worst:.2e} relative"
            ));
        }
        report.push_str(&format!(" {key} {worst:.1e} (step {at:>2})"));
    }
    let (param_failures, worst) = tensor_failures(
        label,
        ours,
        reference,
        |n| n.starts_with("param."),
        TRAJECTORY_PARAM_TOL,
    );
    failures.extend(param_failures);
    for name in ours.keys().filter(|n| n.starts_with("param.")) {
        if !reference.contains_key(name) {
            failures.push(format!(
                "{label}: `{name}` is not a parameter of the reference"
            ));
        }
    }
    println!(
        "{report} | param max abs err {:.2e} ({:.3}x tolerance) in {}",
        worst.2, worst.1, worst.0
    );
    failures
}

/// The rows of a run's `metrics.jsonl` without their wall-clock fields (what two runs of the
/// same training must write identically).
pub fn deterministic_rows(run_dir: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    use deberta_host::pretrain::metrics::{WALL_CLOCK_KEYS, read_rows};
    read_rows(&run_dir.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", run_dir.display()))
        .into_iter()
        .map(|mut row| {
            for key in WALL_CLOCK_KEYS {
                row.remove(*key);
            }
            row
        })
        .collect()
}

/// Asserts that `run` failed the way bad input must: a non-zero exit (not a signal), one line
/// on stderr starting `error: ` and containing `needle`, no panic.
pub fn assert_one_line_error(run: &CliRun, needle: &str) {
    assert_ne!(
        run.code,
        Some(0),
        "expected failure; stdout: {}",
        run.stdout
    );
    assert!(run.code.is_some(), "killed by a signal");
    let stderr = run.stderr.trim_end();
    assert!(
        !stderr.contains('\n'),
        "stderr has more than one line:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "panic: {stderr}"
    );
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
}

/// Whether a GPU adapter with compute shaders is present for a test that drives the wgpu
/// backend through the CLI. Without one the test is skipped (with a notice on stderr), except
/// under `CI=true`, where the missing adapter fails it.
pub fn gpu_adapter_present() -> bool {
    if deberta_gpu::list_adapters().iter().any(|a| a.compute) {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but no GPU adapter with compute shaders: install mesa-vulkan-drivers"
    );
    eprintln!("SKIPPED: no GPU adapter (set CI=true to make this a failure)");
    false
}
