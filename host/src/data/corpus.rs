//! A text corpus: files and directories of UTF-8 text, streamed line by line.
//!
//! Directories are walked recursively in sorted path order, skipping hidden entries (names
//! starting with `.`); paths named explicitly are always read, in the order given. Lines are
//! read one at a time (never a whole file): a line longer than [`MAX_LINE_BYTES`] is cut at its
//! last blank before the limit (or at a character boundary) and continues as the next line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The longest line handed out in one piece, in bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The files of a corpus, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    files: Vec<PathBuf>,
    lossy: bool,
}

/// What one pass over a corpus saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CorpusStats {
    /// Files read.
    pub files: usize,
    /// Lines read (blank ones included).
    pub lines: u64,
    /// Lines with some non-blank text.
    pub text_lines: u64,
    /// Bytes read.
    pub bytes: u64,
}

impl Corpus {
    /// The corpus made of `paths` (files, or directories walked recursively). With `lossy`,
    /// invalid UTF-8 becomes U+FFFD instead of an error. Fails if a path does not exist or no
    /// file is found.
    pub fn open(paths: &[PathBuf], lossy: bool) -> Result<Corpus> {
        if paths.is_empty() {
            return Err(Error::Usage("no corpus path given".into()));
        }
        let mut files = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            if meta.is_dir() {
                walk(path, &mut files)?;
            } else {
                files.push(path.clone());
            }
        }
        if files.is_empty() {
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::Usage(format!(
                "corpus {}: no (non-hidden) files found",
                shown.join(", ")
            )));
        }
        Ok(Corpus { files, lossy })
    }

    /// The files, in reading order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Whether invalid UTF-8 is replaced rather than rejected.
    pub fn lossy(&self) -> bool {
        self.lossy
    }

    /// Calls `f` on every line of every file in order (without its line ending; a leading
    /// byte-order mark is dropped). Fails on invalid UTF-8 (naming the file and byte offset)
    /// unless lossy, and when the corpus has no non-blank text.
    pub fn for_each_line(&self, mut f: impl FnMut(&str) -> Result<()>) -> Result<CorpusStats> {
        let mut stats = CorpusStats::default();
        for path in &self.files {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let mut lines = LineReader::new(BufReader::with_capacity(1 << 16, file));
            let mut first = true;
            while let Some((offset, bytes)) = lines.next_line().map_err(|e| Error::io(path, e))? {
                stats.bytes += bytes.len() as u64;
                let text = self.decode(path, offset, bytes)?;
                let mut line = text.as_ref().trim_end_matches(['\n', '\r']);
                if first {
                    line = line.strip_prefix('\u{feff}').unwrap_or(line);
                    first = false;
                }
                stats.lines += 1;
                if !line.trim().is_empty() {
                    stats.text_lines += 1;
                }
                f(line)?;
            }
            stats.files += 1;
        }
        if stats.text_lines == 0 {
            return Err(Error::format(
                &self.files[0],
                format!(
                    "the corpus ({} file(s), {} bytes) has no non-blank text",
                    stats.files, stats.bytes
                ),
            ));
        }
        Ok(stats)
    }

    fn decode<'a>(
        &self,
        path: &Path,
        offset: u64,
        bytes: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, str>> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.into()),
            Err(_) if self.lossy => Ok(String::from_utf8_lossy(bytes)),
            Err(e) => Err(Error::format(
                path,
                format!(
                    "invalid UTF-8 at byte offset {} (use --lossy to replace invalid bytes)",
                    offset + e.valid_up_to() as u64
                ),
            )),
        }
    }
}

