//! `realizar quantize IN OUT TYPE`: rewrite a GGUF model with quantized weight matrices. IN may
//! also be a Hugging Face folder, first converted as llama.cpp's `convert_hf_to_gguf.py` does
//! (`convert/`); both become a [`Model`] that the same rules below quantize.
//!
//! Which tensors are quantized and to what follows llama.cpp's `llama-quantize` (its
//! `llama-quant.cpp`):
//! - only matrices (2+ dims) whose names end in `weight`, never `*_norm.weight`;
//! - the output head (or the token embedding when the head is tied to it) becomes Q6_K, or
//!   Q8_0 when its rows are not a whole number of the target's blocks (or the target is Q8_0);
//! - the mixes: Q4_K_M / Q5_K_M give `attn_v` (and fused `attn_qkv`) and `ffn_down` Q6_K on
//!   the layers llama.cpp's `use_more_bits` picks (the first and last eighth, and every third in
//!   between), fused `attn_qkv` otherwise Q5_K / Q6_K, the rest Q4_K / Q5_K;
//! - a K-quant that does not fit the row length falls back as llama.cpp's does (Q4_K -> Q5_0,
//!   Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0), and a 32-block type that does not fit -> F16.
//!
//! Quantized inputs are dequantized first (as `llama-quantize --allow-requantize`): the result
//! carries the input's quantization error too. Tensors already of the chosen type are copied.
//! Metadata is copied as is (tokenizer included) with `general.file_type` set to the new type.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use realizar_formats::{GgufFile, GgufWriter, ModelFile, Value};
use realizar_quant::{dequantize_row, quantize_row, GgmlType};

/// A `realizar quantize` target: a base type and how the mix departs from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub base: GgmlType,
    /// Q4_K_M / Q5_K_M rules for attn_v and ffn_down.
    pub k_m: bool,
    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*).
    pub ftype: u32,
}

/// The targets by name.
const TARGETS: &[(&str, GgmlType, bool, u32)] = &[
    ("F32", GgmlType::F32, false, 0),
    ("F16", GgmlType::F16, false, 1),
    ("BF16", GgmlType::Bf16, false, 32),
    ("Q4_0", GgmlType::Q4_0, false, 2),
    ("Q4_1", GgmlType::Q4_1, false, 3),
    ("Q5_0", GgmlType::Q5_0, false, 8),
    ("Q5_1", GgmlType::Q5_1, false, 9),
    ("Q8_0", GgmlType::Q8_0, false, 7),
    // Uniform K-quants are labelled with llama.cpp's nearest file type (_S).
    ("Q4_K", GgmlType::Q4K, false, 14),
    ("Q5_K", GgmlType::Q5K, false, 16),
    ("Q6_K", GgmlType::Q6K, false, 18),
    ("Q4_K_M", GgmlType::Q4K, true, 15),
    ("Q5_K_M", GgmlType::Q5K, true, 17),
];

impl Target {
    pub fn parse(name: &str) -> Result<Self> {
        TARGETS
            .iter()
            .find(|(n, ..)| n.eq_ignore_ascii_case(name))
            .map(|&(_, base, k_m, ftype)| Target { base, k_m, ftype })
            .with_context(|| {
                let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
                format!("unknown type {name:?}; one of {}", names.join(", "))
            })
    }
}

