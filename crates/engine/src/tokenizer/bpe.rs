//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) built on the `tokenizers` crate.
//!
//! The pipeline is the one llama.cpp runs: the text is split by a list of regexes chosen by
//! `tokenizer.ggml.pre` (each regex splits the pieces the previous one left, keeping matched
//! and unmatched parts), every byte of a piece is mapped to its printable byte-level character,
//! and ranked merges are applied inside each piece. Special tokens never reach this code: the
//! caller splits them out first.

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::spec::TokenizerSpec;
use crate::{EngineError, Result};

// The regexes, as data. Where llama.cpp rewrites a tokenizer.json regex for std::regex, we use
// the original: Oniguruma (the `tokenizers` regex engine) understands it directly.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILING: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
const DEEPSEEK3_MAIN: &str = r"[!\x22#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes a BPE vocabulary, from `tokenizer.ggml.pre`.
#[derive(Debug, Clone)]
pub struct PreTokenizerConfig {
    pub regexes: Vec<&'static str>,
    /// Look a whole piece up in the vocabulary before merging (llama3, tekken).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the file does not say.
    pub default_add_bos: bool,
}

impl PreTokenizerConfig {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` name, as llama.cpp's vocabulary loader
    /// chooses it. Unknown or missing names get llama.cpp's `default` (with a warning).
    pub fn for_name(pre: Option<&str>) -> Self {
        let cfg = |regexes: &[&'static str]| PreTokenizerConfig {
            regexes: regexes.to_vec(),
            ignore_merges: false,
            default_add_bos: false,
        };
        let llama3 = PreTokenizerConfig {
            regexes: vec![LLAMA3],
            ignore_merges: true,
            default_add_bos: true,
        };
        match pre.unwrap_or("default") {
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => llama3,
            "dbrx" | "smaug-bpe" => cfg(&[LLAMA3]),
            "deepseek-coder" => cfg(&[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ]),
            "deepseek-v3" | "hunyuan-dense" => {
                cfg(&[r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3_MAIN])
            }
            "falcon" => cfg(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" => cfg(&[r"\p{N}", GPT2]),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "jina-v1-en" | "jina-v2-code"
            | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
            | "exaone4" => cfg(&[GPT2]),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "stablelm2" | "megrez" | "hunyuan"
            | "grok-2" => cfg(&[QWEN2]),
            "poro-chat" | "bloom" | "gpt3-finnish" => cfg(&[PORO]),
            "glm4" | "chatglm-bpe" => cfg(&[LLAMA3]),
            "viking" => cfg(&[PORO, r"\p{N}"]),
            "tekken" => PreTokenizerConfig {
                regexes: vec![TEKKEN],
                ignore_merges: true,
                default_add_bos: true,
            },
            "gpt-4o" | "llama4" | "minimax-m2" => cfg(&[GPT4O]),
            "seed-coder" => cfg(&[SEED_CODER]),
            "bailingmoe" | "bailingmoe2" | "llada-moe" => cfg(&[BAILING]),
            other => {
                if other != "default" {
                    tracing::warn!(
                        "pre-tokenizer `{other}` is not known; using llama.cpp's `default` regexes"
                    );
                }
                cfg(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"])
            }
        }
    }
}

/// GPT-2's byte-to-character table: printable bytes map to themselves, the rest to U+0100+.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // All code points here are below 0x200, so always valid.
        *slot = char::from_u32(cp).unwrap_or('\u{fffd}');
    }
    table
}

/// The bytes a byte-level token text stands for; `None` if a character is outside the
/// 256-character byte alphabet (then the token is not a byte-level piece).
pub fn byte_level_decode(text: &str, char_to_byte: &HashMap<char, u8>) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| char_to_byte.get(&c).copied())
        .collect()
}

pub fn char_to_byte_map() -> HashMap<char, u8> {
    byte_to_char_table()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// Split a GGUF merge `"left right"` the way llama.cpp does: at the first space after the
/// first byte (so a merge whose left side is itself a space still splits correctly).
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let pos = merge.bytes().skip(1).position(|b| b == b' ')? + 1;
    Some((&merge[..pos], &merge[pos + 1..]))
}

/// Build the `tokenizers` pipeline for a GGUF byte-level BPE vocabulary. `token_texts` are the
/// token strings with empty ones already renamed (as llama.cpp does).
pub fn build(
    spec: &TokenizerSpec,
    token_texts: &[String],
    pre: &PreTokenizerConfig,
) -> Result<tokenizers::Tokenizer> {
    if u32::try_from(token_texts.len()).is_err() {
        return Err(EngineError::Tokenizer("vocabulary larger than u32".into()));
    }
    // Later duplicates win, as in llama.cpp.
    let vocab: tokenizers::models::bpe::Vocab = token_texts
        .iter()
        .enumerate()
        .map(|(id, text)| (text.clone(), id as u32))
        .collect();
    let mut merges = Vec::with_capacity(spec.merges.len());
    let mut skipped = 0usize;
    for m in &spec.merges {
        match split_merge(m) {
            Some((a, b))
                if vocab.contains_key(a)
                    && vocab.contains_key(b)
                    && vocab.contains_key(&format!("{a}{b}")) =>
            {
                merges.push((a.to_owned(), b.to_owned()))
            }
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!("{skipped} BPE merges name tokens outside the vocabulary; ignored");
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| EngineError::Tokenizer(format!("building BPE model: {e}")))?;
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre.regexes.len() + 1);
    for re in &pre.regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| EngineError::Tokenizer(format!("pre-tokenizer regex {re:?}: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Sequence::new(steps)));
    Ok(tok)
}

/// Encode one fragment of plain text (no special tokens inside) with a `tokenizers` pipeline.
pub fn encode_fragment(tok: &tokenizers::Tokenizer, text: &str, out: &mut Vec<u32>) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let enc = tok
        .encode_fast(text, false)
        .map_err(|e| EngineError::Tokenizer(format!("encoding: {e}")))?;
    out.extend_from_slice(enc.get_ids());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = byte_to_char_table();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte_map().len(), 256);
    }

    #[test]
    fn merges_split_like_llama_cpp() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
        assert_eq!(split_merge("  x"), Some((" ", "x")));
        assert_eq!(split_merge("ab"), None);
    }

    #[test]
    fn every_regex_compiles() {
        for name in [
            "default",
            "llama-bpe",
            "qwen2",
            "smollm",
            "gpt-2",
            "tekken",
            "gpt-4o",
            "falcon",
            "deepseek-coder",
            "deepseek-v3",
            "poro-chat",
            "viking",
            "seed-coder",
            "bailingmoe",
        ] {
            for re in PreTokenizerConfig::for_name(Some(name)).regexes {
                Split::new(
                    SplitPattern::Regex(re.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap_or_else(|e| panic!("{name}: {re}: {e}"));
            }
        }
    }
}
