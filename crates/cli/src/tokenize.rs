//! `realizar tokenize`: token ids of a text as one JSON array (no BOS).

use std::path::Path;

use anyhow::Result;
use realizar_formats::ModelFile;

use crate::load;

pub fn run(model: &Path, text: &str, parse_special: bool) -> Result<()> {
    let file = ModelFile::open(model)?;
    let tok = load::tokenizer(&file)?;
    let ids = tok.encode(text, false, parse_special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
