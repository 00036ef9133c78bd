//! Deterministic Unigram vocabulary training (the SentencePiece algorithm, Kudo 2018).
//!
//! Same steps as SentencePiece's `unigram_model_trainer.cc` and the `tokenizers` crate's
//! `UnigramTrainer`: seed pieces from frequent substrings, EM with the Bayesian (digamma)
//! M-step, prune by the likelihood lost when a piece is removed, repeat until ~1.1× the
//! vocabulary size, then keep every character plus the best-scoring pieces. It is written out
//! here because `UnigramTrainer` is not reproducible: it iterates hash maps with per-process
//! random seeds and sums floating-point marginals in chunks whose boundaries depend on the rayon
//! thread count. This trainer is single-threaded, walks words in sorted order and breaks every
//! tie by the piece's text, so the same words give bit-identical pieces and scores.
//!
//! Differences from SentencePiece, all deliberate: seeds are the substrings (≤ the maximum
//! piece length, occurring ≥ 2 times) that cannot be extended by a character on either side
//! without losing occurrences, instead of suffix-array nodes; no character-coverage cut (every
//! character of the corpus gets a piece); no Unicode-script or digit splitting; the pruning loss
//! uses the number of alternatives of the piece itself (SentencePiece uses the vocabulary size
//! there, contrary to its own comment).

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};

/// Training options (defaults = SentencePiece's).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnigramOptions {
    /// Pieces wanted, special tokens excluded.
    pub pieces: usize,
    /// Longest piece, in characters.
    pub max_piece_chars: usize,
    /// Most seed pieces (characters included).
    pub seed_size: usize,
    /// Fraction of the pieces kept by each pruning round.
    pub shrinking_factor: f64,
    /// EM iterations between pruning rounds.
    pub sub_iterations: usize,
}

impl UnigramOptions {
    /// Defaults for `pieces` pieces.
    pub fn new(pieces: usize) -> Self {
        UnigramOptions {
            pieces,
            max_piece_chars: 16,
            seed_size: 1_000_000,
            shrinking_factor: 0.75,
            sub_iterations: 2,
        }
    }
}

/// Score penalty of an unknown character in a lattice, below the lowest piece score.
const UNK_PENALTY: f64 = 10.0;
/// Pieces whose expected count falls below this are dropped by the M-step.
const EXPECTED_FREQUENCY_THRESHOLD: f64 = 0.5;
/// Score step between characters re-added at the end without a trained score.
const MISSING_CHAR_PENALTY: f64 = 1e-4;

/// Trains pieces with log-probability scores on `words` (pre-tokenized words with their counts,
/// any order), never producing a piece in `reserved`. Returns the pieces sorted by decreasing
/// score (ties by text); fewer than asked when the corpus has fewer useful substrings.
pub(crate) fn train(
    words: &[(String, u64)],
    options: &UnigramOptions,
    reserved: &[&str],
) -> Result<Vec<(String, f64)>> {
    let mut words: Vec<(&str, u64)> = words
        .iter()
        .filter(|(w, c)| !w.is_empty() && *c > 0)
        .map(|(w, c)| (w.as_str(), *c))
        .collect();
    words.sort_unstable();
    let chars = char_counts(&words);
    if chars.len() > options.pieces {
        return Err(Error::Usage(format!(
            "vocabulary size too small: the corpus has {} distinct characters and each needs a \
             token (plus the special tokens)",
            chars.len()
        )));
    }
    let seeds = seed_pieces(&words, &chars, options);
    let mut model = Model::new(&words, seeds, options.max_piece_chars);
    let desired = options.pieces * 11 / 10;
    loop {
        for _ in 0..options.sub_iterations {
            let expected = model.expected_counts();
            model.m_step(&expected);
        }
        if model.live.len() <= desired {
            break;
        }
        let before = model.live.len();
        model.prune(desired, options.shrinking_factor);
        if model.live.len() >= before {
            break;
        }
    }
    Ok(model.finalize(&chars, options.pieces, reserved))
}

