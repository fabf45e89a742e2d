//! What every layer op implements ([`LayerSpec`]) and what its lowering sees ([`Lower`]): the graph under construction, its own layer (for
//! parameter names), the batch size and the mode. Layer specs add parameters and primitive ops
//! only through it.

use serde::de::DeserializeOwned;

use crate::graph::{Graph, Init, Mode};
use crate::ops::{self, Attention, AttentionDecode, CacheWrite, OpKind};
use crate::tensor::{TensorId, TensorType, fmt_shape};

/// How many inputs a layer takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    One,
    AtLeastTwo,
}

/// What every layer op implements.
pub trait LayerSpec: DeserializeOwned + Clone + std::fmt::Debug {
    const ARITY: Arity = Arity::One;
    /// Adds the layer's parameters and primitive ops; returns its output. Errors are about
    /// per-sample shapes (the batch dim is implied), in words a config author can act on.
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String>;
}

/// What a layer lowering sees: the graph, its own layer (for parameter names), the batch size.
pub struct Lower<'a> {
    g: &'a mut Graph,
    layer: usize,
    random_streams: &'a mut u64,
    mode: Mode,
    decode: Option<Decode>,
    blamed: Option<&'static str>,
}

/// What a layer sees of the decode-step model (nn/decode.rs): one new position per sequence
/// instead of the window.
#[derive(Clone, Copy, Debug)]
pub struct Decode {
    /// The positions of the full model (its input's length): a position table's rows.
    pub positions: usize,
    /// The position of each sequence's new token: i32 [batch, 1].
    pub position: TensorId,
}

