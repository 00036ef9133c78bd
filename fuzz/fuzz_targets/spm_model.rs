//! SentencePiece `spm.model` files: arbitrary bytes go to the protobuf reader and, when they
//! parse into a unigram model, through the character map, the normaliser and the Viterbi
//! encoder on fixed texts (Unicode normalisation cases, whitespace runs, unknown characters,
//! special-token text), as `deberta tokenizer encode --tokenizer spm.model` runs them.
#![no_main]

use std::path::Path;

use deberta_host::data::SpmTokenizer;
use libfuzzer_sys::fuzz_target;

const TEXTS: [&str; 4] = [
    "Shall I compare thee to a summer's day?",
    "  ﬁne  Ünïcödé\u{3000}Ａ\u{301} ☃☃ 日本 \t\n ",
    "[MASK] hello [CLS]x[SEP] [PAD][UNK]",
    "\u{2581}a\u{2581}\u{2581} \u{0}\u{200b}",
];

fuzz_target!(|data: &[u8]| {
    let Ok(tokenizer) = SpmTokenizer::from_bytes(Path::new("spm.model"), data.to_vec(), None)
    else {
        return;
    };
    let vocab = tokenizer.vocab_size();
    let special = tokenizer.special();
    for text in TEXTS {
        let encoded = tokenizer.encode(text, true);
        assert_eq!(encoded.ids.len(), encoded.tokens.len());
        assert!(encoded.ids.iter().all(|&id| (id as usize) < vocab));
        assert_eq!(encoded.ids.first(), Some(&special.cls));
        assert_eq!(encoded.ids.last(), Some(&special.sep));
    }
    let lines: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    for ids in tokenizer.encode_corpus_lines(&lines) {
        assert!(ids.iter().all(|&id| (id as usize) < vocab));
    }
});
