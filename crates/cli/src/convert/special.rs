//! gguf-py's `SpecialVocab`: merges, special token ids, `add_*_token` flags, the chat template
//! and normalizer flags, read from `tokenizer.json`, `tokenizer_config.json` and `config.json`
//! with the same precedence (first value found wins) and written in the same order.

use std::path::Path;

use anyhow::{bail, Context, Result};
use realizar_formats::{Value, ValueType};
use serde_json::{Map, Value as Json};

use super::Kv;

/// Python truthiness of an optional JSON value.
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

/// `d[key]` of a JSON object as an owned value (`None` when absent).
fn field(v: Option<&Json>, key: &str) -> Option<Json> {
    v.and_then(|v| v.get(key)).cloned()
}

/// `item.get("SpecialToken", {}).get("id")` of a TemplateProcessing entry, when truthy.
fn template_special(item: Option<&Json>) -> Option<Json> {
    let id = item?.get("SpecialToken")?.get("id")?;
    truthy(Some(id)).then(|| id.clone())
}

/// A dict with Python's insertion order: setting a key again keeps its position.
#[derive(Default)]
struct Ordered<T>(Vec<(String, T)>);

impl<T> Ordered<T> {
    fn set(&mut self, key: &str, v: T) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) => *old = v,
            None => self.0.push((key.to_string(), v)),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    fn set_default(&mut self, key: &str, v: T) {
        if !self.contains(key) {
            self.0.push((key.to_string(), v));
        }
    }
}

pub struct SpecialVocab {
    merges: Vec<String>,
    ids: Ordered<u32>,
    add: Ordered<bool>,
    chat_template: Option<Json>,
    lowercase: Option<bool>,
    strip_accents: Option<bool>,
    types: Vec<&'static str>,
    n_vocab: Option<usize>,
}

/// What the folder's files hold, parsed once.
pub struct Files<'a> {
    pub dir: &'a Path,
    pub tokenizer: Option<&'a Json>,
    pub tokenizer_config: Option<&'a Map<String, Json>>,
    pub config: &'a Json,
}

impl SpecialVocab {
    /// `SpecialVocab(path, load_merges, n_vocab=n_vocab)`.
    pub fn load(f: &Files<'_>, load_merges: bool, n_vocab: Option<usize>) -> Result<Self> {
        let mut sv = SpecialVocab {
            merges: Vec::new(),
            ids: Ordered::default(),
            add: Ordered::default(),
            chat_template: None,
            lowercase: None,
            strip_accents: None,
            types: vec!["bos", "eos", "unk", "sep", "pad", "cls", "mask"],
            n_vocab,
        };
        sv.read_tokenizer_json(f, load_merges)?;
        sv.read_config_json(f.config)?;
        if load_merges && sv.merges.is_empty() {
            sv.merges_txt(f.dir)?;
        }
        Ok(sv)
    }

    fn set_special(&mut self, typ: &str, tid: Option<&Json>) -> Result<()> {
        let Some(Json::Number(n)) = tid else {
            return Ok(());
        };
        if n.is_f64() {
            return Ok(());
        }
        let Some(id) = n.as_u64() else {
            bail!("invalid value for special token type {typ}: {n}");
        };
        let fits = self.n_vocab.is_none_or(|nv| id < nv as u64);
        if fits && !self.ids.contains(typ) {
            if let Ok(id) = u32::try_from(id) {
                self.ids.set(typ, id);
            }
        }
        Ok(())
    }

