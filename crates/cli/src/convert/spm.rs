//! SentencePiece vocabularies (`tokenizer.model`) as llama.cpp's converter writes them
//! (`_create_vocab_sentencepiece` / `_set_vocab_sentencepiece`): `tokenizer.ggml.model = llama`,
//! every piece with its score and type, `added_tokens.json` and `tokenizer_config.json`'s
//! `added_tokens_decoder` laid over them, then the special vocabulary without merges.
//!
//! `tokenizer.model` is a protobuf `ModelProto`; only `pieces` (field 1: `piece` = 1,
//! `score` = 2, `type` = 3) is read, by hand, every length checked against the buffer.

use std::path::Path;

use anyhow::{bail, Context, Result};
use realizar_formats::{Value, ValueType};
use serde_json::{Map, Value as Json};

use super::hparams::{to_u32, Hparams};
use super::special::{Files, SpecialVocab};
use super::vocab::{looks_special, CONTROL, NORMAL, UNUSED, USER_DEFINED};
use super::Kv;

/// SentencePiece piece types (`ModelProto.SentencePiece.Type`), also llama.cpp's token types.
const UNKNOWN: i32 = 2;
const BYTE: i32 = 6;

/// One piece of `tokenizer.model`.
#[derive(Debug, PartialEq)]
struct Piece {
    piece: String,
    score: f32,
    /// 1 normal (the default), 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
    ty: i32,
}

/// A protobuf reader over a byte slice.
struct Reader<'b> {
    buf: &'b [u8],
    pos: usize,
}

