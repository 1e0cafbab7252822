//! Chat templates: a model's Jinja template (`tokenizer.chat_template`) rendered with
//! `minijinja`, the way `transformers` renders it (`trim_blocks`, `lstrip_blocks`, loop
//! controls, Python string methods, `raise_exception`, `strftime_now`).
//!
//! A template comes from a model file, so it is untrusted: there is no loader (no
//! `{% include %}` or `{% import %}` of files), every render runs on a fuel budget (bounding
//! both instructions and allocation), recursion is limited, and the output is capped.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;
use crate::{EngineError, Result};

/// ChatML, for models without a template of their own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Default instruction/allocation budget per render (about 64 bytes of allocation per unit):
/// far above what a real conversation needs, far below what would hurt the server.
pub const DEFAULT_FUEL: u64 = 5_000_000;
/// Default cap on the rendered prompt.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;
const RECURSION_LIMIT: usize = 64;
const TEMPLATE_NAME: &str = "chat_template";
/// Marks errors raised by the template itself through `raise_exception`.
const RAISE_MARK: &str = "raise_exception: ";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (templates may accept others, e.g. `tool`).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the model's BOS/EOS texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    max_output: usize,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("max_output", &self.max_output)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source`. Fails on a syntax error.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(DEFAULT_FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, Error> {
                Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{RAISE_MARK}{msg}"),
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| EngineError::Template(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            max_output: DEFAULT_MAX_OUTPUT,
        })
    }

    /// The built-in ChatML template.
    pub fn chatml(bos_token: &str, eos_token: &str) -> Self {
        match Self::new(CHATML_TEMPLATE, bos_token, eos_token) {
            Ok(t) => t,
            // The built-in template is a constant that compiles (tested).
            Err(e) => unreachable!("built-in ChatML template: {e}"),
        }
    }

    /// The model's own template, or ChatML when it has none.
    pub fn for_tokenizer(tok: &Tokenizer) -> Result<Self> {
        match tok.chat_template() {
            Some(src) => Self::new(&src, tok.bos_text(), tok.eos_text()),
            None => Ok(Self::chatml(tok.bos_text(), tok.eos_text())),
        }
    }

    /// Change the per-render fuel budget and the output cap.
    pub fn with_limits(mut self, fuel: u64, max_output_bytes: usize) -> Self {
        self.env.set_fuel(Some(fuel));
        self.max_output = max_output_bytes;
        self
    }

    /// Render a conversation into the model's prompt text.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Render with extra template variables (e.g. `tools`, `date_string`).
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                OrderedMap::value([
                    ("role".to_owned(), Value::from(m.role.as_str())),
                    ("content".to_owned(), Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut ctx: Vec<(String, Value)> = extra
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v, 0)))
            .collect();
        ctx.push(("messages".into(), Value::from(msgs)));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        ctx.push(("bos_token".into(), Value::from(self.bos_token.as_str())));
        ctx.push(("eos_token".into(), Value::from(self.eos_token.as_str())));
        let ctx = OrderedMap::value(ctx);

        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::Template(describe(&e)))?;
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: self.max_output,
        };
        match tmpl.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|_| EngineError::Template("rendered text is not UTF-8".into())),
            Err(e) => Err(self.classify(&e)),
        }
    }

    fn classify(&self, e: &Error) -> EngineError {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(mj) = err.downcast_ref::<Error>() {
                if let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISE_MARK)) {
                    return EngineError::TemplateException(msg.to_owned());
                }
                match mj.kind() {
                    ErrorKind::OutOfFuel => return EngineError::Template(
                        "rendering ran out of its work budget (template too expensive or looping)"
                            .into(),
                    ),
                    ErrorKind::WriteFailure => {
                        return EngineError::Template(format!(
                            "rendered prompt exceeds {} bytes",
                            self.max_output
                        ))
                    }
                    _ => {}
                }
            }
            cur = err.source();
        }
        EngineError::Template(describe(e))
    }
}

/// The error with its location (line) when known.
fn describe(e: &Error) -> String {
    match (e.name(), e.line()) {
        (Some(name), Some(line)) => format!("{e} ({name}, line {line})"),
        _ => e.to_string(),
    }
}

/// A writer that refuses to grow past `cap` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(io::Error::other("output cap reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// JSON -> template value (nesting bounded: deeper parts become none).
fn json_to_value(v: &serde_json::Value, depth: usize) -> Value {
    use serde_json::Value as J;
    if depth > 64 {
        return Value::from(());
    }
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_u64().map(Value::from))
            .or_else(|| n.as_f64().map(Value::from))
            .unwrap_or_else(|| Value::from(())),
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::from(
            a.iter()
                .map(|x| json_to_value(x, depth + 1))
                .collect::<Vec<_>>(),
        ),
        J::Object(o) => OrderedMap::value(
            o.iter()
                .map(|(k, x)| (k.clone(), json_to_value(x, depth + 1))),
        ),
    }
}

/// A string-keyed map that keeps insertion order (so `tojson` of a tool schema and
/// `message.items()` come out in the order given).
#[derive(Debug)]
struct OrderedMap {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl OrderedMap {
    /// Later duplicates replace earlier values in place.
    fn value(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
        let mut map = OrderedMap {
            entries: Vec::new(),
            index: HashMap::new(),
        };
        for (k, v) in entries {
            match map.index.get(&k) {
                Some(&i) => map.entries[i].1 = v,
                None => {
                    map.index.insert(k.clone(), map.entries.len());
                    map.entries.push((k, v));
                }
            }
        }
        Value::from_object(map)
    }
}

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let i = *self.index.get(key.as_str()?)?;
        self.entries.get(i).map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.entries
                .iter()
                .map(|(k, _)| Value::from(k.as_str()))
                .collect(),
        )
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// `strftime_now(format)` as transformers provides it, in UTC, for the common directives
/// (`%Y %y %m %d %-d %e %H %M %S %b %B %a %A %j %%`).
fn strftime_now(fmt: &str) -> std::result::Result<String, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(format_time(secs, fmt))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// Format a Unix time (UTC).
fn format_time(secs: u64, fmt: &str) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let day_of_year = days as i64 - days_from_civil(y, 1, 1) + 1;
    let weekday = WEEKDAYS[(days % 7) as usize];
    let month = MONTHS[(m - 1) as usize % 12];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let no_pad = spec == Some('-');
        if no_pad {
            spec = chars.next();
        }
        let num = |v: i64, width: usize| {
            if no_pad {
                v.to_string()
            } else {
                format!("{v:0width$}")
            }
        };
        match spec {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&num(y.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(m, 2)),
            Some('d') => out.push_str(&num(d, 2)),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('H') => out.push_str(&num((rem / 3600) as i64, 2)),
            Some('M') => out.push_str(&num((rem / 60 % 60) as i64, 2)),
            Some('S') => out.push_str(&num((rem % 60) as i64, 2)),
            Some('j') => out.push_str(&num(day_of_year, 3)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of the year.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(format_time(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            format_time(t, "%B %-d, %Y %H:%M:%S %A %j %%"),
            "July 26, 2024 13:05:09 Friday 208 %"
        );
        assert_eq!(format_time(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
    }
}
