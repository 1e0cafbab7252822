//! `quantize`'s Hugging Face input: a model folder (`config.json`, `tokenizer.json` and
//! friends, `model.safetensors` or shards) converted to the GGUF that llama.cpp's
//! `convert_hf_to_gguf.py --outtype f32` writes for it: the same metadata in the same order and
//! the same tensors, F32 where that file has F32 (quantizable matrices keep their F16/BF16
//! bytes until `quantize` converts them, which is exact for an F32 target).
//!
//! - `hparams.rs`: `config.json` -> `<arch>.*` keys;
//! - `naming.rs`: `general.*` (name, size label, sampling defaults);
//! - `vocab.rs`, `special.rs`, `pre_hashes.rs`: `tokenizer.*` (byte-level BPE);
//! - `spm.rs`: SentencePiece `tokenizer.model` vocabularies;
//! - `tensors.rs`: names, llama's Q/K permutation, gemma3's norm offset.
//!
//! Reading is the formats crate's (`ModelFile` already opened the folder and its shards).

mod hparams;
mod naming;
mod pre_hashes;
mod special;
mod spm;
mod tensors;
mod vocab;

use anyhow::{Context, Result};
use realizar_formats::{ModelFile, Value};
use realizar_model::Arch;

use crate::quantize::Model;
use hparams::Hparams;

/// GGUF metadata in the order written; setting a key again replaces its value in place
/// (gguf-py's writer keeps a dict).
#[derive(Default)]
pub struct Kv(Vec<(String, Value)>);

impl Kv {
    pub fn set(&mut self, key: impl Into<String>, v: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = v,
            None => self.0.push((key, v)),
        }
    }
}

/// The converter's model class (`architectures[0]`) -> GGUF architecture.
fn arch_of(hf_arch: &str) -> Option<Arch> {
    Some(match hf_arch {
        "LlamaForCausalLM" | "LLaMAForCausalLM" | "MistralForCausalLM" | "LlamaModel" => {
            Arch::Llama
        }
        "Qwen2ForCausalLM" | "Qwen2Model" => Arch::Qwen2,
        "Qwen3ForCausalLM" | "Qwen3Model" => Arch::Qwen3,
        "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => Arch::Gemma3,
        _ => return None,
    })
}

/// Convert the Hugging Face folder `file` was opened from.
pub fn from_hf_folder(file: &ModelFile) -> Result<Model<'_>> {
    let dir = file.dir();
    let config = file
        .hf_config()
        .with_context(|| format!("{}: no config.json", dir.display()))?;
    let hp = Hparams::new(config).with_context(|| format!("{}", dir.display()))?;
    let hf_arch = hp
        .hf_arch(config)
        .with_context(|| format!("{}: config.json has no architectures", dir.display()))?;
    let arch = arch_of(&hf_arch).with_context(|| {
        format!(
            "{}: architecture {hf_arch} is not supported (supported: LlamaForCausalLM, \
             MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM)",
            dir.display()
        )
    })?;
    let tok = vocab::TokenizerFiles::read(dir)?;
    let n_vocab = match arch {
        Arch::Gemma3 => Some(tok.n_vocab(dir, &hp)?),
        _ => None,
    };
    let spec = tensors::Spec {
        arch,
        hf_arch: &hf_arch,
        hp: &hp,
        n_vocab,
    };
    let tensors = tensors::convert(file, &spec).with_context(|| format!("{}", dir.display()))?;
    let n_params: u64 = tensors.iter().map(|t| t.dims.iter().product::<u64>()).sum();

    let mut kv = Kv::default();
    kv.set(
        "general.architecture",
        Value::String(arch.gguf_name().into()),
    );
    kv.set("general.type", Value::String("model".into()));
    naming::write(&mut kv, dir, config, n_params)?;
    hparams::write(&mut kv, arch, &hp, 0).with_context(|| format!("{}", dir.display()))?;
    kv.set("general.quantization_version", Value::U32(2));
    vocab::write(&mut kv, arch, dir, &hp, &tok, config)?;
    Ok(Model {
        metadata: kv.0,
        tensors,
    })
}
