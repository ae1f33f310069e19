//! The CLIP byte-level BPE tokenizer of Stable Diffusion's text encoders, built from the
//! `vocab.json` and `merges.txt` of a `tokenizer/` folder.
//!
//! It reproduces transformers' `CLIPTokenizer` (5.23, backed by the `tokenizers` crate) with
//! `padding="max_length", max_length=77, truncation=True`:
//! 1. special tokens (`<|startoftext|>`, `<|endoftext|>`) written in the prompt are matched
//!    in the raw text first and kept as their ids;
//! 2. the rest is NFC-normalised, every whitespace run becomes one space, and it is
//!    lower-cased (Unicode rules);
//! 3. pieces are the matches of CLIP's pattern `'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|
//!    [^\s\p{L}\p{N}]+` (whitespace between them is dropped);
//! 4. each piece's UTF-8 bytes become GPT-2's printable byte symbols, `</w>` is appended to
//!    the last, and adjacent symbols are merged by merge rank (lowest first) until no listed
//!    pair remains; a symbol missing from the vocabulary becomes the unknown token
//!    (`<|endoftext|>`);
//! 5. the ids are cut to 75, framed by BOS and EOS and padded to 77 with the pad token
//!    (`<|endoftext|>` for SD 1.x, `!` for SD 2.x, read from `tokenizer_config.json` or
//!    `special_tokens_map.json` by [`ClipTokenizer::load_dir`]).
//!
//! The `tokenizers` crate itself does not build for wasm32 without its C regex engine, so
//! this is our own, on the `regex` and `unicode-normalization` crates.

use std::collections::HashMap;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// Tokens per prompt, BOS and EOS included (CLIP's context length).
pub const MAX_LENGTH: usize = 77;
pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";

const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

/// One prompt's ids: exactly [`MAX_LENGTH`], BOS … EOS, then padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// The prompt had more than 75 tokens and its tail was dropped.
    pub truncated: bool,
}

pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    byte_symbols: [char; 256],
    pattern: Regex,
    /// BOS, EOS and the pad token, matched in the raw prompt.
    specials: Regex,
    bos: u32,
    eos: u32,
    pad: u32,
    cache: std::sync::Mutex<HashMap<String, Vec<u32>>>,
}

/// GPT-2's byte → symbol table: printable Latin-1 bytes stand for themselves, the others
/// for code points 256 and up, so every byte is one visible, non-space symbol.
fn byte_symbols() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let b = b as u32;
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(c).unwrap_or('\0');
    }
    out
}

fn tok_err(file: &str, message: String) -> Error {
    Error::Io {
        file: file.to_string(),
        message,
        hint: "use the vocab.json and merges.txt of the same tokenizer/ folder",
    }
}

