//! realizar-formats: model files in, typed metadata and a zero-copy tensor index out.
//!
//! - [`GgufFile`]: GGUF v2/v3 reader over a memory map, every count, length and offset checked
//!   against the file before use; [`GgufWriter`] writes what the reader reads.
//! - [`ModelFile`]: one entry point for a GGUF file, a `.safetensors` file, or a Hugging Face
//!   folder (`config.json` + one or sharded safetensors files).
//!
//! No math lives here; the type table (block sizes, bytes per block) is `realizar_quant::GgmlType`.

mod error;
pub mod gguf;
mod model_file;
mod safetensors_file;
mod storage;

pub use error::{FormatError, Result};
pub use gguf::{GgufFile, GgufWriter, TensorInfo, Value, ValueType};
pub use model_file::{ModelFile, Source, TensorEntry};
pub use realizar_quant::GgmlType;
pub use storage::{available_memory, Residency};
