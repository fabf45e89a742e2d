//! Every WGSL kernel the shipped and test configs launch (forward, backward, optimizer; with
//! gradient clipping too) parses and validates with naga and translates to Metal (MSL),
//! Vulkan (SPIR-V) and DX12 (HLSL): a kernel that would not compile on a Mac cannot land,
//! even though CI only has Vulkan. Their decode-step models (`trainer generate`'s key/value
//! cache) too, where they have one. Needs no GPU.

use std::collections::BTreeMap;

use trainer::config;
use trainer::kernel::gpu::{KernelArgs, Shader, Tile};
use trainer::nn;
use trainer::ops::{
    AdamStep, AttentionDecode, BatchNormRunningStats, BinaryFn, CacheWrite, Chain, CountUp,
    ElementwiseFn, Foreach, Link, MatMul, MatMulBias, OpKind, Operand, SgdStep, UnaryFn,
};
use trainer::schedule::fuse;
use trainer::tensor::TensorType;
use trainer::training;

const CONFIGS: [&str; 13] = [
    "benches/configs/gemm1024.toml",
    "benches/configs/gemm4096.toml",
    "configs/mlp.toml",
    "configs/lenet.toml",
    "configs/resnet.toml",
    "configs/resnet18.toml",
    "tests/configs/good/dag.toml",
    "tests/configs/good/resnet_tiny.toml",
    "tests/configs/good/tokens.toml",
    "tests/configs/good/gpt_tiny.toml",
    "tests/configs/good/patches.toml",
    "tests/configs/good/attention_by_hand.toml",
    "tests/configs/good/vit_tiny.toml",
];