impl<'b> Reader<'b> {
    fn new(buf: &'b [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .with_context(|| format!("varint runs past the end at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes at byte {}", self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'b [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .with_context(|| {
                format!(
                    "{n} bytes at byte {} run past the end ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u64, u8)> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    /// A length-delimited field's bytes.
    fn bytes(&mut self) -> Result<&'b [u8]> {
        let n = usize::try_from(self.varint()?).context("length does not fit")?;
        self.take(n)
    }

    fn fixed32(&mut self) -> Result<[u8; 4]> {
        let b = self.take(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    /// Skip a field of wire type `wt`.
    fn skip(&mut self, wt: u8) -> Result<()> {
        match wt {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            _ => bail!("unsupported wire type {wt} at byte {}", self.pos),
        }
    }
}

/// The `pieces` of a serialized `ModelProto`.
fn parse_pieces(buf: &[u8]) -> Result<Vec<Piece>> {
    let mut r = Reader::new(buf);
    let mut pieces = Vec::new();
    while !r.done() {
        match r.key()? {
            (1, 2) => pieces
                .push(parse_piece(r.bytes()?).with_context(|| format!("piece {}", pieces.len()))?),
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(pieces)
}

fn parse_piece(buf: &[u8]) -> Result<Piece> {
    let mut r = Reader::new(buf);
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        ty: NORMAL,
    };
    while !r.done() {
        match r.key()? {
            (1, 2) => {
                p.piece = String::from_utf8(r.bytes()?.to_vec()).context("piece is not UTF-8")?
            }
            (2, 5) => p.score = f32::from_le_bytes(r.fixed32()?),
            (3, 0) => p.ty = i32::try_from(r.varint()?).context("piece type out of range")?,
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(p)
}

/// The vocabulary the converter builds: tokens, scores, types, one per id.
pub struct Vocab {
    pub tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
}

impl Vocab {
    pub fn read(dir: &Path, hp: &Hparams, tc: Option<&Map<String, Json>>) -> Result<Self> {
        let path = dir.join("tokenizer.model");
        let buf = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let pieces = parse_pieces(&buf)
            .with_context(|| format!("{}: not a SentencePiece model", path.display()))?;
        if pieces.is_empty() {
            bail!("{}: no pieces", path.display());
        }
        // `find_hparam(["vocab_size_per_layer_input", "vocab_size"]) or tokenizer.vocab_size()`
        let n = match hp.find(&["vocab_size_per_layer_input", "vocab_size"]) {
            Some(v) => to_u32("vocab_size", v)? as usize,
            None => 0,
        };
        let n = if n == 0 { pieces.len() } else { n };
        let mut v = Vocab {
            tokens: (0..n).map(|i| format!("[PAD{i}]")).collect(),
            scores: vec![-10000.0; n],
            types: vec![UNUSED; n],
        };
        for (i, p) in pieces.into_iter().enumerate().take(n) {
            // The converter asks IsUnknown/IsControl/IsUnused/IsByte; anything else is NORMAL.
            v.types[i] = if matches!(p.ty, UNKNOWN | CONTROL | UNUSED | BYTE) {
                p.ty
            } else {
                NORMAL
            };
            v.tokens[i] = p.piece;
            v.scores[i] = p.score;
        }
        v.added_tokens_json(dir)?;
        if let Some(Json::Object(decoder)) = tc.and_then(|c| c.get("added_tokens_decoder")) {
            for (id, data) in decoder {
                let id: usize = id
                    .parse()
                    .with_context(|| format!("added_tokens_decoder: id {id:?}"))?;
                let content = data
                    .get("content")
                    .and_then(Json::as_str)
                    .with_context(|| format!("added_tokens_decoder: token {id} has no content"))?;
                let special = data.get("special").and_then(Json::as_bool) == Some(true);
                let (text, ty) = if special || looks_special(content) {
                    (content.to_string(), CONTROL)
                } else {
                    (content.replace('\u{2581}', " "), USER_DEFINED)
                };
                v.set(id, text, ty);
            }
        }
        Ok(v)
    }

    /// A token the converter overrides (out-of-range ids are skipped with a warning there).
    fn set(&mut self, id: usize, text: String, ty: i32) {
        if id < self.tokens.len() {
            self.tokens[id] = text;
            self.scores[id] = -1000.0;
            self.types[id] = ty;
        }
    }

    /// `added_tokens.json`: `{text: id}`, user-defined tokens.
    fn added_tokens_json(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("added_tokens.json");
        if !path.is_file() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let map: Map<String, Json> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON object", path.display()))?;
        for (tok, id) in map {
            let id = id
                .as_u64()
                .with_context(|| format!("{}: id of {tok:?}", path.display()))?;
            self.set(id as usize, tok, USER_DEFINED);
        }
        Ok(())
    }
}

/// `_set_vocab_sentencepiece`.
pub fn write(kv: &mut Kv, dir: &Path, hp: &Hparams, f: &Files<'_>) -> Result<()> {
    let v = Vocab::read(dir, hp, f.tokenizer_config)?;
    let n = v.tokens.len();
    kv.set("tokenizer.ggml.model", Value::String("llama".into()));
    kv.set("tokenizer.ggml.pre", Value::String("default".into()));
    let strings = v.tokens.into_iter().map(Value::String).collect();
    kv.set(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, strings),
    );
    let scores = v.scores.into_iter().map(Value::F32).collect();
    kv.set(
        "tokenizer.ggml.scores",
        Value::Array(ValueType::F32, scores),
    );
    let types = v.types.into_iter().map(Value::I32).collect();
    kv.set(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types),
    );
    SpecialVocab::load(f, false, Some(n))?.write(kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn piece(text: &str, score: f32, ty: Option<u64>) -> Vec<u8> {
        let mut p = vec![0x0a];
        varint(text.len() as u64, &mut p);
        p.extend(text.as_bytes());
        p.push(0x15);
        p.extend(score.to_le_bytes());
        if let Some(t) = ty {
            p.push(0x18);
            varint(t, &mut p);
        }
        p
    }

    #[test]
    fn pieces_parse_and_other_fields_are_skipped() -> Result<()> {
        let mut model = Vec::new();
        for p in [
            piece("<unk>", 0.0, Some(2)),
            piece("\u{2581}the", -1.5, None),
        ] {
            model.push(0x0a);
            varint(p.len() as u64, &mut model);
            model.extend(p);
        }
        // trainer_spec (field 2, a message) and a varint field 7 are skipped.
        model.extend([0x12, 0x02, 0x08, 0x01, 0x38, 0x96, 0x01]);
        let pieces = parse_pieces(&model)?;
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].ty, UNKNOWN);
        assert_eq!(pieces[1].piece, "\u{2581}the");
        assert_eq!(pieces[1].score, -1.5);
        assert_eq!(pieces[1].ty, NORMAL);
        // Truncated: a length past the end is an error, not a panic.
        assert!(parse_pieces(&model[..model.len() - 9]).is_err());
        assert!(parse_pieces(&[0x0a, 0xff]).is_err());
        Ok(())
    }
}
