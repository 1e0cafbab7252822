//! One entry point for every model format: a GGUF file, a `.safetensors` file, or a Hugging
//! Face folder (`config.json` + `model.safetensors` or `model.safetensors.index.json` shards).
//!
//! Tensors are listed uniformly as [`TensorEntry`] (dims in GGML order: row length first, i.e.
//! a safetensors shape reversed) and read with [`ModelFile::tensor_bytes`], zero-copy over the
//! memory maps. Names are the file's own (GGUF `blk.0.attn_q.weight`, HF
//! `model.layers.0.self_attn.q_proj.weight`); mapping them to roles is the model crate's job.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use realizar_quant::GgmlType;

use crate::error::{FormatError, Result};
use crate::gguf::{GgufFile, GGUF_MAGIC};
use crate::safetensors_file::{open_index, open_single, StFiles, INDEX_FILE, SINGLE_FILE};
use crate::storage::{Residency, Storage};

/// The HF config file of a folder.
pub const CONFIG_FILE: &str = "config.json";

/// What the model was loaded from.
#[derive(Debug)]
pub enum Source {
    Gguf(GgufFile),
    Safetensors {
        /// `config.json` of the folder (for a lone `.safetensors` file: of the file's folder,
        /// when there is one). Always a JSON object.
        config: Option<serde_json::Value>,
        /// The safetensors files, in the order `TensorEntry::shard` counts them.
        shards: Vec<PathBuf>,
    },
}

/// A tensor of any format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    /// GGML order: `dims[0]` is the innermost (row length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub n_bytes: u64,
    /// Index of the file holding it (always 0 for GGUF).
    pub shard: usize,
    /// Absolute offset in that file.
    pub offset: u64,
}

impl TensorEntry {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A model on disk, opened and validated.
pub struct ModelFile {
    path: PathBuf,
    dir: PathBuf,
    source: Source,
    /// safetensors shards' maps (empty for GGUF, whose map the `GgufFile` owns).
    storages: Vec<Storage>,
    tensors: Vec<TensorEntry>,
    index: HashMap<String, usize>,
}

impl fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelFile")
            .field("path", &self.path)
            .field("source", &self.source)
            .field("n_tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl ModelFile {
    /// Open a GGUF file, a `.safetensors` file, or a HF folder, memory-mapped.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Residency::Mapped)
    }

    /// Open a GGUF file, a `.safetensors` file, or a HF folder, its bytes held as `residency`
    /// says.
    pub fn open_with(path: &Path, residency: Residency) -> Result<Self> {
        if path.is_dir() {
            return Self::open_folder(path, residency);
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let storage = Storage::open(path, residency)?;
        let bytes = storage.bytes();
        let is_gguf = bytes.get(..4) == Some(&GGUF_MAGIC[..]) || has_ext(path, "gguf");
        if is_gguf {
            let gguf = GgufFile::from_storage(storage)?;
            return Ok(Self::from_gguf(path, dir, gguf));
        }
        let looks_st = has_ext(path, "safetensors") || bytes.get(8) == Some(&b'{');
        if !looks_st {
            return Err(FormatError::NotAModel {
                path: path.to_path_buf(),
                reason: "neither GGUF magic nor a safetensors header".to_string(),
            });
        }
        let st = open_single(path, storage)?;
        let config_path = dir.join(CONFIG_FILE);
        let config = if config_path.is_file() {
            Some(read_config(&config_path)?)
        } else {
            None
        };
        Ok(Self::from_safetensors(path, dir, config, st))
    }

    fn open_folder(dir: &Path, residency: Residency) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(FormatError::NotAModel {
                path: dir.to_path_buf(),
                reason: format!("folder without {CONFIG_FILE}"),
            });
        }
        let config = read_config(&config_path)?;
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let st = if index.is_file() {
            open_index(&index, residency)?
        } else if single.is_file() {
            open_single(&single, Storage::open(&single, residency)?)?
        } else {
            return Err(FormatError::NotAModel {
                path: dir.to_path_buf(),
                reason: format!("folder without {SINGLE_FILE} or {INDEX_FILE}"),
            });
        };
        Ok(Self::from_safetensors(
            dir,
            dir.to_path_buf(),
            Some(config),
            st,
        ))
    }

    fn from_gguf(path: &Path, dir: PathBuf, gguf: GgufFile) -> Self {
        let tensors = gguf
            .tensors()
            .iter()
            .map(|t| TensorEntry {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                n_bytes: t.n_bytes,
                shard: 0,
                offset: t.offset,
            })
            .collect();
        Self::assemble(path, dir, Source::Gguf(gguf), Vec::new(), tensors)
    }

    fn from_safetensors(
        path: &Path,
        dir: PathBuf,
        config: Option<serde_json::Value>,
        st: StFiles,
    ) -> Self {
        let tensors = st
            .tensors
            .into_iter()
            .map(|t| TensorEntry {
                name: t.name,
                dims: t.dims,
                ty: t.ty,
                n_bytes: t.n_bytes,
                shard: t.shard,
                offset: t.offset,
            })
            .collect();
        let source = Source::Safetensors {
            config,
            shards: st.paths,
        };
        Self::assemble(path, dir, source, st.storages, tensors)
    }

    fn assemble(
        path: &Path,
        dir: PathBuf,
        source: Source,
        storages: Vec<Storage>,
        tensors: Vec<TensorEntry>,
    ) -> Self {
        // Names were checked unique by both readers.
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        ModelFile {
            path: path.to_path_buf(),
            dir,
            source,
            storages,
            tensors,
            index,
        }
    }

    /// The path given to `open`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder the model lives in (the folder itself for a HF folder, else the file's
    /// parent): where `tokenizer.json` and friends are looked for.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The GGUF file, when the model is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.source {
            Source::Gguf(g) => Some(g),
            Source::Safetensors { .. } => None,
        }
    }

    /// The parsed `config.json`, when the model has one.
    pub fn hf_config(&self) -> Option<&serde_json::Value> {
        match &self.source {
            Source::Safetensors { config, .. } => config.as_ref(),
            Source::Gguf(_) => None,
        }
    }

    /// All tensors, in file order (shard by shard).
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        let &i = self.index.get(name)?;
        self.tensors.get(i)
    }

    /// The tensor's bytes, zero-copy (validated at open). An entry not from this model whose
    /// range lies outside its files gives an empty slice.
    pub fn tensor_bytes(&self, t: &TensorEntry) -> &[u8] {
        let file = match &self.source {
            Source::Gguf(g) => Some(g.bytes()),
            Source::Safetensors { .. } => self.storages.get(t.shard).map(Storage::bytes),
        };
        let range = usize::try_from(t.offset)
            .ok()
            .zip(usize::try_from(t.n_bytes).ok())
            .and_then(|(s, n)| Some(s..s.checked_add(n)?));
        file.zip(range).and_then(|(f, r)| f.get(r)).unwrap_or(&[])
    }
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Parse a `config.json`; it must be a JSON object.
pub(crate) fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| FormatError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    if !v.is_object() {
        return Err(FormatError::BadConfig {
            path: path.to_path_buf(),
            reason: "config.json is not a JSON object".to_string(),
        });
    }
    Ok(v)
}
