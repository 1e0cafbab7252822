//! `TokenizerSpec`: the plain data a GGUF file carries about its vocabulary, and the one
//! function that reads it from the file's metadata.
//!
//! Keeping the vocabulary as plain data lets tests build small vocabularies by hand and lets
//! every default (which ids, whether to add BOS) be decided in one place, `Tokenizer::from_spec`.

use realizar_formats::GgufFile;

use crate::{EngineError, Result};

/// Which tokenization algorithm the vocabulary uses (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with ranked merges and a regex pre-tokenizer.
    Bpe,
    /// `llama`: SentencePiece BPE driven by token scores, `▁` for spaces, `<0xNN>` byte tokens.
    Spm,
}

impl VocabKind {
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "gpt2" => Ok(VocabKind::Bpe),
            "llama" => Ok(VocabKind::Spm),
            other => Err(EngineError::Tokenizer(format!(
                "tokenizer.ggml.model `{other}` is not supported (supported: gpt2, llama)"
            ))),
        }
    }
}

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    /// Special tokens such as `<s>`, `<|im_end|>`: parsed from text only with `parse_special`,
    /// rendered as empty text unless asked for.
    Control,
    /// Added tokens that are always matched in text before tokenization.
    UserDefined,
    Unused,
    /// SentencePiece byte-fallback tokens `<0xNN>`.
    Byte,
}

impl TokenType {
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// A vocabulary as GGUF stores it. Optional fields are `None` when the file does not say;
/// `Tokenizer::from_spec` then applies llama.cpp's defaults for the vocabulary kind.
#[derive(Debug, Clone)]
pub struct TokenizerSpec {
    pub kind: VocabKind,
    /// `tokenizer.ggml.pre` (BPE pre-tokenizer name such as `llama-bpe`, `qwen2`, `smollm`).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One per token, or empty (all zero).
    pub scores: Vec<f32>,
    /// One per token (`TokenType` codes), or empty (all `Normal`).
    pub token_types: Vec<i32>,
    /// BPE merges, `"left right"`, in rank order. Empty for SPM.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl TokenizerSpec {
    /// An empty spec of the given kind; tests fill in tokens by hand.
    pub fn new(kind: VocabKind, tokens: Vec<String>) -> Self {
        TokenizerSpec {
            kind,
            pre: None,
            tokens,
            scores: Vec::new(),
            token_types: Vec::new(),
            merges: Vec::new(),
            bos: None,
            eos: None,
            eot: None,
            eom: None,
            unk: None,
            pad: None,
            add_bos: None,
            add_eos: None,
            add_space_prefix: None,
            chat_template: None,
        }
    }

    /// Read the `tokenizer.*` metadata of a GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        let kind = VocabKind::from_gguf_name(model)?;
        let tokens: Vec<String> = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let n = tokens.len();
        let scores = gguf
            .opt_f32_array("tokenizer.ggml.scores")?
            .unwrap_or_default();
        let token_types = gguf
            .opt_i32_array("tokenizer.ggml.token_type")?
            .unwrap_or_default();
        if !scores.is_empty() && scores.len() != n {
            return Err(EngineError::Tokenizer(format!(
                "tokenizer.ggml.scores has {} entries for {n} tokens",
                scores.len()
            )));
        }
        if !token_types.is_empty() && token_types.len() != n {
            return Err(EngineError::Tokenizer(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                token_types.len()
            )));
        }
        let merges: Vec<String> = gguf
            .opt_str_array("tokenizer.ggml.merges")?
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if kind == VocabKind::Bpe && merges.is_empty() {
            return Err(EngineError::Tokenizer(
                "gpt2 vocabulary without tokenizer.ggml.merges".into(),
            ));
        }
        // A special-token id outside the vocabulary is a broken file: say so at load rather
        // than emit or stop on a token that cannot exist.
        let id = |key: &str| -> Result<Option<u32>> {
            match gguf.opt_u32(key)? {
                Some(v) if v as usize >= n => Err(EngineError::Tokenizer(format!(
                    "{key} = {v} is outside the vocabulary of {n} tokens"
                ))),
                v => Ok(v),
            }
        };
        // Byte tokens must spell one byte as `<0xNN>`.
        for (i, (text, &ty)) in tokens.iter().zip(&token_types).enumerate() {
            if TokenType::from_i32(ty) == TokenType::Byte
                && super::spm::parse_byte_token(text).is_none()
            {
                return Err(EngineError::Tokenizer(format!(
                    "token {i} {text:?} has type BYTE but is not of the form <0xNN>"
                )));
            }
        }
        Ok(TokenizerSpec {
            kind,
            pre: gguf.opt_str("tokenizer.ggml.pre")?.map(str::to_owned),
            tokens,
            scores,
            token_types,
            merges,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            eom: id("tokenizer.ggml.eom_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: gguf.opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: gguf.opt_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: gguf.opt_bool("tokenizer.ggml.add_space_prefix")?,
            chat_template: gguf.opt_str("tokenizer.chat_template")?.map(str::to_owned),
        })
    }

    pub fn token_type(&self, id: usize) -> TokenType {
        self.token_types
            .get(id)
            .map_or(TokenType::Normal, |&t| TokenType::from_i32(t))
    }
}
