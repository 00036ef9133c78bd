//! `spm.model` tokenizers against the `sentencepiece` library and transformers: the fixture
//! `tests/fixtures/spm-official/` (made by `tests/fixtures/tools/make_spm_fixture.py`) holds a
//! DeBERTa-v3-style `spm.model`, a tiny `DebertaV2Model` in `pytorch_model.bin`, the ids both
//! libraries give for 2740 lines, and transformers' forward outputs.

use std::path::{Path, PathBuf};

use deberta_host::data::Tokenizer;
use deberta_host::data::sentencepiece::SentencePiece;
use deberta_tests::{assert_one_line_error, deberta, fixture, load, temp_dir, values};
use serde_json::Value;

fn official() -> PathBuf {
    fixture("spm-official")
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

const SPECIAL_NAMES: [&str; 5] = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"];

/// Every line: the SentencePiece ids equal `sentencepiece`'s; with special tokens, ours equal
/// transformers' wherever transformers agrees with `sentencepiece`, and on lines that spell a
/// special token (transformers' convention for those). The lines where transformers differs
/// otherwise are exactly its grapheme-level normaliser cases.
#[test]
fn ids_equal_sentencepiece_and_transformers() {
    let dir = official();
    let model = std::fs::read(dir.join("spm.model")).unwrap();
    let spm = SentencePiece::from_bytes(Path::new("spm.model"), &model).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let records = json(&dir.join("ids.json"));
    let records = records.as_array().unwrap();
    assert!(records.len() > 2000);
    let mut transformers_differs = Vec::new();
    for record in records {
        let text = record["text"].as_str().unwrap();
        let expected_spm = ids(&record["spm"]);
        assert_eq!(
            spm.encode(text),
            expected_spm,
            "sentencepiece ids of {text:?}"
        );
        let hf = ids(&record["hf"]);
        let wrapped: Vec<u32> = [1].into_iter().chain(expected_spm).chain([2]).collect();
        let ours = tokenizer.encode(text, true).unwrap();
        assert_eq!(ours.ids.len(), ours.tokens.len());
        let spells_special = SPECIAL_NAMES.iter().any(|s| text.contains(s));
        if spells_special {
            assert_eq!(ours.ids, hf, "transformers' ids of {text:?}");
        } else {
            assert_eq!(ours.ids, wrapped, "[CLS] sentencepiece [SEP] of {text:?}");
            if hf != wrapped {
                transformers_differs.push(text.to_string());
            }
        }
    }
    // A compatibility character and a combining mark in one grapheme: transformers'
    // Precompiled normaliser maps the grapheme by its first rule and loses the mark.
    assert_eq!(
        transformers_differs,
        [
            "ﬁ\u{301}ne",
            "Ａ\u{301}b",
            "Ｏ\u{308}h",
            "ﬁ\u{308}ne  Ünïcödé",
            "ﬀ\u{327}"
        ]
    );
}

fn encode_json(tokenizer: &Path, text: &str) -> Value {
    let run = deberta(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--text",
        text,
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    serde_json::from_str(run.stdout.trim()).unwrap()
}

/// `tokenizer encode --json` gives transformers' tokens and ids, from the `spm.model` with its
/// `tokenizer_config.json`, from the directory, and from a lone `spm.model`; the object has the
/// same keys as for a `tokenizer.json`.
#[test]
fn cli_encode_matches_transformers() {
    let dir = official();
    let lone = temp_dir("spm-lone");
    std::fs::copy(dir.join("spm.model"), lone.join("spm.model")).unwrap();
    let forward = json(&dir.join("forward.json"));
    for record in forward.as_array().unwrap() {
        let text = record["text"].as_str().unwrap();
        for path in [dir.join("spm.model"), dir.clone(), lone.join("spm.model")] {
            let out = encode_json(&path, text);
            assert_eq!(out["ids"], record["ids"], "{text:?} via {}", path.display());
            assert_eq!(out["tokens"], record["tokens"], "{text:?}");
        }
    }
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let json_tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz")
        .join("fixtures")
        .join("tokenizer.json");
    assert_eq!(
        keys(&encode_json(&json_tokenizer, "hello")),
        keys(&encode_json(&dir.join("spm.model"), "hello"))
    );
}

/// `forward --text` through the `spm.model` of an official-layout directory equals
/// transformers' `DebertaV2Model` end to end.
#[test]
fn forward_text_matches_transformers() {
    let dir = official();
    let out_dir = temp_dir("spm-forward");
    let forward = json(&dir.join("forward.json"));
    for (i, record) in forward.as_array().unwrap().iter().enumerate() {
        let out = out_dir.join(format!("{i}.safetensors"));
        let run = deberta(&[
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--text",
            record["text"].as_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let ours = values(&load(&out), "last_hidden_state");
        let expected: Vec<f64> = record["last_hidden_state"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        assert_eq!(ours.len(), expected.len(), "{}", record["text"]);
        let worst = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "{}: max |diff| {worst}", record["text"]);
    }
}

/// A corrupt or truncated `spm.model`, and a model directory without a tokenizer, are one-line
/// errors.
#[test]
fn bad_spm_files_are_one_line_errors() {
    let dir = temp_dir("spm-bad");
    let model = std::fs::read(official().join("spm.model")).unwrap();
    let encode = |path: &Path| {
        deberta(&[
            "tokenizer",
            "encode",
            "--tokenizer",
            path.to_str().unwrap(),
            "--text",
            "hello",
        ])
    };
    let truncated = dir.join("truncated.model");
    std::fs::write(&truncated, &model[..model.len() / 2]).unwrap();
    assert_one_line_error(&encode(&truncated), "truncated");
    let corrupt = dir.join("corrupt.model");
    std::fs::write(&corrupt, b"\x0f\xff\xff\xff garbage").unwrap();
    assert_one_line_error(&encode(&corrupt), "not a SentencePiece model");
    let empty = dir.join("empty.model");
    std::fs::write(&empty, b"").unwrap();
    assert_one_line_error(&encode(&empty), "no pieces");
    let no_tokenizer = fixture("tiny-bin");
    let run = deberta(&[
        "forward",
        "--model",
        no_tokenizer.to_str().unwrap(),
        "--text",
        "hello",
    ]);
    assert_one_line_error(&run, "no tokenizer in the directory");
}

/// Small models with byte fallback, without a character map and with a custom rule table
/// give `sentencepiece`'s ids.
#[test]
fn variant_models_equal_sentencepiece() {
    let dir = official().join("variants");
    let expected = json(&dir.join("ids.json"));
    let lines = expected["lines"].as_array().unwrap();
    for name in ["byte-fallback", "identity", "rules"] {
        let path = dir.join(format!("{name}.model"));
        let spm = SentencePiece::from_bytes(&path, &std::fs::read(&path).unwrap()).unwrap();
        let all = expected["ids"][name].as_array().unwrap();
        assert_eq!(all.len(), lines.len());
        for (line, ids_of_line) in lines.iter().zip(all) {
            let text = line.as_str().unwrap();
            assert_eq!(spm.encode(text), ids(ids_of_line), "{name}: {text:?}");
        }
    }
}

/// `detect --text` on an official-layout directory (RTD head, `spm.model`) tokenises as
/// transformers does.
#[test]
fn detect_text_uses_the_spm_model() {
    let dir = official();
    let forward = json(&dir.join("forward.json"));
    let record = &forward[0];
    let run = deberta(&[
        "detect",
        "--model",
        dir.to_str().unwrap(),
        "--text",
        record["text"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(out["ids"], record["ids"]);
    assert_eq!(out["tokens"], record["tokens"]);
}

/// `pretrain --tokenizer spm.model` trains with it and keeps it in its form: the run's model
/// directories hold `spm.model` and `tokenizer_config.json` byte for byte, and the vocabulary
/// is the model's 1000 pieces.
#[test]
fn pretrain_with_an_spm_tokenizer_keeps_it() {
    let dir = official();
    let work = temp_dir("spm-pretrain");
    let config = work.join("tiny.toml");
    std::fs::write(
        &config,
        "[model]\nhidden_size = 16\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 32\n",
    )
    .unwrap();
    let run = work.join("run");
    let out = deberta(&[
        "pretrain",
        "--tokenizer",
        dir.join("spm.model").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--max-seq-len",
        "16",
        "--eval-batches",
        "1",
        "--quiet",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for part in ["discriminator", "generator"] {
        for file in ["spm.model", "tokenizer_config.json"] {
            assert_eq!(
                std::fs::read(run.join(part).join(file)).unwrap(),
                std::fs::read(dir.join(file)).unwrap()
            );
        }
        let config = json(&run.join(part).join("config.json"));
        assert_eq!(config["vocab_size"], 1000);
    }
}
