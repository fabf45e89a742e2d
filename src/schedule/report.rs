//! The plan as text: the summary `trainer plan` prints, and the launch list of
//! `trainer plan --launches` that people and golden tests read. Both are functions of the
//! plan alone (no addresses, no hash order), so the same config gives the same bytes in any
//! process.

use std::fmt::Write;

use super::{Plan, Region, Slot, Stats};
use crate::config::values::human;
use crate::graph::Phase;
use crate::tensor::TensorId;
use crate::tensor::TensorType;

/// The text `trainer plan` prints.
pub fn report(name: &str, s: &Stats) -> String {
    let g = |f: u64| format!("{:.2} GFLOP", f as f64 / 1e9);
    let b = &s.bytes;
    let lines = [
        format!(
            "{name}: one training step at batch {}, checkpointing {}",
            s.batch, s.checkpointing
        ),
        format!(
            "  launches          {} ({}{} in place, {} recomputed)",
            s.launches,
            if s.launches_unfused > s.launches {
                format!("{} before fusion; ", s.launches_unfused)
            } else {
                String::new()
            },
            s.in_place,
            s.recomputed_ops
        ),
        format!(
            "  GPU dispatches    {}{}",
            s.dispatches,
            if s.dispatches_unfused > s.dispatches {
                format!(" ({} before fusion)", s.dispatches_unfused)
            } else {
                String::new()
            }
        ),
        format!(
            "  FLOPs             forward {}, backward {}, recompute {}, update {}",
            g(s.flops.forward),
            g(s.flops.backward),
            g(s.flops.recompute),
            g(s.flops.update)
        ),
        format!(
            "  memory            params {}, buffers {}, grads {}, optimizer {}, inputs {}",
            human(b.params),
            human(b.buffers),
            human(b.grads),
            human(b.optimizer),
            human(b.inputs)
        ),
        format!("  activations peak  {}", human(b.activations_peak)),
        format!(
            "    workspace       {} (the largest launch's, in the arena)",
            human(b.workspace)
        ),
        format!("  total peak        {}", human(b.total_peak)),
    ];
    lines.join("\n")
}

/// `trainer plan --launches`: a `#` header (the step, the regions, the columns), then one
/// line per launch in plan order: index, phase, op, layer, then each input and output
/// tensor as `dtype[shape]@region:offset+size`, offsets and sizes in bytes.
pub fn launches(name: &str, plan: &Plan) -> String {
    let g = &plan.graph;
    let s = &plan.stats;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {name}: one training step at batch {}, checkpointing {}, {} launches",
        s.batch,
        s.checkpointing,
        plan.launches.len()
    );
    let regions: Vec<String> = plan
        .sizes
        .iter()
        .map(|(&r, &len)| format!("{} {}", region_name(r), len * 4))
        .collect();
    let _ = writeln!(out, "# region bytes: {}", regions.join(", "));
    let _ = writeln!(
        out,
        "# index phase op layer inputs -> outputs; a tensor is dtype[shape]@region:offset+size (bytes)"
    );
    for (i, l) in plan.launches.iter().enumerate() {
        let n = &g.dag[l.node];
        let tensors = |ids: &[TensorId], slots: &[Slot]| -> Vec<String> {
            ids.iter()
                .zip(slots)
                .map(|(&t, slot)| tensor(g.ty(t), slot))
                .collect()
        };
        // Fields joined by single spaces: a launch with no inputs reads `fill loss -> ...`.
        let mut fields = vec![
            i.to_string(),
            phase_name(n.phase).to_string(),
            n.op.primitive().name().to_string(),
            g.layers[n.layer].name.clone(),
        ];
        fields.extend(tensors(&n.inputs, &l.inputs));
        fields.push("->".to_string());
        fields.extend(tensors(&g.outputs(l.node), &l.outputs));
        let _ = writeln!(out, "{}", fields.join(" "));
    }
    out
}

fn tensor(ty: &TensorType, slot: &Slot) -> String {
    let dims: Vec<String> = ty.shape.iter().map(|d| d.to_string()).collect();
    format!(
        "{}[{}]@{}:{}+{}",
        ty.dtype.name(),
        dims.join(","),
        region_name(slot.region),
        slot.offset * 4,
        slot.len * 4
    )
}

fn region_name(r: Region) -> &'static str {
    match r {
        Region::State => "state",
        Region::Grads => "grads",
        Region::Inputs => "inputs",
        Region::Arena => "arena",
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Forward => "forward",
        Phase::Backward => "backward",
        Phase::Recompute => "recompute",
        Phase::Update => "update",
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{self, sections::Checkpointing};
    use crate::nn;
    use crate::training;

    fn mlp_plan(batch: usize) -> crate::schedule::Plan {
        let loaded = config::load(std::path::Path::new("configs/mlp.toml"), &[]);
        let cfg = loaded.result.expect("the shipped mlp loads");
        let g = nn::build_with_batch(&cfg, batch).expect("builds");
        let t = training::training_graph(&g, &cfg.optimizer).expect("differentiates");
        // Unfused, so that fc1's relu is a launch of its own (else it joins fc1's GEMM).
        let options = crate::schedule::Options {
            fuse: crate::config::sections::Fusion::NONE,
            ..Default::default()
        };
        crate::schedule::plan(&t, &Checkpointing::None, options).expect("plans")
    }

    /// configs/mlp.toml at batch 2, unfused: the header, then one line per launch; the first flattens
    /// the fed [2, 1, 28, 28] images (6272 bytes, first in `inputs`) into the arena's start,
    /// and the fc1 relu writes over its input in place.
    #[test]
    fn one_line_per_launch_after_a_header() {
        let plan = mlp_plan(2);
        let text = super::launches("mlp", &plan);
        let (header, lines): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.starts_with('#'));
        assert_eq!(header.len(), 3, "{text}");
        assert!(header[0].starts_with("# mlp: one training step at batch 2, checkpointing none"));
        assert_eq!(lines.len(), plan.stats.launches);
        assert_eq!(
            lines[0],
            "0 forward reshape flatten_0 f32[2,1,28,28]@inputs:0+6272 -> f32[2,784]@arena:0+6272"
        );
        let relu = lines
            .iter()
            .find(|l| l.contains(" relu relu_2 "))
            .expect("fc1's relu is launched");
        let (input, output) = relu.split_once(" -> ").expect("an arrow");
        assert_eq!(input.rsplit(' ').next(), Some(output), "{relu}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" fill loss -> f32[]@arena:")),
            "a launch without inputs has no empty field: {text}"
        );
        assert!(text.ends_with('\n') && !text.contains("  "));
    }
}
