//! `config.json` -> the `<arch>.*` GGUF keys, as llama.cpp's converter writes them
//! (`TextModel.__init__` / `set_gguf_parameters` of `conversion/base.py`, then the per-model
//! classes `LlamaModel`, `Qwen2Model`, `Qwen3Model`, `Gemma3Model`).
//!
//! The converter reads transformers' `AutoConfig(...).to_dict()`; we read `config.json` itself.
//! For configs that transformers wrote (every real checkpoint) the two hold the same keys.

use anyhow::{bail, Context, Result};
use realizar_formats::Value;
use realizar_model::Arch;
use serde_json::{Map, Value as Json};

use super::Kv;

/// `config.json` with `text_config` merged into the top level (as the converter does).
pub struct Hparams {
    map: Map<String, Json>,
    /// `rope_parameters` (or `rope_scaling`) with the global values mirrored in.
    rope: Map<String, Json>,
}

impl Hparams {
    pub fn new(config: &Json) -> Result<Self> {
        let mut map = config
            .as_object()
            .context("config.json is not a JSON object")?
            .clone();
        if let Some(Json::Object(text)) = map.get("text_config").cloned() {
            map.extend(text);
        }
        let mut hp = Hparams {
            map,
            rope: Map::new(),
        };
        hp.rope = hp.rope_parameters();
        Ok(hp)
    }

    /// The value of the first of `keys` present (`find_hparam`); JSON null counts as absent.
    pub fn find(&self, keys: &[&str]) -> Option<&Json> {
        keys.iter()
            .find_map(|k| self.map.get(*k))
            .filter(|v| !v.is_null())
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        self.find(&[key])
    }

    /// `architectures[0]` (the converter's model class), or of `text_config`.
    pub fn hf_arch(&self, config: &Json) -> Option<String> {
        let first = |c: &Json| {
            c.get("architectures")
                .and_then(Json::as_array)
                .and_then(|a| a.first())
                .and_then(Json::as_str)
                .map(str::to_owned)
        };
        config
            .get("text_config")
            .and_then(first)
            .or_else(|| first(config))
    }

    fn rope_parameters(&self) -> Map<String, Json> {
        // `hparams.get("rope_parameters", hparams.get("rope_scaling")) or {}`
        let base = match self.map.get("rope_parameters") {
            Some(v) => v,
            None => self.map.get("rope_scaling").unwrap_or(&Json::Null),
        };
        let mut rope = base.as_object().cloned().unwrap_or_default();
        if rope.contains_key("full_attention") || rope.contains_key("sliding_attention") {
            return rope;
        }
        let theta = self.find(&[
            "global_rope_theta",
            "rope_global_theta",
            "rope_theta_global",
            "rope_theta",
            "rotary_emb_base",
        ]);
        let local = self.find(&[
            "local_rope_theta",
            "rope_local_theta",
            "rope_theta_local",
            "swa_rope_theta",
            "rope_local_base_freq",
        ]);
        if let Some(local) = local {
            let mut m = Map::new();
            m.insert("rope_theta".into(), local.clone());
            rope.insert("sliding_attention".into(), Json::Object(m));
        }
        let mirror = |rope: &mut Map<String, Json>, key: &str, v: Option<Json>| {
            if let Some(v) = v.filter(|v| !v.is_null()) {
                rope.entry(key.to_string()).or_insert(v);
            }
        };
        mirror(&mut rope, "rope_theta", theta.cloned());
        let ty = rope.get("type").cloned();
        mirror(&mut rope, "rope_type", ty);
        let partial = self.find(&["partial_rotary_factor", "rope_pct", "rope_percent"]);
        mirror(&mut rope, "partial_rotary_factor", partial.cloned());
        let orig = self.get("original_max_position_embeddings");
        mirror(&mut rope, "original_max_position_embeddings", orig.cloned());
        rope
    }

    /// The rope parameters of global layers.
    pub fn rope_global(&self) -> &Map<String, Json> {
        match self.rope.get("full_attention") {
            Some(Json::Object(m)) => m,
            _ => &self.rope,
        }
    }

    fn rope_local_theta(&self) -> Option<&Json> {
        self.rope
            .get("sliding_attention")
            .and_then(|s| s.get("rope_theta"))
            .filter(|v| !v.is_null())
    }

    pub fn block_count(&self) -> Result<u32> {
        let keys = ["n_layers", "num_hidden_layers", "n_layer", "num_layers"];
        let v = self
            .find(&keys)
            .context("config.json has no num_hidden_layers")?;
        to_u32("num_hidden_layers", v)
    }
}

