//! A bounds-checked little-endian reader over the file's bytes.
//!
//! Every read checks the bytes left first and fails with `Truncated`, naming what was being read
//! and at which offset. The `what` descriptions are `Display` values (usually `format_args!`),
//! rendered only when an error is built, so the happy path does not allocate for them.

use std::fmt::Display;

use crate::error::{FormatError, Result};

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    /// Invariant: `pos <= buf.len()`.
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Offset of the next byte to read.
    pub(crate) fn pos(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: u64, what: &dyn Display) -> Result<&'a [u8]> {
        let truncated = || FormatError::Truncated {
            offset: self.pos(),
            what: what.to_string(),
            needed: n,
            available: self.remaining(),
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let out = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &dyn Display) -> Result<[u8; N]> {
        let b = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &dyn Display) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &dyn Display) -> Result<u16> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, what: &dyn Display) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &dyn Display) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 byte length, then that many bytes of UTF-8.
    pub(crate) fn string(&mut self, what: &dyn Display) -> Result<&'a str> {
        let len = self.u64(what)?;
        let start = self.pos();
        let b = self.bytes(len, what)?;
        std::str::from_utf8(b).map_err(|e| FormatError::InvalidUtf8 {
            what: what.to_string(),
            offset: start + e.valid_up_to() as u64,
        })
    }

    /// Fail with `CountTooLarge` unless `count` items of at least `min_size` bytes each fit in
    /// the bytes left. Call before allocating for `count` items.
    pub(crate) fn check_count(
        &self,
        count: u64,
        min_size: u64,
        offset: u64,
        what: &dyn Display,
    ) -> Result<()> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(FormatError::CountTooLarge {
                what: what.to_string(),
                count,
                offset,
            }),
        }
    }
}
