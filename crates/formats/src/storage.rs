//! The bytes of a model file: a read-only memory map, or an owned buffer (tests, `from_bytes`).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{FormatError, Result};

/// The whole file, readable as one byte slice without copies.
#[derive(Debug)]
pub(crate) enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Map `path` read-only.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let io = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Ok(Storage::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and we never hand out `&mut`. The usual mmap caveat
        // applies: another process truncating or rewriting the file while it is mapped can make
        // later reads fault or change under us; model files are treated as immutable while
        // loaded, like llama.cpp and safetensors do.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Storage::Mmap(map))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}