/// A JSON number as a GGUF u32 (the converter's `add_uint32`).
pub fn to_u32(key: &str, v: &Json) -> Result<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .with_context(|| format!("config.json: {key} = {v} is not a 32-bit unsigned integer"))
}

/// A JSON number as a GGUF f32 (the converter's `add_float32`: Python float, packed as f32).
pub fn to_f32(key: &str, v: &Json) -> Result<f32> {
    v.as_f64()
        .map(|x| x as f32)
        .with_context(|| format!("config.json: {key} = {v} is not a number"))
}

/// Set `<arch>.<key>` to `v` as u32 when `v` is present.
fn put_u32(kv: &mut Kv, arch: &str, key: &str, v: Option<&Json>) -> Result<()> {
    if let Some(v) = v {
        kv.set(format!("{arch}.{key}"), Value::U32(to_u32(key, v)?));
    }
    Ok(())
}

fn put_f32(kv: &mut Kv, arch: &str, key: &str, v: Option<&Json>) -> Result<()> {
    if let Some(v) = v {
        kv.set(format!("{arch}.{key}"), Value::F32(to_f32(key, v)?));
    }
    Ok(())
}

/// The `<arch>.*` keys and `general.file_type` (`ftype`), in the converter's order.
pub fn write(kv: &mut Kv, arch: Arch, hp: &Hparams, ftype: u32) -> Result<()> {
    let a = arch.gguf_name();
    kv.set(format!("{a}.block_count"), Value::U32(hp.block_count()?));
    let ctx_keys = [
        "max_position_embeddings",
        "n_ctx",
        "n_positions",
        "max_length",
        "max_sequence_length",
        "model_max_length",
    ];
    put_u32(kv, a, "context_length", hp.find(&ctx_keys))?;
    let embd = hp.find(&["hidden_size", "n_embd", "dim"]);
    put_u32(kv, a, "embedding_length", embd)?;
    let ff_keys = [
        "prefix_dense_intermediate_size",
        "dense_intermediate_size",
        "intermediate_size",
        "n_inner",
        "hidden_dim",
    ];
    put_u32(kv, a, "feed_forward_length", hp.find(&ff_keys))?;
    let n_head = hp.find(&["num_attention_heads", "n_head", "n_heads"]);
    put_u32(kv, a, "attention.head_count", n_head)?;
    let n_kv = hp.find(&["num_key_value_heads", "n_kv_heads"]);
    put_u32(kv, a, "attention.head_count_kv", n_kv)?;
    if hp.get("is_causal") == Some(&Json::Bool(false)) {
        kv.set(format!("{a}.attention.causal"), Value::Bool(false));
    }
    rope_scaling(kv, a, hp)?;
    if hp.rope.contains_key("mrope_section") {
        bail!("config.json: multi-section rope (mrope_section) is not supported");
    }
    put_f32(kv, a, "rope.freq_base", hp.rope_global().get("rope_theta"))?;
    put_f32(kv, a, "rope.freq_base_swa", hp.rope_local_theta())?;
    let rms = hp.find(&["rms_norm_eps", "norm_eps"]);
    put_f32(kv, a, "attention.layer_norm_rms_epsilon", rms)?;
    let ln = hp.find(&["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"]);
    put_f32(kv, a, "attention.layer_norm_epsilon", ln)?;
    let experts = ["num_local_experts", "num_experts", "n_routed_experts"];
    if let Some(n) = hp.find(&experts) {
        bail!("config.json: a mixture of {n} experts is not supported");
    }
    put_u32(kv, a, "attention.key_length", hp.get("head_dim"))?;
    put_u32(kv, a, "attention.value_length", hp.get("head_dim"))?;
    kv.set("general.file_type", Value::U32(ftype));

    match arch {
        Arch::Llama => {
            put_u32(kv, a, "vocab_size", hp.get("vocab_size"))?;
            let rope_dim = match hp.get("head_dim") {
                Some(d) => to_u32("head_dim", d)?,
                None => {
                    let embd = to_u32("hidden_size", embd.context("no hidden_size")?)?;
                    let heads = to_u32("num_attention_heads", n_head.context("no heads")?)?;
                    embd.checked_div(heads)
                        .context("config.json: num_attention_heads is 0")?
                }
            };
            kv.set(format!("{a}.rope.dimension_count"), Value::U32(rope_dim));
        }
        // `_try_set_pooling_type` writes nothing for a causal LM (no modules.json pooling).
        Arch::Qwen2 | Arch::Qwen3 => {}
        Arch::Gemma3 => gemma3(kv, a, hp)?,
    }
    Ok(())
}

