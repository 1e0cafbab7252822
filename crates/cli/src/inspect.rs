//! `realizar inspect FILE [--json]`: what a model file holds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use realizar_formats::{ModelFile, Source, Value};
use serde_json::{json, Value as Json};

/// Everything `inspect` reports, gathered once and printed as text or JSON.
struct Report {
    path: String,
    format: String,
    architecture: String,
    name: String,
    n_params: u64,
    n_bytes: u64,
    context_length: Option<u64>,
    vocab_size: Option<u64>,
    tokenizer: Option<String>,
    chat_template: bool,
    by_type: BTreeMap<String, (usize, u64, u64)>, // type -> (tensors, params, bytes)
    tensors: Vec<(String, String, Vec<u64>, u64)>,
}

fn gguf_report(file: &ModelFile, g: &realizar_formats::GgufFile) -> Report {
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let vocab = g
        .get(&key("vocab_size"))
        .and_then(Value::as_u64)
        .or_else(|| {
            g.get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len() as u64)
        });
    let tokenizer = g
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .map(
            |m| match g.get("tokenizer.ggml.pre").and_then(Value::as_str) {
                Some(pre) => format!("{m} (pre-tokenizer {pre})"),
                None => m.to_string(),
            },
        );
    let mut r = base_report(file);
    r.format = format!("GGUF v{}", g.version());
    r.name = g
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    r.context_length = g.get(&key("context_length")).and_then(Value::as_u64);
    r.vocab_size = vocab;
    r.tokenizer = tokenizer;
    r.chat_template = g.get("tokenizer.chat_template").is_some();
    r.architecture = arch;
    r
}

fn read_json(path: &Path) -> Option<Json> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn safetensors_report(file: &ModelFile, config: Option<&Json>, shards: usize) -> Report {
    let cfg = config.map(|c| c.get("text_config").unwrap_or(c));
    let num = |k: &str| cfg.and_then(|c| c.get(k)).and_then(Json::as_u64);
    let tok = read_json(&file.dir().join("tokenizer.json"));
    let tok_cfg = read_json(&file.dir().join("tokenizer_config.json"));
    let mut r = base_report(file);
    r.format = if shards > 1 {
        format!("safetensors ({shards} shards)")
    } else {
        "safetensors".into()
    };
    r.architecture = config
        .and_then(|c| c.get("model_type"))
        .and_then(Json::as_str)
        .unwrap_or("unknown")
        .to_string();
    r.name = config
        .and_then(|c| c.get("_name_or_path"))
        .and_then(Json::as_str)
        .map(str::to_string)
        .or_else(|| {
            file.dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    r.context_length = num("max_position_embeddings");
    r.vocab_size = num("vocab_size");
    r.tokenizer = tok
        .as_ref()
        .and_then(|t| t.pointer("/model/type"))
        .and_then(Json::as_str)
        .map(|t| format!("{t} (tokenizer.json)"));
    r.chat_template = tok_cfg
        .as_ref()
        .and_then(|t| t.get("chat_template"))
        .is_some()
        || file.dir().join("chat_template.jinja").exists();
    r
}

fn base_report(file: &ModelFile) -> Report {
    let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    let mut tensors = Vec::new();
    let (mut n_params, mut n_bytes) = (0u64, 0u64);
    for t in file.tensors() {
        let n = t.n_elements();
        n_params += n;
        n_bytes += t.n_bytes;
        let e = by_type.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += n;
        e.2 += t.n_bytes;
        tensors.push((
            t.name.clone(),
            t.ty.name().to_string(),
            t.dims.clone(),
            t.n_bytes,
        ));
    }
    Report {
        path: file.path().display().to_string(),
        format: String::new(),
        architecture: String::new(),
        name: String::new(),
        n_params,
        n_bytes,
        context_length: None,
        vocab_size: None,
        tokenizer: None,
        chat_template: false,
        by_type,
        tensors,
    }
}

/// "134.5M", "8.03B".
pub fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// "92.0 MiB", "4.58 GiB".
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "unknown".into(), ToString::to_string)
}

impl Report {
    fn to_json(&self) -> Json {
        json!({
            "path": self.path,
            "format": self.format,
            "architecture": self.architecture,
            "name": self.name,
            "parameters": self.n_params,
            "size_bytes": self.n_bytes,
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "chat_template": self.chat_template,
            "types": self.by_type.iter().map(|(ty, (n, p, b))| json!({"type": ty, "tensors": n, "parameters": p, "bytes": b})).collect::<Vec<_>>(),
            "tensors": self.tensors.iter().map(|(name, ty, dims, bytes)| json!({"name": name, "type": ty, "shape": dims, "bytes": bytes})).collect::<Vec<_>>(),
        })
    }

    fn print_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(out, "file:          {}", self.path)?;
        writeln!(out, "format:        {}", self.format)?;
        writeln!(out, "architecture:  {}", self.architecture)?;
        writeln!(out, "name:          {}", self.name)?;
        writeln!(
            out,
            "parameters:    {} ({})",
            human_count(self.n_params),
            self.n_params
        )?;
        writeln!(
            out,
            "size:          {} ({} bytes)",
            human_bytes(self.n_bytes),
            self.n_bytes
        )?;
        writeln!(out, "context:       {}", opt(&self.context_length))?;
        writeln!(out, "vocabulary:    {}", opt(&self.vocab_size))?;
        writeln!(out, "tokenizer:     {}", opt(&self.tokenizer))?;
        writeln!(
            out,
            "chat template: {}",
            if self.chat_template { "yes" } else { "no" }
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:<8} {:>8} {:>14} {:>12}",
            "type", "tensors", "parameters", "size"
        )?;
        for (ty, (n, p, b)) in &self.by_type {
            writeln!(
                out,
                "{ty:<8} {n:>8} {:>14} {:>12}",
                human_count(*p),
                human_bytes(*b)
            )?;
        }
        writeln!(out)?;
        writeln!(out, "{} tensors:", self.tensors.len())?;
        let w = self
            .tensors
            .iter()
            .map(|t| t.0.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            out,
            "{:<w$}  {:<7} {:<24} {:>12}",
            "name", "type", "shape", "bytes"
        )?;
        for (name, ty, dims, bytes) in &self.tensors {
            let shape = dims
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" x ");
            writeln!(out, "{name:<w$}  {ty:<7} {shape:<24} {bytes:>12}")?;
        }
        Ok(())
    }
}

pub fn run(path: &Path, as_json: bool) -> Result<()> {
    let file = ModelFile::open(path)?;
    let report = match file.source() {
        Source::Gguf(g) => gguf_report(&file, g),
        Source::Safetensors { config, shards } => {
            safetensors_report(&file, config.as_ref(), shards.len())
        }
    };
    if as_json {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string_pretty(&report.to_json())?)?;
    } else {
        report.print_text(&mut std::io::stdout().lock())?;
    }
    Ok(())
}
