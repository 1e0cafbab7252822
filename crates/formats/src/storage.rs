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
    /// (`MADV_HUGEPAGE`), then made read-only, when transparent huge pages are not off and the
    /// file takes at most half of the memory available (the kernel's `MemAvailable`, and the
    /// cgroup's limit where one is set); otherwise, or when the anonymous map cannot be made,
    /// `Mapped`. Matrix products that stream every weight once per token then cross a TLB entry
    /// per 2 MiB instead of per 4 KiB (CPU decode of the default model's Q8_0 file +20-26% on a
    /// 2-core VM, docs/perf-notes.md).
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
        if residency == Residency::HugePages && huge_pages_for(len) {
            if let Some(map) = anon_map(len) {
                return read_into(map, file).map_err(io);
            }
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

impl Residency {
    /// `HugePages` becomes `Mapped` where a copy of `total` bytes would not fit (decided once
    /// for all the shards of a folder).
    pub(crate) fn for_total(self, total: u64) -> Residency {
        if self == Residency::HugePages && !huge_pages_for(total) {
            Residency::Mapped
        } else {
            self
        }
    }
}

/// Whether a huge-page copy of `len` bytes is worth making: transparent huge pages not off, and
/// the copy at most half of the memory available to this process.
#[cfg(target_os = "linux")]
fn huge_pages_for(len: u64) -> bool {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        return false;
    }
    available_memory().is_some_and(|avail| len <= avail / 2)
}

#[cfg(not(target_os = "linux"))]
fn huge_pages_for(_len: u64) -> bool {
    false
}

/// Memory available to this process in bytes: the kernel's `MemAvailable`, or less where a
/// cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`) limits it; None where it is not known.
#[cfg(target_os = "linux")]
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let host = info.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        rest.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    })? * 1024;
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let cgroup = match read("/sys/fs/cgroup/memory.max") {
        Some(max) => Some(max.saturating_sub(read("/sys/fs/cgroup/memory.current").unwrap_or(0))),
        None => read("/sys/fs/cgroup/memory/memory.limit_in_bytes").map(|max| {
            max.saturating_sub(read("/sys/fs/cgroup/memory/memory.usage_in_bytes").unwrap_or(0))
        }),
    };
    Some(cgroup.map_or(host, |c| c.min(host)))
}

#[cfg(not(target_os = "linux"))]
pub fn available_memory() -> Option<u64> {
    None
}

/// An anonymous map of `len` bytes advised for huge pages (the advice is best effort: a kernel
/// without transparent huge pages refuses it, and the copy still works); None when the map
/// cannot be made.
fn anon_map(len: u64) -> Option<memmap2::MmapMut> {
    let len = usize::try_from(len).ok()?;
    let map = memmap2::MmapOptions::new().len(len).map_anon().ok()?;
    // Before the first touch, so the pages are allocated huge (THP "always" or "madvise").
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Some(map)
}

/// The file read into `map` (its length), then made read-only.
fn read_into(mut map: memmap2::MmapMut, mut file: File) -> std::io::Result<Storage> {
    use std::io::Read;
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
        // The copy itself, whatever the machine's memory and THP setting.
        let map = anon_map(data.len() as u64).ok_or_else(|| std::io::Error::other("no map"))?;
        let s = read_into(map, File::open(&path)?)?;
        assert!(s.bytes() == &data[..], "copy: bytes differ");
        let empty = dir.join("empty.bin");
        std::fs::write(&empty, b"")?;
        let s = Storage::open(&empty, Residency::HugePages).map_err(std::io::Error::other)?;
        assert!(s.bytes().is_empty());
        std::fs::remove_dir_all(&dir)
    }
}
