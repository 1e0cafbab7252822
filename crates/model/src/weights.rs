//! Weights by role: views over the model file, validated against the config, then handed to a
//! backend to upload.

use realizar_formats::ModelFile;
use realizar_quant::GgmlType;

use crate::backend::{Backend, WeightUse};
use crate::config::ModelConfig;
use crate::names::{Naming, Role};
use crate::ModelError;

/// A tensor's bytes in the file with its type and 2-D shape (`rows x cols`, cols contiguous).
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

/// The weights of one transformer block.
#[derive(Debug)]
pub struct LayerWeights<W> {
    pub attn_norm: W,
    pub wq: W,
    pub wk: W,
    pub wv: W,
    pub wo: W,
    pub bq: Option<W>,
    pub bk: Option<W>,
    pub bv: Option<W>,
    pub q_norm: Option<W>,
    pub k_norm: Option<W>,
    pub post_attn_norm: Option<W>,
    pub ffn_norm: W,
    pub ffn_gate: W,
    pub ffn_up: W,
    pub ffn_down: W,
    pub post_ffn_norm: Option<W>,
}

/// All weights of a model, as `W` (a file view or a backend's resident weight).
#[derive(Debug)]
pub struct Weights<W> {
    pub tok_embd: W,
    pub output_norm: W,
    /// None when the output head is tied to the token embedding.
    pub output: Option<W>,
    pub layers: Vec<LayerWeights<W>>,
}

struct Loader<'a, 'b, B: Backend> {
    file: &'a ModelFile,
    cfg: &'b ModelConfig,
    naming: Naming,
    backend: &'b B,
    /// Told of each tensor just before it is uploaded (for progress bars).
    observe: &'b dyn Fn(&TensorView<'_>),
}

impl<'a, B: Backend> Loader<'a, '_, B> {
    fn view(&self, role: Role, layer: usize) -> Result<Option<TensorView<'a>>, ModelError> {
        let name = self.naming.name(role, layer, self.cfg.post_norms);
        let Some(entry) = self.file.tensor(&name) else {
            return Ok(None);
        };
        let dims = &entry.dims;
        let (cols, rows) = match dims.len() {
            1 => (dims[0], 1),
            2 => (dims[0], dims[1]),
            _ => {
                return Err(ModelError::BadShape {
                    tensor: name,
                    expected: "1 or 2 dimensions".into(),
                    found: format!("{dims:?}"),
                })
            }
        };
        Ok(Some(TensorView {
            name: &entry.name,
            ty: entry.ty,
            rows: usize::try_from(rows)
                .map_err(|_| ModelError::BadConfig(format!("{name}: too many rows")))?,
            cols: usize::try_from(cols)
                .map_err(|_| ModelError::BadConfig(format!("{name}: too many columns")))?,
            data: self.file.tensor_bytes(entry),
        }))
    }

    /// Loads an optional weight of shape `rows x cols` (rows 1 for vectors).
    fn opt(
        &self,
        role: Role,
        layer: usize,
        rows: usize,
        cols: usize,
        how: WeightUse,
    ) -> Result<Option<B::Weight>, ModelError> {
        let Some(v) = self.view(role, layer)? else {
            return Ok(None);
        };
        if v.rows != rows || v.cols != cols {
            return Err(ModelError::BadShape {
                tensor: v.name.to_string(),
                expected: format!("{rows} x {cols}"),
                found: format!("{} x {}", v.rows, v.cols),
            });
        }
        (self.observe)(&v);
        self.backend.upload(&v, how).map(Some)
    }

    fn req(
        &self,
        role: Role,
        layer: usize,
        rows: usize,
        cols: usize,
        how: WeightUse,
    ) -> Result<B::Weight, ModelError> {
        self.opt(role, layer, rows, cols, how)?.ok_or_else(|| {
            ModelError::MissingTensor(self.naming.name(role, layer, self.cfg.post_norms))
        })
    }
}

impl<W> Weights<W> {
    /// Finds, checks and uploads every weight the config calls for.
    pub fn load<B: Backend<Weight = W>>(
        file: &ModelFile,
        cfg: &ModelConfig,
        backend: &B,
    ) -> Result<Self, ModelError> {
        Self::load_observed(file, cfg, backend, &|_| {})
    }

    /// As `load`, calling `observe` with each tensor just before it is uploaded.
    pub fn load_observed<B: Backend<Weight = W>>(
        file: &ModelFile,
        cfg: &ModelConfig,
        backend: &B,
        observe: &dyn Fn(&TensorView<'_>),
    ) -> Result<Self, ModelError> {
        let naming = if file.gguf().is_some() {
            Naming::Gguf
        } else {
            Naming::Hf
        };
        let l = Loader {
            file,
            cfg,
            naming,
            backend,
            observe,
        };
        let e = cfg.n_embd;
        let (q, kv, ff, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.n_ff, cfg.head_dim);
        let norm = WeightUse::Vector {
            offset: cfg.norm_weight_offset,
        };
        let bias = WeightUse::Vector { offset: 0.0 };
        let m = WeightUse::Matrix;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for il in 0..cfg.n_layers {
            let qk_norm = |role| -> Result<Option<W>, ModelError> {
                if cfg.qk_norm {
                    l.req(role, il, 1, hd, norm).map(Some)
                } else {
                    Ok(None)
                }
            };
            let post = |role| -> Result<Option<W>, ModelError> {
                if cfg.post_norms {
                    l.req(role, il, 1, e, norm).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(LayerWeights {
                attn_norm: l.req(Role::AttnNorm, il, 1, e, norm)?,
                wq: l.req(Role::Wq, il, q, e, m)?,
                wk: l.req(Role::Wk, il, kv, e, m)?,
                wv: l.req(Role::Wv, il, kv, e, m)?,
                wo: l.req(Role::Wo, il, e, q, m)?,
                bq: l.opt(Role::Bq, il, 1, q, bias)?,
                bk: l.opt(Role::Bk, il, 1, kv, bias)?,
                bv: l.opt(Role::Bv, il, 1, kv, bias)?,
                q_norm: qk_norm(Role::QNorm)?,
                k_norm: qk_norm(Role::KNorm)?,
                post_attn_norm: post(Role::PostAttnNorm)?,
                ffn_norm: l.req(Role::FfnNorm, il, 1, e, norm)?,
                ffn_gate: l.req(Role::FfnGate, il, ff, e, m)?,
                ffn_up: l.req(Role::FfnUp, il, ff, e, m)?,
                ffn_down: l.req(Role::FfnDown, il, e, ff, m)?,
                post_ffn_norm: post(Role::PostFfnNorm)?,
            });
        }
        Ok(Weights {
            tok_embd: l.req(Role::TokEmbd, 0, cfg.vocab_size, e, WeightUse::Embedding)?,
            output_norm: l.req(Role::OutputNorm, 0, 1, e, norm)?,
            output: l.opt(Role::Output, 0, cfg.vocab_size, e, m)?,
            layers,
        })
    }
}