impl ClipTokenizer {
    /// From the bytes of `vocab.json` (token → id) and `merges.txt` (one `left right` pair
    /// per line, an optional `#version` line first). Pads with `<|endoftext|>`; see
    /// [`with_pad_token`](Self::with_pad_token).
    pub fn from_files(vocab_json: &[u8], merges_txt: &[u8]) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_slice(vocab_json).map_err(|e| {
            tok_err(
                "vocab.json",
                format!("not a JSON object of token → id: {e}"),
            )
        })?;
        let merges_txt = std::str::from_utf8(merges_txt)
            .map_err(|e| tok_err("merges.txt", format!("not UTF-8: {e}")))?;
        let special = |name: &str| {
            vocab.get(name).copied().ok_or_else(|| {
                tok_err(
                    "vocab.json",
                    format!("has no special token `{name}`, which CLIP's tokenizer needs"),
                )
            })
        };
        let (bos, eos) = (special(BOS)?, special(EOS)?);
        let byte_symbols = byte_symbols();
        let mut merges = HashMap::new();
        let lines = merges_txt
            .lines()
            .enumerate()
            .filter(|(i, l)| !(l.trim().is_empty() || (*i == 0 && l.starts_with("#version"))));
        for (rank, (line_no, line)) in lines.enumerate() {
            let mut parts = line.split(' ');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(tok_err(
                    "merges.txt",
                    format!(
                        "line {}: expected two symbols separated by one space, got `{line}`",
                        line_no + 1
                    ),
                ));
            };
            let id = |t: &str| {
                vocab.get(t).copied().ok_or_else(|| {
                    tok_err(
                        "merges.txt",
                        format!(
                            "line {}: token `{t}` (from merge `{line}`) is not in vocab.json: \
                             the two files do not belong together",
                            line_no + 1
                        ),
                    )
                })
            };
            let merged = format!("{a}{b}");
            let key = (id(a)?, id(b)?);
            let new = id(&merged)?;
            // The first listing of a pair wins, as in `tokenizers`' BPE.
            merges.entry(key).or_insert((rank as u32, new));
        }
        let pattern = Regex::new(PATTERN)
            .map_err(|e| Error::invalid("tokenizer", format!("pattern: {e}")))?;
        let specials = specials_pattern(&[BOS, EOS])?;
        Ok(Self {
            vocab,
            merges,
            byte_symbols,
            pattern,
            specials,
            bos,
            eos,
            pad: eos,
            cache: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Pads with `token` instead of `<|endoftext|>` (SD 2.x tokenizers pad with `!`). Like
    /// every special token, it is then also matched as a whole in prompts (so SD 2 reads a
    /// `!` in a prompt as the pad id, not as the end-of-word `!</w>`), as transformers does.
    pub fn with_pad_token(mut self, token: &str) -> Result<Self> {
        self.pad = self.vocab.get(token).copied().ok_or_else(|| {
            tok_err(
                "tokenizer_config.json",
                format!("pad token `{token}` is not in vocab.json"),
            )
        })?;
        self.specials = specials_pattern(&[BOS, EOS, token])?;
        Ok(self)
    }

    /// A `tokenizer/` folder: `vocab.json`, `merges.txt`, and the pad token from
    /// `tokenizer_config.json` or `special_tokens_map.json` when present.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| Error::Io {
                file: path.display().to_string(),
                message: e.to_string(),
                hint: "a tokenizer folder holds vocab.json and merges.txt",
            })
        };
        let tok = Self::from_files(&read("vocab.json")?, &read("merges.txt")?)?;
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let Ok(bytes) = std::fs::read(dir.join(name)) else {
                continue;
            };
            if let Some(pad) = pad_token_of(name, &bytes)? {
                return tok.with_pad_token(&pad);
            }
        }
        Ok(tok)
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The prompt's tokens without BOS, EOS, truncation or padding.
    pub fn tokenize(&self, prompt: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut start = 0;
        for m in self.specials.find_iter(prompt) {
            self.tokenize_text(&prompt[start..m.start()], &mut ids);
            ids.push(match m.as_str() {
                BOS => self.bos,
                EOS => self.eos,
                _ => self.pad,
            });
            start = m.end();
        }
        self.tokenize_text(&prompt[start..], &mut ids);
        ids
    }

    fn tokenize_text(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let normalised: String = text.nfc().collect();
        // Whitespace runs become one space, which the pattern then drops: only the split
        // points matter, so lower-casing the pieces is all that is left of the normaliser.
        // Per character, as `tokenizers`' Lowercase does: `str::to_lowercase` would turn a
        // word-final Σ into ς.
        let lower: String = normalised.chars().flat_map(char::to_lowercase).collect();
        for piece in self.pattern.find_iter(&lower) {
            let word = piece.as_str();
            let cached = self.cache.lock().ok().and_then(|c| c.get(word).cloned());
            let word_ids = match cached {
                Some(w) => w,
                None => {
                    let w = self.bpe(word);
                    if let Ok(mut c) = self.cache.lock() {
                        c.insert(word.to_string(), w.clone());
                    }
                    w
                }
            };
            ids.extend_from_slice(&word_ids);
        }
    }

    fn bpe(&self, word: &str) -> Vec<u32> {
        let bytes = word.as_bytes();
        let mut symbols: Vec<u32> = bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let mut s = self.byte_symbols[b as usize].to_string();
                if i + 1 == bytes.len() {
                    s.push_str("</w>");
                }
                self.vocab.get(&s).copied().unwrap_or(self.eos)
            })
            .collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, p)| self.merges.get(&(p[0], p[1])).map(|&(r, id)| (r, i, id)))
                .min();
            let Some((_, i, id)) = best else { break };
            symbols[i] = id;
            symbols.remove(i + 1);
        }
        symbols
    }

    /// The prompt as 77 ids (BOS, at most 75 tokens, EOS, padding).
    pub fn encode(&self, prompt: &str) -> Encoded {
        let mut tokens = self.tokenize(prompt);
        let room = MAX_LENGTH - 2;
        let truncated = tokens.len() > room;
        tokens.truncate(room);
        let mut ids = Vec::with_capacity(MAX_LENGTH);
        ids.push(self.bos);
        ids.extend_from_slice(&tokens);
        ids.push(self.eos);
        ids.resize(MAX_LENGTH, self.pad);
        Encoded { ids, truncated }
    }
}

/// Any of `tokens`, longest first so that no token shadows a longer one it starts.
fn specials_pattern(tokens: &[&str]) -> Result<Regex> {
    let mut tokens = tokens.to_vec();
    tokens.sort_by_key(|t| std::cmp::Reverse(t.len()));
    tokens.dedup();
    let alternatives: Vec<String> = tokens.iter().map(|t| regex::escape(t)).collect();
    Regex::new(&alternatives.join("|"))
        .map_err(|e| Error::invalid("tokenizer", format!("special tokens: {e}")))
}

/// `pad_token` of a tokenizer_config.json / special_tokens_map.json: a string or an
/// `{"content": …}` object; `None` when absent or null. Public so a front end that fetched
/// the files itself (the browser) picks the pad token as `load_dir` does.
pub fn pad_token_of(file: &str, bytes: &[u8]) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::Io {
        file: file.to_string(),
        message: format!("not JSON: {e}"),
        hint: "a tokenizer folder's JSON files come from `save_pretrained`",
    })?;
    Ok(match v.get("pad_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_visible_symbols() {
        let t = byte_symbols();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert!(t.iter().all(|c| !c.is_whitespace() && *c != '\0'));
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
    }
}
