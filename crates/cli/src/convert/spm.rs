//! SentencePiece vocabularies (`tokenizer.model`): not converted yet.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{Map, Value as Json};

use super::hparams::Hparams;
use super::special::Files;

pub struct Vocab {
    pub tokens: Vec<String>,
}

fn unsupported(dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: SentencePiece vocabularies (tokenizer.model: gemma3, llama 2, mistral) are not \
         converted yet; convert with llama.cpp's convert_hf_to_gguf.py and quantize the GGUF",
        dir.display()
    )
}

impl Vocab {
    pub fn read(dir: &Path, _hp: &Hparams, _tc: Option<&Map<String, Json>>) -> Result<Self> {
        Err(unsupported(dir))
    }
}

pub fn write(_kv: &mut super::Kv, dir: &Path, _hp: &Hparams, _f: &Files<'_>) -> Result<()> {
    bail!(unsupported(dir))
}
