//! The `tokenizer.*` keys: which vocabulary path llama.cpp's converter takes for the model class,
//! and the byte-level BPE (`gpt2`) path itself (`_set_vocab_gpt2` / `get_vocab_base`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use realizar_engine::tokenizer::PreTokenizerConfig;
use realizar_engine::Tokenizer;
use realizar_formats::{Value, ValueType};
use realizar_model::Arch;
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use super::hparams::Hparams;
use super::pre_hashes::{CHECK_TEXT, PRE_HASHES};
use super::special::{Files, SpecialVocab};
use super::{spm, Kv};

/// llama.cpp's token types (`gguf.TokenType`).
pub const NORMAL: i32 = 1;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const UNUSED: i32 = 5;

/// The tokenizer files of a folder, parsed.
pub struct TokenizerFiles {
    pub tokenizer: Option<Json>,
    pub tokenizer_config: Option<Map<String, Json>>,
    /// `tokenizer.model` is there (a SentencePiece vocabulary).
    pub has_spm: bool,
}

impl TokenizerFiles {
    pub fn read(dir: &Path) -> Result<Self> {
        let json = |name: &str| -> Result<Option<Json>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let v = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", path.display()))?;
            Ok(Some(v))
        };
        let tokenizer = json("tokenizer.json")?;
        let tokenizer_config = match json("tokenizer_config.json")? {
            None => None,
            Some(Json::Object(m)) => Some(m),
            Some(_) => bail!(
                "{}: tokenizer_config.json is not a JSON object",
                dir.display()
            ),
        };
        let has_spm = dir.join("tokenizer.model").is_file();
        if tokenizer.is_none() && !has_spm {
            bail!(
                "{}: no tokenizer (neither tokenizer.json nor tokenizer.model)",
                dir.display()
            );
        }
        Ok(TokenizerFiles {
            tokenizer,
            tokenizer_config,
            has_spm,
        })
    }

    /// How many tokens the converter keeps of gemma3's embedding (`n_vocab_real`).
    pub fn n_vocab(&self, dir: &Path, hp: &Hparams) -> Result<usize> {
        if self.has_spm {
            return Ok(spm::Vocab::read(dir, hp, self.tokenizer_config.as_ref())?
                .tokens
                .len());
        }
        let tok = self.tokenizer.as_ref().context("no tokenizer.json")?;
        let n = |v: Option<&Json>, what: &str| -> Result<usize> {
            let len = match v {
                Some(Json::Object(m)) => m.len(),
                Some(Json::Array(a)) => a.len(),
                _ => bail!("tokenizer.json: no {what}"),
            };
            Ok(len)
        };
        Ok(
            n(tok.get("model").and_then(|m| m.get("vocab")), "model.vocab")?
                + n(tok.get("added_tokens"), "added_tokens")?,
        )
    }
}

/// Write the tokenizer keys for `arch` (the model class's `set_vocab`).
pub fn write(
    kv: &mut Kv,
    arch: Arch,
    dir: &Path,
    hp: &Hparams,
    files: &TokenizerFiles,
    config: &Json,
) -> Result<()> {
    let f = Files {
        dir,
        tokenizer: files.tokenizer.as_ref(),
        tokenizer_config: files.tokenizer_config.as_ref(),
        config,
    };
    if arch == Arch::Llama {
        if let Some(Json::Bool(b)) = f.tokenizer_config.and_then(|c| c.get("add_prefix_space")) {
            kv.set("tokenizer.ggml.add_space_prefix", Value::Bool(*b));
        }
    }
    if files.has_spm {
        spm::write(kv, dir, hp, &f)?;
        if arch == Arch::Gemma3 {
            kv.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
        }
        return Ok(());
    }
    let tok = f
        .tokenizer
        .with_context(|| format!("{}: no tokenizer.json", dir.display()))?;
    if arch == Arch::Llama && is_sentencepiece_json(tok) {
        bail!(
            "{}: a SentencePiece-style tokenizer.json (byte-fallback BPE) without tokenizer.model \
             is not supported yet (llama.cpp converts it with its LlamaHfVocab)",
            dir.display()
        );
    }
    gpt2(kv, dir, hp, &f, tok, arch)
}

/// `LlamaHfVocab`'s test: a BPE model with byte fallback and a Sequence decoder.
fn is_sentencepiece_json(tok: &Json) -> bool {
    let model = tok.get("model");
    let ty = model.and_then(|m| m.get("type")).and_then(Json::as_str);
    let flag = |k: &str| model.and_then(|m| m.get(k)).and_then(Json::as_bool);
    let llama3 = ty == Some("BPE")
        && flag("ignore_merges") == Some(true)
        && flag("byte_fallback") == Some(false);
    let decoder = tok
        .get("decoder")
        .and_then(|d| d.get("type"))
        .and_then(Json::as_str);
    !llama3
        && ty == Some("BPE")
        && flag("byte_fallback") == Some(true)
        && decoder == Some("Sequence")
}

