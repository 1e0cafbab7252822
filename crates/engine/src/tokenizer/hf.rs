//! A Hugging Face model folder's tokenizer: `tokenizer.json` through the `tokenizers` crate,
//! special ids and the chat template from `tokenizer_config.json`, `config.json` and
//! `generation_config.json`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use super::special::SpecialMatcher;
use super::{flatten, Backend, TokenType, Tokenizer, EOG_TEXTS, EOT_TEXTS};
use crate::{EngineError, Result};

/// How the folder's decoder turns a token's text into bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PieceStyle {
    /// GPT-2 byte-level characters (`Ġ` = space).
    ByteLevel,
    /// SentencePiece: `▁` = space, `<0xNN>` = byte.
    SentencePiece,
    /// Anything else: ask `tokenizers` to decode each token alone.
    Other,
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EngineError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_string(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// An id or a list of ids.
fn id_list(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

fn chat_template_of(dir: &Path, config: Option<&Json>) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(t) => return Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(EngineError::Io {
                path: jinja,
                source,
            })
        }
    }
    Ok(match config.and_then(|c| c.get("chat_template")) {
        Some(Json::String(s)) => Some(s.clone()),
        // A list of named templates: take "default", else the first.
        Some(Json::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter().find_map(|t| {
                    let name = t.get("name").and_then(Json::as_str);
                    if want.is_none() || name == want {
                        t.get("template").and_then(Json::as_str).map(str::to_owned)
                    } else {
                        None
                    }
                })
            };
            named(Some("default")).or_else(|| named(None))
        }
        _ => None,
    })
}

pub fn load(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let mut tok = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
    tok.set_encode_special_tokens(true);
    let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
    let config = read_json(&dir.join("config.json"))?;
    let gen_config = read_json(&dir.join("generation_config.json"))?;

    let vocab = tok.get_vocab(true);
    let n = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
    if n == 0 {
        return Err(EngineError::Tokenizer(format!(
            "{}: empty vocabulary",
            path.display()
        )));
    }
    let mut texts = vec![String::new(); n];
    for (text, &id) in &vocab {
        texts[id as usize] = text.clone();
    }
    let decoder_json = serde_json::to_string(&tok.get_decoder()).unwrap_or_default();
    let style = if decoder_json.contains("\"ByteLevel\"") {
        PieceStyle::ByteLevel
    } else if decoder_json.contains("ByteFallback") || decoder_json.contains("Metaspace") {
        PieceStyle::SentencePiece
    } else {
        PieceStyle::Other
    };
    let mut types = vec![TokenType::Normal; n];
    let added = tok.get_added_tokens_decoder();
    for (&id, t) in &added {
        if let Some(slot) = types.get_mut(id as usize) {
            *slot = if t.special {
                TokenType::Control
            } else {
                TokenType::UserDefined
            };
        }
    }
    if style == PieceStyle::SentencePiece {
        for (i, text) in texts.iter().enumerate() {
            if types[i] == TokenType::Normal && super::parse_byte_token(text).is_some() {
                types[i] = TokenType::Byte;
            }
        }
    }

    let c2b = super::bpe::char_to_byte_map();
    let (piece_data, piece_off) = flatten(texts.iter().zip(&types).enumerate().map(
        |(id, (text, ty))| {
            match (ty, style) {
                (TokenType::Control | TokenType::UserDefined, _) => text.as_bytes().to_vec(),
                (TokenType::Byte, _) => {
                    super::parse_byte_token(text).map_or_else(Vec::new, |b| vec![b])
                }
                (_, PieceStyle::ByteLevel) => super::bpe::byte_level_decode(text, &c2b)
                    .unwrap_or_else(|| text.as_bytes().to_vec()),
                (_, PieceStyle::SentencePiece) => text.replace('▁', " ").into_bytes(),
                (_, PieceStyle::Other) => tok
                    .decode(&[id as u32], false)
                    .map(String::into_bytes)
                    .unwrap_or_default(),
            }
        },
    ));

    let index: HashMap<&str, u32> = vocab.iter().map(|(t, &i)| (t.as_str(), i)).collect();
    let by_name = |key: &str| {
        token_string(tok_config.as_ref().and_then(|c| c.get(key)))
            .and_then(|t| index.get(t).copied())
    };
    let from_config = |key: &str| {
        let mut ids = id_list(config.as_ref().and_then(|c| c.get(key)));
        ids.extend(id_list(gen_config.as_ref().and_then(|c| c.get(key))));
        ids.retain(|&i| (i as usize) < n);
        ids
    };
    let bos = by_name("bos_token").or_else(|| from_config("bos_token_id").first().copied());
    let eos_ids = from_config("eos_token_id");
    let eos = by_name("eos_token").or_else(|| eos_ids.first().copied());
    let eot = EOT_TEXTS.iter().find_map(|t| index.get(t).copied());
    let mut eog: Vec<u32> = EOG_TEXTS
        .iter()
        .filter_map(|t| index.get(t).copied())
        .collect();
    eog.extend(eos_ids.iter().copied());
    eog.extend([eos, eot].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();
    for &id in &eog {
        types[id as usize] = TokenType::Control;
    }

    // What the post-processor adds around a text: encode "a" with and without it.
    let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
    if let (Ok(with), Ok(without)) = (tok.encode_fast("a", true), tok.encode_fast("a", false)) {
        let (w, wo) = (with.get_ids(), without.get_ids());
        if let Some(pos) = w.windows(wo.len().max(1)).position(|win| win == wo) {
            prefix = w[..pos].to_vec();
            suffix = w[pos + wo.len()..].to_vec();
        }
    }
    let flag = |key: &str| {
        tok_config
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(Json::as_bool)
    };
    match (flag("add_bos_token"), bos) {
        (Some(true), Some(b)) if prefix.is_empty() => prefix.push(b),
        (Some(false), Some(b)) => prefix.retain(|&x| x != b),
        _ => {}
    }
    match (flag("add_eos_token"), eos) {
        (Some(true), Some(e)) if suffix.is_empty() => suffix.push(e),
        (Some(false), Some(e)) => suffix.retain(|&x| x != e),
        _ => {}
    }

    let specials = SpecialMatcher::new(
        added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, t)| (t.content.clone(), id, false)),
    );
    let chat_template = chat_template_of(dir, tok_config.as_ref())?;
    Ok(Tokenizer {
        backend: Backend::Hf(Box::new(tok)),
        texts,
        types,
        piece_data,
        piece_off,
        specials,
        bos,
        eos,
        eot,
        eog,
        prefix,
        suffix,
        add_space_prefix: false,
        chat_template,
    })
}
