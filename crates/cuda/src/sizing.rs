//! What a model needs on the GPU, and how many KV-cache tokens fit in a memory budget
//! (`realizar serve --gpu-memory F`, as vLLM's `--gpu-memory-utilization`).

use realizar_formats::ModelFile;
use realizar_model::{LoadOptions, ModelConfig};

use crate::CudaError;

/// Device memory a model needs besides its KV cache, and what each cached token costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The weights, uploaded in their file formats.
    pub weights: usize,
    /// Matmul scratch: a 128 MiB f16 weight tile for prefill GEMMs, and a step's widest
    /// activations (the gate and up outputs and a converted copy).
    pub scratch: usize,
    /// K and V of one token in every layer.
    pub kv_per_token: usize,
}

impl Needs {
    pub fn of(file: &ModelFile, cfg: &ModelConfig, opts: &LoadOptions) -> Needs {
        let row = opts.kv_type.bytes(cfg.kv_dim());
        Needs {
            weights: file
                .tensors()
                .iter()
                .map(|t| file.tensor_bytes(t).len())
                .sum(),
            scratch: (128 << 20) + 3 * opts.max_batch_tokens * cfg.n_ff.max(cfg.n_embd) * 4,
            kv_per_token: 2 * cfg.n_layers * row,
        }
    }
}

/// What this process may take of a device's `total` memory, `free` of it free now, under
/// `fraction` (the rest of the fraction is held by others and counts against it), never more
/// than is free; without a fraction, what is free.
fn usable(total: usize, free: usize, fraction: Option<f64>) -> usize {
    match fraction {
        Some(f) => ((total as f64 * f.clamp(0.0, 1.0)) as usize)
            .saturating_sub(total.saturating_sub(free))
            .min(free),
        None => free,
    }
}

/// Device bytes of the f16 weight copies (`CudaBackend::set_f16_weights`): every matrix of a
/// type the copies are made for (the prefill tiles' dequantization kernels) but the embedding
/// table (looked up, never multiplied as a matrix), 2 bytes a value.
pub fn f16_copy_bytes(file: &ModelFile) -> usize {
    file.tensors()
        .iter()
        .filter(|t| t.dims.len() == 2 && t.name != "token_embd.weight")
        .filter(|t| crate::backend::dequant_kernel(t.ty).is_some())
        .map(|t| 2 * (t.dims[0] * t.dims[1]) as usize)
        .sum()
}

/// Whether f16 weight copies of `copies` bytes should be made (`F16Weights::Auto`): when they
/// take at most half of the memory left for the KV cache after the weights, the scratch and
/// `kv_fixed` (a KV cache of fixed size; 0 when it is sized to the budget). The memory is
/// `fraction` of `total` less what others hold, or without a fraction what is `free`.
/// An 8B Q4_K_M model (15 GB of copies) gets them on an 80 GB or 141 GB card, not on 24 GB.
pub fn f16_copies_fit(
    total: usize,
    free: usize,
    fraction: Option<f64>,
    needs: &Needs,
    kv_fixed: usize,
    copies: usize,
) -> bool {
    let room =
        usable(total, free, fraction).saturating_sub(needs.weights + needs.scratch + kv_fixed);
    copies > 0 && copies <= room / 2
}