/// llama.cpp's name of a `general.file_type` value (as llama-bench prints it).
pub fn ftype_name(ftype: u64) -> Option<&'static str> {
    Some(match ftype {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// What llama.cpp's `use_more_bits` picks: the first and last eighth of the layers and every
/// third layer in between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

/// The K-quant fallbacks for rows that are not a whole number of 256-blocks.
fn fallback(ty: GgmlType, cols: u64) -> GgmlType {
    let fits = |t: GgmlType| cols.is_multiple_of(t.block_size() as u64);
    if fits(ty) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        GgmlType::Iq4Xs => GgmlType::Iq4Nl,
        other => other,
    };
    if fits(alt) {
        alt
    } else {
        GgmlType::F16
    }
}

/// The layer number of a `blk.N.` tensor. The per-layer rules count layers by number, not by
/// file order (files list `blk.10` before `blk.2`); checked against llama-quantize's output on
/// the default model, whose choices match tensor for tensor.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Counters of the per-layer rules (used for tensors without a layer number).
struct Counters {
    n_layers: usize,
    n_attn_v: usize,
    i_attn_v: usize,
    i_ffn_down: usize,
    tied: bool,
}

/// Should this tensor be quantized at all?
pub fn quantizable(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
}

/// The type of one quantizable tensor under `target`.
fn choose(target: Target, name: &str, cols: u64, c: &mut Counters) -> GgmlType {
    let base = target.base;
    if !base.is_quantized() {
        return base;
    }
    let is_output = name == "output.weight" || (c.tied && name == "token_embd.weight");
    let ty = if is_output {
        if !cols.is_multiple_of(base.block_size() as u64) || base == GgmlType::Q8_0 {
            GgmlType::Q8_0
        } else {
            GgmlType::Q6K
        }
    } else if name.contains("attn_v.weight") || name.contains("attn_qkv.weight") {
        let more = use_more_bits(layer_of(name).unwrap_or(c.i_attn_v), c.n_attn_v);
        c.i_attn_v += 1;
        if target.k_m && more {
            GgmlType::Q6K
        } else if target.k_m && name.contains("attn_qkv.weight") {
            if base == GgmlType::Q4K {
                GgmlType::Q5K
            } else {
                GgmlType::Q6K
            }
        } else {
            base
        }
    } else if name.contains("ffn_down") {
        let more = use_more_bits(layer_of(name).unwrap_or(c.i_ffn_down), c.n_layers);
        c.i_ffn_down += 1;
        if target.k_m && more {
            GgmlType::Q6K
        } else {
            base
        }
    } else {
        base
    };
    fallback(ty, cols)
}

/// Convert `data` (rows of `cols` elements of `from`) to `to`; data already of type `to` is
/// passed through (borrowed stays borrowed).
fn convert<'a>(
    from: GgmlType,
    to: GgmlType,
    cols: usize,
    data: Cow<'a, [u8]>,
) -> Result<Cow<'a, [u8]>> {
    if from == to {
        return Ok(data);
    }
    let in_row = from.row_bytes(cols as u64)? as usize;
    let out_row = to.row_bytes(cols as u64)? as usize;
    if in_row == 0 || !data.len().is_multiple_of(in_row) {
        bail!("tensor data is not a whole number of {from} rows of {cols}");
    }
    let rows = data.len() / in_row;
    let mut out = vec![0u8; rows * out_row];
    out.par_chunks_mut(out_row)
        .zip(data.par_chunks(in_row))
        .try_for_each_init(
            || vec![0.0f32; cols],
            |buf, (dst, src)| -> Result<()> {
                dequantize_row(from, src, buf)?;
                quantize_row(to, buf, dst)?;
                Ok(())
            },
        )?;
    Ok(Cow::Owned(out))
}

/// A model on its way to a GGUF file: metadata and tensors in file order. Read from a GGUF
/// file, the tensors borrow its map; converted from a Hugging Face folder (`convert.rs`), most
/// borrow the safetensors maps.
pub struct Model<'a> {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<Tensor<'a>>,
}

/// One tensor of a [`Model`].
pub struct Tensor<'a> {
    pub name: String,
    /// GGML order: row length first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Cow<'a, [u8]>,
}

/// A GGUF file as a [`Model`]: metadata copied (its alignment first, as `general.alignment`),
/// tensors borrowed.
fn from_gguf<'a>(file: &'a ModelFile, gguf: &GgufFile) -> Model<'a> {
    let mut metadata = vec![(
        "general.alignment".to_string(),
        u32::try_from(gguf.alignment()).map_or(Value::U64(gguf.alignment()), Value::U32),
    )];
    metadata.extend(
        gguf.metadata()
            .iter()
            .filter(|(k, _)| k != "general.alignment")
            .cloned(),
    );
    let tensors = file
        .tensors()
        .iter()
        .map(|t| Tensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            data: Cow::Borrowed(file.tensor_bytes(t)),
        })
        .collect();
    Model { metadata, tensors }
}

pub fn run(input: &Path, output: &Path, type_name: &str) -> Result<()> {
    let target = Target::parse(type_name)?;
    let file = ModelFile::open(input).with_context(|| format!("opening {}", input.display()))?;
    let model = match file.gguf() {
        Some(gguf) => from_gguf(&file, gguf),
        None if input.is_dir() => crate::convert::from_hf_folder(&file)?,
        None => bail!(
            "{}: a lone .safetensors file has no config or tokenizer; give its Hugging Face \
             folder (config.json, tokenizer.json, model*.safetensors) instead",
            input.display()
        ),
    };
    write(model, target, input, output, type_name)
}

