//! Bad input through the CLI: every case exits non-zero with exactly one line on stderr that
//! says what and where — no panic, no backtrace.

use std::path::Path;

use deberta_host::checkpoint::{read_tensor_file, write_safetensors};
use deberta_host::tensor::{HostTensor, TensorData};
use deberta_tests::{CliRun, assert_one_line_error, deberta, deberta_with_env, fixture, temp_dir};

fn copy_model(name: &str, to: &Path) {
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(file), to.join(file)).unwrap();
    }
}

#[test]
fn missing_model_directory() {
    let run = deberta(&["forward", "--model", "/nonexistent/model", "--ids", "1,2"]);
    assert_one_line_error(&run, "/nonexistent/model");
}

#[test]
fn a_wgpu_switch_with_a_value_it_does_not_take() {
    let model = fixture("tiny");
    let forward = [
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        "1,2",
    ];
    let wgpu_forward = [&forward[..], &["--backend", "wgpu"]].concat();
    for (args, variable, expected) in [
        (&["info"][..], "DEBERTA_WGPU_COOPERATIVE", "on, off or auto"),
        (&wgpu_forward[..], "DEBERTA_WGPU_F16", "on or off"),
        (&wgpu_forward[..], "DEBERTA_WGPU_LOOP_BOUNDS", "on or off"),
    ] {
        let run = deberta_with_env(args, &[(variable, "1")]);
        assert_one_line_error(&run, &format!("{variable}=\"1\": expected {expected}"));
    }
    // `auto` is a value only of the switches whose default the device decides.
    let run = deberta_with_env(&wgpu_forward, &[("DEBERTA_WGPU_F16", "auto")]);
    assert_one_line_error(&run, "DEBERTA_WGPU_F16=\"auto\": expected on or off");
}

#[test]
fn malformed_config_json() {
    let dir = temp_dir("bad-json");
    copy_model("tiny", &dir);
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 32,").unwrap();
    let run = deberta(&["forward", "--model", dir.to_str().unwrap(), "--ids", "1,2"]);
    assert_one_line_error(&run, "config.json: invalid JSON");
}

#[test]
fn inconsistent_config() {
    let dir = temp_dir("bad-config");
    copy_model("tiny", &dir);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        text.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"),
    )
    .unwrap();
    let run = deberta(&["forward", "--model", dir.to_str().unwrap(), "--ids", "1,2"]);
    assert_one_line_error(&run, "num_attention_heads");
}

#[test]
fn truncated_safetensors() {
    let dir = temp_dir("truncated");
    copy_model("tiny", &dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let run = deberta(&["forward", "--model", dir.to_str().unwrap(), "--ids", "1,2"]);
    assert_one_line_error(&run, "model.safetensors");
}

#[test]
fn wrong_tensor_shape_and_missing_tensor() {
    let dir = temp_dir("bad-shape");
    copy_model("tiny", &dir);
    let path = dir.join("model.safetensors");
    let mut tensors = read_tensor_file(&path).unwrap();
    let name = "deberta.encoder.layer.1.intermediate.dense.weight";
    let t = tensors.get_mut(name).unwrap();
    t.shape = vec![32, 64];
    write_safetensors(&path, &tensors).unwrap();
    let run = deberta(&["forward", "--model", dir.to_str().unwrap(), "--ids", "1,2"]);
    assert_one_line_error(&run, name);

    tensors.remove(name);
    write_safetensors(&path, &tensors).unwrap();
    let run = deberta(&["forward", "--model", dir.to_str().unwrap(), "--ids", "1,2"]);
    assert_one_line_error(&run, &format!("missing tensors: {name}"));
}

#[test]
fn token_id_outside_the_vocabulary() {
    let run = deberta(&[
        "forward",
        "--model",
        fixture("tiny").to_str().unwrap(),
        "--ids",
        "1,5;2,128",
    ]);
    assert_one_line_error(&run, "id 128 at flat position 3");
    let run = deberta(&[
        "forward",
        "--model",
        fixture("tiny").to_str().unwrap(),
        "--ids",
        "1,-4",
    ]);
    assert_one_line_error(&run, "out of range");
}

#[test]
fn sequence_longer_than_absolute_positions() {
    // v2style uses absolute position embeddings with max_position_embeddings = 64.
    let ids = vec!["7"; 65].join(",");
    let run = deberta(&[
        "forward",
        "--model",
        fixture("v2style").to_str().unwrap(),
        "--ids",
        &ids,
    ]);
    assert_one_line_error(&run, "sequence length 65 exceeds the model's maximum of 64");
    // Relative-only models have no such limit.
    let ids = vec!["7"; 80].join(",");
    let run = deberta(&[
        "forward",
        "--model",
        fixture("tiny").to_str().unwrap(),
        "--ids",
        &ids,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn bad_input_files() {
    let dir = temp_dir("bad-inputs");
    let model = fixture("tiny");
    let mut inputs = read_tensor_file(&fixture("tiny").join("inputs.safetensors")).unwrap();
    let path = dir.join("inputs.safetensors");

    let ids = inputs["input_ids"].clone();
    inputs.insert(
        "input_ids".into(),
        HostTensor::float(ids.shape.clone(), vec![1.0; ids.numel()]),
    );
    write_safetensors(&path, &inputs).unwrap();
    let run = deberta(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        path.to_str().unwrap(),
    ]);
    assert_one_line_error(&run, "input_ids");

    inputs.insert("input_ids".into(), ids.clone());
    let mut mask = inputs["attention_mask"].clone();
    if let TensorData::Int(v) = &mut mask.data {
        v[5] = 2;
    }
    inputs.insert("attention_mask".into(), mask);
    write_safetensors(&path, &inputs).unwrap();
    let run = deberta(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        path.to_str().unwrap(),
    ]);
    assert_one_line_error(&run, "attention mask value at flat position 5");

    inputs.remove("attention_mask");
    write_safetensors(&path, &inputs).unwrap();
    let run = deberta(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        path.to_str().unwrap(),
    ]);
    assert_one_line_error(&run, "no `attention_mask` tensor");

    let run = deberta(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        "/nonexistent/in.safetensors",
    ]);
    assert_one_line_error(&run, "/nonexistent/in.safetensors");
}

