//! `ModelConfig`: an architecture described as data.
//!
//! Every architecture the forward pass supports is a set of values here (head counts, rope layout,
//! norm conventions, activation, sliding windows). `forward.rs` branches on these fields only.

use realizar_formats::GgufFile;
use serde_json::Value as Json;

use crate::ModelError;

/// The architectures the forward pass knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Arch {
    /// The GGUF `general.architecture` name.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    fn from_gguf_name(name: &str) -> Result<Self, ModelError> {
        match name {
            // Mistral GGUFs in llama metadata say "llama"; newer converters may say "mistral".
            "llama" | "mistral" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            "gemma3" => Ok(Arch::Gemma3),
            other => Err(ModelError::UnsupportedArch(other.to_string())),
        }
    }

    fn from_hf_model_type(name: &str) -> Result<Self, ModelError> {
        match name {
            "llama" | "mistral" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            "gemma3" | "gemma3_text" => Ok(Arch::Gemma3),
            other => Err(ModelError::UnsupportedArch(other.to_string())),
        }
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (x[2i], x[2i+1]): llama.cpp's "normal" mode, used by llama GGUFs whose
    /// Q/K rows the converter permuted.
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX / HF `rotate_half` layout.
    Neox,
}

/// The gated MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// Architecture hyper-parameters as data.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub name: String,
    pub n_layers: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Training context length.
    pub ctx_len: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// Rope base of sliding-window layers (gemma3), else equal to `rope_theta`.
    pub rope_theta_local: f32,
    /// Dimensions of a head that rope rotates (the rest pass through).
    pub rope_dim: usize,
    pub rope_layout: RopeLayout,
    /// Linear rope scaling factor (positions are divided by it) for global layers.
    pub rope_scale: f32,
    pub activation: Activation,
    /// Multiply token embeddings by this (gemma: sqrt(n_embd)).
    pub embed_scale: Option<f32>,
    /// Added to every RMSNorm weight (HF gemma stores w with the norm computing x*(1+w)).
    pub norm_weight_offset: f32,
    /// Extra norms after attention and MLP outputs (gemma3).
    pub post_norms: bool,
    /// Per-head RMSNorm on Q and K (qwen3, gemma3).
    pub qk_norm: bool,
    /// Softmax scale for attention scores.
    pub attn_scale: f32,
    /// Sliding-window size in tokens for sliding layers (a query at position p sees keys at
    /// positions > p - window).
    pub sliding_window: Option<usize>,
    /// Per layer: true where the layer uses the sliding window.
    pub sliding_layers: Vec<bool>,
    /// tanh soft-capping of final logits, if any.
    pub final_logit_softcap: Option<f32>,
}

