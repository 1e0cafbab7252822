//! The bytes of a model file: a read-only memory map of the file, a read-only copy in
//! anonymous (huge-page) memory, or an owned buffer (tests, `from_bytes`).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{FormatError, Result};

/// Where an opened file's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// A read-only memory map of the file: pages come from the page cache on first touch and
    /// are shared with other processes mapping the same file.
    Mapped,
    /// On Linux, the file read into anonymous memory advised for transparent huge pages
    /// (`MADV_HUGEPAGE`), then made read-only, when it takes at most half of the memory the
    /// kernel reports available; otherwise (and elsewhere) `Mapped`. Matrix products that
    /// stream every weight once per token then cross a TLB entry per 2 MiB instead of per
    /// 4 KiB (CPU decode +10-25% on a 2-core VM, docs/perf-notes.md).
    HugePages,
}

/// The whole file, readable as one byte slice without copies.
#[derive(Debug)]
pub(crate) enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// The bytes of `path`, held as `residency` says.
    pub(crate) fn open(path: &Path, residency: Residency) -> Result<Self> {
        let io = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Ok(Storage::Owned(Vec::new()));
        }
        if residency == Residency::HugePages && fits_in_memory(len) {
            return read_into_huge_pages(file, len).map_err(io);
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

/// Whether a copy of `len` bytes takes at most half of the memory Linux reports available.
#[cfg(target_os = "linux")]
fn fits_in_memory(len: u64) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let available_kib = info.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        rest.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    });
    available_kib.is_some_and(|kib| len <= kib.saturating_mul(1024) / 2)
}

#[cfg(not(target_os = "linux"))]
fn fits_in_memory(_len: u64) -> bool {
    false
}

/// The file read into anonymous memory advised for transparent huge pages, then made
/// read-only.
fn read_into_huge_pages(mut file: File, len: u64) -> std::io::Result<Storage> {
    use std::io::Read;
    let len = usize::try_from(len)
        .map_err(|_| std::io::Error::other("file larger than the address space"))?;
    let mut map = memmap2::MmapOptions::new().len(len).map_anon()?;
    // Before the first touch, so the pages are allocated huge (where THP is on or "madvise").
    #[cfg(target_os = "linux")]
    map.advise(memmap2::Advice::HugePage)?;
    file.read_exact(&mut map[..])?;
    Ok(Storage::Mmap(map.make_read_only()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_residencies_give_the_file_bytes() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("realizar-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("bytes.bin");
        // 5 MiB: more than two huge pages, with a ragged end.
        let data: Vec<u8> = (0..5 * 1024 * 1024 + 123)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        std::fs::write(&path, &data)?;
        for r in [Residency::Mapped, Residency::HugePages] {
            let s = Storage::open(&path, r).map_err(std::io::Error::other)?;
            assert!(s.bytes() == &data[..], "{r:?}: bytes differ");
        }
        let empty = dir.join("empty.bin");
        std::fs::write(&empty, b"")?;
        let s = Storage::open(&empty, Residency::HugePages).map_err(std::io::Error::other)?;
        assert!(s.bytes().is_empty());
        std::fs::remove_dir_all(&dir)
    }
}