/// `rope_type` of the global rope parameters -> `rope.scaling.*`.
fn rope_scaling(kv: &mut Kv, a: &str, hp: &Hparams) -> Result<()> {
    let p = hp.rope_global();
    let Some(ty) = p.get("rope_type").and_then(Json::as_str) else {
        return Ok(());
    };
    let factor = p.get("factor").filter(|v| !v.is_null());
    match (ty, factor) {
        ("linear", Some(f)) | ("yarn", Some(f)) => {
            kv.set(format!("{a}.rope.scaling.type"), Value::String(ty.into()));
            kv.set(
                format!("{a}.rope.scaling.factor"),
                Value::F32(to_f32("factor", f)?),
            );
            if ty == "yarn" {
                let orig = p
                    .get("original_max_position_embeddings")
                    .context("config.json: yarn rope without original_max_position_embeddings")?;
                put_u32(kv, a, "rope.scaling.original_context_length", Some(orig))?;
                let get = |k: &str| p.get(k).filter(|v| !v.is_null());
                put_f32(
                    kv,
                    a,
                    "rope.scaling.yarn_ext_factor",
                    get("extrapolation_factor"),
                )?;
                let attn = get("attention_factor").or_else(|| get("attn_factor"));
                put_f32(kv, a, "rope.scaling.yarn_attn_factor", attn)?;
                put_f32(kv, a, "rope.scaling.yarn_beta_fast", get("beta_fast"))?;
                put_f32(kv, a, "rope.scaling.yarn_beta_slow", get("beta_slow"))?;
            }
        }
        ("su" | "longrope", _) => {
            kv.set(
                format!("{a}.rope.scaling.type"),
                Value::String("longrope".into()),
            );
        }
        // llama3: the rope_freqs tensor (see tensors.rs); dynamic, default: nothing.
        _ => {}
    }
    Ok(())
}

/// `Gemma3Model.set_gguf_parameters`: defaults for keys a config may omit, softcapping and the
/// sliding window (rewritten keys keep their first position, as in gguf-py's dict).
fn gemma3(kv: &mut Kv, a: &str, hp: &Hparams) -> Result<()> {
    let num = |key: &str, default: u32| -> Result<u32> {
        hp.get(key).map_or(Ok(default), |v| to_u32(key, v))
    };
    kv.set(
        format!("{a}.context_length"),
        Value::U32(num("max_position_embeddings", 131_072)?),
    );
    kv.set(
        format!("{a}.attention.head_count"),
        Value::U32(num("num_attention_heads", 8)?),
    );
    let eps = hp
        .get("rms_norm_eps")
        .map_or(Ok(1e-6), |v| to_f32("rms_norm_eps", v))?;
    kv.set(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(eps),
    );
    let head_dim = num("head_dim", 256)?;
    kv.set(format!("{a}.attention.key_length"), Value::U32(head_dim));
    kv.set(format!("{a}.attention.value_length"), Value::U32(head_dim));
    let theta = hp
        .rope_global()
        .get("rope_theta")
        .filter(|v| !v.is_null())
        .map_or(Ok(1_000_000.0), |v| to_f32("rope_theta", v))?;
    kv.set(format!("{a}.rope.freq_base"), Value::F32(theta));
    if hp.get("attn_logit_softcapping").is_some() {
        bail!("config.json: gemma3 with attn_logit_softcapping is not supported (llama.cpp's converter refuses it too)");
    }
    // `if final_logit_softcapping:` (0 and null write nothing)
    if let Some(cap) = hp.get("final_logit_softcapping") {
        let cap = to_f32("final_logit_softcapping", cap)?;
        if cap != 0.0 {
            kv.set(format!("{a}.final_logit_softcapping"), Value::F32(cap));
        }
    }
    if hp.get("sliding_window_pattern") != Some(&Json::from(1)) {
        let w = hp
            .get("sliding_window")
            .context("config.json: gemma3 without sliding_window")?;
        kv.set(
            format!("{a}.attention.sliding_window"),
            Value::U32(to_u32("sliding_window", w)?),
        );
    }
    kv.set(
        format!("{a}.attention.head_count_kv"),
        Value::U32(num("num_key_value_heads", 4)?),
    );
    Ok(())
}