    fn merges_from_json(&mut self, tokenizer: &Json) -> Result<()> {
        let Some(Json::Array(merges)) = tokenizer.get("model").and_then(|m| m.get("merges")) else {
            return Ok(());
        };
        self.merges = match merges.first() {
            None => return Ok(()),
            Some(Json::String(_)) => merges
                .iter()
                .map(|m| m.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .context("tokenizer.json: merges mix strings and other values")?,
            Some(Json::Array(_)) => merges
                .iter()
                .map(|m| {
                    let pair = m.as_array().filter(|p| p.len() == 2)?;
                    // Spaces inside a part are written as U+0120, as gguf-py does.
                    let part = |v: &Json| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                    Some(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
                })
                .collect::<Option<_>>()
                .context("tokenizer.json: merges are not pairs of strings")?,
            Some(_) => bail!("tokenizer.json: unknown merges format"),
        };
        Ok(())
    }

    fn merges_txt(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("merges.txt");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let mut lines = text.lines().peekable();
        if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
            lines.next();
        }
        self.merges = lines
            .filter_map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                (parts.len() == 2).then(|| format!("{} {}", parts[0], parts[1]))
            })
            .collect();
        Ok(())
    }

    fn normalizer(&mut self, n: &Json) {
        match n.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.lowercase = Some(true),
            Some("StripAccents") => self.strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = n.get("lowercase") {
                    self.lowercase = v.as_bool();
                }
                if let Some(v) = n.get("strip_accents") {
                    self.strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for m in n
                    .get("normalizers")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.normalizer(m);
                }
            }
            _ => {}
        }
    }

    /// `_try_load_read_tokenizer_json`.
    fn read_tokenizer_json(&mut self, f: &Files<'_>, load_merges: bool) -> Result<()> {
        let mut added: &[Json] = &[];
        if let Some(tok) = f.tokenizer {
            if load_merges {
                self.merges_from_json(tok)?;
            }
            if let Some(n) = tok.get("normalizer").filter(|n| truthy(Some(n))) {
                self.normalizer(n);
            }
            added = tok
                .get("added_tokens")
                .and_then(Json::as_array)
                .map_or(&[], Vec::as_slice);
        }
        let mut tc: Option<Map<String, Json>> = f.tokenizer_config.cloned();
        let tc_truthy = |tc: &Option<Map<String, Json>>| tc.as_ref().is_some_and(|m| !m.is_empty());
        if let Some(tok) = f.tokenizer.filter(|t| truthy(Some(t))) {
            let get = |tc: &Option<Map<String, Json>>, k: &str| {
                tc.as_ref().and_then(|m| m.get(k)).cloned()
            };
            let mut bos = get(&tc, "bos_token");
            let mut cls = get(&tc, "cls_token");
            let mut eos = get(&tc, "eos_token");
            let mut sep = get(&tc, "sep_token");
            if !truthy(bos.as_ref()) && truthy(cls.as_ref()) && tc_truthy(&tc) {
                bos = cls.clone();
                put(&mut tc, "bos_token", bos.clone());
            }
            if !truthy(eos.as_ref()) && truthy(sep.as_ref()) && tc_truthy(&tc) {
                eos = sep.clone();
                put(&mut tc, "eos_token", eos.clone());
            }
            if let Some(pp) = tok.get("post_processor").filter(|p| truthy(Some(p))) {
                let list = match pp.get("processors") {
                    Some(Json::Array(a)) => a.clone(),
                    _ => vec![pp.clone()],
                };
                for proc in &list {
                    match proc.get("type").and_then(Json::as_str) {
                        Some("ByteLevel") => {
                            self.add.set_default("bos", false);
                            self.add.set_default("eos", false);
                        }
                        Some("RobertaProcessing") => {
                            self.add.set("bos", true);
                            self.add.set("eos", true);
                            self.add.set("sep", true);
                            if !truthy(cls.as_ref()) && tc_truthy(&tc) {
                                cls = match proc.get("cls") {
                                    Some(c) => c.get(0).cloned(),
                                    None => bos.clone(),
                                };
                                put(&mut tc, "cls_token", cls.clone());
                            }
                            if !truthy(sep.as_ref()) && tc_truthy(&tc) {
                                sep = match proc.get("sep") {
                                    Some(s) => s.get(0).cloned(),
                                    None => eos.clone(),
                                };
                                put(&mut tc, "sep_token", sep.clone());
                            }
                        }
                        Some("TemplateProcessing") => {
                            let mut t = Template {
                                tc: &mut tc,
                                bos: &mut bos,
                                cls: &mut cls,
                                eos: &mut eos,
                                sep: &sep,
                            };
                            t.apply(self, proc);
                        }
                        _ => {}
                    }
                }
            }
        }
        if !tc_truthy(&tc) {
            return Ok(());
        }
        let tc = tc.unwrap_or_default();
        let alt = chat_template_files(f.dir)?;
        // `tokenizer_config.get("chat_template", alt)`: a present key wins, even null.
        let template = match tc.get("chat_template") {
            Some(t) => Some(t.clone()),
            None => alt,
        };
        if let Some(t @ (Json::String(_) | Json::Array(_))) = template {
            self.chat_template = Some(t);
        }
        for i in 0.. {
            let Some(&typ) = self.types.get(i) else {
                break;
            };
            if let Some(Json::Bool(b)) = tc.get(&format!("add_{typ}_token")) {
                self.add.set_default(typ, *b);
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            let id = added
                .iter()
                .find(|a| a.get("content").and_then(Json::as_str) == Some(content.as_str()))
                .and_then(|a| a.get("id"));
            self.set_special(typ, id)?;
        }
        Ok(())
    }

    /// `_try_load_read_config_json`: `<typ>_token_id` at the top level or in `text_config`.
    fn read_config_json(&mut self, config: &Json) -> Result<()> {
        for typ in self.types.clone() {
            let key = format!("{typ}_token_id");
            let id = match config.get(&key).filter(|v| !v.is_null()) {
                Some(v) => Some(v),
                None => config.get("text_config").and_then(|t| t.get(&key)),
            };
            self.set_special(typ, id)?;
        }
        Ok(())
    }

    /// `add_to_gguf`.
    pub fn write(&self, kv: &mut Kv) -> Result<()> {
        if !self.merges.is_empty() {
            let list = self.merges.iter().map(|m| Value::String(m.clone()));
            kv.set(
                "tokenizer.ggml.merges",
                Value::Array(ValueType::String, list.collect()),
            );
        }
        for (typ, id) in &self.ids.0 {
            let key = match typ.as_str() {
                "bos" => "bos_token_id",
                "eos" => "eos_token_id",
                "unk" => "unknown_token_id",
                "sep" => "seperator_token_id",
                "pad" => "padding_token_id",
                "mask" => "mask_token_id",
                "eot" => "eot_token_id",
                "eom" => "eom_token_id",
                // gguf-py has no key for cls.
                _ => continue,
            };
            kv.set(format!("tokenizer.ggml.{key}"), Value::U32(*id));
        }
        for (typ, v) in &self.add.0 {
            if matches!(typ.as_str(), "bos" | "eos" | "sep") {
                kv.set(format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(*v));
            }
        }
        match &self.chat_template {
            Some(Json::String(s)) => kv.set("tokenizer.chat_template", Value::String(s.clone())),
            Some(Json::Array(list)) => named_templates(kv, list),
            _ => {}
        }
        if let Some(v) = self.lowercase {
            kv.set("tokenizer.ggml.normalizer.lowercase", Value::Bool(v));
        }
        if let Some(v) = self.strip_accents {
            kv.set("tokenizer.ggml.normalizer.strip_accents", Value::Bool(v));
        }
        Ok(())
    }

    /// Drop `add_<typ>_token` (models whose converter class overrides it) or set it.
    pub fn set_add(&mut self, typ: &str, v: bool) {
        self.add.set(typ, v);
    }
}