/// Each distinct kernel source with its entry points, and the op and layer that first used it.
fn kernels() -> BTreeMap<String, (Vec<&'static str>, String)> {
    let mut out: BTreeMap<String, (Vec<&'static str>, String)> = BTreeMap::new();
    let mut missing = Vec::new();
    for path in CONFIGS {
        // Batch 128 too: large enough that reductions take their two-pass kernels.
        let mut variants = vec![
            (vec![], 2),
            (vec!["optimizer.clip_grad_norm=1.0".to_string()], 2),
            (vec![], 128),
        ];
        // Attention as separate launches: batched matmuls, split, the causal mask.
        if path.ends_with("gpt_tiny.toml") {
            let unfused = "model.blocks.attn.body.1.fused=false".to_string();
            variants.push((vec![unfused], 2));
        }
        for (sets, batch) in variants {
            let loaded = config::load(std::path::Path::new(path), &sets);
            let cfg = loaded
                .result
                .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)));
            let g = nn::build_with_batch(&cfg, batch).expect("builds");
            let unfused = training::training_graph(&g, &cfg.optimizer).expect("differentiates");
            let decode = nn::build_decode(&cfg, batch).ok().map(|d| d.graph);
            let all = trainer::config::sections::Fusion::ALL;
            // The fusion pass's multi-tensor kernels too.
            let graphs = [fuse::fuse(&unfused, all), unfused]
                .into_iter()
                .chain(decode.into_iter().flat_map(|g| [fuse::fuse(&g, all), g]));
            for t in graphs {
                for id in t.dag.node_indices() {
                    let n = &t.dag[id];
                    if matches!(n.op, OpKind::Parameter(_) | OpKind::Input(_)) {
                        continue;
                    }
                    let inputs: Vec<&TensorType> = n.inputs.iter().map(|&x| t.ty(x)).collect();
                    let args = KernelArgs {
                        inputs: &inputs,
                        outputs: &n.outputs,
                    };
                    let what = format!(
                        "{path}: layer `{}` ({})",
                        t.layers[n.layer].name,
                        n.op.primitive().name()
                    );
                    match n.op.primitive().gpu(&args) {
                        Ok(ds) => {
                            for d in ds {
                                let e = out
                                    .entry(d.shader.source.to_string())
                                    .or_insert_with(|| (Vec::new(), what.clone()));
                                if !e.0.contains(&d.shader.entry) {
                                    e.0.push(d.shader.entry);
                                }
                            }
                        }
                        Err(e) => missing.push(format!("{what}: {e}")),
                    }
                }
            }
        }
    }
    // Every multi-tensor update entry (kernels/optim_multi.wgsl), whether or not a config
    // picks it.
    let f32s = |n| TensorType::f32(vec![n]);
    let counter = TensorType {
        shape: vec![],
        dtype: trainer::tensor::DType::I32,
    };
    let mut updates: Vec<(OpKind, Vec<TensorType>)> = Vec::new();
    for clip in [false, true] {
        let coef = clip.then(|| TensorType::f32(vec![]));
        for momentum in [0.0, 0.9] {
            let op = OpKind::SgdStep(SgdStep {
                momentum,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
                clip,
            });
            let mut ins = vec![f32s(5); 2 + (momentum != 0.0) as usize];
            ins.extend(coef.clone());
            updates.push((op, ins));
        }
        let op = OpKind::AdamStep(AdamStep {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            clip,
        });
        let mut ins = vec![f32s(5); 4];
        ins.extend(coef);
        updates.push((op, ins));
    }
    updates.push((OpKind::CountUp(CountUp), vec![counter]));
    let stats = OpKind::BatchNormRunningStats(BatchNormRunningStats {
        momentum: 0.1,
        count: 10,
    });
    updates.push((stats, vec![f32s(5); 4]));
    for (op, member) in updates {
        let fused = OpKind::Foreach(Foreach {
            inner: Box::new(op),
            groups: 2,
        });
        let types: Vec<&TensorType> = member.iter().chain(&member).collect();
        let outputs = fused
            .primitive()
            .infer(&types)
            .expect("a multi-tensor update");
        let args = KernelArgs {
            inputs: &types,
            outputs: &outputs,
        };
        for d in fused.primitive().gpu(&args).expect("its kernels") {
            let e = out
                .entry(d.shader.source.to_string())
                .or_insert_with(|| (Vec::new(), fused.primitive().name().to_string()));
            if !e.0.contains(&d.shader.entry) {
                e.0.push(d.shader.entry);
            }
        }
    }
    // The key/value cache's kernels at head widths from 1 to the widest (128), odd ones too.
    let ids = TensorType {
        shape: vec![2, 1],
        dtype: trainer::tensor::DType::I32,
    };
    for d in [1, 5, 64, 128] {
        let (qkv, cache) = (
            TensorType::f32(vec![2, 1, 3 * 3 * d]),
            TensorType::f32(vec![2, 3, 7, d]),
        );
        let ops = [
            (
                OpKind::AttentionDecode(AttentionDecode {
                    heads: 3,
                    scale: 0.5,
                }),
                vec![&qkv, &cache, &cache, &ids],
            ),
            (
                OpKind::CacheWrite(CacheWrite {
                    heads: 3,
                    positions: 7,
                }),
                vec![&qkv, &ids],
            ),
        ];
        for (op, inputs) in ops {
            let outputs = op.primitive().infer(&inputs).expect("a decode op");
            let args = KernelArgs {
                inputs: &inputs,
                outputs: &outputs,
            };
            for k in op.primitive().gpu(&args).expect("its kernel") {
                let e = out
                    .entry(k.shader.source.to_string())
                    .or_insert_with(|| (Vec::new(), format!("{op:?} at head width {d}")));
                if !e.0.contains(&k.shader.entry) {
                    e.0.push(k.shader.entry);
                }
            }
        }
    }
    // Every GEMM tile shape (kernel/gpu/gemm.rs), whether or not a config's sizes pick it, and
    // the transposed copy of w that large products multiply by (ops/matmul.rs).
    let tiles = Tile::ALL.map(|t| ([t.rows * 16, 8, t.cols * 16], format!("the {t:?} GEMM")));
    let large = ([1030, 515, 516], "a large x·wᵀ".to_string());
    for ([m, k, n], what) in tiles.into_iter().chain([large]) {
        let (x, w) = (TensorType::f32(vec![m, k]), TensorType::f32(vec![n, k]));
        let outputs = [TensorType::f32(vec![m, n])];
        let args = KernelArgs {
            inputs: &[&x, &w],
            outputs: &outputs,
        };
        for d in OpKind::MatMul(MatMul)
            .primitive()
            .gpu(&args)
            .expect("a GEMM")
        {
            out.entry(d.shader.source.to_string())
                .or_insert_with(|| (vec![d.shader.entry], what.clone()));
        }
        // With a bias and each activation of the table in its epilogue.
        let bias = TensorType::f32(vec![n]);
        let acts = std::iter::once(None).chain(UnaryFn::examples().into_iter().map(Some));
        for act in acts {
            let args = KernelArgs {
                inputs: &[&x, &w, &bias],
                outputs: &outputs,
            };
            let op = OpKind::MatMulBias(MatMulBias { act });
            for d in op.primitive().gpu(&args).expect("a GEMM") {
                out.entry(d.shader.source.to_string())
                    .or_insert_with(|| (vec![d.shader.entry], format!("{what} with {op:?}")));
            }
        }
    }
    // Split-K with the epilogue in its reduce.
    let (x, w, bias) = (
        TensorType::f32(vec![3, 4096]),
        TensorType::f32(vec![5, 4096]),
        TensorType::f32(vec![5]),
    );
    let outputs = [TensorType::f32(vec![3, 5])];
    let args = KernelArgs {
        inputs: &[&x, &w, &bias],
        outputs: &outputs,
    };
    let op = OpKind::MatMulBias(MatMulBias {
        act: Some(UnaryFn::Tanh),
    });
    let split = op.primitive().gpu(&args).expect("a GEMM");
    assert_eq!(split.len(), 2, "split-K");
    for d in split {
        out.entry(d.shader.source.to_string())
            .or_insert_with(|| (vec![d.shader.entry], format!("split-K {op:?}")));
    }
    // Fused elementwise chains: each row of the table and each of its gradients as a link
    // (every snippet, with its parameter as a constant), on equal shapes and broadcast, and a
    // chain of the most inputs one kernel binds.
    let mut chains: Vec<(Chain, Vec<TensorType>)> = Vec::new();
    let link = |f: ElementwiseFn, args: &[Operand]| Link {
        f,
        args: args.to_vec(),
    };
    let add = ElementwiseFn::Binary { f: BinaryFn::Add };
    for f in UnaryFn::examples() {
        let mut fns = vec![ElementwiseFn::UnaryGrad {
            f,
            from_output: false,
        }];
        if f.grad_from_output() {
            fns.push(ElementwiseFn::UnaryGrad {
                f,
                from_output: true,
            });
        }
        for g in fns {
            let links = vec![
                link(add, &[Operand::Input(0), Operand::Input(1)]),
                link(ElementwiseFn::Unary { f }, &[Operand::Link(0)]),
                link(g, &[Operand::Link(1), Operand::Input(0)]),
            ];
            for bias in [vec![3, 5], vec![5]] {
                let types = vec![TensorType::f32(vec![3, 5]), TensorType::f32(bias)];
                chains.push((
                    Chain {
                        links: links.clone(),
                    },
                    types,
                ));
            }
        }
    }
    let widest = Chain::MAX_INPUTS;
    let mut links = vec![link(add, &[Operand::Input(0), Operand::Input(1)])];
    for k in 2..widest {
        links.push(link(add, &[Operand::Link(k - 2), Operand::Input(k)]));
    }
    chains.push((
        Chain { links },
        (0..widest)
            .map(|k| TensorType::f32(vec![k % 2 + 1, 4]))
            .collect(),
    ));
    for (chain, types) in chains {
        let op = OpKind::Chain(chain);
        let inputs: Vec<&TensorType> = types.iter().collect();
        let outputs = op.primitive().infer(&inputs).expect("a chain");
        let args = KernelArgs {
            inputs: &inputs,
            outputs: &outputs,
        };
        for d in op.primitive().gpu(&args).expect("its kernel") {
            let e = out
                .entry(d.shader.source.to_string())
                .or_insert_with(|| (Vec::new(), format!("{op:?}")));
            if !e.0.contains(&d.shader.entry) {
                e.0.push(d.shader.entry);
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "ops without GPU kernels:\n{}",
        missing.join("\n")
    );
    out
}

#[test]
fn every_kernel_translates_to_metal_spirv_and_hlsl() {
    let all = kernels();
    assert!(all.len() > 10, "only {} kernels found", all.len());
    // The second passes of the split reductions are among them.
    for entry in [
        "bn_stats_merge",
        "bn_grad_merge",
        "ln_grad_cols_merge",
        "axes_merge",
        "loss_total",
        "grad_norm_total",
        "sgd_multi",
        "sgd_clip_multi",
        "sgd_momentum_multi",
        "sgd_momentum_clip_multi",
        "adam_multi",
        "adam_clip_multi",
        "count_up_multi",
        "bn_running_stats_multi",
    ] {
        assert!(
            all.values().any(|(entries, _)| entries.contains(&entry)),
            "no config launches `{entry}`"
        );
    }
    // gpt_tiny's decode-step model launches the key/value cache's kernels.
    for entry in ["attention_decode", "cache_write"] {
        let ours = |e: &[&str], what: &str| e.contains(&entry) && what.contains("gpt_tiny");
        assert!(
            all.values().any(|(e, what)| ours(e, what)),
            "gpt_tiny's decode-step model does not launch `{entry}`"
        );
    }
    // The fusion pass's batchnorm gradients of relu's gradient (of a gradient sum too) make dy
    // through their own `dy_at` in the sums' pass: sources of their own (dx's is the unfused).
    for op in ["batchnorm_relu_grad", "batchnorm_relu_grad_add"] {
        let ours = |e: &[&str], what: &str| {
            e.contains(&"bn_grad_sums") && what.ends_with(&format!("({op})"))
        };
        assert!(
            all.values().any(|(e, what)| ours(e, what)),
            "no config launches `{op}`"
        );
    }
    let mut failures = Vec::new();
    let mut with_subgroups = 0;
    for (source, (entries, what)) in &all {
        let shader = Shader {
            source: source.clone().into(),
            entry: entries[0],
        };
        translate(source, entries, what, Target::PORTABLE, &mut failures);
        // The reductions through subgroups (kernels/tree_subgroup.wgsl), as a device with
        // `Features::SUBGROUP` builds them.
        let subgroup = shader.source_for(true);
        if subgroup != shader.source_for(false) {
            with_subgroups += 1;
            let what = format!("{what} (subgroup reductions)");
            translate(&subgroup, entries, &what, Target::SUBGROUP, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Batchnorm, softmax and the axis sums reduce through `tree_sum`/`tree_max`.
    assert!(
        with_subgroups >= 8,
        "only {with_subgroups} kernels have a subgroup variant"
    );
}

/// What a kernel variant may assume of the device.
struct Target {
    capabilities: naga::valid::Capabilities,
    /// Metal Shading Language version (simd_shuffle_xor needs 2.0; wgpu enables SUBGROUP on
    /// Apple7, Mac2 and Metal3 GPUs, which run MSL 2.3 or later).
    msl: (u8, u8),
    /// HLSL shader model (wave intrinsics need 6.0; wgpu's DX12 enables SUBGROUP only there).
    hlsl: naga::back::hlsl::ShaderModel,
}

impl Target {
    /// Any WebGPU device: naga's defaults.
    const PORTABLE: Target = Target {
        capabilities: naga::valid::Capabilities::empty(),
        msl: (1, 0),
        hlsl: naga::back::hlsl::ShaderModel::V5_1,
    };
    /// A device with `Features::SUBGROUP`, at the least version each backend needs for it.
    const SUBGROUP: Target = Target {
        capabilities: naga::valid::Capabilities::SUBGROUP,
        msl: (2, 0),
        hlsl: naga::back::hlsl::ShaderModel::V6_0,
    };
}

/// Validates `source` for `target` and translates each entry to MSL, SPIR-V and HLSL.
fn translate(
    source: &str,
    entries: &[&'static str],
    what: &str,
    target: Target,
    failures: &mut Vec<String>,
) {
    let module = match naga::front::wgsl::parse_str(source) {
        Ok(m) => m,
        Err(e) => {
            failures.push(format!("{what}: WGSL: {}", e.emit_to_string(source)));
            return;
        }
    };
    let info =
        match naga::valid::Validator::new(naga::valid::ValidationFlags::all(), target.capabilities)
            .validate(&module)
        {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{what}: validation: {}", e.emit_to_string(source)));
                return;
            }
        };
    let msl_options = naga::back::msl::Options {
        lang_version: target.msl,
        ..Default::default()
    };
    for &entry in entries {
        let stage = Some((naga::ShaderStage::Compute, entry.to_string()));
        let msl = naga::back::msl::PipelineOptions {
            entry_point: stage.clone(),
            ..Default::default()
        };
        if let Err(e) = naga::back::msl::write_string(&module, &info, &msl_options, &msl) {
            failures.push(format!("{what}: `{entry}` to Metal: {e}"));
        }
        let spv = naga::back::spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: entry.to_string(),
        };
        if let Err(e) = naga::back::spv::write_vec(&module, &info, &Default::default(), Some(&spv))
        {
            failures.push(format!("{what}: `{entry}` to SPIR-V: {e}"));
        }
        let hlsl_options = naga::back::hlsl::Options {
            shader_model: target.hlsl,
            ..Default::default()
        };
        let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
            entry_point: stage.clone(),
        };
        let mut text = String::new();
        let mut w = naga::back::hlsl::Writer::new(&mut text, &hlsl_options, &hlsl_pipeline);
        if let Err(e) = w.write(&module, &info, None) {
            failures.push(format!("{what}: `{entry}` to HLSL: {e}"));
        }
    }
}