#[test]
fn forward_writes_fixture_names_and_shapes() {
    let dir = temp_dir("forward-out");
    let out = dir.join("out.safetensors");
    let run = deberta(&[
        "forward",
        "--model",
        fixture("tiny").to_str().unwrap(),
        "--input",
        fixture("tiny").join("inputs.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ours = read_tensor_file(&out).unwrap();
    let reference = read_tensor_file(&fixture("tiny").join("outputs.safetensors")).unwrap();
    for (name, t) in &reference {
        if name == "mlm_loss" || name == "rel_embeddings_normed" {
            continue;
        }
        assert_eq!(ours[name].shape, t.shape, "{name}");
        assert_eq!(ours[name].stored_as, "F32", "{name}");
    }
}

/// `deberta step` on the `tiny` pair with `batch` and extra flags (NES: the weight file has no
/// tensor it ignores, so nothing but the error reaches stderr).
fn step_run(batch: &Path, extra: &[&str]) -> CliRun {
    let rtd = fixture("tiny").join("rtd");
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = temp_dir(&format!("step-out-{n}"));
    let out = dir.join("out.safetensors");
    let (weights, generator, disc) = (
        rtd.join("weights.safetensors"),
        rtd.join("gen_config.json"),
        rtd.join("disc_config.json"),
    );
    let mut args = vec![
        "step",
        "--weights",
        weights.to_str().unwrap(),
        "--gen-config",
        generator.to_str().unwrap(),
        "--disc-config",
        disc.to_str().unwrap(),
        "--batch",
        batch.to_str().unwrap(),
        "--sharing",
        "nes",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    deberta(&args)
}

const TRAIN: &[&str] = &[
    "--schedule",
    "decoupled",
    "--optimizer",
    "xadam",
    "--lr",
    "0.001",
    "--warmup-steps",
    "3",
];

#[test]
fn multi_step_batches_are_checked() {
    let batches = fixture("tiny").join("train").join("batches.safetensors");
    let with_steps = |n: &'static str| {
        let mut flags = vec!["--steps", n];
        flags.extend_from_slice(TRAIN);
        flags
    };
    // The file has 12 steps.
    let run = step_run(&batches, &with_steps("11"));
    assert_one_line_error(&run, "batches.safetensors: tensor `gen_input_ids`");
    assert!(
        run.stderr.contains("12 steps, but --steps is 11"),
        "{}",
        run.stderr
    );
    // A one-step batch has no step axis.
    let one = fixture("tiny").join("rtd").join("inputs.safetensors");
    let run = step_run(&one, &with_steps("3"));
    assert_one_line_error(&run, "inputs.safetensors: tensor `gen_input_ids`");
    assert!(
        run.stderr.contains("not [steps, batch, sequence]"),
        "{}",
        run.stderr
    );

    // Tensors that disagree on the step count or the shape, and a bad id at one step.
    let dir = temp_dir("step-batches");
    let tensors = read_tensor_file(&batches).unwrap();
    let mut short = tensors.clone();
    let t = short.get_mut("corrupted_ids").unwrap();
    t.shape[0] = 11;
    if let TensorData::Int(v) = &mut t.data {
        v.truncate(11 * 3 * 24);
    }
    let path = dir.join("short.safetensors");
    write_safetensors(&path, &short).unwrap();
    let run = step_run(&path, &with_steps("12"));
    assert_one_line_error(&run, "short.safetensors: tensor `corrupted_ids`");

    let mut bad_id = tensors.clone();
    if let TensorData::Int(v) = &mut bad_id.get_mut("corrupted_ids").unwrap().data {
        v[5 * 3 * 24 + 1] = 1_000_000;
    }
    let path = dir.join("bad-id.safetensors");
    write_safetensors(&path, &bad_id).unwrap();
    let run = step_run(&path, &with_steps("12"));
    assert_one_line_error(&run, "bad-id.safetensors: step 5: invalid batch");

    let mut float = tensors;
    float.insert(
        "mlm_labels".into(),
        HostTensor::float(vec![12, 3, 24], vec![0.0; 12 * 3 * 24]),
    );
    let path = dir.join("float.safetensors");
    write_safetensors(&path, &float).unwrap();
    let run = step_run(&path, &with_steps("12"));
    assert_one_line_error(&run, "float.safetensors: tensor `mlm_labels`");
}

#[test]
fn multi_step_flags_come_together() {
    let one = fixture("tiny").join("rtd").join("inputs.safetensors");
    let run = step_run(&one, &["--lr", "0.001"]);
    assert_one_line_error(&run, "--lr only applies to a multi-step run");
    let batches = fixture("tiny").join("train").join("batches.safetensors");
    let run = step_run(&batches, &["--steps", "12", "--schedule", "joint"]);
    assert_one_line_error(&run, "--steps needs --optimizer");
    let mut flags = vec!["--steps", "12", "--clip=-1"];
    flags.extend_from_slice(TRAIN);
    let run = step_run(&batches, &flags);
    assert_one_line_error(&run, "--clip");
    let mut flags = vec!["--steps", "0"];
    flags.extend_from_slice(TRAIN);
    let run = step_run(&batches, &flags);
    assert_one_line_error(&run, "--steps must be at least 1");
}
