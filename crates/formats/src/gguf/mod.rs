//! GGUF v2/v3: reader, typed metadata access, writer.

mod access;
mod cursor;
mod reader;
mod value;
mod writer;

pub use reader::{
    GgufFile, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS, MAX_NESTING,
};
pub use value::{Value, ValueType};
pub use writer::GgufWriter;
