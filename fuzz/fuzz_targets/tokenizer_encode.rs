//! Tokenizer encoding of arbitrary text: the Unigram `tokenizer.json` that `deberta pretrain`
//! trains (loaded once with `Tokenizer::from_bytes`) encodes the bytes (lossily decoded as
//! UTF-8, as `--lossy` corpora are) with and without special tokens, and as corpus lines.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use deberta_fuzz::TOKENIZER_JSON;
use deberta_host::data::Tokenizer;
use libfuzzer_sys::fuzz_target;

static TOKENIZER: LazyLock<Tokenizer> = LazyLock::new(|| {
    Tokenizer::from_bytes(Path::new("tokenizer.json"), TOKENIZER_JSON)
        .expect("the bundled tokenizer.json loads")
});

fuzz_target!(|data: &[u8]| {
    let tokenizer = &*TOKENIZER;
    let text = String::from_utf8_lossy(data);
    let vocab = tokenizer.vocab_size();
    let special = tokenizer.special();
    for add_special_tokens in [false, true] {
        let encoded = tokenizer
            .encode(&text, add_special_tokens)
            .expect("any text encodes");
        assert_eq!(encoded.ids.len(), encoded.tokens.len());
        assert!(encoded.ids.iter().all(|&id| (id as usize) < vocab));
        if add_special_tokens {
            assert_eq!(encoded.ids.first(), Some(&special.cls));
            assert_eq!(encoded.ids.last(), Some(&special.sep));
        }
    }
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let ids = tokenizer
        .encode_corpus_lines(&lines)
        .expect("any lines encode");
    assert_eq!(ids.len(), lines.len());
    for id in ids.iter().flatten() {
        assert!((*id as usize) < vocab);
        assert!(![special.pad, special.cls, special.sep, special.mask].contains(id));
    }
});