fn put(tc: &mut Option<Map<String, Json>>, key: &str, v: Option<Json>) {
    if let Some(m) = tc.as_mut() {
        m.insert(key.to_string(), v.unwrap_or(Json::Null));
    }
}

/// The TemplateProcessing post-processor's crude reading of BOS/EOS/SEP (gguf-py's words).
struct Template<'t> {
    tc: &'t mut Option<Map<String, Json>>,
    bos: &'t mut Option<Json>,
    cls: &'t mut Option<Json>,
    eos: &'t mut Option<Json>,
    sep: &'t Option<Json>,
}

impl Template<'_> {
    fn apply(&mut self, sv: &mut SpecialVocab, proc: &Json) {
        let empty = Vec::new();
        let single = proc
            .get("single")
            .and_then(Json::as_array)
            .unwrap_or(&empty);
        let pair = proc.get("pair").and_then(Json::as_array).unwrap_or(&empty);
        let tc_truthy = self.tc.as_ref().is_some_and(|m| !m.is_empty());
        let (mut first, mut last) = (None, None);
        if single.len() > 1 {
            first = template_special(single.first());
            if let Some(f) = &first {
                if !tc_truthy {
                    *self.bos = Some(f.clone());
                } else if Some(f) != self.bos.as_ref() && Some(f) != self.cls.as_ref() {
                    if !truthy(self.bos.as_ref()) {
                        *self.bos = Some(f.clone());
                        put(self.tc, "bos_token", Some(f.clone()));
                    }
                    if !truthy(self.cls.as_ref()) {
                        *self.cls = Some(f.clone());
                        put(self.tc, "cls_token", Some(f.clone()));
                    }
                }
                let is_bos = Some(f) == self.bos.as_ref() || Some(f) == self.cls.as_ref();
                sv.add.set("bos", is_bos);
            }
            last = template_special(single.last());
            if let Some(l) = &last {
                if !tc_truthy {
                    *self.eos = Some(l.clone());
                } else if Some(l) != self.eos.as_ref() {
                    if !sv.types.contains(&"eot") {
                        sv.types.push("eot");
                        put(self.tc, "eot_token", self.eos.clone());
                    } else if !sv.types.contains(&"eom") {
                        sv.types.push("eom");
                        put(self.tc, "eom_token", self.eos.clone());
                    }
                    *self.eos = Some(l.clone());
                    put(self.tc, "eos_token", Some(l.clone()));
                }
                sv.add.set("eos", Some(l) == self.eos.as_ref());
            }
        }
        if pair.is_empty() {
            return;
        }
        let start = usize::from(first.is_some() && template_special(pair.first()) == first);
        let stop = usize::from(last.is_some() && template_special(pair.last()) == last);
        let Some(pair) = pair.get(start..pair.len().saturating_sub(stop)) else {
            return;
        };
        let seq = |item: Option<&Json>| field(field(item, "Sequence").as_ref(), "id");
        if pair.is_empty()
            || seq(pair.first()) != Some(Json::from("A"))
            || seq(pair.last()) != Some(Json::from("B"))
        {
            return;
        }
        let Some(middle) = pair
            .get(1..pair.len().saturating_sub(1))
            .filter(|m| !m.is_empty())
        else {
            return;
        };
        let is_sep = |e: &Json| Some(e) == self.sep.as_ref() || Some(e) == self.eos.as_ref();
        let mut add_sep = false;
        if let Some(e) = template_special(middle.first()) {
            if is_sep(&e) && last.is_none() {
                add_sep = true;
            }
        }
        if middle.len() == 2 {
            if let Some(e) = template_special(middle.get(1)) {
                if is_sep(&e) {
                    add_sep = true;
                }
            }
        }
        sv.add.set("sep", add_sep);
        if add_sep && !truthy(self.sep.as_ref()) && tc_truthy {
            put(self.tc, "sep_token", self.eos.clone());
        }
    }
}