/// Every character with its count, by decreasing count (ties by character).
fn char_counts(words: &[(&str, u64)]) -> Vec<(char, u64)> {
    let mut counts: HashMap<char, u64> = HashMap::new();
    for &(w, c) in words {
        for ch in w.chars() {
            *counts.entry(ch).or_default() += c;
        }
    }
    let mut chars: Vec<(char, u64)> = counts.into_iter().collect();
    chars.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    chars
}

/// Byte offsets of the character boundaries of `s`, end included.
fn boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

/// Seed pieces with initial log-probabilities: every character (weight = count), then the
/// maximal substrings of ≥ 2 characters occurring ≥ 2 times (weight = count × length), best
/// first (ties by text), at most `seed_size` in all.
fn seed_pieces(
    words: &[(&str, u64)],
    chars: &[(char, u64)],
    options: &UnigramOptions,
) -> Vec<(String, f64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for &(w, c) in words {
        let b = boundaries(w);
        let n = b.len() - 1;
        for i in 0..n {
            for j in i + 2..=n.min(i + options.max_piece_chars) {
                *counts.entry(&w[b[i]..b[j]]).or_default() += c;
            }
        }
    }
    // A substring always extended by the same character on one side is not a seed: its
    // extension has the same count and covers more.
    let mut extendable: HashSet<&str> = HashSet::new();
    for (&s, &count) in &counts {
        let mut it = s.char_indices();
        let first = it.nth(1).map_or(s.len(), |(i, _)| i);
        let last = s.char_indices().last().map_or(0, |(i, _)| i);
        for part in [&s[..last], &s[first..]] {
            if counts.get(part) == Some(&count) {
                extendable.insert(part);
            }
        }
    }
    let mut substrings: Vec<(u64, &str)> = counts
        .iter()
        .filter(|&(s, &c)| c >= 2 && !extendable.contains(s))
        .map(|(&s, &c)| (c * s.chars().count() as u64, s))
        .collect();
    substrings.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let room = options.seed_size.saturating_sub(chars.len());
    let mut seeds: Vec<(String, f64)> = chars
        .iter()
        .map(|&(ch, c)| (ch.to_string(), c as f64))
        .chain(
            substrings
                .into_iter()
                .take(room)
                .map(|(w, s)| (s.to_string(), w as f64)),
        )
        .collect();
    let log_total = seeds.iter().map(|(_, w)| w).sum::<f64>().ln();
    for (_, w) in &mut seeds {
        *w = w.ln() - log_total;
    }
    seeds
}

/// One lattice edge of a word: characters `start..end` are piece `piece`.
#[derive(Debug, Clone, Copy)]
struct Edge {
    start: u32,
    end: u32,
    piece: u32,
}

/// The pieces being trained and every word's lattice over all seeds.
struct Model<'w> {
    words: &'w [(&'w str, u64)],
    pieces: Vec<String>,
    index: HashMap<String, u32>,
    score: Vec<f64>,
    alive: Vec<bool>,
    /// Ids of the live pieces, in a deterministic order.
    live: Vec<u32>,
    /// Edges of all words, word after word, each word's sorted by (start, end).
    edges: Vec<Edge>,
    /// `edges[word_edges[w]..word_edges[w + 1]]` are word `w`'s.
    word_edges: Vec<usize>,
    /// Characters per word.
    word_chars: Vec<u32>,
    max_piece_chars: usize,
}

/// Adds two log-space values.
fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// The digamma function (asymptotic series after shifting `x` above 7).
fn digamma(mut x: f64) -> f64 {
    let mut result = 0.0;
    while x < 7.0 {
        result -= 1.0 / x;
        x += 1.0;
    }
    x -= 0.5;
    let xx = 1.0 / x;
    let xx2 = xx * xx;
    let xx4 = xx2 * xx2;
    result + x.ln() + xx2 / 24.0 - 7.0 / 960.0 * xx4 + 31.0 / 8064.0 * xx4 * xx2
        - 127.0 / 30720.0 * xx4 * xx4
}

