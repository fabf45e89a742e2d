//! The per-layer table `trainer check` prints (and its JSON form).

use serde::Serialize;

use super::Graph;
use crate::diag::Sources;

#[derive(Serialize)]
pub struct LayerRow {
    pub name: String,
    pub op: String,
    /// Per-sample output shape (no batch dim); the loss is a scalar.
    pub output: Vec<usize>,
    pub params: usize,
    pub flops_per_sample: u64,
    /// `file:line:col` of the layer in the config (inside a block: the block body's line).
    pub source: String,
}

#[derive(Serialize)]
pub struct Summary {
    pub params: usize,
    /// Elements of untrained state (batchnorm running statistics).
    pub buffers: usize,
    /// Forward FLOPs of one sample, loss included (a multiply-add counts 2).
    pub flops_per_sample: u64,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub layers: Vec<LayerRow>,
    pub parameters: Vec<ParamRow>,
}

#[derive(Serialize)]
pub struct ParamRow {
    pub name: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
    pub init: super::Init,
}

pub fn summarize(g: &Graph, sources: &Sources) -> Summary {
    let batch = g.batch as u64;
    let mut flops = vec![0u64; g.layers.len()];
    for id in g.dag.node_indices() {
        let l = g.dag[id].layer;
        flops[l] = flops[l].saturating_add(g.flops(id));
    }
    let mut params = vec![0usize; g.layers.len()];
    for p in g.params.iter().filter(|p| p.trainable) {
        params[p.layer] += p.ty.numel();
    }
    let layers = g
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.op != "input" || l.name == "input")
        .map(|(i, l)| {
            let shape = l.output.map(|t| g.ty(t).shape.clone()).unwrap_or_default();
            let output = if l.op == "cross_entropy" || l.op == "mse" {
                shape
            } else {
                shape.get(1..).unwrap_or(&[]).to_vec()
            };
            LayerRow {
                name: l.name.clone(),
                op: l.op.clone(),
                output,
                params: params[i],
                flops_per_sample: flops[i].div_ceil(batch),
                source: sources.position(l.loc),
            }
        })
        .collect();
    Summary {
        params: g.param_count(),
        buffers: g
            .params
            .iter()
            .filter(|p| !p.trainable)
            .map(|p| p.ty.numel())
            .sum(),
        flops_per_sample: flops
            .iter()
            .fold(0u64, |a, &b| a.saturating_add(b))
            .div_ceil(batch),
        input: g.ty(g.features).shape[1..].to_vec(),
        output: g.ty(g.output).shape[1..].to_vec(),
        layers,
        parameters: g
            .params
            .iter()
            .map(|p| ParamRow {
                name: p.name.clone(),
                shape: p.ty.shape.clone(),
                trainable: p.trainable,
                init: p.init,
            })
            .collect(),
    }
}

/// Thousands separators: 272186 → "272,186".
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Summary {
    pub fn table(&self) -> String {
        let shape = |s: &[usize]| crate::tensor::fmt_shape(s);
        let w_name = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let w_op = self
            .layers
            .iter()
            .map(|l| l.op.len())
            .max()
            .unwrap_or(2)
            .max(2);
        let w_out = self
            .layers
            .iter()
            .map(|l| shape(&l.output).len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = format!(
            "{:<w_name$}  {:<w_op$}  {:<w_out$}  {:>11}  {:>14}\n",
            "layer", "op", "output", "params", "FLOPs/sample"
        );
        for l in &self.layers {
            out += &format!(
                "{:<w_name$}  {:<w_op$}  {:<w_out$}  {:>11}  {:>14}\n",
                l.name,
                l.op,
                shape(&l.output),
                grouped(l.params as u64),
                grouped(l.flops_per_sample)
            );
        }
        out += &format!(
            "total: {} parameters ({:.2} MiB f32), {} buffer elements, {} FLOPs per sample (forward)\n",
            grouped(self.params as u64),
            self.params as f64 * 4.0 / (1 << 20) as f64,
            grouped(self.buffers as u64),
            grouped(self.flops_per_sample)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_thousands() {
        assert_eq!(super::grouped(272186), "272,186");
        assert_eq!(super::grouped(11173962), "11,173,962");
        assert_eq!(super::grouped(999), "999");
    }
}