/// `chat_template.jinja` (with `additional_chat_templates/*.jinja`: a named list) or
/// `chat_template.json`'s `chat_template`.
fn chat_template_files(dir: &Path) -> Result<Option<Json>> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let default = read(&jinja)?;
        let mut extra: Vec<_> = std::fs::read_dir(dir.join("additional_chat_templates"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jinja"))
            .collect();
        if extra.is_empty() {
            return Ok(Some(Json::String(default)));
        }
        extra.sort();
        let mut list = vec![serde_json::json!({"name": "default", "template": default})];
        for p in extra {
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned());
            list.push(serde_json::json!({"name": name, "template": read(&p)?}));
        }
        return Ok(Some(Json::Array(list)));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        let v: Json = serde_json::from_str(&read(&json)?)
            .with_context(|| format!("parsing {}", json.display()))?;
        return Ok(v.get("chat_template").cloned());
    }
    Ok(None)
}

/// gguf-py's `add_chat_template` of a list: `tokenizer.chat_template.<name>` per named template,
/// their names in `tokenizer.chat_templates`, the one named "default" as the chat template.
fn named_templates(kv: &mut Kv, list: &[Json]) {
    let mut default = None;
    let mut names: Vec<String> = Vec::new();
    for choice in list {
        let name: String = choice
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Some(t) = choice.get("template").and_then(Json::as_str) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if name == "default" {
            default = Some(t.to_string());
        } else {
            kv.set(
                format!("tokenizer.chat_template.{name}"),
                Value::String(t.to_string()),
            );
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if !names.is_empty() {
        let names = names.into_iter().map(Value::String).collect();
        kv.set(
            "tokenizer.chat_templates",
            Value::Array(ValueType::String, names),
        );
    }
    if let Some(t) = default {
        kv.set("tokenizer.chat_template", Value::String(t));
    }
}
