//! The `general.*` keys llama.cpp's converter derives from the folder (gguf-py `metadata.py`):
//! sampling defaults from `generation_config.json`, the name and its parts from `config.json`'s
//! `_name_or_path` or the folder name, and the size label from the parameter count.
//!
//! Not ported: the model card (`README.md` front matter: license, tags, languages, base models,
//! datasets), which needs a YAML parser; a folder with one gets fewer `general.*` keys here.

use std::path::Path;

use anyhow::Result;
use realizar_formats::Value;
use serde_json::Value as Json;

use super::hparams::to_f32;
use super::Kv;

/// A model id's parts (`get_model_id_components`).
#[derive(Debug, Default, PartialEq)]
struct IdParts {
    name: Option<String>,
    org: Option<String>,
    basename: Option<String>,
    finetune: Option<String>,
    version: Option<String>,
    size_label: Option<String>,
}

#[derive(Default)]
struct Meta {
    name: Option<String>,
    organization: Option<String>,
    basename: Option<String>,
    finetune: Option<String>,
    version: Option<String>,
    size_label: Option<String>,
}

impl Meta {
    /// Fill what is still missing from a model id (`apply_metadata_heuristic`).
    fn fill(&mut self, id: &str, total_params: u64) {
        let p = id_parts(id, total_params);
        let fill = |slot: &mut Option<String>, v: Option<String>| {
            if slot.is_none() {
                *slot = v;
            }
        };
        fill(&mut self.name, p.name.as_deref().map(id_to_title));
        fill(&mut self.organization, p.org.as_deref().map(id_to_title));
        fill(&mut self.basename, p.basename);
        fill(&mut self.finetune, p.finetune);
        fill(&mut self.version, p.version);
        fill(&mut self.size_label, p.size_label);
    }
}

/// Write the sampling, name and size keys in `set_gguf_meta_model`'s order.
pub fn write(kv: &mut Kv, dir: &Path, config: &Json, total_params: u64) -> Result<()> {
    sampling(kv, dir)?;
    let mut m = Meta::default();
    if let Some(id) = config.get("_name_or_path").and_then(Json::as_str) {
        if id.matches('/').count() <= 1 {
            m.fill(id, total_params);
        }
    }
    // The folder's name as given (`Path(dir).name`); "." has none, so take the real name.
    let name = match dir.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
    };
    m.fill(&name, total_params);
    let s = |v: String| Value::String(v);
    kv.set("general.name", s(m.name.unwrap_or(name)));
    if let Some(v) = m.version {
        kv.set("general.version", s(v));
    }
    if let Some(v) = m.organization {
        kv.set("general.organization", s(v));
    }
    if let Some(v) = m.finetune {
        kv.set("general.finetune", s(v));
    }
    if let Some(v) = m.basename {
        kv.set("general.basename", s(v));
    }
    let size = m
        .size_label
        .or_else(|| (total_params > 0).then(|| size_label(total_params)));
    if let Some(v) = size {
        kv.set("general.size_label", s(v));
    }
    Ok(())
}

/// `general.sampling.*` from `generation_config.json` (a missing or unreadable file: none).
fn sampling(kv: &mut Kv, dir: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return Ok(());
    };
    let Ok(Json::Object(g)) = serde_json::from_str::<Json>(&text) else {
        return Ok(());
    };
    let get = |k: &str| g.get(k).filter(|v| !v.is_null());
    if let Some(Json::String(seq)) = get("sequence") {
        kv.set("general.sampling.sequence", Value::String(seq.clone()));
    }
    let int = |k: &str, v: &Json| -> Result<Value> {
        let n = v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| anyhow::anyhow!("generation_config.json: {k} = {v} is not an i32"))?;
        Ok(Value::I32(n))
    };
    let float = |k: &str, v: &Json| Ok::<_, anyhow::Error>(Value::F32(to_f32(k, v)?));
    type Conv<'c> = &'c dyn Fn(&str, &Json) -> Result<Value>;
    let fields: [(&str, Option<&Json>, Conv<'_>); 11] = [
        ("top_k", get("top_k"), &int),
        ("top_p", get("top_p"), &float),
        ("min_p", get("min_p"), &float),
        ("xtc_probability", get("xtc_probability"), &float),
        ("xtc_threshold", get("xtc_threshold"), &float),
        ("temp", get("temperature"), &float),
        ("penalty_last_n", get("penalty_last_n"), &int),
        (
            "penalty_repeat",
            get("penalty_repeat").or_else(|| get("repetition_penalty")),
            &float,
        ),
        ("mirostat", get("mirostat"), &int),
        ("mirostat_tau", get("mirostat_tau"), &float),
        ("mirostat_eta", get("mirostat_eta"), &float),
    ];
    for (key, v, conv) in fields {
        if let Some(v) = v {
            kv.set(format!("general.sampling.{key}"), conv(key, v)?);
        }
    }
    Ok(())
}

