//! Bad input through the CLI: every case exits non-zero with exactly one line on stderr that
//! says what and where — no panic, no backtrace.

use std::path::Path;

use deberta_host::checkpoint::{read_tensor_file, write_safetensors};
use deberta_host::tensor::{HostTensor, TensorData};
use deberta_tests::{CliRun, deberta, fixture, temp_dir};

fn assert_one_line_error(run: &CliRun, needle: &str) {
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
