//! `deberta bench` end to end on the CPU, at tiny sizes: the matmul report and its JSON lines,
//! the forward bench's fused/unfused attention switch, the SIMD cap, bad sizes and settings,
//! `deberta info`'s adapter limits and the wgpu matmul tile sizes kept between runs.

use deberta_tests::{deberta, deberta_with_env, gpu_adapter_present, temp_dir};
use serde_json::Value;

/// The JSON objects among stdout's lines.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn matmul_reports_every_size_with_a_json_line() {
    let run = deberta(&[
        "bench",
        "matmul",
        "--backend",
        "cpu",
        "--threads",
        "1",
        "--size",
        "48",
        "--size",
        "64",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("matmul 48x48x48 f32 on cpu"),
        "{}",
        run.stdout
    );
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    for (line, size) in lines.iter().zip([48, 64]) {
        assert_eq!(line["bench"], "matmul");
        assert_eq!(line["backend"], "cpu");
        assert_eq!(line["size"], size);
        assert_eq!(line["precision"], "f32");
        assert!(line["gflops"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["min_ms"].as_f64() <= line["median_ms"].as_f64());
    }
}

/// `deberta bench forward` on the nano shape at 8 tokens, one thread, one timed run, JSON.
const NANO_FORWARD: [&str; 15] = [
    "bench",
    "forward",
    "--shape",
    "nano",
    "--seq",
    "8",
    "--backend",
    "cpu",
    "--threads",
    "1",
    "--warmup",
    "0",
    "--iters",
    "1",
    "--json",
];

#[test]
fn forward_runs_the_nano_shape_fused_or_unfused() {
    for (flag, attention) in [(None, "fused"), (Some("--unfused-attention"), "unfused")] {
        let mut args = NANO_FORWARD.to_vec();
        args.extend(flag);
        let run = deberta(&args);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let lines = json_lines(&run.stdout);
        let last = lines.last().expect("a JSON line");
        assert_eq!(last["shape"], "nano");
        assert_eq!(last["attention"], attention);
        // Host memory is the peak RSS; there is no device memory of its own.
        assert!(last["peak_device_mb"].is_null(), "{last}");
        assert!(last["peak_device_allocated_mb"].is_null(), "{last}");
    }
}

/// `--kernel-times`: on wgpu (timestamp queries; lavapipe has them) a table and a `kernels`
/// JSON list whose dispatches per run match the model (4 layers: 4 fused attentions) and whose
/// times are positive; on the CPU a note and no list.
#[test]
fn kernel_times_report_each_wgpu_kernel_per_run() {
    let mut cpu_args = NANO_FORWARD.to_vec();
    cpu_args.push("--kernel-times");
    let cpu = deberta(&cpu_args);
    assert_eq!(cpu.code, Some(0), "{}", cpu.stderr);
    assert!(
        cpu.stderr.contains("does not time kernels"),
        "{}",
        cpu.stderr
    );
    assert!(json_lines(&cpu.stdout).pop().unwrap()["kernels"].is_null());
    if !gpu_adapter_present() {
        return;
    }
    let args: Vec<&str> = cpu_args
        .iter()
        .map(|&a| match a {
            "cpu" => "wgpu",
            "1" => "2",
            other => other,
        })
        .collect();
    let run = deberta(&args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let last = json_lines(&run.stdout).pop().expect("a JSON line");
    let kernels = last["kernels"].as_array().expect("a kernels list");
    // The table's heading counts the kernels of a run: the list's dispatches together.
    let total: f64 = kernels
        .iter()
        .map(|k| k["dispatches_per_run"].as_f64().unwrap())
        .sum();
    let heading = format!("ms in {total:.0} kernels (");
    assert!(run.stdout.contains("device time per run"), "{}", run.stdout);
    assert!(run.stdout.contains(&heading), "{heading}: {}", run.stdout);
    let attention = kernels
        .iter()
        .find(|k| k["kernel"] == "FusedAttention")
        .unwrap_or_else(|| panic!("{last}"));
    assert_eq!(attention["dispatches_per_run"], 4.0, "{last}");
    for kernel in kernels {
        assert!(kernel["ms_per_run"].as_f64().unwrap() > 0.0, "{kernel}");
    }
}

#[test]
fn wgpu_forward_reports_its_peak_device_memory() {
    if !gpu_adapter_present() {
        return;
    }
    let args: Vec<&str> = NANO_FORWARD
        .iter()
        .map(|&a| if a == "cpu" { "wgpu" } else { a })
        .collect();
    let run = deberta(&args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let last = json_lines(&run.stdout).pop().expect("a JSON line");
    assert_eq!(last["backend"], "wgpu");
    // At least the weights: the nano model's parameters alone are over 1 MiB of f32.
    let peak = last["peak_device_mb"].as_f64().expect("peak_device_mb");
    assert!(peak > 1.0, "{last}");
    // Of which live tensors: the weights still, at most what the pool held.
    let live = last["peak_device_allocated_mb"]
        .as_f64()
        .expect("peak_device_allocated_mb");
    assert!(live > 1.0 && live <= peak, "{last}");
    assert!(run.stdout.contains("MiB in live tensors"), "{}", run.stdout);
}

/// `--vocab-size`: the shape with another vocabulary, named in the line and the JSON; fewer
/// tokens than the special ones and a word is a one-line error naming the flag.
#[test]
fn a_shape_takes_another_vocabulary() {
    let mut args = NANO_FORWARD.to_vec();
    args.extend(["--vocab-size", "500"]);
    let run = deberta(&args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("nano (vocabulary 500)"),
        "{}",
        run.stdout
    );
    let last = json_lines(&run.stdout).pop().expect("a JSON line");
    assert_eq!(last["vocab_size"], 500);
    let mut bad = NANO_FORWARD.to_vec();
    bad.extend(["--vocab-size", "5"]);
    let run = deberta(&bad);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--vocab-size 5"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn matmul_rejects_a_zero_size() {
    let run = deberta(&["bench", "matmul", "--backend", "cpu", "--size", "0"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--size"), "{}", run.stderr);
}

#[test]
fn cpu_simd_cap_is_reported_and_a_bad_one_is_an_error() {
    let args = NANO_FORWARD;
    let run = deberta_with_env(&args, &[("DEBERTA_CPU_SIMD", "baseline")]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.last().expect("a JSON line")["simd"], "baseline");
    assert!(
        run.stdout.contains("1 CPU threads, baseline)"),
        "{}",
        run.stdout
    );

    let run = deberta_with_env(&args, &[("DEBERTA_CPU_SIMD", "sse")]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("DEBERTA_CPU_SIMD=sse"),
        "{}",
        run.stderr
    );
}

#[test]
fn info_lists_every_adapter_with_its_limits_and_features() {
    if !gpu_adapter_present() {
        return;
    }
    let adapters = deberta_gpu::list_adapters();
    let run = deberta(&["info"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for adapter in &adapters {
        let caps = &adapter.capabilities;
        assert!(caps.workgroup_memory >= 16_384, "{caps}");
        assert!(caps.workgroup_invocations >= 256, "{caps}");
        let expected = format!(
            "  {adapter}\n    workgroup memory {} B, workgroup invocations {}, largest buffer {} B",
            caps.workgroup_memory, caps.workgroup_invocations, caps.largest_buffer
        );
        assert!(
            run.stdout.contains(&expected),
            "{expected}\nnot in\n{}",
            run.stdout
        );
    }
}

/// `deberta info` opens the device `--backend wgpu` would, with the environment's options, and
/// says how it multiplies under mixed precision (as its probes found) and which of the
/// optional kernels it runs.
#[test]
fn info_describes_the_device_wgpu_commands_open() {
    if !gpu_adapter_present() {
        return;
    }
    let device = |env: &[(&str, &str)]| {
        let run = deberta_with_env(&["info"], env);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix("wgpu device (--backend wgpu): "))
            .unwrap_or_else(|| panic!("no device line in\n{}", run.stdout))
            .to_string()
    };
    let default = device(&[]);
    assert!(default.contains("mixed precision's f"), "{default}");
    assert!(default.contains("fused attention yes"), "{default}");
    if std::env::var("DEBERTA_REQUIRE_COOPERATIVE").as_deref() == Ok("1") {
        assert!(
            default.contains("f16 products on cooperative matrices ("),
            "{default}"
        );
    }
    let f32 = device(&[("DEBERTA_WGPU_F16", "off")]);
    assert!(f32.contains("mixed precision's f32 products"), "{f32}");
    let plain = device(&[
        ("DEBERTA_WGPU_FUSED_ATTENTION", "off"),
        ("DEBERTA_WGPU_SUBGROUPS", "off"),
        ("DEBERTA_WGPU_MULTI_TENSOR", "off"),
    ]);
    for expected in [
        "fused attention no",
        "subgroup reductions no",
        "optimizer tensors per kernel one",
    ] {
        assert!(plain.contains(expected), "{plain}");
    }
}

/// `deberta info` names every wgpu kernel option with its environment variable and its state
/// as the environment sets it (no adapter needed).
#[test]
fn info_prints_the_wgpu_kernel_options_the_environment_sets() {
    for (early, bounds) in [("on", "off"), ("off", "on")] {
        let run = deberta_with_env(
            &["info"],
            &[
                ("DEBERTA_WGPU_EARLY_SUBMIT", early),
                ("DEBERTA_WGPU_LOOP_BOUNDS", bounds),
            ],
        );
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("wgpu kernel options: "))
            .unwrap_or_else(|| panic!("no options line in\n{}", run.stdout));
        assert!(
            line.contains(&format!("DEBERTA_WGPU_EARLY_SUBMIT {early}")),
            "{line}"
        );
        assert!(
            line.contains(&format!("DEBERTA_WGPU_LOOP_BOUNDS {bounds}")),
            "{line}"
        );
        for name in [
            "F16",
            "SUBGROUPS",
            "COOPERATIVE",
            "MATMUL_PREFETCH",
            "MATMUL_VECTOR_LOADS",
            "SHARED_PASS",
            "FUSED_ATTENTION",
            "MULTI_TENSOR",
        ] {
            assert!(line.contains(&format!("DEBERTA_WGPU_{name} ")), "{line}");
        }
    }
}

/// `DEBERTA_WGPU_TILE_CACHE`: the first wgpu run measures the product's tile size and saves it,
/// the second says it loaded it; a broken file is one warning (the run goes on and replaces
/// it), and `off` neither reads nor writes.
#[test]
fn wgpu_matmul_tile_sizes_are_kept_between_runs() {
    if !gpu_adapter_present() {
        return;
    }
    let dir = temp_dir("tile-cache");
    let cache = dir.join("cache");
    let cache_env = cache.to_str().unwrap();
    let args = [
        "bench",
        "matmul",
        "--backend",
        "wgpu",
        "--size",
        "96",
        "--warmup",
        "0",
        "--iters",
        "1",
    ];
    let run = |value: &str| {
        let run = deberta_with_env(&args, &[("DEBERTA_WGPU_TILE_CACHE", value)]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        run
    };
    let first = run(cache_env);
    assert!(
        !first.stderr.contains("matmul tile sizes of"),
        "{}",
        first.stderr
    );
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let saved = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        saved.lines().any(|l| l.starts_with("96 96 96 1 ")),
        "{saved}"
    );

    let second = run(cache_env);
    let loaded = format!(
        "matmul tile sizes of 1 product shapes from {}",
        files[0].display()
    );
    assert!(second.stderr.contains(&loaded), "{}", second.stderr);

    std::fs::write(&files[0], "format 9\n").unwrap();
    let broken = run(cache_env);
    let warning = format!(
        "warning: matmul tile file {}, line 1: format",
        files[0].display()
    );
    assert!(broken.stderr.contains(&warning), "{}", broken.stderr);
    assert!(
        broken.stderr.contains("measuring again"),
        "{}",
        broken.stderr
    );
    // Replaced: the same header, the shape measured again (its size may differ: timing).
    let replaced = std::fs::read_to_string(&files[0]).unwrap();
    let shape_lines = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.rsplit_once(' ').map_or(l, |(shape, _)| shape).to_string())
            .collect()
    };
    assert_eq!(shape_lines(&replaced), shape_lines(&saved), "{replaced}");

    std::fs::remove_file(&files[0]).unwrap();
    run("off");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}
