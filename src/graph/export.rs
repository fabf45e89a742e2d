//! Graph export: Graphviz DOT (a cluster per layer's forward ops) and JSON.

use petgraph::graph::NodeIndex;
use serde_json::{Value, json};

use super::{Graph, Phase};
use crate::ops::OpKind;
use crate::tensor::fmt_shape;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// DOT text that `dot -Tsvg` renders (Graphviz 2.43 included): forward ops as boxes grouped
/// in a cluster per layer, parameters as ellipses, edges labelled with the tensor shape. In a
/// training graph the backward, recomputed and update ops stand outside the clusters, drawn
/// dashed, dotted and bold, each labelled with its layer.
pub fn dot(g: &Graph) -> String {
    let mut out = String::from(
        "digraph trainer {\n  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=8];\n",
    );
    // Only forward nodes are clustered. Every edge then leaves a cluster toward a later layer
    // or an unclustered node, so the clusters form no cycle: Graphviz 2.43's ranker fails
    // ("trouble in init_rank") on clusters that do, as a layer's forward and backward ops in
    // one cluster did. Without clusters, dot spends minutes on a ResNet's training graph.
    // Leaves only later phases read (optimizer state) stand outside too: in a layer's cluster
    // they tie it to the updates, and 2.43's ranker failed the same way on a ViT's graph.
    let forward = |id: NodeIndex| g.dag[id].phase == Phase::Forward;
    let late_leaf = |id: NodeIndex| {
        let mut readers = g.dag.neighbors_directed(id, petgraph::Direction::Outgoing);
        let first = readers.clone().next();
        g.dag[id].inputs.is_empty() && first.is_some() && readers.all(|r| !forward(r))
    };
    let mut by_layer: Vec<Vec<NodeIndex>> = vec![Vec::new(); g.layers.len()];
    let (mut state, mut unclustered) = (Vec::new(), Vec::new());
    for id in g.dag.node_indices() {
        match (forward(id), late_leaf(id)) {
            (true, false) => by_layer[g.dag[id].layer].push(id),
            (true, true) => state.push(id),
            (false, _) => unclustered.push(id),
        }
    }
    // The state first: the order 2.43 ranked shipped configs' graphs in.
    state.append(&mut unclustered);
    let unclustered = state;
    if !unclustered.is_empty() {
        // The default spline router warns "Something is probably seriously wrong" on
        // resnet18's training graph; polylines route it cleanly.
        out += "  splines=polyline;\n";
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
        for &id in nodes {
            out += &format!("    {}\n", node_line(g, id));
        }
        out += "  }\n";
    }
    for &id in &unclustered {
        out += &format!("  {}\n", node_line(g, id));
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

/// One node statement: op (or parameter name) and output shape; outside the forward pass also
/// the phase and the layer, since no cluster says it.
fn node_line(g: &Graph, id: NodeIndex) -> String {
    let node = &g.dag[id];
    let (mut lines, shape) = match &node.op {
        OpKind::Parameter(p) => (
            vec![g.params[p.index].name.clone(), fmt_shape(&p.ty.shape)],
            "ellipse",
        ),
        op => (
            vec![
                op.primitive().name().to_string(),
                fmt_shape(&node.outputs[0].shape),
            ],
            "box",
        ),
    };
    let style = match node.phase {
        Phase::Forward => "",
        Phase::Backward => ", style=dashed",
        Phase::Recompute => ", style=dotted",
        Phase::Update => ", style=bold",
    };
    if node.phase != Phase::Forward {
        let phase = format!("{:?}", node.phase).to_lowercase();
        lines.push(format!("{} ({phase})", g.layers[node.layer].name));
    }
    let label: Vec<String> = lines.iter().map(|l| escape(l)).collect();
    format!(
        "n{} [label=\"{}\", shape={shape}{style}];",
        id.index(),
        label.join("\\n")
    )
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