impl ModelConfig {
    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Reads the config from GGUF metadata (`{arch}.*` keys as llama.cpp writes them).
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ModelError> {
        let arch_name = f.get_str("general.architecture")?;
        let arch = Arch::from_gguf_name(arch_name)?;
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_embd = f.get_u32(&k("embedding_length"))? as usize;
        let n_head = f.get_u32(&k("attention.head_count"))? as usize;
        let n_layers = f.get_u32(&k("block_count"))? as usize;
        if n_head == 0 || n_embd == 0 || n_layers == 0 {
            return Err(ModelError::BadConfig(format!(
                "embedding_length {n_embd}, head_count {n_head} and block_count {n_layers} must be non-zero"
            )));
        }
        let n_head_kv = f
            .opt_u32(&k("attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        let head_dim = f
            .opt_u32(&k("attention.key_length"))?
            .map_or(n_embd / n_head, |v| v as usize);
        let vocab_size = match f.opt_u32(&k("vocab_size"))? {
            Some(v) => v as usize,
            None => f.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_theta = f.opt_f32(&k("rope.freq_base"))?.unwrap_or(10_000.0);
        let rope_dim = f
            .opt_u32(&k("rope.dimension_count"))?
            .map_or(head_dim, |v| v as usize);
        let rope_scale = match f.opt_str(&k("rope.scaling.type"))? {
            Some("linear") => f.opt_f32(&k("rope.scaling.factor"))?.unwrap_or(1.0),
            _ => 1.0,
        };
        let mut cfg = ModelConfig {
            arch,
            name: f.opt_str("general.name")?.unwrap_or(arch_name).to_string(),
            n_layers,
            n_embd,
            n_ff: f.get_u32(&k("feed_forward_length"))? as usize,
            n_head,
            n_head_kv,
            head_dim,
            vocab_size,
            ctx_len: f
                .opt_u32(&k("context_length"))?
                .map_or(2048, |v| v as usize),
            norm_eps: f
                .opt_f32(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta,
            rope_theta_local: rope_theta,
            rope_dim,
            rope_layout: RopeLayout::Normal,
            rope_scale,
            activation: Activation::Silu,
            embed_scale: None,
            norm_weight_offset: 0.0,
            post_norms: false,
            qk_norm: false,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            sliding_window: None,
            sliding_layers: vec![false; n_layers],
            final_logit_softcap: None,
        };
        match arch {
            Arch::Llama => {}
            Arch::Qwen2 => cfg.rope_layout = RopeLayout::Neox,
            Arch::Qwen3 => {
                cfg.rope_layout = RopeLayout::Neox;
                cfg.qk_norm = true;
            }
            Arch::Gemma3 => {
                cfg.apply_gemma3_common();
                cfg.rope_theta_local = f.opt_f32(&k("rope.freq_base_swa"))?.unwrap_or(10_000.0);
                let window = f
                    .opt_u32(&k("attention.sliding_window"))?
                    .map(|v| v as usize);
                cfg.sliding_window = window;
                // llama.cpp: every 6th layer is global unless the file says otherwise.
                let pattern = f
                    .opt_u32(&k("attention.sliding_window_pattern"))?
                    .map_or(6, |v| v as usize);
                cfg.set_sliding_pattern(pattern);
                cfg.final_logit_softcap = f.opt_f32(&k("final_logit_softcapping"))?;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the config from an HF `config.json`.
    pub fn from_hf(c: &Json) -> Result<Self, ModelError> {
        let model_type = c
            .get("model_type")
            .and_then(Json::as_str)
            .ok_or_else(|| ModelError::BadConfig("config.json has no model_type".into()))?;
        let arch = Arch::from_hf_model_type(model_type)?;
        let c = c.get("text_config").unwrap_or(c);
        let num = |key: &str| -> Result<usize, ModelError> {
            c.get(key)
                .and_then(Json::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    ModelError::BadConfig(format!("config.json: {key} missing or not an integer"))
                })
        };
        let opt_f = |key: &str| c.get(key).and_then(Json::as_f64).map(|v| v as f32);
        let n_embd = num("hidden_size")?;
        let n_head = num("num_attention_heads")?;
        let n_layers = num("num_hidden_layers")?;
        if n_head == 0 || n_embd == 0 || n_layers == 0 {
            return Err(ModelError::BadConfig(
                "hidden_size, num_attention_heads and num_hidden_layers must be non-zero".into(),
            ));
        }
        let n_head_kv = num("num_key_value_heads").unwrap_or(n_head);
        let head_dim = num("head_dim").unwrap_or(n_embd / n_head);
        // Rope: transformers 4 says `rope_theta` (+ `rope_scaling`); transformers 5 says
        // `rope_parameters`, per layer type for gemma3.
        let rope_params = c.get("rope_parameters");
        let global_rope = rope_params.map(|p| p.get("full_attention").unwrap_or(p));
        let theta_of = |p: Option<&Json>| {
            p.and_then(|p| p.get("rope_theta"))
                .and_then(Json::as_f64)
                .map(|v| v as f32)
        };
        let rope_theta = opt_f("rope_theta")
            .or_else(|| theta_of(global_rope))
            .unwrap_or(10_000.0);
        let rope_scale = match c.get("rope_scaling").or(global_rope) {
            Some(s)
                if s.get("rope_type").or(s.get("type")).and_then(Json::as_str)
                    == Some("linear") =>
            {
                s.get("factor").and_then(Json::as_f64).unwrap_or(1.0) as f32
            }
            _ => 1.0,
        };
        let mut cfg = ModelConfig {
            arch,
            name: model_type.to_string(),
            n_layers,
            n_embd,
            n_ff: num("intermediate_size")?,
            n_head,
            n_head_kv,
            head_dim,
            vocab_size: num("vocab_size")?,
            ctx_len: num("max_position_embeddings").unwrap_or(2048),
            norm_eps: opt_f("rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_theta_local: rope_theta,
            rope_dim: head_dim,
            // HF checkpoints are unpermuted: rotate_half pairs the two halves of a head.
            rope_layout: RopeLayout::Neox,
            rope_scale,
            activation: Activation::Silu,
            embed_scale: None,
            norm_weight_offset: 0.0,
            post_norms: false,
            qk_norm: arch == Arch::Qwen3,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            sliding_window: None,
            sliding_layers: vec![false; n_layers],
            final_logit_softcap: None,
        };
        if arch == Arch::Gemma3 {
            cfg.apply_gemma3_common();
            cfg.norm_weight_offset = 1.0;
            if let Some(q) = opt_f("query_pre_attn_scalar") {
                cfg.attn_scale = 1.0 / q.sqrt();
            }
            if let Some(local) = opt_f("rope_local_base_freq")
                .or_else(|| theta_of(rope_params.and_then(|p| p.get("sliding_attention"))))
            {
                cfg.rope_theta_local = local;
            }
            cfg.sliding_window = num("sliding_window").ok();
            if let Some(types) = c.get("layer_types").and_then(Json::as_array) {
                cfg.sliding_layers = types
                    .iter()
                    .map(|t| t.as_str() == Some("sliding_attention"))
                    .collect();
            } else {
                cfg.set_sliding_pattern(num("sliding_window_pattern").unwrap_or(6));
            }
            cfg.final_logit_softcap = opt_f("final_logit_softcapping");
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_gemma3_common(&mut self) {
        self.rope_layout = RopeLayout::Neox;
        self.activation = Activation::GeluTanh;
        self.embed_scale = Some((self.n_embd as f32).sqrt());
        self.post_norms = true;
        self.qk_norm = true;
        self.rope_theta_local = 10_000.0;
    }

    /// Every `pattern`-th layer (1-based) is global, the others slide.
    fn set_sliding_pattern(&mut self, pattern: usize) {
        self.sliding_layers = (0..self.n_layers)
            .map(|il| self.sliding_window.is_some() && pattern > 0 && (il + 1) % pattern != 0)
            .collect();
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::BadConfig(m));
        if self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_head, self.n_head_kv
            ));
        }
        if self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.rope_dim > self.head_dim
            || !self.rope_dim.is_multiple_of(2)
        {
            return bad(format!(
                "head dim {} / rope dim {} must be even and rope dim <= head dim",
                self.head_dim, self.rope_dim
            ));
        }
        if self.vocab_size == 0 || self.n_ff == 0 {
            return bad("vocab size and feed-forward length must be non-zero".into());
        }
        if self.sliding_layers.len() != self.n_layers {
            return bad(format!(
                "{} layer types for {} layers",
                self.sliding_layers.len(),
                self.n_layers
            ));
        }
        Ok(())
    }
}