/// Appends the non-hidden files under `dir` to `out`, in sorted path order.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        entries.push(entry.path());
    }
    entries.sort();
    for path in entries {
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            walk(&path, out)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits a byte stream into lines of at most [`MAX_LINE_BYTES`], remembering each line's
/// byte offset in the stream.
struct LineReader<R> {
    reader: R,
    buf: Vec<u8>,
    /// Bytes of an over-long line cut off after the previous piece.
    carry: Vec<u8>,
    offset: u64,
}

impl<R: BufRead> LineReader<R> {
    fn new(reader: R) -> Self {
        LineReader {
            reader,
            buf: Vec::new(),
            carry: Vec::new(),
            offset: 0,
        }
    }

    /// The next line (with its `\n` if it had one) and its offset; `None` at the end.
    fn next_line(&mut self) -> std::io::Result<Option<(u64, &[u8])>> {
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        self.buf.append(&mut self.carry);
        let limit = (MAX_LINE_BYTES - self.buf.len()) as u64;
        (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)?;
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf.len() >= MAX_LINE_BYTES && self.buf.last() != Some(&b'\n') {
            let cut = cut_point(&self.buf);
            self.carry.extend_from_slice(&self.buf[cut..]);
            self.buf.truncate(cut);
        }
        Ok(Some((self.offset, &self.buf)))
    }
}

/// Where to cut an over-long line: after its last ASCII blank in the second half, else at the
/// last UTF-8 character boundary (never 0).
fn cut_point(line: &[u8]) -> usize {
    let half = line.len() / 2;
    if let Some(p) = line[half..].iter().rposition(|b| *b == b' ' || *b == b'\t') {
        return half + p + 1;
    }
    let mut cut = line.len();
    // Step back over continuation bytes (10xxxxxx) to the start of the last character.
    while cut > 1 && (line[cut - 1] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if cut > 1 && line[cut - 1] >= 0xC0 {
        cut - 1
    } else {
        line.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::TempDir;

    fn lines(corpus: &Corpus) -> Result<Vec<String>> {
        let mut out = Vec::new();
        corpus.for_each_line(|l| {
            out.push(l.to_string());
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn walks_sorted_and_skips_hidden() {
        let dir = TempDir::new("walk");
        std::fs::create_dir_all(dir.join("b/.hidden")).unwrap();
        std::fs::write(dir.join("b/2.txt"), "two\r\n").unwrap();
        std::fs::write(dir.join("b/.hidden/x.txt"), "hidden").unwrap();
        std::fs::write(dir.join("a.txt"), "\u{feff}one\n\nuno").unwrap();
        std::fs::write(dir.join(".secret"), "hidden").unwrap();
        let corpus = Corpus::open(std::slice::from_ref(&*dir), false).unwrap();
        assert_eq!(corpus.files(), &[dir.join("a.txt"), dir.join("b/2.txt")]);
        assert_eq!(lines(&corpus).unwrap(), ["one", "", "uno", "two"]);
    }

    #[test]
    fn invalid_utf8_names_file_and_offset_unless_lossy() {
        let dir = TempDir::new("utf8");
        let path = dir.join("bad.txt");
        std::fs::write(&path, b"fine line\nab\xFFcd\n").unwrap();
        let err = lines(&Corpus::open(std::slice::from_ref(&path), false).unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bad.txt") && msg.contains("byte offset 12"),
            "{msg}"
        );
        let lossy = lines(&Corpus::open(std::slice::from_ref(&path), true).unwrap()).unwrap();
        assert_eq!(lossy, ["fine line", "ab\u{fffd}cd"]);
    }

    #[test]
    fn empty_corpus_and_missing_paths_are_errors() {
        let dir = TempDir::new("empty");
        assert!(Corpus::open(std::slice::from_ref(&*dir), false).is_err());
        std::fs::write(dir.join("blank.txt"), "\n   \n\t\n").unwrap();
        let corpus = Corpus::open(std::slice::from_ref(&*dir), false).unwrap();
        let msg = lines(&corpus).unwrap_err().to_string();
        assert!(msg.contains("no non-blank text"), "{msg}");
        let missing = Corpus::open(&[dir.join("nope")], false).unwrap_err();
        assert!(missing.to_string().contains("nope"));
    }

    #[test]
    fn long_lines_are_cut_at_blanks_or_char_boundaries() {
        let text = format!("{}\nshort\n", "é".repeat(MAX_LINE_BYTES));
        let mut reader = LineReader::new(std::io::Cursor::new(text.as_bytes()));
        let mut total = 0;
        let mut pieces = Vec::new();
        while let Some((offset, line)) = reader.next_line().unwrap() {
            assert_eq!(offset, total as u64);
            assert!(line.len() <= MAX_LINE_BYTES);
            pieces.push(std::str::from_utf8(line).unwrap().to_string());
            total += line.len();
        }
        assert_eq!(total, text.len());
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces.last().unwrap(), "short\n");
        let spaced = b"ab cd ef";
        assert_eq!(cut_point(spaced), 6);
    }
}
