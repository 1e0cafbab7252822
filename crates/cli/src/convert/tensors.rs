//! The tensors of a Hugging Face checkpoint as llama.cpp's converter writes them: in its order
//! (shard by shard, by name), under GGUF names, llama's Q/K rows permuted, gemma3's norms
//! shifted by one and its embedding cut to the vocabulary, llama3's `rope_freqs` added, and
//! everything `quantize` will not quantize (norms, 1-D tensors) as F32, as in its F32 output.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use realizar_formats::{GgmlType, ModelFile, TensorEntry};
use realizar_model::names::{Naming, Role};
use realizar_model::Arch;
use realizar_quant::{dequantize_row, quantize_row};
use serde_json::Value as Json;

use super::hparams::{to_u32, Hparams};
use crate::quantize::{quantizable, Tensor};

const GLOBAL_ROLES: [Role; 3] = [Role::TokEmbd, Role::OutputNorm, Role::Output];
const LAYER_ROLES: [Role; 14] = [
    Role::AttnNorm,
    Role::Wq,
    Role::Wk,
    Role::Wv,
    Role::Wo,
    Role::Bq,
    Role::Bk,
    Role::Bv,
    Role::QNorm,
    Role::KNorm,
    Role::FfnNorm,
    Role::FfnGate,
    Role::FfnUp,
    Role::FfnDown,
];
const POST_NORM_ROLES: [Role; 2] = [Role::PostAttnNorm, Role::PostFfnNorm];

/// HF name -> (GGUF name, role) for every tensor the architecture may have.
fn name_map(arch: Arch, n_layers: usize) -> HashMap<String, (String, Role)> {
    let post_norms = arch == Arch::Gemma3;
    let mut map = HashMap::new();
    let mut add = |role: Role, il: usize| {
        map.insert(
            Naming::Hf.name(role, il, post_norms),
            (Naming::Gguf.name(role, il, post_norms), role),
        );
    };
    for role in GLOBAL_ROLES {
        add(role, 0);
    }
    for il in 0..n_layers {
        for role in LAYER_ROLES {
            add(role, il);
        }
        if post_norms {
            for role in POST_NORM_ROLES {
                add(role, il);
            }
        }
    }
    map
}

/// The converter's renames and skips of source names (`filter_tensors` of TextModel,
/// ModelBase and LlamaModel, and the names `prepare_tensors` drops). `None`: not written.
fn filter_name(name: &str, arch: Arch, hf_arch: &str) -> Option<String> {
    const PREFIXES: [&str; 10] = [
        "mlp",
        "vit.",
        "vpm.",
        "siglip2.",
        "conformer.",
        "merger.",
        "resampler.",
        "sound_encoder.",
        "sound_projection.",
        "speech_embeddings.",
    ];
    const PARTS: [&str; 17] = [
        "visual.",
        "vision.",
        "audio.",
        "talker.",
        "vision_",
        "audio_",
        "token2wav.",
        "code2wav.",
        "projector.",
        "pre_mm_projector_norm",
        "image_newline",
        "view_seperator",
        "patch_embed",
        "patch_embedding",
        "patch_merger.",
        "patch_merge_mlp.",
        "model.connector.",
    ];
    let mut name = name.to_string();
    if arch == Arch::Llama {
        name = name.replace("text_model.", "");
    }
    if PREFIXES.iter().any(|p| name.starts_with(p)) || PARTS.iter().any(|p| name.contains(p)) {
        return None;
    }
    name = name.replace("language_model.", "");
    let dropped = [
        ".attention.masked_bias",
        ".attention.bias",
        ".rotary_emb.inv_freq",
    ];
    if dropped.iter().any(|s| name.ends_with(s)) {
        return None;
    }
    if matches!(hf_arch, "LlamaModel" | "Qwen2Model") {
        name = format!("model.{name}");
    }
    Some(name)
}