/// Quantize `model`'s tensors for `target` and write the GGUF file.
fn write(
    model: Model<'_>,
    target: Target,
    input: &Path,
    output: &Path,
    type_name: &str,
) -> Result<()> {
    let meta = |key: &str| {
        model
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|kv| &kv.1)
    };
    let arch = meta("general.architecture")
        .and_then(|v| v.as_str())
        .context("general.architecture missing")?
        .to_string();
    let n_layers = meta(&format!("{arch}.block_count"))
        .and_then(|v| v.as_u64())
        .context("block_count missing")? as usize;
    let tensors = model.tensors;
    let mut c = Counters {
        n_layers,
        n_attn_v: tensors
            .iter()
            .filter(|t| t.name.contains("attn_v.weight") || t.name.contains("attn_qkv.weight"))
            .count(),
        i_attn_v: 0,
        i_ffn_down: 0,
        tied: !tensors.iter().any(|t| t.name == "output.weight"),
    };

    let mut w = GgufWriter::new(3);
    let (mut has_ft, mut has_qv) = (false, false);
    for (k, v) in model.metadata {
        let v = match k.as_str() {
            "general.alignment" => {
                w.alignment(v.as_u64().context("general.alignment is not an integer")?);
                continue;
            }
            "general.file_type" => {
                has_ft = true;
                Value::U32(target.ftype)
            }
            "general.quantization_version" => {
                has_qv = true;
                Value::U32(2)
            }
            _ => v,
        };
        w.add(k, v);
    }
    if !has_ft {
        w.add("general.file_type", Value::U32(target.ftype));
    }
    if !has_qv {
        w.add("general.quantization_version", Value::U32(2));
    }

    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in tensors {
        let cols = t.dims.first().copied().unwrap_or(1);
        let ty = if quantizable(&t.name, t.dims.len()) {
            choose(target, &t.name, cols, &mut c)
        } else {
            t.ty
        };
        bytes_in += t.data.len() as u64;
        let data = convert(t.ty, ty, cols as usize, t.data)
            .with_context(|| format!("converting {} from {} to {ty}", t.name, t.ty))?;
        bytes_out += data.len() as u64;
        match counts.iter_mut().find(|(k, _)| *k == ty) {
            Some((_, n)) => *n += 1,
            None => counts.push((ty, 1)),
        }
        w.add_tensor(t.name, &t.dims, ty, data);
    }
    w.write_file(output)
        .with_context(|| format!("writing {}", output.display()))?;
    let mix: Vec<String> = counts.iter().map(|(ty, n)| format!("{n} x {ty}")).collect();
    println!(
        "{} -> {}: {} ({}), tensors {}, {:.2} MiB -> {:.2} MiB",
        input.display(),
        output.display(),
        type_name.to_ascii_uppercase(),
        ftype_name(target.ftype as u64).unwrap_or("?"),
        mix.join(", "),
        bytes_in as f64 / (1u64 << 20) as f64,
        bytes_out as f64 / (1u64 << 20) as f64,
    );
    Ok(())
}

/// The type `quantize` gives each tensor of a model with these names and GGML dims, in order, by
/// the same rules as `run` (tensors that are not quantized get F32). `synth` uses it so its files
/// carry the same bytes per token as a real model quantized with the same target.
pub fn plan_types(target: Target, tensors: &[(String, Vec<u64>)]) -> Vec<GgmlType> {
    let mut c = Counters {
        n_layers: tensors.iter().filter(|t| t.0.contains("ffn_down")).count(),
        n_attn_v: tensors
            .iter()
            .filter(|t| t.0.contains("attn_v.weight") || t.0.contains("attn_qkv.weight"))
            .count(),
        i_attn_v: 0,
        i_ffn_down: 0,
        tied: !tensors.iter().any(|t| t.0 == "output.weight"),
    };
    tensors
        .iter()
        .map(|(name, dims)| {
            if quantizable(name, dims.len()) {
                choose(target, name, dims.first().copied().unwrap_or(1), &mut c)
            } else {
                GgmlType::F32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_match_llama_cpp() {
        // n = 30 (SmolLM2): first 3, last 4 (>= 26), and (i - 3) % 3 == 2 in between.
        let picked: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(
            picked,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(fallback(GgmlType::Q4K, 576), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q5K, 576), GgmlType::Q5_1);
        assert_eq!(fallback(GgmlType::Q6K, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q4K, 1536), GgmlType::Q4K);
        assert_eq!(fallback(GgmlType::Q4_0, 48), GgmlType::F16);
    }

    #[test]
    fn q4_k_m_mix_on_smollm2_shapes() {
        let t = Target::parse("q4_k_m").unwrap_or_else(|e| panic!("{e}"));
        let mut c = Counters {
            n_layers: 30,
            n_attn_v: 30,
            i_attn_v: 0,
            i_ffn_down: 0,
            tied: true,
        };
        assert_eq!(choose(t, "token_embd.weight", 576, &mut c), GgmlType::Q8_0);
        assert_eq!(
            choose(t, "blk.0.attn_q.weight", 576, &mut c),
            GgmlType::Q5_0
        );
        assert_eq!(
            choose(t, "blk.0.attn_v.weight", 576, &mut c),
            GgmlType::Q8_0
        );
        assert_eq!(
            choose(t, "blk.0.ffn_down.weight", 1536, &mut c),
            GgmlType::Q6K
        );
        assert_eq!(
            choose(t, "blk.1.attn_v.weight", 576, &mut c),
            GgmlType::Q8_0
        );
        assert_eq!(
            choose(t, "blk.1.ffn_down.weight", 1536, &mut c),
            GgmlType::Q6K
        );
        assert_eq!(
            choose(t, "blk.2.ffn_down.weight", 1536, &mut c),
            GgmlType::Q6K
        );
        assert_eq!(
            choose(t, "blk.3.ffn_down.weight", 1536, &mut c),
            GgmlType::Q4K
        );
        // By layer number, whatever the file order.
        for (name, cols, want) in [
            ("blk.10.ffn_down.weight", 1536, GgmlType::Q4K),
            ("blk.11.ffn_down.weight", 1536, GgmlType::Q6K),
            ("blk.11.attn_v.weight", 576, GgmlType::Q8_0),
            ("blk.10.attn_v.weight", 576, GgmlType::Q5_0),
        ] {
            assert_eq!(choose(t, name, cols, &mut c), want, "{name}");
        }
    }
}