impl<'w> Model<'w> {
    fn new(words: &'w [(&'w str, u64)], seeds: Vec<(String, f64)>, max_piece_chars: usize) -> Self {
        let (pieces, score): (Vec<String>, Vec<f64>) = seeds.into_iter().unzip();
        let index: HashMap<String, u32> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let mut model = Model {
            words,
            alive: vec![true; pieces.len()],
            live: (0..pieces.len() as u32).collect(),
            pieces,
            index,
            score,
            edges: Vec::new(),
            word_edges: vec![0],
            word_chars: Vec::with_capacity(words.len()),
            max_piece_chars,
        };
        for &(w, _) in words {
            let (n, edges) = model.lattice(w, false);
            model.edges.extend(edges);
            model.word_edges.push(model.edges.len());
            model.word_chars.push(n);
        }
        model
    }

    /// The edges of `text` over every piece (live or not), sorted by (start, end), and its
    /// length in characters; `skip_whole` leaves out the edge spanning all of `text`.
    fn lattice(&self, text: &str, skip_whole: bool) -> (u32, Vec<Edge>) {
        let b = boundaries(text);
        let n = b.len() - 1;
        let mut edges = Vec::new();
        for i in 0..n {
            for j in i + 1..=n.min(i + self.max_piece_chars) {
                if skip_whole && i == 0 && j == n {
                    continue;
                }
                if let Some(&piece) = self.index.get(&text[b[i]..b[j]]) {
                    edges.push(Edge {
                        start: i as u32,
                        end: j as u32,
                        piece,
                    });
                }
            }
        }
        (n as u32, edges)
    }

    /// The score of an edge: its piece's if live, the unknown-character score for a dead
    /// single character, `None` (no edge) otherwise.
    fn edge_score(&self, e: &Edge, unk: f64) -> Option<f64> {
        if self.alive[e.piece as usize] {
            Some(self.score[e.piece as usize])
        } else if e.end - e.start == 1 {
            Some(unk)
        } else {
            None
        }
    }

    fn unk_score(&self) -> f64 {
        let min = self
            .live
            .iter()
            .map(|&p| self.score[p as usize])
            .fold(f64::INFINITY, f64::min);
        if min.is_finite() {
            min - UNK_PENALTY
        } else {
            -UNK_PENALTY
        }
    }

    fn word(&self, w: usize) -> (&[Edge], u32, u64) {
        let edges = &self.edges[self.word_edges[w]..self.word_edges[w + 1]];
        (edges, self.word_chars[w], self.words[w].1)
    }

    /// E-step: the expected count of every piece (forward–backward over each word's lattice).
    fn expected_counts(&self) -> Vec<f64> {
        let unk = self.unk_score();
        let mut expected = vec![0.0; self.pieces.len()];
        let mut alpha = Vec::new();
        let mut beta = Vec::new();
        for w in 0..self.words.len() {
            let (edges, n, count) = self.word(w);
            let n = n as usize;
            alpha.clear();
            alpha.resize(n + 1, f64::NEG_INFINITY);
            beta.clear();
            beta.resize(n + 1, f64::NEG_INFINITY);
            alpha[0] = 0.0;
            beta[n] = 0.0;
            for e in edges {
                if let Some(s) = self.edge_score(e, unk) {
                    let (i, j) = (e.start as usize, e.end as usize);
                    alpha[j] = log_add(alpha[j], alpha[i] + s);
                }
            }
            for e in edges.iter().rev() {
                if let Some(s) = self.edge_score(e, unk) {
                    let (i, j) = (e.start as usize, e.end as usize);
                    beta[i] = log_add(beta[i], beta[j] + s);
                }
            }
            let z = alpha[n];
            for e in edges {
                let p = e.piece as usize;
                if self.alive[p] {
                    let (i, j) = (e.start as usize, e.end as usize);
                    let posterior = (alpha[i] + self.score[p] + beta[j] - z).exp();
                    expected[p] += count as f64 * posterior;
                }
            }
        }
        expected
    }

    /// M-step: drops rarely expected pieces and rescores the rest (Bayesian EM).
    fn m_step(&mut self, expected: &[f64]) {
        let mut kept = Vec::with_capacity(self.live.len());
        let mut sum = 0.0;
        for &p in &self.live {
            let freq = expected[p as usize];
            if freq < EXPECTED_FREQUENCY_THRESHOLD {
                self.alive[p as usize] = false;
            } else {
                kept.push(p);
                sum += freq;
            }
        }
        let log_sum = digamma(sum);
        for &p in &kept {
            self.score[p as usize] = digamma(expected[p as usize]) - log_sum;
        }
        self.live = kept;
    }

    /// The best segmentation of a lattice of `n` characters (edge order breaks ties: the
    /// first best path found wins); `None` for an unknown character.
    fn viterbi(&self, edges: &[Edge], n: u32, unk: f64) -> Vec<Option<u32>> {
        let n = n as usize;
        let mut best = vec![f64::NEG_INFINITY; n + 1];
        let mut back: Vec<Option<&Edge>> = vec![None; n + 1];
        best[0] = 0.0;
        for e in edges {
            if let Some(s) = self.edge_score(e, unk) {
                let (i, j) = (e.start as usize, e.end as usize);
                if best[i] + s > best[j] {
                    best[j] = best[i] + s;
                    back[j] = Some(e);
                }
            }
        }
        let mut path = Vec::new();
        let mut at = n;
        while let Some(e) = back[at] {
            path.push(self.alive[e.piece as usize].then_some(e.piece));
            at = e.start as usize;
        }
        path.reverse();
        path
    }

    /// Removes the pieces whose loss of likelihood (if replaced by their best alternative
    /// segmentation) is smallest, keeping `max(desired, shrinking · live)` pieces.
    fn prune(&mut self, desired: usize, shrinking_factor: f64) {
        let unk = self.unk_score();
        // Viterbi frequency of every piece over the corpus.
        let mut freq = vec![0.0; self.pieces.len()];
        let mut total_words = 0.0;
        for w in 0..self.words.len() {
            let (edges, n, count) = self.word(w);
            total_words += count as f64;
            for p in self.viterbi(edges, n, unk).into_iter().flatten() {
                freq[p as usize] += count as f64;
            }
        }
        let sum: f64 = self.live.iter().map(|&p| freq[p as usize]).sum();
        let log_sum = sum.ln();
        let mut kept = Vec::new();
        let mut candidates: Vec<(f64, u32)> = Vec::new();
        for &p in &self.live {
            let f = freq[p as usize];
            if f == 0.0 {
                continue;
            }
            let piece = &self.pieces[p as usize];
            if piece.chars().nth(1).is_none() {
                kept.push(p);
                continue;
            }
            // Its best segmentation must be itself, else it is never used.
            let (n, edges) = self.lattice(piece, false);
            if self.viterbi(&edges, n, unk) != [Some(p)] {
                continue;
            }
            let (n, edges) = self.lattice(piece, true);
            let alternatives = self.viterbi(&edges, n, unk);
            let log_sum_alt = (sum + f * (alternatives.len() as f64 - 1.0)).ln();
            let log_prob_alt: f64 = alternatives
                .iter()
                .map(|a| (a.map_or(0.0, |a| freq[a as usize]) + f).ln() - log_sum_alt)
                .sum();
            let log_prob = f.ln() - log_sum;
            let loss = f / total_words * (log_prob - log_prob_alt);
            candidates.push((loss, p));
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let target = desired.max((self.live.len() as f64 * shrinking_factor) as usize);
        let room = target.saturating_sub(kept.len());
        kept.extend(candidates.into_iter().take(room).map(|(_, p)| p));
        for &p in &self.live {
            self.alive[p as usize] = false;
        }
        for &p in &kept {
            self.alive[p as usize] = true;
        }
        self.live = kept;
    }

    /// The final pieces: every character (trained score, or just below the lowest score when
    /// it was pruned), then the best-scoring live pieces up to `size` in all.
    fn finalize(
        &self,
        chars: &[(char, u64)],
        size: usize,
        reserved: &[&str],
    ) -> Vec<(String, f64)> {
        let min = self.unk_score() + UNK_PENALTY;
        let mut out: Vec<(String, f64)> = Vec::with_capacity(size);
        let mut taken: HashSet<&str> = reserved.iter().copied().collect();
        let mut missing = 0;
        for &(ch, _) in chars {
            let s = ch.to_string();
            let score = match self.index.get(&s) {
                Some(&p) if self.alive[p as usize] => self.score[p as usize],
                _ => {
                    missing += 1;
                    min - missing as f64 * MISSING_CHAR_PENALTY
                }
            };
            out.push((s, score));
        }
        for (s, _) in &out {
            taken.insert(self.pieces[self.index[s.as_str()] as usize].as_str());
        }
        let mut rest: Vec<u32> = self
            .live
            .iter()
            .copied()
            .filter(|&p| !taken.contains(self.pieces[p as usize].as_str()))
            .collect();
        rest.sort_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            self.score[b]
                .total_cmp(&self.score[a])
                .then(self.pieces[a].cmp(&self.pieces[b]))
        });
        let room = size.saturating_sub(out.len());
        out.extend(
            rest.into_iter()
                .take(room)
                .map(|p| (self.pieces[p as usize].clone(), self.score[p as usize])),
        );
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(String, u64)> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for w in text.split_whitespace() {
            *counts.entry(format!("▁{w}")).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    const TEXT: &str = "the cat sat on the mat the cat ate the rat that sat on the hat \
        a cat and a rat and a hat and a mat then the cat sat";

    #[test]
    fn keeps_every_character_and_is_sorted() {
        let pieces = train(&words(TEXT), &UnigramOptions::new(40), &[]).unwrap();
        assert!(pieces.len() <= 40);
        for ch in TEXT.chars().filter(|c| !c.is_whitespace()).chain(['▁']) {
            assert!(pieces.iter().any(|(p, _)| *p == ch.to_string()), "{ch}");
        }
        assert!(pieces.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(pieces.iter().any(|(p, _)| p == "▁the" || p == "▁cat"));
        let unique: HashSet<&str> = pieces.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(unique.len(), pieces.len());
    }

    #[test]
    fn input_order_does_not_matter() {
        let a = words(TEXT);
        let mut b = a.clone();
        b.reverse();
        let options = UnigramOptions::new(30);
        let pa = train(&a, &options, &[]).unwrap();
        let pb = train(&b, &options, &[]).unwrap();
        assert_eq!(pa.len(), pb.len());
        for (x, y) in pa.iter().zip(&pb) {
            assert_eq!(x.0, y.0);
            assert_eq!(x.1.to_bits(), y.1.to_bits());
        }
    }

    #[test]
    fn too_small_vocabulary_and_reserved_pieces() {
        assert!(train(&words(TEXT), &UnigramOptions::new(5), &[]).is_err());
        let pieces = train(&words(TEXT), &UnigramOptions::new(40), &["▁the"]).unwrap();
        assert!(pieces.iter().all(|(p, _)| p != "▁the"));
    }

    #[test]
    fn math_helpers() {
        assert!((log_add(1.0f64.ln(), 3.0f64.ln()) - 4.0f64.ln()).abs() < 1e-12);
        assert_eq!(log_add(f64::NEG_INFINITY, 2.0), 2.0);
        // digamma(1) = −γ, digamma(x + 1) = digamma(x) + 1/x.
        assert!((digamma(1.0) + 0.577_215_664_901_532_9).abs() < 1e-9);
        assert!((digamma(3.5) - digamma(2.5) - 1.0 / 2.5).abs() < 1e-12);
    }
}