/// `model_weight_count_rounded_notation(n, min_digits=2)`: 160K, 1.2B, 8.0B.
fn size_label(n: u64) -> String {
    let x = n as f64;
    let (scaled, suffix) = if x > 1e12 {
        (x * 1e-12, 'T')
    } else if x > 1e9 {
        (x * 1e-9, 'B')
    } else if x > 1e6 {
        (x * 1e-6, 'M')
    } else {
        (x * 1e-3, 'K')
    };
    let digits = format!("{}", scaled.round_ties_even() as u64)
        .trim_start_matches('0')
        .len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// `Metadata.id_to_title`: title-case all-lowercase words except versions and numbers.
fn id_to_title(s: &str) -> String {
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
            if lower && !is_version_or_number(w) {
                python_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `^(v\d+(?:\.\d+)*|\d.*)$`
fn is_version_or_number(w: &str) -> bool {
    if w.starts_with(|c: char| c.is_ascii_digit()) {
        return true;
    }
    w.strip_prefix('v').is_some_and(dotted_digits)
}

/// `\d+([.]\d+)*`
fn dotted_digits(s: &str) -> bool {
    s.split('.')
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// Python's `str.title()`: a letter after a cased letter is lowered, any other is raised.
fn python_title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_cased = false;
    for c in w.chars() {
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = c.is_lowercase() || c.is_uppercase();
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Version,
    Type,
    Size,
    Finetune,
    Basename,
}

/// `get_model_id_components`: split `org/name-parts` into basename, size, finetune, version.
fn id_parts(id: &str, total_params: u64) -> IdParts {
    if id.contains(' ') {
        return IdParts {
            name: Some(id.to_string()),
            ..IdParts::default()
        };
    }
    let (org, name) = match id.split_once('/') {
        Some((o, n)) => (Some(o).filter(|o| !o.starts_with('.')), n),
        None => (None, id),
    };
    let mut parts: Vec<String> = name
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let mut kinds: Vec<Vec<Kind>> = vec![Vec::new(); parts.len()];
    for (i, part) in parts.iter_mut().enumerate() {
        let lower = part.to_ascii_lowercase();
        if is_version(&lower) {
            kinds[i].push(Kind::Version);
        } else if is_quant_type(&lower) {
            kinds[i].push(Kind::Type);
            *part = part.to_uppercase();
        } else if i > 0 && is_size(part) {
            *part = size_part(part, total_params, &mut kinds[i]);
        } else if i > 0 && matches!(lower.as_str(), "chat" | "instruct" | "vision" | "lora") {
            kinds[i].push(Kind::Finetune);
        }
    }
    // Word sizes (small, xl) are dropped when a numeric size is present.
    let numeric_size = parts
        .iter()
        .zip(&kinds)
        .any(|(p, k)| k.contains(&Kind::Size) && p.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (p, k) in parts.iter().zip(kinds.iter_mut()) {
            if k.contains(&Kind::Size) && p.chars().all(char::is_alphabetic) {
                k.retain(|&x| x != Kind::Size);
            }
        }
    }
    let mut at_start = true;
    for (p, k) in parts.iter().zip(kinds.iter_mut()) {
        let alpha_start = p.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((k.is_empty() && alpha_start) || k.contains(&Kind::Version)) {
            k.push(Kind::Basename);
        } else {
            at_start = false;
            if k.is_empty() {
                k.push(Kind::Finetune);
            }
        }
    }
    // A trailing version is not part of the basename.
    for k in kinds.iter_mut().rev() {
        if k.contains(&Kind::Basename) && k.len() > 1 {
            k.retain(|&x| x != Kind::Basename);
        } else {
            break;
        }
    }
    let join = |want: Kind, skip: Option<Kind>| {
        let mut seen: Vec<&str> = Vec::new();
        for (p, k) in parts.iter().zip(&kinds) {
            let skipped = skip.is_some_and(|s| k.contains(&s));
            if k.contains(&want) && !skipped && !(want == Kind::Size && seen.contains(&p.as_str()))
            {
                seen.push(p);
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let mut basename = join(Kind::Basename, None);
    let size_label = join(Kind::Size, None);
    let finetune = join(Kind::Finetune, None);
    let version = join(Kind::Version, Some(Kind::Basename));
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdParts {
        name: Some(name.to_string()),
        org: org.map(str::to_owned),
        basename,
        finetune,
        version,
        size_label,
    }
}

/// `(v|iter)?\d+([.]\d+)*` (lowercased input).
fn is_version(s: &str) -> bool {
    dotted_digits(s)
        || s.strip_prefix('v').is_some_and(dotted_digits)
        || s.strip_prefix("iter").is_some_and(dotted_digits)
}

/// `i?q\d(_\w)*|b?fp?(16|32)` (lowercased input).
fn is_quant_type(s: &str) -> bool {
    let q = s.strip_prefix('i').unwrap_or(s);
    if let Some(rest) = q.strip_prefix('q') {
        let mut chars = rest.chars();
        if chars.next().is_some_and(|c| c.is_ascii_digit()) {
            // (_\w)*: pairs of '_' and one word character.
            let tail: Vec<char> = chars.collect();
            return tail.chunks(2).all(|pair| {
                pair.len() == 2 && pair[0] == '_' && (pair[1].is_alphanumeric() || pair[1] == '_')
            });
        }
    }
    let f = s.strip_prefix('b').unwrap_or(s);
    let Some(f) = f.strip_prefix('f') else {
        return false;
    };
    let f = f.strip_prefix('p').unwrap_or(f);
    f == "16" || f == "32"
}

/// `(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)`, case-insensitive.
fn is_size(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "small" | "mini" | "medium" | "large" | "xl" | "xxl"
    ) {
        return true;
    }
    let b = lower.as_bytes();
    // Without a prefix, after an "a", or after digits and an "x".
    let mut starts = vec![0];
    if b.first() == Some(&b'a') {
        starts.push(1);
    }
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    for end in 1..=digits {
        if b.get(end) == Some(&b'x') {
            starts.push(end + 1);
        }
    }
    starts.into_iter().any(|st| size_body(&b[st..]))
}

/// `\d+([._]\d+)?[kmbt]\d?` on the whole of `b`.
fn size_body(b: &[u8]) -> bool {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return false;
    }
    let mut i = n;
    if matches!(b.get(i), Some(b'.' | b'_')) {
        let m = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if m > 0 {
            i += 1 + m;
        }
    }
    if !matches!(b.get(i), Some(b'k' | b'm' | b'b' | b't')) {
        return false;
    }
    i += 1;
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i == b.len()
}

/// Normalise a size part (`7b1` -> `7.1B`) and tell a context length (`32k`) from a size.
fn size_part(part: &str, total_params: u64, kinds: &mut Vec<Kind>) -> String {
    let mut p: Vec<char> = part.replace('_', ".").chars().collect();
    let n = p.len();
    if n >= 2 && p[n - 1].is_ascii_digit() {
        // bloom-7b1 -> 7.1b
        let (last, before) = (p[n - 1], p[n - 2]);
        p.truncate(n - 2);
        p.extend(['.', last, before]);
    }
    let n = p.len();
    if n > 1 && p[n - 2].is_ascii_digit() && matches!(p[n - 1], 'k' | 'm' | 'b' | 't') {
        p[n - 1] = p[n - 1].to_ascii_uppercase();
    }
    let mut s: String = p.iter().collect();
    if total_params != 0 {
        let (num, unit) = s.split_at(s.len() - s.chars().last().map_or(0, char::len_utf8));
        let scale = " KMBT".find(unit).map_or(-1, |i| i as i32);
        if let Ok(v) = num.parse::<f64>() {
            let label = v * 1000f64.powi(scale);
            let total = total_params as f64;
            if (label - total).abs() > (7 * total_params / 8) as f64 {
                kinds.push(Kind::Finetune);
                let last = s.pop().map(|c| c.to_ascii_lowercase());
                s.extend(last);
            }
        }
    }
    if kinds.is_empty() {
        kinds.push(Kind::Size);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (id, parameters, then what gguf-py's `get_model_id_components` + `id_to_title` give:
    /// name, organization, basename, finetune, version, size label), printed by gguf-py.
    type Case = (
        &'static str,
        u64,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );
    #[rustfmt::skip]
    const GGUF_PY: &[Case] = &[
        ("meta-llama/Llama-3.2-1B-Instruct", 1235814400, "Llama 3.2 1B Instruct", Some("Meta Llama"), Some("Llama-3.2"), Some("Instruct"), None, Some("1B")),
        ("Qwen/Qwen2.5-0.5B-Instruct", 494032768, "Qwen2.5 0.5B Instruct", Some("Qwen"), Some("Qwen2.5"), Some("Instruct"), None, Some("0.5B")),
        ("Qwen/Qwen3-8B", 8190735360, "Qwen3 8B", Some("Qwen"), Some("Qwen3"), None, None, Some("8B")),
        ("google/gemma-3-1b-it", 999885952, "Gemma 3 1b It", Some("Google"), Some("gemma-3"), Some("it"), None, Some("1B")),
        ("mistralai/Mistral-7B-Instruct-v0.3", 7248023552, "Mistral 7B Instruct v0.3", Some("Mistralai"), Some("Mistral"), Some("Instruct"), Some("v0.3"), Some("7B")),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 134515008, "SmolLM2 135M Instruct", Some("HuggingFaceTB"), Some("SmolLM2"), Some("Instruct"), None, Some("135M")),
        ("bigscience/bloom-7b1", 7069016064, "Bloom 7b1", Some("Bigscience"), Some("bloom"), None, None, Some("7.1B")),
        ("mistralai/Mixtral-8x7B-v0.1", 46702792704, "Mixtral 8x7B v0.1", Some("Mistralai"), Some("Mixtral"), None, Some("v0.1"), Some("8x7B")),
        ("Qwen2.5-7B-Instruct-1M", 7615616512, "Qwen2.5 7B Instruct 1M", None, Some("Qwen2.5"), Some("Instruct-1m"), None, Some("7B")),
        ("llama", 160384, "Llama", None, None, None, None, None),
        ("Llama-3.2-1B-Instruct-bf16", 160384, "Llama 3.2 1B Instruct Bf16", None, Some("Llama-3.2"), Some("1b-Instruct"), None, None),
        ("TinyLlama-1.1B-Chat-v1.0", 1100048384, "TinyLlama 1.1B Chat v1.0", None, Some("TinyLlama"), Some("Chat"), Some("v1.0"), Some("1.1B")),
        ("phi-2", 2779683840, "Phi 2", None, Some("phi"), None, Some("2"), None),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1777088000, "DeepSeek R1 Distill Qwen 1.5B", Some("Deepseek Ai"), Some("DeepSeek-R1-Distill-Qwen"), None, None, Some("1.5B")),
        ("model-Q4_K_M", 100, "Model Q4_K_M", None, None, None, None, None),
        ("gpt2-xl", 1557611200, "Gpt2 Xl", None, Some("gpt2"), None, None, Some("xl")),
        ("t5-small", 60506624, "T5 Small", None, Some("t5"), None, None, Some("small")),
    ];

    #[test]
    fn ids_split_as_gguf_py_splits_them() {
        for &(id, n, name, org, base, finetune, version, size) in GGUF_PY {
            let p = id_parts(id, n);
            let s = |v: &Option<String>| v.as_deref().map(str::to_owned);
            let got = (
                p.name.as_deref().map(id_to_title),
                p.org.as_deref().map(id_to_title),
                s(&p.basename),
                s(&p.finetune),
                s(&p.version),
                s(&p.size_label),
            );
            let own = |v: Option<&str>| v.map(str::to_owned);
            let want = (
                Some(name.to_string()),
                own(org),
                own(base),
                own(finetune),
                own(version),
                own(size),
            );
            assert_eq!(got, want, "{id}");
        }
    }

    #[test]
    fn size_labels_round_as_gguf_py() {
        assert_eq!(size_label(160_384), "160K");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(8_030_261_248), "8.0B");
        assert_eq!(size_label(999), "1.0K");
    }

    #[test]
    fn quant_and_version_parts() {
        assert!(is_quant_type("q4_k_m"));
        assert!(is_quant_type("bf16"));
        assert!(is_quant_type("fp32"));
        assert!(!is_quant_type("q4_km"));
        assert!(is_version("v0.3"));
        assert!(is_version("3.2"));
        assert!(!is_version("v"));
        assert!(is_size("8x7B"));
        assert!(is_size("7b1"));
        assert!(!is_size("Instruct"));
    }
}
