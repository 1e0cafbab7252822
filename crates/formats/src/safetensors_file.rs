//! safetensors files, single or sharded (`model.safetensors.index.json`), through the
//! `safetensors` crate, which checks the header length, JSON, dtype sizes against byte ranges,
//! and that the ranges tile the data section exactly (no gaps, overlaps or bytes past the end).
//! We add: supported dtypes, unique names across shards, a sane shard index, GGML-order dims.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use realizar_quant::GgmlType;
use safetensors::{Dtype, SafeTensors};

use crate::error::{FormatError, Result};
use crate::storage::{Residency, Storage};

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single-file checkpoint name in a Hugging Face folder.
pub const SINGLE_FILE: &str = "model.safetensors";

/// A tensor found in a shard.
pub(crate) struct StTensor {
    pub name: String,
    /// GGML order (the safetensors shape reversed); a scalar is `[1]`.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Which shard, in the order of `StFiles::paths`.
    pub shard: usize,
    /// Absolute offset in the shard file.
    pub offset: u64,
    pub n_bytes: u64,
}

/// All shards of a checkpoint, mapped.
pub(crate) struct StFiles {
    pub paths: Vec<PathBuf>,
    pub storages: Vec<Storage>,
    pub tensors: Vec<StTensor>,
}

fn ggml_type(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::Bf16),
        _ => None,
    }
}

/// Index one `.safetensors` file, already mapped.
pub(crate) fn open_single(path: &Path, storage: Storage) -> Result<StFiles> {
    let mut tensors = Vec::new();
    read_shard(path, storage.bytes(), 0, &mut tensors)?;
    unique_names(&tensors)?;
    Ok(StFiles {
        paths: vec![path.to_path_buf()],
        storages: vec![storage],
        tensors,
    })
}

/// Map every shard and index its tensors; names must be unique across shards.
fn open_shards(paths: Vec<PathBuf>, residency: Residency) -> Result<StFiles> {
    let mut storages = Vec::with_capacity(paths.len());
    let mut tensors = Vec::new();
    // Huge pages for all the shards or none: decided from their total size.
    let total = paths
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let residency = residency.for_total(total);
    for (shard, path) in paths.iter().enumerate() {
        let storage = Storage::open(path, residency)?;
        read_shard(path, storage.bytes(), shard, &mut tensors)?;
        storages.push(storage);
    }
    unique_names(&tensors)?;
    Ok(StFiles {
        paths,
        storages,
        tensors,
    })
}

fn unique_names(tensors: &[StTensor]) -> Result<()> {
    let mut seen = HashSet::with_capacity(tensors.len());
    match tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
        Some(t) => Err(FormatError::DuplicateTensor(t.name.clone())),
        None => Ok(()),
    }
}

fn read_shard(path: &Path, bytes: &[u8], shard: usize, out: &mut Vec<StTensor>) -> Result<()> {
    let (header_len, meta) =
        SafeTensors::read_metadata(bytes).map_err(|source| FormatError::Safetensors {
            path: path.to_path_buf(),
            detail: diagnose(bytes)
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
            source,
        })?;
    // read_metadata checked 8 + header_len + data_len == file length.
    let base = 8 + header_len as u64;
    for name in meta.offset_keys() {
        let Some(info) = meta.info(&name) else {
            continue;
        };
        let ty = ggml_type(info.dtype).ok_or_else(|| FormatError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.clone(),
            dtype: info.dtype.to_string(),
        })?;
        let mut dims: Vec<u64> = info.shape.iter().rev().map(|&d| d as u64).collect();
        if dims.is_empty() {
            dims.push(1);
        }
        let (s, e) = info.data_offsets;
        out.push(StTensor {
            name,
            dims,
            ty,
            shard,
            offset: base + s as u64,
            n_bytes: e.saturating_sub(s) as u64,
        });
    }
    Ok(())
}

/// After the `safetensors` crate refused a file with a message that names no tensor (size
/// mismatch, overflow, data not covered), find the first offending tensor for the message.
fn diagnose(bytes: &[u8]) -> Option<String> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let after = bytes.len() as u64 - 8;
    if len > after {
        return Some(format!(
            "the header claims {len} bytes, {after} follow the length"
        ));
    }
    let len = usize::try_from(len).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let data_len = bytes.len() - 8 - len;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut max_end = None::<(usize, &str)>;
    for (name, v) in &map {
        if name == "__metadata__" {
            continue;
        }
        let info: safetensors::tensor::TensorInfo = serde_json::from_value(v.clone()).ok()?;
        let (s, e) = info.data_offsets;
        let Some(bits) = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.bitsize()))
        else {
            return Some(format!("tensor `{name}`: shape {:?} overflows", info.shape));
        };
        if e < s || e - s != bits / 8 || bits % 8 != 0 {
            return Some(format!(
                "tensor `{name}`: {} {:?} needs {} bytes, data_offsets [{s}, {e}] give {}",
                info.dtype,
                info.shape,
                bits.div_ceil(8),
                e.saturating_sub(s)
            ));
        }
        let further = match max_end {
            Some((m, _)) => e > m,
            None => true,
        };
        if further {
            max_end = Some((e, name));
        }
    }
    match max_end {
        Some((end, name)) if end != data_len => Some(format!(
            "tensor `{name}` ends at data byte {end}, the data section has {data_len} bytes"
        )),
        _ => None,
    }
}

/// Open a sharded checkpoint from its index file: `{"weight_map": {tensor: shard_file}}`.
/// Shard files must be plain names in the index's folder; every listed tensor must be in the
/// shard the index names.
pub(crate) fn open_index(index_path: &Path, residency: Residency) -> Result<StFiles> {
    let bad = |reason: String| FormatError::BadShardIndex {
        path: index_path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index_path).map_err(|source| FormatError::Io {
        path: index_path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| FormatError::Json {
            path: index_path.to_path_buf(),
            source,
        })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".to_string()))?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut wanted: HashMap<&str, &str> = HashMap::with_capacity(map.len());
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("shard of `{tensor}` is not a string")))?;
        let plain = Path::new(file).file_name().and_then(|n| n.to_str()) == Some(file);
        if !plain || file == ".." || file == "." {
            return Err(bad(format!(
                "shard `{file}` of `{tensor}` is not a plain file name in the folder"
            )));
        }
        files.insert(file);
        wanted.insert(tensor, file);
    }
    if files.is_empty() {
        return Err(bad("the weight map is empty".to_string()));
    }
    let names: Vec<&str> = files.into_iter().collect();
    let st = open_shards(names.iter().map(|f| dir.join(f)).collect(), residency)?;
    let found: HashMap<&str, usize> = st
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shard))
        .collect();
    for (tensor, file) in &wanted {
        let in_shard = found.get(tensor).and_then(|&s| names.get(s));
        if in_shard != Some(file) {
            return Err(bad(format!(
                "tensor `{tensor}` is listed in `{file}` but not found there"
            )));
        }
    }
    Ok(st)
}