/// `LlamaModel.permute`: within each head, HF row `j` goes to `2j` and row `j + hd/2` to
/// `2j + 1`, so llama.cpp's adjacent-pair rope equals HF's rotate-half rope. `data` holds
/// `rows` equal rows (the outermost dimension) of any element type.
fn permute_rows(data: &[u8], rows: usize, n_head: usize) -> Result<Vec<u8>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || !data.len().is_multiple_of(rows.max(1)) {
        bail!("{rows} rows do not split into {n_head} heads of two halves");
    }
    let row = data.len() / rows;
    let half = rows / n_head / 2;
    let mut out = vec![0u8; data.len()];
    for (dst_i, dst) in out.chunks_exact_mut(row).enumerate() {
        // dst_i = h*hd + 2j + s  <-  src = h*hd + s*half + j
        let (h, rest) = (dst_i / (2 * half), dst_i % (2 * half));
        let (j, s) = (rest / 2, rest % 2);
        let src = h * 2 * half + s * half + j;
        dst.copy_from_slice(&data[src * row..(src + 1) * row]);
    }
    Ok(out)
}

/// A float tensor's values as f32.
fn to_f32_values(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>> {
    let n = data.len() / ty.type_size();
    let mut out = vec![0.0f32; n];
    dequantize_row(ty, data, &mut out)?;
    Ok(out)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// gemma3's `w + 1`: BF16 was made F32 before (`prepare_tensors`), F16 stays F16 in torch, so
/// its sum is rounded to F16.
fn add_one(ty: GgmlType, data: &[u8]) -> Result<Vec<u8>> {
    let mut v = to_f32_values(ty, data)?;
    for x in &mut v {
        *x += 1.0;
    }
    if ty == GgmlType::F16 {
        let mut h = vec![0u8; v.len() * 2];
        quantize_row(GgmlType::F16, &v, &mut h)?;
        v = to_f32_values(GgmlType::F16, &h)?;
    }
    Ok(f32_bytes(&v))
}

/// llama3 rope scaling: the per-frequency factors llama.cpp reads from `rope_freqs.weight`,
/// computed in f32 as the converter's torch code does.
fn llama3_rope_freqs(hp: &Hparams) -> Result<Option<Vec<f32>>> {
    let p = hp.rope_global();
    let is_llama3 = p
        .get("rope_type")
        .and_then(Json::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("llama3"));
    if !is_llama3 {
        return Ok(None);
    }
    let num = |k: &str, default: f64| -> Result<f64> {
        match p.get(k).filter(|v| !v.is_null()) {
            Some(v) => v
                .as_f64()
                .with_context(|| format!("config.json: rope {k} = {v} is not a number")),
            None => Ok(default),
        }
    };
    let base = num("rope_theta", 10_000.0)?;
    let dim = match hp.get("head_dim") {
        Some(d) => to_u32("head_dim", d)?,
        None => {
            let e = to_u32(
                "hidden_size",
                hp.get("hidden_size").context("no hidden_size")?,
            )?;
            let h = to_u32(
                "num_attention_heads",
                hp.get("num_attention_heads")
                    .context("no num_attention_heads")?,
            )?;
            e.checked_div(h).context("num_attention_heads is 0")?
        }
    };
    let factor = num("factor", 8.0)?;
    let low = num("low_freq_factor", 1.0)?;
    let high = num("high_freq_factor", 4.0)?;
    let old_ctx = num("original_max_position_embeddings", 8192.0)?;
    let low_wavelen = (old_ctx / low) as f32;
    let high_wavelen = (old_ctx / high) as f32;
    // torch: `base ** t` is the f32 of the exact power, and `scalar / t` is
    // `t.reciprocal() * scalar` (which differs from a division in the last bit).
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let mut out = Vec::new();
    for i in (0..dim).step_by(2) {
        let e = i as f32 / dim as f32;
        let freq = 1.0 / (base.powf(f64::from(e)) as f32);
        let wavelen = (1.0 / freq) * two_pi;
        let r = if wavelen < high_wavelen {
            1.0
        } else if wavelen > low_wavelen {
            factor as f32
        } else {
            let smooth = ((1.0 / wavelen) * old_ctx as f32 - low as f32) / (high - low) as f32;
            1.0 / ((1.0 - smooth) / factor as f32 + smooth)
        };
        out.push(r);
    }
    Ok(Some(out))
}

/// Everything the tensor pass needs to know about the model.
pub struct Spec<'h> {
    pub arch: Arch,
    pub hf_arch: &'h str,
    pub hp: &'h Hparams,
    /// gemma3: rows of the embedding to keep.
    pub n_vocab: Option<usize>,
}

/// The model's tensors in the converter's order, under GGUF names.
pub fn convert<'a>(file: &'a ModelFile, s: &Spec<'_>) -> Result<Vec<Tensor<'a>>> {
    let n_layers = s.hp.block_count()? as usize;
    let names = name_map(s.arch, n_layers);
    let n_head =
        s.hp.find(&["n_heads", "num_attention_heads"])
            .map(|v| to_u32("num_attention_heads", v))
            .transpose()?;
    let n_kv =
        s.hp.find(&["n_kv_heads", "num_key_value_heads"])
            .map(|v| to_u32("num_key_value_heads", v))
            .transpose()?;
    let mut out = Vec::new();
    if s.arch == Arch::Llama {
        if let Some(f) = llama3_rope_freqs(s.hp)? {
            out.push(Tensor {
                name: "rope_freqs.weight".into(),
                dims: vec![f.len() as u64],
                ty: GgmlType::F32,
                data: Cow::Owned(f32_bytes(&f)),
            });
        }
    }
    let mut order: Vec<&TensorEntry> = file.tensors().iter().collect();
    order.sort_by(|a, b| a.shard.cmp(&b.shard).then_with(|| a.name.cmp(&b.name)));
    for t in order {
        let Some(name) = filter_name(&t.name, s.arch, s.hf_arch) else {
            continue;
        };
        let Some((gguf_name, role)) = names.get(&name) else {
            bail!(
                "tensor `{}`: no GGUF name for it in a {} model",
                t.name,
                s.arch.gguf_name()
            );
        };
        let mut dims = t.dims.clone();
        let mut ty = t.ty;
        let mut data: Cow<'a, [u8]> = Cow::Borrowed(file.tensor_bytes(t));
        let outer = dims.last().copied().unwrap_or(1) as usize;
        if s.arch == Arch::Llama && matches!(role, Role::Wq | Role::Bq | Role::Wk | Role::Bk) {
            let heads = match (role, n_head, n_kv) {
                (Role::Wk | Role::Bk, Some(h), Some(kv)) if kv != h => kv,
                (_, Some(h), _) => h,
                _ => bail!("config.json: no num_attention_heads"),
            };
            data = Cow::Owned(
                permute_rows(&data, outer, heads as usize)
                    .with_context(|| format!("permuting {}", t.name))?,
            );
        }
        if s.arch == Arch::Gemma3 {
            if *role == Role::TokEmbd {
                if let Some(n) = s.n_vocab.filter(|&n| n < outer) {
                    let row = data.len() / outer.max(1);
                    data = match data {
                        Cow::Borrowed(b) => Cow::Borrowed(&b[..n * row]),
                        Cow::Owned(mut v) => {
                            v.truncate(n * row);
                            Cow::Owned(v)
                        }
                    };
                    if let Some(d) = dims.last_mut() {
                        *d = n as u64;
                    }
                }
            }
            if name.ends_with("norm.weight") {
                data = Cow::Owned(add_one(ty, &data)?);
                ty = GgmlType::F32;
            }
        }
        if !quantizable(gguf_name, dims.len()) && ty != GgmlType::F32 {
            data = Cow::Owned(f32_bytes(&to_f32_values(ty, &data)?));
            ty = GgmlType::F32;
        }
        out.push(Tensor {
            name: gguf_name.clone(),
            dims,
            ty,
            data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_the_halves_of_each_head() -> Result<()> {
        // 2 heads of 4 rows, one byte per row: head rows [0 1 | 2 3] -> [0 2 1 3].
        let data: Vec<u8> = (0..8).collect();
        assert_eq!(permute_rows(&data, 8, 2)?, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert!(permute_rows(&data, 8, 3).is_err());
        Ok(())
    }
}
