//! `Vocab`: token ids ↔ text for `text` data (`char`: the sorted characters of a text; `byte`:
//! 256 ids), and its file, vocab.json, kept in run directories and checkpoints.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DataError;
use crate::config::sections::Tokenizer;

/// The vocabulary file's name, in a run directory and in each checkpoint directory.
pub const VOCAB_FILE: &str = "vocab.json";

/// Token ids ↔ text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    tokenizer: Tokenizer,
    /// `char`: the characters by id, sorted; `byte`: empty (the id is the byte).
    chars: Vec<char>,
}

/// vocab.json.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    format_version: u32,
    tokenizer: Tokenizer,
    size: usize,
    /// `char`: each id's character, as a one-character string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    symbols: Option<Vec<String>>,
}

const VOCAB_VERSION: u32 = 1;

impl Vocab {
    /// 256 ids, one per byte value.
    pub fn bytes() -> Vocab {
        Vocab {
            tokenizer: Tokenizer::Byte,
            chars: Vec::new(),
        }
    }

    /// One id per distinct character of `text`, in sorted order.
    pub fn chars_of(text: &str) -> Vocab {
        let mut seen = std::collections::BTreeSet::new();
        seen.extend(text.chars());
        Vocab {
            tokenizer: Tokenizer::Char,
            chars: seen.into_iter().collect(),
        }
    }

    pub fn tokenizer(&self) -> Tokenizer {
        self.tokenizer
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        match self.tokenizer {
            Tokenizer::Byte => 256,
            Tokenizer::Char => self.chars.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of `text`; a character the vocabulary lacks is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match self.tokenizer {
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Char => text
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    self.id_of(c).ok_or_else(|| {
                        format!(
                            "{c:?} (character {i}) is not in the vocabulary of {} characters",
                            self.chars.len()
                        )
                    })
                })
                .collect(),
        }
    }

    /// The id of character `c`, if the vocabulary has it (`char` only).
    pub(crate) fn id_of(&self, c: char) -> Option<u32> {
        self.chars.binary_search(&c).ok().map(|i| i as u32)
    }

    /// The text of `ids`; an id outside the vocabulary is an error. Byte ids that do not
    /// form UTF-8 (a character cut in two) become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.len()) {
            return Err(format!(
                "id {bad} is outside the vocabulary of {} ids",
                self.len()
            ));
        }
        Ok(match self.tokenizer {
            Tokenizer::Byte => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Char => ids.iter().map(|&i| self.chars[i as usize]).collect(),
        })
    }

    /// How id `id` is shown (as a class name): the character, escaped where it is invisible
    /// (`\n`, `' '`), or the byte in hex.
    pub fn show(&self, id: usize) -> String {
        match self.tokenizer {
            Tokenizer::Byte => format!("0x{id:02x}"),
            Tokenizer::Char => match self.chars.get(id) {
                Some(' ') => "' '".into(),
                Some(c) if c.is_whitespace() || c.is_control() => c.escape_default().to_string(),
                Some(c) => c.to_string(),
                None => String::new(),
            },
        }
    }

    /// vocab.json's text.
    pub fn to_json(&self) -> String {
        let file = VocabFile {
            format_version: VOCAB_VERSION,
            tokenizer: self.tokenizer,
            size: self.len(),
            symbols: (self.tokenizer == Tokenizer::Char)
                .then(|| self.chars.iter().map(|c| c.to_string()).collect()),
        };
        serde_json::to_string_pretty(&file).expect("a vocabulary serialises") + "\n"
    }

    /// Reads vocab.json's text, checking it describes a vocabulary this build can use.
    pub fn from_json(text: &str) -> Result<Vocab, String> {
        let f: VocabFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if f.format_version != VOCAB_VERSION {
            return Err(format!(
                "format_version is {}; this build reads {VOCAB_VERSION}",
                f.format_version
            ));
        }
        let vocab = match (f.tokenizer, f.symbols) {
            (Tokenizer::Byte, None) => Vocab::bytes(),
            (Tokenizer::Char, Some(symbols)) => {
                let mut chars = Vec::with_capacity(symbols.len());
                for s in &symbols {
                    let mut it = s.chars();
                    match (it.next(), it.next()) {
                        (Some(c), None) => chars.push(c),
                        _ => return Err(format!("symbol {s:?} is not one character")),
                    }
                }
                if chars.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("the symbols are not in sorted order without repeats".into());
                }
                Vocab {
                    tokenizer: Tokenizer::Char,
                    chars,
                }
            }
            (Tokenizer::Byte, Some(_)) => return Err("a byte vocabulary lists no symbols".into()),
            (Tokenizer::Char, None) => return Err("a char vocabulary needs `symbols`".into()),
        };
        if vocab.len() != f.size {
            return Err(format!(
                "size is {} but the vocabulary has {} ids",
                f.size,
                vocab.len()
            ));
        }
        Ok(vocab)
    }

    /// Writes `path` (or `path/vocab.json` for a directory) atomically.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let path = match path.is_dir() {
            true => path.join(VOCAB_FILE),
            false => path.to_path_buf(),
        };
        crate::checkpoint::write_file(&path, self.to_json().as_bytes()).map_err(|e| e.to_string())
    }

    /// Reads `path`: a vocab.json, or a directory holding one (a run directory or one of
    /// its checkpoints).
    pub fn load(path: &Path) -> Result<Vocab, DataError> {
        let path = match path.is_dir() {
            true => path.join(VOCAB_FILE),
            false => path.to_path_buf(),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        Vocab::from_json(&text).map_err(|m| DataError::format(&path, m))
    }
}
