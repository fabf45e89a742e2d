//! Graph export: Graphviz DOT (one cluster per layer) and JSON.

use serde_json::{Value, json};

use super::Graph;
use crate::ops::OpKind;
use crate::tensor::fmt_shape;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// DOT text that `dot -Tsvg` renders: primitive ops as boxes grouped by layer, parameters as
/// ellipses, edges labelled with the tensor shape.
pub fn dot(g: &Graph) -> String {
    let mut out = String::from(
        "digraph trainer {\n  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=8];\n",
    );
    let mut by_layer: Vec<Vec<usize>> = vec![Vec::new(); g.layers.len()];
    for id in g.dag.node_indices() {
        by_layer[g.dag[id].layer].push(id.index());
    }
    for (li, nodes) in by_layer.iter().enumerate() {
        if nodes.is_empty() {
            continue;
        }
        let layer = &g.layers[li];
        out += &format!(
            "  subgraph cluster_{li} {{\n    label=\"{} ({})\";\n    style=rounded; color=gray60;\n",
            escape(&layer.name),
            escape(&layer.op)
        );
        for &n in nodes {
            let node = &g.dag[petgraph::graph::NodeIndex::new(n)];
            let (label, shape) = match &node.op {
                OpKind::Parameter(p) => (
                    format!("{}\\n{}", g.params[p.index].name, fmt_shape(&p.ty.shape)),
                    "ellipse",
                ),
                op => (
                    format!(
                        "{}\\n{}",
                        op.primitive().name(),
                        fmt_shape(&node.outputs[0].shape)
                    ),
                    "box",
                ),
            };
            out += &format!(
                "    n{n} [label=\"{}\", shape={shape}];\n",
                escape(&label).replace("\\\\n", "\\n")
            );
        }
        out += "  }\n";
    }
    for e in g.dag.raw_edges() {
        let t = &g.dag[e.source()].outputs[e.weight.output as usize];
        out += &format!(
            "  n{} -> n{} [label=\"{}\"];\n",
            e.source().index(),
            e.target().index(),
            fmt_shape(&t.shape)
        );
    }
    out += "}\n";
    out
}

/// The graph as JSON: nodes (op, attributes, inputs, output types, layer), layers, parameters.
pub fn json(g: &Graph) -> Value {
    let nodes: Vec<Value> = g
        .dag
        .node_indices()
        .map(|id| {
            let n = &g.dag[id];
            let attrs: serde_json::Map<String, Value> =
                n.op.primitive()
                    .attrs()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v)))
                    .collect();
            json!({
                "id": id.index(),
                "op": n.op.primitive().name(),
                "attrs": attrs,
                "inputs": n.inputs,
                "outputs": n.outputs,
                "layer": g.layers[n.layer].name,
            })
        })
        .collect();
    let layers: Vec<Value> = g
        .layers
        .iter()
        .map(|l| json!({ "name": l.name, "op": l.op, "output": l.output }))
        .collect();
    json!({
        "batch": g.batch,
        "nodes": nodes,
        "layers": layers,
        "params": g.params,
        "features": g.features,
        "labels": g.labels,
        "output": g.output,
        "loss": g.loss,
    })
}