impl<'a> Lower<'a> {
    pub(super) fn new(
        g: &'a mut Graph,
        layer: usize,
        random_streams: &'a mut u64,
        mode: Mode,
        decode: Option<Decode>,
    ) -> Lower<'a> {
        Lower {
            g,
            layer,
            random_streams,
            mode,
            decode,
            blamed: None,
        }
    }
    /// Set when building the decode-step model: the layer sees one position per sequence.
    pub fn decode(&self) -> Option<Decode> {
        self.decode
    }
    /// Marks an error as being about attribute `key` (the builder then points at its value,
    /// when the config set it); returns `message` for `Err(..)`.
    pub fn blame(&mut self, key: &'static str, message: String) -> String {
        self.blamed = Some(key);
        message
    }
    /// The attribute an error was blamed on ([`Lower::blame`]).
    pub(super) fn blamed(&self) -> Option<&'static str> {
        self.blamed
    }
    /// Training graphs use batch statistics and dropout; evaluation graphs do not.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    fn full(&self, local: &str) -> String {
        format!("{}.{local}", self.g.layers[self.layer].name)
    }
    /// A trainable parameter named `<layer>.<local>`.
    pub fn param(
        &mut self,
        local: &str,
        shape: Vec<usize>,
        init: Init,
    ) -> Result<TensorId, String> {
        let name = self.full(local);
        let ty = TensorType::f32(shape);
        Ok(self
            .g
            .add_param(name, ty, init, true, self.layer, true)?
            .expect("read"))
    }
    /// The trainable parameter `<layer>.<local>` of an earlier layer, given the second name
    /// `<this layer>.<local>` (weight tying); it must have `shape`.
    pub fn tied_param(
        &mut self,
        layer: &str,
        local: &str,
        shape: &[usize],
    ) -> Result<TensorId, String> {
        let name = format!("{layer}.{local}");
        let Some((index, p)) = self
            .g
            .params
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name && p.trainable)
        else {
            let known: Vec<&str> = self
                .g
                .params
                .iter()
                .filter(|p| p.trainable && p.name.ends_with(&format!(".{local}")))
                .map(|p| &p.name[..p.name.len() - local.len() - 1])
                .collect();
            let hint = match crate::diag::did_you_mean(layer, known.iter().copied()) {
                Some(s) => format!("; did you mean `{s}`?"),
                None => String::new(),
            };
            return Err(format!(
                "ties to `{name}`, but no layer before it has that parameter{hint}"
            ));
        };
        if p.ty.shape != shape {
            return Err(format!(
                "ties to `{name}` of shape {}, but needs {}",
                crate::tensor::fmt_shape(&p.ty.shape),
                crate::tensor::fmt_shape(shape)
            ));
        }
        let node = p.node.expect("a trainable parameter is read");
        let alias = self.full(local);
        self.g.tied.push((alias, index));
        Ok(TensorId {
            node: node.index() as u32,
            output: 0,
        })
    }
    /// A persistent, untrained buffer; `read` adds a node for forward ops to read.
    pub fn buffer(
        &mut self,
        local: &str,
        ty: TensorType,
        init: Init,
        read: bool,
    ) -> Result<Option<TensorId>, String> {
        let name = self.full(local);
        self.g.add_param(name, ty, init, false, self.layer, read)
    }
    /// Adds a primitive op; returns its first output.
    pub fn op(&mut self, op: OpKind, inputs: &[TensorId]) -> Result<TensorId, String> {
        let name = op.primitive().name();
        self.g
            .add(op, inputs, self.layer)
            .map_err(|e| format!("{name} {e}"))
    }
    /// [`Lower::op`] for an op of several outputs: all of them.
    pub fn op_all(&mut self, op: OpKind, inputs: &[TensorId]) -> Result<Vec<TensorId>, String> {
        let first = self.op(op, inputs)?;
        Ok(self.g.outputs(first.node()))
    }
    /// An update op (`Phase::Update`, after the forward) whose output k replaces parameter
    /// `params[k]` in place (`Graph::updates`), as the optimizer's do.
    fn update(&mut self, op: OpKind, inputs: &[TensorId], params: &[usize]) -> Result<(), String> {
        let name = op.primitive().name();
        let n = self
            .g
            .add_node(op, inputs, self.layer, crate::graph::Phase::Update)
            .map_err(|e| format!("{name} {e}"))?;
        for (k, &i) in params.iter().enumerate() {
            self.g.updates.push((i, TensorId::of(n, k)));
        }
        Ok(())
    }
    /// The index in `Graph::params` of the last parameter or buffer added.
    fn last_param(&self) -> usize {
        self.g.params.len() - 1
    }
    /// What the attention `a` over `inputs` (qkv [batch, 1, 3C]) lowers to in the decode-step
    /// model (nn/decode.rs): `AttentionDecode` over the layer's buffers `k_cache` and `v_cache`,
    /// and the `CacheWrite` update of the new position's row. Refused where it is not causal.
    pub fn decode_attention(
        &mut self,
        d: Decode,
        a: &Attention,
        inputs: &[TensorId],
    ) -> Result<TensorId, String> {
        if !a.causal {
            return Err(
                "is not causal (every position sees the later ones): a new token would change the \
                 earlier positions, so there is no key/value cache to decode with"
                    .into(),
            );
        }
        let qkv = inputs[0];
        let shape = self.ty(qkv).shape.clone();
        let [b, 1, w] = shape[..] else {
            return Err(format!(
                "decodes one position at a time, qkv [1, 3·C], got {}",
                fmt_shape(&shape[1..])
            ));
        };
        if a.heads == 0 || w % (3 * a.heads) != 0 {
            return Err(format!(
                "expects q, k and v side by side, got {}",
                fmt_shape(&shape[1..])
            ));
        }
        let ty = TensorType::f32(vec![b, a.heads, d.positions, w / 3 / a.heads]);
        let k = self.buffer("k_cache", ty.clone(), Init::Zeros, true)?;
        let k_index = self.last_param();
        let v = self.buffer("v_cache", ty, Init::Zeros, true)?;
        let v_index = self.last_param();
        let (k, v) = (k.expect("read"), v.expect("read"));
        let op = AttentionDecode {
            heads: a.heads,
            scale: a.scale,
        };
        let y = self.op(OpKind::AttentionDecode(op), &[qkv, k, v, d.position])?;
        let write = CacheWrite {
            heads: a.heads,
            positions: d.positions,
        };
        self.update(
            OpKind::CacheWrite(write),
            &[qkv, d.position],
            &[k_index, v_index],
        )?;
        Ok(y)
    }
    pub fn ty(&self, t: TensorId) -> &TensorType {
        self.g.ty(t)
    }
    /// The shape of one sample: the tensor's shape without the batch dim.
    pub fn sample(&self, t: TensorId) -> &[usize] {
        &self.g.ty(t).shape[1..]
    }
    pub fn batch(&self) -> usize {
        self.g.batch
    }
    /// A per-sample axis (negative from the end) as an axis of the batched tensor.
    pub fn sample_axis(&self, t: TensorId, axis: i64) -> Result<usize, String> {
        ops::axis(axis, self.sample(t).len()).map(|a| a + 1)
    }
    pub fn next_random_stream(&mut self) -> u64 {
        *self.random_streams += 1;
        *self.random_streams - 1
    }
}
