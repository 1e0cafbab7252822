//! Tensor names, one table per file format.
//!
//! The forward pass asks for weights by role; these tables map a role to the name a GGUF file
//! (`blk.N.attn_q.weight`) or an HF checkpoint (`model.layers.N.self_attn.q_proj.weight`) uses.

/// What a weight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    TokEmbd,
    OutputNorm,
    Output,
    AttnNorm,
    Wq,
    Wk,
    Wv,
    Wo,
    Bq,
    Bk,
    Bv,
    QNorm,
    KNorm,
    PostAttnNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    PostFfnNorm,
}

/// Which naming scheme a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Gguf,
    Hf,
}

impl Naming {
    /// The tensor name of `role` in layer `layer` (ignored for global roles). `post_norms` says
    /// the architecture has norms after attention and MLP (gemma3), which changes HF names.
    pub fn name(self, role: Role, layer: usize, post_norms: bool) -> String {
        match self {
            Naming::Gguf => gguf_name(role, layer),
            Naming::Hf => hf_name(role, layer, post_norms),
        }
    }
}

fn gguf_name(role: Role, il: usize) -> String {
    let blk = |s: &str| format!("blk.{il}.{s}");
    match role {
        Role::TokEmbd => "token_embd.weight".into(),
        Role::OutputNorm => "output_norm.weight".into(),
        Role::Output => "output.weight".into(),
        Role::AttnNorm => blk("attn_norm.weight"),
        Role::Wq => blk("attn_q.weight"),
        Role::Wk => blk("attn_k.weight"),
        Role::Wv => blk("attn_v.weight"),
        Role::Wo => blk("attn_output.weight"),
        Role::Bq => blk("attn_q.bias"),
        Role::Bk => blk("attn_k.bias"),
        Role::Bv => blk("attn_v.bias"),
        Role::QNorm => blk("attn_q_norm.weight"),
        Role::KNorm => blk("attn_k_norm.weight"),
        Role::PostAttnNorm => blk("post_attention_norm.weight"),
        Role::FfnNorm => blk("ffn_norm.weight"),
        Role::FfnGate => blk("ffn_gate.weight"),
        Role::FfnUp => blk("ffn_up.weight"),
        Role::FfnDown => blk("ffn_down.weight"),
        Role::PostFfnNorm => blk("post_ffw_norm.weight"),
    }
}

fn hf_name(role: Role, il: usize, post_norms: bool) -> String {
    let layer = |s: &str| format!("model.layers.{il}.{s}");
    match role {
        Role::TokEmbd => "model.embed_tokens.weight".into(),
        Role::OutputNorm => "model.norm.weight".into(),
        Role::Output => "lm_head.weight".into(),
        Role::AttnNorm => layer("input_layernorm.weight"),
        Role::Wq => layer("self_attn.q_proj.weight"),
        Role::Wk => layer("self_attn.k_proj.weight"),
        Role::Wv => layer("self_attn.v_proj.weight"),
        Role::Wo => layer("self_attn.o_proj.weight"),
        Role::Bq => layer("self_attn.q_proj.bias"),
        Role::Bk => layer("self_attn.k_proj.bias"),
        Role::Bv => layer("self_attn.v_proj.bias"),
        Role::QNorm => layer("self_attn.q_norm.weight"),
        Role::KNorm => layer("self_attn.k_norm.weight"),
        // In llama-family checkpoints "post_attention_layernorm" is the norm before the MLP;
        // gemma3 has a real post-attention norm and a separate pre-MLP norm.
        Role::PostAttnNorm => layer("post_attention_layernorm.weight"),
        Role::FfnNorm if post_norms => layer("pre_feedforward_layernorm.weight"),
        Role::FfnNorm => layer("post_attention_layernorm.weight"),
        Role::FfnGate => layer("mlp.gate_proj.weight"),
        Role::FfnUp => layer("mlp.up_proj.weight"),
        Role::FfnDown => layer("mlp.down_proj.weight"),
        Role::PostFfnNorm => layer("post_feedforward_layernorm.weight"),
    }
}