/// Tokens gguf-py treats as control tokens even when not marked special.
pub fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// `_set_vocab_gpt2`: model, pre-tokenizer, tokens, types, then the special vocabulary.
fn gpt2(
    kv: &mut Kv,
    dir: &Path,
    hp: &Hparams,
    f: &Files<'_>,
    tok: &Json,
    arch: Arch,
) -> Result<()> {
    let mut vocab: HashMap<u32, String> = HashMap::new();
    let model_vocab = tok
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(Json::as_object)
        .context("tokenizer.json: model.vocab is not an object")?;
    for (text, id) in model_vocab {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("tokenizer.json: token {text:?} has id {id}"))?;
        vocab.insert(id, text.clone());
    }
    // Added tokens: id -> (special, content).
    let mut added: HashMap<u32, bool> = HashMap::new();
    for a in tok
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let id = a
            .get("id")
            .and_then(Json::as_u64)
            .and_then(|i| u32::try_from(i).ok());
        let content = a.get("content").and_then(Json::as_str);
        let (Some(id), Some(content)) = (id, content) else {
            bail!("tokenizer.json: added token without id or content: {a}");
        };
        vocab.insert(id, content.to_string());
        added.insert(
            id,
            a.get("special").and_then(Json::as_bool).unwrap_or(false),
        );
    }
    let max_id = vocab
        .keys()
        .copied()
        .max()
        .context("tokenizer.json: empty vocabulary")?;
    let n = match hp.get("vocab_size") {
        Some(v) => super::hparams::to_u32("vocab_size", v)? as usize,
        None => vocab.len(),
    };
    if max_id as usize >= n {
        bail!(
            "{}: token id {max_id} is not below config.json's vocab_size {n}",
            dir.display()
        );
    }
    let pre = pre_tokenizer(dir, tok)?;
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let Some(text) = vocab.get(&i) else {
            tokens.push(Value::String(format!("[PAD{i}]")));
            types.push(Value::I32(UNUSED));
            continue;
        };
        let (text, ty) = match added.get(&i) {
            Some(&special) if special || looks_special(text) => (text.clone(), CONTROL),
            Some(_) => (text.replace('\u{2581}', " "), USER_DEFINED),
            None => (text.clone(), NORMAL),
        };
        tokens.push(Value::String(text));
        types.push(Value::I32(ty));
    }
    kv.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    kv.set("tokenizer.ggml.pre", Value::String(pre));
    kv.set(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, tokens),
    );
    kv.set(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types),
    );
    let mut sv = SpecialVocab::load(f, true, None)?;
    // LlamaModel: granite small models (vocab 49152) do not add BOS.
    if arch == Arch::Llama && n == 49152 {
        sv.set_add("bos", false);
    }
    sv.write(kv)
}

/// `tokenizer.ggml.pre`: llama.cpp's converter hashes the ids the tokenizer gives for a check
/// text and looks the hash up in its table. A tokenizer it does not know (such as the tiny test
/// fixtures, whose GGUFs were made with the name forced) is named by its split regex when that
/// is exactly one of the known pre-tokenizers' regex lists; otherwise we refuse, as it does.
fn pre_tokenizer(dir: &Path, tok: &Json) -> Result<String> {
    let t = Tokenizer::from_hf_dir(dir)
        .with_context(|| format!("{}: loading tokenizer.json", dir.display()))?;
    let ids = t
        .encode(CHECK_TEXT, true, true)
        .context("tokenizing the pre-tokenizer check text")?;
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let digest = Sha256::digest(format!("[{}]", list.join(", ")).as_bytes());
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if let Some((_, name)) = PRE_HASHES.iter().find(|(h, _)| *h == hash) {
        return Ok((*name).to_string());
    }
    let regexes = split_regexes(tok);
    let by_regex = ["llama-bpe", "qwen2", "gpt-4o", "tekken", "seed-coder"]
        .into_iter()
        .find(|name| {
            !regexes.is_empty() && PreTokenizerConfig::for_name(Some(name)).regexes == regexes
        });
    match by_regex {
        Some(name) => {
            eprintln!(
                "note: {}/tokenizer.json is not in llama.cpp's pre-tokenizer table (check hash \
                 {hash}); its split regex is {name}'s, so tokenizer.ggml.pre = {name}",
                dir.display()
            );
            Ok(name.to_string())
        }
        None => bail!(
            "{}: the BPE pre-tokenizer of tokenizer.json is not recognized (check hash {hash} is \
             not in llama.cpp's table and its split regex is not a known one); llama.cpp's \
             converter refuses it too",
            dir.display()
        ),
    }
}

/// The `Split` regexes of tokenizer.json's pre-tokenizer, in order.
fn split_regexes(tok: &Json) -> Vec<&str> {
    let Some(pre) = tok.get("pre_tokenizer") else {
        return Vec::new();
    };
    let list: Vec<&Json> = match pre.get("pretokenizers").and_then(Json::as_array) {
        Some(a) => a.iter().collect(),
        None => vec![pre],
    };
    list.into_iter()
        .filter(|p| p.get("type").and_then(Json::as_str) == Some("Split"))
        .filter_map(|p| p.get("pattern")?.get("Regex")?.as_str())
        .collect()
}
