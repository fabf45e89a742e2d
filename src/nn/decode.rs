//! The decode-step model of autoregressive sampling (`trainer generate`): the config's model in
//! eval mode for ONE new position per sequence, with a key/value cache.
//!
//! The builder lowers the model with a [batch, 1] input of token ids and a `position` input
//! (i32 [batch, 1]); the `positional` layer adds its table's row of that position
//! (nn/sequence.rs); linear, layernorm, gelu, embedding and the rest are per position already.
//! Each causal `attention` layer lowers (`Lower::decode_attention`, nn/lower.rs) to
//! `AttentionDecode` over two buffers, its key and
//! value caches [batch, heads, positions, head width] (zeros at first, never in a checkpoint),
//! and a `CacheWrite` update writes the new position's key and value into row `position` of
//! them in place after the forward (`Graph::updates`, as optimizer state is kept): a step costs
//! one position, and nothing but the token and its position is uploaded. A model with an
//! attention that is not causal, or with none, has no decode-step model.

use super::builder::build_decode_graph;
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::graph::Graph;
use crate::tensor::TensorId;

/// A decode-step graph and what its driver needs to know.
pub struct Decoding {
    pub graph: Graph,
    /// The position input: i32 [batch, 1].
    pub position: TensorId,
    /// The most positions a sequence may have: the model input's length.
    pub positions: usize,
    /// Indices into `graph.params` of the caches: state that no checkpoint holds.
    pub caches: Vec<usize>,
}

/// The decode-step model of `config` at batch size `batch`, or why it has none.
pub fn build_decode(config: &Config, batch: usize) -> Result<Decoding, Diagnostic> {
    let (graph, position) = build_decode_graph(config, batch)?;
    // Only the caches are updated in an evaluation graph.
    let caches: Vec<usize> = graph.updates.iter().map(|&(i, _)| i).collect();
    if caches.is_empty() {
        return Err(Diagnostic::new(
            "the model has no attention: there are no keys and values to cache",
        ));
    }
    Ok(Decoding {
        graph,
        position,
        positions: config.model.input.shape[0],
        caches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::OpKind;
    use std::path::Path;

    fn config(path: &str, sets: &[&str]) -> Config {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let loaded = crate::config::load(Path::new(path), &sets);
        loaded
            .result
            .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)))
    }

    #[test]
    fn a_gpt_decodes_one_position_with_a_cache_per_attention() {
        let cfg = config("tests/configs/good/gpt_tiny.toml", &[]);
        let d = build_decode(&cfg, 1).unwrap();
        let g = &d.graph;
        assert_eq!(g.ty(g.features).shape, [1, 1]);
        assert_eq!(g.ty(g.output).shape, [1, 1, 11]);
        assert_eq!(d.positions, 8);
        let names: Vec<&str> = d.caches.iter().map(|&i| &g.params[i].name[..]).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with("_cache")), "{names:?}");
        for &i in &d.caches {
            assert_eq!(g.params[i].ty.shape, [1, 2, 8, 8]);
            assert!(!g.params[i].trainable);
        }
        // The weights are the full model's, by name and shape (the position table whole).
        let full = crate::nn::build_for(&cfg, 1, crate::graph::Mode::Eval).unwrap();
        let weights: Vec<(&str, &[usize])> = (g.params.iter().enumerate())
            .filter(|(i, _)| !d.caches.contains(i))
            .map(|(_, p)| (&p.name[..], &p.ty.shape[..]))
            .collect();
        let want: Vec<(&str, &[usize])> = (full.params.iter())
            .map(|p| (&p.name[..], &p.ty.shape[..]))
            .collect();
        assert_eq!(weights, want);
        assert_eq!(g.updates.len(), 4);
        assert!(
            g.dag
                .node_indices()
                .all(|id| !matches!(g.dag[id].op, OpKind::Attention(_)))
        );
    }

    #[test]
    fn models_without_causal_attention_have_none() {
        let text = std::fs::read_to_string("tests/configs/good/gpt_tiny.toml").unwrap();
        let full = text.replace("dropout = 0.1 }", "dropout = 0.1, causal = false }");
        assert_ne!(full, text);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.toml");
        std::fs::write(&path, full).unwrap();
        let cfg = config(path.to_str().unwrap(), &[]);
        let e = build_decode(&cfg, 1).err().unwrap();
        assert!(e.message.contains("is not causal"), "{}", e.message);
        let cfg = config("configs/vit.toml", &[]);
        let e = build_decode(&cfg, 1).err().unwrap();
        assert!(e.message.contains("token ids"), "{}", e.message);
        let cfg = config("tests/configs/good/tokens.toml", &[]);
        assert!(build_decode(&cfg, 1).is_err());
    }
}