/// KV-cache tokens (whole blocks of `block` tokens) when this process may use `fraction` of the
/// device's `total` memory, of which `free` is free now (the rest belongs to others and counts
/// against the budget): what is left after the weights and scratch. An error, with the numbers,
/// when not even one block fits.
pub fn kv_tokens_for_budget(
    total: usize,
    free: usize,
    fraction: f64,
    needs: &Needs,
    block: usize,
) -> Result<usize, CudaError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(CudaError::Unsupported(format!(
            "GPU memory fraction {fraction}: use a value in (0, 1]"
        )));
    }
    let budget = (total as f64 * fraction) as usize;
    let others = total.saturating_sub(free);
    let fixed = others + needs.weights + needs.scratch;
    let block_bytes = needs.kv_per_token.max(1) * block.max(1);
    let blocks = usable(total, free, Some(fraction)).saturating_sub(needs.weights + needs.scratch)
        / block_bytes;
    if blocks == 0 {
        return Err(CudaError::OutOfMemory {
            what: format!(
                "one KV block ({block_bytes} bytes) within {fraction} of {total} bytes \
                 ({others} used by others, weights {}, scratch {})",
                needs.weights, needs.scratch
            ),
            need: fixed + block_bytes,
            free: budget.min(free),
        });
    }
    Ok(blocks * block.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    fn needs() -> Needs {
        // Llama-3.1-8B Q4_K_M-like: 4.9 GB of weights, 128 KiB of f16 KV per token.
        Needs {
            weights: 4_920_000_000,
            scratch: 100 << 20,
            kv_per_token: 2 * 32 * 1024 * 2,
        }
    }

    #[test]
    fn budget_left_after_weights_and_others_goes_to_whole_blocks() -> Result<(), CudaError> {
        let n = needs();
        let t = kv_tokens_for_budget(80 * GIB, 79 * GIB, 0.9, &n, 16)?;
        assert_eq!(t % 16, 0);
        let budget = (80.0 * GIB as f64 * 0.9) as usize;
        let left = budget - GIB - n.weights - n.scratch;
        assert_eq!(t, left / (n.kv_per_token * 16) * 16);
        // A bigger fraction gives more tokens; memory used by others gives fewer.
        assert!(kv_tokens_for_budget(80 * GIB, 79 * GIB, 0.95, &n, 16)? > t);
        assert!(kv_tokens_for_budget(80 * GIB, 60 * GIB, 0.9, &n, 16)? < t);
        Ok(())
    }

    #[test]
    fn never_more_than_is_free() -> Result<(), CudaError> {
        let n = needs();
        // Others hold little, but "free" is small (e.g. fragmented): free bounds the result.
        let t = kv_tokens_for_budget(80 * GIB, 8 * GIB, 1.0, &n, 16)?;
        assert!(t * n.kv_per_token + n.weights + n.scratch <= 8 * GIB);
        Ok(())
    }

    #[test]
    fn f16_copies_only_where_they_leave_the_kv_cache_at_least_as_much() {
        let n = needs();
        let copies = 15_000_000_000;
        // 8B on an H200 (141 GB) or an 80 GB card at 0.9: on. On a 24 GB card: off.
        assert!(f16_copies_fit(
            141 * GIB,
            140 * GIB,
            Some(0.9),
            &n,
            0,
            copies
        ));
        assert!(f16_copies_fit(80 * GIB, 79 * GIB, Some(0.9), &n, 0, copies));
        assert!(!f16_copies_fit(
            24 * GIB,
            23 * GIB,
            Some(0.9),
            &n,
            0,
            copies
        ));
        assert!(!f16_copies_fit(
            24 * GIB,
            23 * GIB,
            None,
            &n,
            512 << 20,
            copies
        ));
        // The boundary: copies of exactly half the room fit, one byte more does not.
        let room = 40 * GIB - n.weights - n.scratch - GIB;
        assert!(f16_copies_fit(64 * GIB, 40 * GIB, None, &n, GIB, room / 2));
        assert!(!f16_copies_fit(
            64 * GIB,
            40 * GIB,
            None,
            &n,
            GIB,
            room / 2 + 1
        ));
        // Others' memory counts against a fraction, and a fixed KV cache against the room.
        assert!(!f16_copies_fit(
            80 * GIB,
            40 * GIB,
            Some(0.9),
            &n,
            0,
            copies
        ));
        assert!(f16_copies_fit(
            80 * GIB,
            79 * GIB,
            None,
            &n,
            40 * GIB,
            copies
        ));
        assert!(!f16_copies_fit(
            80 * GIB,
            79 * GIB,
            None,
            &n,
            50 * GIB,
            copies
        ));
        // Nothing to copy: nothing to make.
        assert!(!f16_copies_fit(141 * GIB, 140 * GIB, Some(0.9), &n, 0, 0));
    }

    #[test]
    fn too_small_a_budget_is_an_error_with_the_numbers() {
        let msg = match kv_tokens_for_budget(8 * GIB, 8 * GIB, 0.5, &needs(), 16) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("{t} tokens from a budget smaller than the weights"),
        };
        assert!(msg.contains("out of GPU memory"), "{msg}");
        assert!(kv_tokens_for_budget(8 * GIB, 8 * GIB, 0.0, &needs(), 16).is_err());
        assert!(kv_tokens_for_budget(8 * GIB, 8 * GIB, 1.5, &needs(), 16).is_err());
    }
}
