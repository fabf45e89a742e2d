//! Model declarations → forward graph. Resolves tensor names per scope (the model, or one block
//! instance), orders layers by their dependencies (forward references allowed, cycles
//! reported), expands blocks, lowers each layer op into primitives with shape inference, and
//! appends the loss. Every error names the layer, its config line, and the block uses it came
//! through.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use petgraph::graph::DiGraph;

use super::lower::Arity;
use super::lower::{Decode, Lower};
use super::{LayerOp, parse_op};
use crate::graph::{Graph, Layer, Mode};

use crate::config::model::{
    BlockUse, LayerDecl, Named, ShortcutKind, What, parse_layer, reject_params,
};
use crate::config::tree::Value;
use crate::config::{Config, LossKind};
use crate::diag::{Diagnostic, Loc, did_you_mean};
use crate::ops::{CrossEntropy, Input, Mse, OpKind};
use crate::tensor::TensorId;
use crate::tensor::{DType, TensorType, fmt_shape};

/// A named tensor in a scope, with the layer that made it (for error messages).
#[derive(Clone, Debug)]
struct Sym {
    tensor: TensorId,
    name: String,
    loc: Loc,
}

/// Blocks nested deeper than this are refused: far beyond any real model, and each level is
/// a few stack frames of the builder.
pub const MAX_BLOCK_DEPTH: usize = 64;

/// Layers a model may expand to (blocks and `repeat` multiply): far beyond any real model,
/// low enough that a typo such as `repeat = 2000000000` is an error, not hours of building.
pub const MAX_LAYERS: usize = 100_000;

/// How many enclosing block uses an error inside blocks shows as labels.
const BLOCK_LABELS: usize = 3;

struct Builder<'c> {
    g: Graph,
    /// Every full layer name, for the uniqueness check.
    names: BTreeSet<String>,
    config: &'c Config,
    random_streams: u64,
    mode: Mode,
    /// Set for the decode-step model (nn/decode.rs).
    decode: Option<Decode>,
    /// Blocks being expanded (name, use site), outermost first.
    expanding: Vec<(String, Loc)>,
    /// Full names of the block instances being expanded, outermost first.
    instances: Vec<String>,
}

/// Builds the forward graph (model, labels, loss) at the config's batch size.
pub fn build(config: &Config) -> Result<Graph, Diagnostic> {
    build_with_batch(config, config.data.batch_size.0)
}

pub fn build_with_batch(config: &Config, batch: usize) -> Result<Graph, Diagnostic> {
    build_for(config, batch, Mode::Train)
}

/// The forward graph in `mode`: `Eval` graphs (validation, `trainer eval`, `predict`) normalise
/// with running statistics and skip dropout; their parameters are the training graph's, in the
/// same order, so weights carry over by index.
pub fn build_for(config: &Config, batch: usize, mode: Mode) -> Result<Graph, Diagnostic> {
    build_graph(config, batch, mode, false).map(|(g, _)| g)
}

/// The evaluation graph for one new position per sequence (nn/decode.rs): the input is
/// [batch, 1] of the model's token ids, and a second input `position` (i32 [batch, 1], on the
/// input's layer) gives each sequence's position, which layers see through `Lower::decode`.
/// Returns the graph and that input.
pub(super) fn build_decode_graph(
    config: &Config,
    batch: usize,
) -> Result<(Graph, TensorId), Diagnostic> {
    let (g, position) = build_graph(config, batch, Mode::Eval, true)?;
    Ok((g, position.expect("a decode graph has a position input")))
}

fn build_graph(
    config: &Config,
    batch: usize,
    mode: Mode,
    decode: bool,
) -> Result<(Graph, Option<TensorId>), Diagnostic> {
    let model = &config.model;
    check_data(config)?;
    let placeholder = TensorId { node: 0, output: 0 };
    let g = Graph {
        dag: DiGraph::default(),
        layers: Vec::new(),
        params: Vec::new(),
        batch,
        features: placeholder,
        labels: placeholder,
        output: placeholder,
        loss: placeholder,
        grads: Vec::new(),
        updates: Vec::new(),
        tied: Vec::new(),
    };
    let mut b = Builder {
        g,
        names: Default::default(),
        config,
        random_streams: 0,
        mode,
        decode: None,
        expanding: Vec::new(),
        instances: Vec::new(),
    };
    let mut shape = vec![batch];
    let positions = match model.input.shape[..] {
        [positions] if decode && model.input.dtype == DType::I32 => positions,
        _ if decode => {
            return Err(Diagnostic::new(format!(
                "decoding one position at a time needs a model of token ids, input shape \
                 [positions] and dtype \"i32\", not {} {}",
                model.input.dtype.name(),
                fmt_shape(&model.input.shape)
            ))
            .at(model.input.loc, "the model input"));
        }
        _ => 0,
    };
    if decode {
        shape.push(1);
    } else {
        shape.extend(&model.input.shape);
    }
    let features = b.input(
        "input",
        model.input.loc,
        TensorType {
            shape,
            dtype: model.input.dtype,
        },
    )?;
    b.g.features = features.tensor;
    let mut position = None;
    if decode {
        let op = OpKind::Input(Input {
            name: "position".into(),
            ty: TensorType {
                shape: vec![batch, 1],
                dtype: DType::I32,
            },
        });
        let layer = b.g.node(features.tensor.node()).layer;
        let t = b.g.add(op, &[], layer).map_err(Diagnostic::new)?;
        b.decode = Some(Decode {
            positions,
            position: t,
        });
        position = Some(t);
    }
    for l in &model.layers {
        reject_params(l)?;
    }
    let out = b.scope("", &model.layers, features, model.output.as_ref(), None)?;
    b.g.output = out.tensor;
    b.loss(out)?;
    let trainable: Vec<&str> = (b.g.params.iter())
        .filter(|p| p.trainable)
        .map(|p| p.name.as_str())
        .collect();
    config.check_param_groups(&trainable)?;
    debug_assert_eq!(b.g.verify(), Ok(()));
    Ok((b.g, position))
}

/// The model's input must match the dataset's samples when the dataset's layout is fixed.
fn check_data(config: &Config) -> Result<(), Diagnostic> {
    let Some((shape, _)) = config.data.dataset.known_layout() else {
        return Ok(());
    };
    let input = &config.model.input;
    if input.shape != shape {
        return Err(Diagnostic::new(format!(
            "the model input {} does not match the dataset's samples {}",
            fmt_shape(&input.shape),
            fmt_shape(&shape)
        ))
        .at(input.loc, format!("samples are {}", fmt_shape(&shape)))
        .also(config.loc(&["data", "dataset"]), "dataset chosen here"));
    }
    Ok(())
}

enum Scope<'a> {
    Model,
    Block {
        def: &'a crate::config::model::BlockDef,
        args: &'a IndexMap<String, Value>,
    },
}

impl<'c> Builder<'c> {
    fn input(&mut self, name: &str, loc: Loc, ty: TensorType) -> Result<Sym, Diagnostic> {
        let layer = self.push_layer(name.to_string(), "input", loc)?;
        let op = OpKind::Input(Input {
            name: name.to_string(),
            ty,
        });
        // Only the size check can fail: the batch times the sample is too large.
        let tensor = self.g.add(op, &[], layer).map_err(|e| {
            Diagnostic::new(format!("the {name} batch is too large: {e}"))
                .at(loc, "for this sample shape")
                .note("lower data.batch_size or the sample size")
        })?;
        self.g.layers[layer].output = Some(tensor);
        Ok(Sym {
            tensor,
            name: name.to_string(),
            loc,
        })
    }

    fn push_layer(&mut self, name: String, op: &str, loc: Loc) -> Result<usize, Diagnostic> {
        // Names become parameter names: two layers with one name would share checkpoint keys.
        // Scopes reject duplicates among declared names; this also catches generated names
        // (`<inst>.residual`, an `after` layer named after its op) colliding with declared ones.
        if self.g.layers.len() >= MAX_LAYERS {
            let d = Diagnostic::new(format!(
                "the model expands to more than {MAX_LAYERS} layers"
            ))
            .at(loc, "the layer past the limit")
            .note("check the `repeat` counts and the blocks used inside blocks");
            return Err(self.in_blocks(d));
        }
        if !self.names.insert(name.clone())
            && let Some(other) = self.g.layers.iter().find(|l| l.name == name)
        {
            let d = Diagnostic::new(format!("two layers are named `{name}`"))
                .at(loc, "this layer")
                .also(other.loc, "has the same full name as this one")
                .note("inside a block, `residual` and the `after` layer's op name are taken; rename one of them");
            return Err(self.in_blocks(d));
        }
        let uses = self.expanding.iter().map(|(_, l)| *l).collect();
        self.g.layers.push(Layer {
            name,
            op: op.to_string(),
            loc,
            uses,
            block: self.instances.last().cloned(),
            output: None,
        });
        Ok(self.g.layers.len() - 1)
    }

    /// Adds the "in block ... used here" context to an error raised inside a block.
    /// The innermost few are labels; deeper nesting is one note naming the chain.
    fn in_blocks(&self, mut d: Diagnostic) -> Diagnostic {
        for (name, loc) in self.expanding.iter().rev().take(BLOCK_LABELS) {
            if d.labels.iter().all(|l| l.loc != *loc) {
                d = d.also(*loc, format!("while expanding block `{name}` used here"));
            }
        }
        if self.expanding.len() > BLOCK_LABELS {
            d = d.note(format!("inside blocks {}", self.block_chain()));
        }
        d
    }

    /// The blocks being expanded, outermost first.
    fn block_chain(&self) -> String {
        let names: Vec<String> = self
            .expanding
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect();
        crate::diag::chain(&names)
    }

    /// Builds one scope's layers in dependency order; returns its output.
    fn scope(
        &mut self,
        prefix: &str,
        raws: &[Value],
        input: Sym,
        output: Option<&Named>,
        scope: Option<(&crate::config::model::BlockDef, &IndexMap<String, Value>)>,
    ) -> Result<Sym, Diagnostic> {
        let scope = match scope {
            Some((def, args)) => Scope::Block { def, args },
            None => Scope::Model,
        };
        let mut decls = Vec::with_capacity(raws.len());
        for raw in raws {
            let v = match &scope {
                Scope::Block { def, args } => def.substitute(raw, args),
                Scope::Model => Ok(raw.clone()),
            };
            // A bad argument shows as a bad attribute of the body: show the use site too.
            let decl = v
                .and_then(|v| parse_layer(&v, &parse_op))
                .map_err(|d| self.in_blocks(d))?;
            decls.push(decl);
        }
        // Local names: given, or derived from op (or block) and position.
        let names: Vec<String> = decls
            .iter()
            .enumerate()
            .map(|(i, d)| match (&d.name, &d.what) {
                (Some(n), _) => n.name.clone(),
                (None, What::Op { op, .. }) => format!("{}_{i}", op.name()),
                (None, What::Block(u)) => format!("{}_{i}", u.block.name),
            })
            .collect();
        for (i, d) in decls.iter().enumerate() {
            if let Some(j) = names[..i].iter().position(|n| n == &names[i]) {
                let here = d.name.as_ref().map(|n| n.loc).unwrap_or(d.loc);
                let there = decls[j]
                    .name
                    .as_ref()
                    .map(|n| n.loc)
                    .unwrap_or(decls[j].loc);
                return Err(self.in_blocks(
                    Diagnostic::new(format!("two layers are named `{}`", names[i]))
                        .at(here, "second use of the name")
                        .also(there, "first defined here")
                        .note("layer names must be unique within the model or block"),
                ));
            }
        }
        // Dependencies: index into `names`, or None for the scope's input.
        let mut deps: Vec<Vec<(Option<usize>, Loc)>> = Vec::with_capacity(decls.len());
        for (i, d) in decls.iter().enumerate() {
            let list = match &d.inputs {
                Some(inputs) => inputs
                    .iter()
                    .map(|n| self.resolve(n, &names).map(|r| (r, n.loc)))
                    .collect::<Result<Vec<_>, _>>()?,
                None => vec![(i.checked_sub(1), d.loc)],
            };
            if list.is_empty() {
                return Err(
                    Diagnostic::new("`inputs` is empty").at(d.loc, "name at least one tensor")
                );
            }
            deps.push(list);
        }
        let order = topo_order(&deps).map_err(|cycle| {
            let path: Vec<&str> = cycle.iter().map(|&i| names[i].as_str()).collect();
            let mut d = Diagnostic::new(format!(
                "layers form a cycle: {} -> {}",
                path.join(" -> "),
                path[0]
            ));
            for (k, &i) in cycle.iter().enumerate() {
                let next = cycle[(k + 1) % cycle.len()];
                let loc = deps[next]
                    .iter()
                    .find(|(r, _)| *r == Some(i))
                    .map(|(_, l)| *l)
                    .unwrap_or(decls[next].loc);
                let text = format!("`{}` reads `{}`", names[next], names[i]);
                d = if k == 0 {
                    d.at(loc, text)
                } else {
                    d.also(loc, text)
                };
            }
            self.in_blocks(
                d.note("a layer cannot depend on its own output; remove one of these inputs"),
            )
        })?;
        let mut syms: Vec<Option<Sym>> = vec![None; decls.len()];
        for i in order {
            let inputs: Vec<Sym> = deps[i]
                .iter()
                .map(|(r, _)| match r {
                    Some(j) => syms[*j].clone().expect("dependencies built first"),
                    None => input.clone(),
                })
                .collect();
            let full = if prefix.is_empty() {
                names[i].clone()
            } else {
                format!("{prefix}.{}", names[i])
            };
            let sym = self.layer(full, &decls[i], inputs)?;
            syms[i] = Some(sym);
        }
        let out = match output {
            Some(n) => match self.resolve(n, &names)? {
                Some(j) => syms[j].clone(),
                None => Some(input),
            },
            None => syms.last().cloned().flatten(),
        };
        Ok(out.expect("a scope has at least one layer"))
    }

    /// A tensor name in a scope: `input` (None) or the index of the layer of that name.
    fn resolve(&self, n: &Named, names: &[String]) -> Result<Option<usize>, Diagnostic> {
        if n.name == "input" {
            return Ok(None);
        }
        if let Some(j) = names.iter().position(|m| m == &n.name) {
            return Ok(Some(j));
        }
        let candidates = names.iter().map(String::as_str).chain(["input"]);
        let mut d = Diagnostic::new(format!("unknown tensor `{}`", n.name))
            .at(n.loc, "no layer of this name here");
        d = match did_you_mean(&n.name, candidates) {
            Some(s) => d.note(format!("help: did you mean `{s}`?")),
            None => d.note(format!("tensors here: input, {}", names.join(", "))),
        };
        if n.name.contains('.') {
            d = d.note("inside a block only its own layers and `input` are visible; outside, a block's instances are one tensor named after the block use");
        }
        Err(self.in_blocks(d))
    }

    fn layer(
        &mut self,
        full: String,
        decl: &LayerDecl<LayerOp>,
        inputs: Vec<Sym>,
    ) -> Result<Sym, Diagnostic> {
        match &decl.what {
            What::Op {
                op,
                op_loc,
                attr_locs,
            } => {
                let n = inputs.len();
                let bad_arity = match op.arity() {
                    Arity::One => n != 1,
                    Arity::AtLeastTwo => n < 2,
                };
                if bad_arity {
                    let want = if op.arity() == Arity::One {
                        "exactly one input"
                    } else {
                        "at least two inputs"
                    };
                    let d = Diagnostic::new(format!("`{}` takes {want}, got {n}", op.name()))
                        .at(*op_loc, format!("layer `{full}`"))
                        .note("name the tensors it reads with `inputs = [\"a\", \"b\"]`");
                    return Err(self.in_blocks(d));
                }
                self.lower_at(full, op, *op_loc, attr_locs, &inputs)
            }
            What::Block(u) => self.block(full, u, inputs),
        }
    }

    fn lower(
        &mut self,
        full: String,
        op: &LayerOp,
        loc: Loc,
        inputs: &[Sym],
    ) -> Result<Sym, Diagnostic> {
        self.lower_at(full, op, loc, &[], inputs)
    }

    /// [`Self::lower`] of a declared layer: an error blamed on an attribute
    /// ([`Lower::blame`]) points at its value in `attr_locs`.
    fn lower_at(
        &mut self,
        full: String,
        op: &LayerOp,
        loc: Loc,
        attr_locs: &[(String, Loc)],
        inputs: &[Sym],
    ) -> Result<Sym, Diagnostic> {
        let layer = self.push_layer(full.clone(), op.name(), loc)?;
        let tensors: Vec<TensorId> = inputs.iter().map(|s| s.tensor).collect();
        let mut cx = Lower::new(
            &mut self.g,
            layer,
            &mut self.random_streams,
            self.mode,
            self.decode,
        );
        let lowered = op.lower(&mut cx, &tensors);
        let blamed = cx.blamed();
        match lowered {
            Ok(tensor) => {
                self.g.layers[layer].output = Some(tensor);
                Ok(Sym {
                    tensor,
                    name: full,
                    loc,
                })
            }
            Err(msg) => {
                let d = Diagnostic::new(format!("layer `{full}` ({}): {msg}", op.name()));
                let attr = blamed.and_then(|k| attr_locs.iter().find(|(a, _)| a == k));
                let mut d = match attr {
                    Some((key, at)) => d
                        .at(*at, format!("this `{key}`"))
                        .also(loc, format!("layer `{full}`")),
                    None => d.at(loc, "in this layer"),
                };
                for s in inputs {
                    let shape = fmt_shape(&self.g.ty(s.tensor).shape[1..]);
                    d = d.also(s.loc, format!("`{}` gives {shape}", s.name));
                }
                Err(self.in_blocks(d))
            }
        }
    }

    fn block(&mut self, full: String, u: &BlockUse, inputs: Vec<Sym>) -> Result<Sym, Diagnostic> {
        let model = &self.config.model;
        let Some(def) = model.blocks.get(&u.block.name) else {
            let d = Diagnostic::new(format!("undefined block `{}`", u.block.name))
                .at(u.block.loc, "no block of this name")
                .help_did_you_mean(&u.block.name, model.blocks.keys().map(String::as_str))
                .note("define blocks under [model.blocks.<name>]");
            return Err(self.in_blocks(d));
        };
        if inputs.len() != 1 {
            let d = Diagnostic::new(format!("a block takes one input, got {}", inputs.len()))
                .at(u.block.loc, "this block use");
            return Err(self.in_blocks(d));
        }
        if self.expanding.len() >= MAX_BLOCK_DEPTH {
            let d = Diagnostic::new(format!("blocks nest more than {MAX_BLOCK_DEPTH} deep"))
                .at(u.block.loc, format!("block `{}` used here", def.name.name))
                .note("help: use fewer levels of blocks inside blocks");
            return Err(self.in_blocks(d));
        }
        if self.expanding.iter().any(|(n, _)| n == &def.name.name) {
            let d = Diagnostic::new(format!("block `{}` uses itself", def.name.name))
                .at(u.block.loc, "recursive use")
                .also(def.name.loc, "block defined here");
            return Err(self.in_blocks(d));
        }
        if let Some((count, loc)) = u.repeat
            && count > MAX_LAYERS
        {
            let d = Diagnostic::new(format!(
                "`repeat = {count}` makes more than the {MAX_LAYERS} layers a model may have"
            ))
            .at(loc, "too many");
            return Err(self.in_blocks(d));
        }
        let count = u.repeat.map(|(r, _)| r).unwrap_or(1);
        let mut cur = inputs.into_iter().next().expect("one input");
        for r in 0..count {
            let inst = if u.repeat.is_some() {
                format!("{full}.{r}")
            } else {
                full.clone()
            };
            let args = def.arguments(u, r).map_err(|d| self.in_blocks(d))?;
            self.expanding.push((def.name.name.clone(), u.block.loc));
            self.instances.push(inst.clone());
            let result = self.instance(&inst, def, &args, cur.clone());
            self.instances.pop();
            self.expanding.pop();
            cur = Sym {
                name: inst,
                loc: u.block.loc,
                ..result?
            };
        }
        Ok(cur)
    }

    /// One block instance: body, then the shortcut sum, then `after`.
    fn instance(
        &mut self,
        inst: &str,
        def: &crate::config::model::BlockDef,
        args: &IndexMap<String, Value>,
        input: Sym,
    ) -> Result<Sym, Diagnostic> {
        let body = self.scope(
            inst,
            &def.body,
            input.clone(),
            def.output.as_ref(),
            Some((def, args)),
        )?;
        let mut out = body.clone();
        if let Some(sc) = &def.shortcut {
            let (x, y) = (
                self.g.ty(input.tensor).shape[1..].to_vec(),
                self.g.ty(body.tensor).shape[1..].to_vec(),
            );
            let project = match sc.kind {
                ShortcutKind::Identity => false,
                ShortcutKind::Projection => true,
                ShortcutKind::ProjectionIfShapeChanges => x != y,
            };
            if sc.kind == ShortcutKind::Identity && x != y {
                // Said in terms of the block, not of the `add` the shortcut lowers to.
                let d = Diagnostic::new(format!(
                    "the identity shortcut of block `{}` needs the body to keep the input's shape, but it maps {} to {}",
                    def.name.name,
                    fmt_shape(&x),
                    fmt_shape(&y)
                ))
                .at(sc.loc, "identity shortcut")
                .also(body.loc, format!("`{}` gives {}", body.name, fmt_shape(&y)))
                .also(input.loc, format!("`{}` gives {}", input.name, fmt_shape(&x)))
                .note("help: use shortcut = \"projection_if_shape_changes\" (a 1x1 convolution where the shape changes), or keep the width and stride of the input");
                return Err(self.in_blocks(d));
            }
            let skip = if project {
                self.projection(inst, &sc.name, sc.loc, &input, &x, &y)?
            } else {
                input.clone()
            };
            let add = LayerOp::Add(super::shape_add());
            out = self.lower(format!("{inst}.residual"), &add, sc.loc, &[body, skip])?;
        }
        if let Some(after) = &def.after {
            let v = def.substitute(after, args)?;
            let decl = parse_layer(&v, &parse_op).map_err(|d| self.in_blocks(d))?;
            if let Some(first) = decl.inputs.as_ref().and_then(|i| i.first()) {
                let d = Diagnostic::new(
                    "an `after` layer reads the block's output; it takes no `inputs`",
                )
                .at(first.loc, "remove `inputs`")
                .also(def.name.loc, "block defined here");
                return Err(self.in_blocks(d));
            }
            let local = match (&decl.name, &decl.what) {
                (Some(n), _) => n.name.clone(),
                (None, What::Op { op, .. }) => op.name().to_string(),
                (None, What::Block(u)) => u.block.name.clone(),
            };
            out = self.layer(format!("{inst}.{local}"), &decl, vec![out])?;
        }
        Ok(out)
    }

    /// The projection shortcut: a 1x1 convolution (no bias) and a batchnorm, named
    /// `<name>.0` and `<name>.1` as torchvision names them. Its stride maps the input's
    /// height and width onto the body's.
    fn projection(
        &mut self,
        inst: &str,
        name: &str,
        loc: Loc,
        input: &Sym,
        x: &[usize],
        y: &[usize],
    ) -> Result<Sym, Diagnostic> {
        let stride = |a: usize, b: usize| a.div_ceil(b.max(1));
        let fits = x.len() == 3 && y.len() == 3 && {
            let (sh, sw) = (stride(x[1], y[1]), stride(x[2], y[2]));
            (x[1] - 1) / sh + 1 == y[1] && (x[2] - 1) / sw + 1 == y[2]
        };
        if !fits {
            let d = Diagnostic::new(format!(
                "no 1x1 convolution maps the block input {} onto its output {}",
                fmt_shape(x),
                fmt_shape(y)
            ))
            .at(loc, "projection shortcut")
            .note("a projection needs [channels, height, width] tensors whose sizes differ by a whole stride");
            return Err(self.in_blocks(d));
        }
        let conv = super::conv_spec(y[0], [stride(x[1], y[1]), stride(x[2], y[2])]);
        let c = self.lower(
            format!("{inst}.{name}.0"),
            &conv,
            loc,
            std::slice::from_ref(input),
        )?;
        let bn = super::batchnorm_spec();
        self.lower(format!("{inst}.{name}.1"), &bn, loc, &[c])
    }

    fn loss(&mut self, out: Sym) -> Result<(), Diagnostic> {
        let cfg = &self.config.loss;
        let kind_loc = self.config.loc(&["loss", "kind"]);
        let sample = self.g.ty(out.tensor).shape[1..].to_vec();
        let batch = self.g.batch;
        let (labels_ty, op) = match cfg.kind {
            LossKind::CrossEntropy => {
                let classes = self
                    .config
                    .data
                    .dataset
                    .known_layout()
                    .map(|(_, c)| c)
                    .or(self.config.data.classes.map(|c| c.0));
                // [classes] per sample, or [positions.., classes] (a sequence: every position
                // is a row of the loss).
                let ok_rank = matches!(sample.len(), 1 | 2);
                let last = sample.last().copied();
                if !ok_rank || classes.is_some_and(|c| Some(c) != last) {
                    let want = match classes {
                        Some(c) => format!("[{c}] (one logit per class)"),
                        None => "[classes]".into(),
                    };
                    return Err(Diagnostic::new(format!(
                        "cross_entropy expects the model output to be {want}, but `{}` gives {}",
                        out.name,
                        fmt_shape(&sample)
                    ))
                    .at(out.loc, format!("gives {}", fmt_shape(&sample)))
                    .also(kind_loc, "loss chosen here")
                    .note(if ok_rank {
                        "set the last layer's `out` to the number of classes"
                    } else {
                        "add a flatten or global_avg_pool and a linear layer before the loss"
                    }));
                }
                let op = OpKind::CrossEntropy(CrossEntropy {
                    label_smoothing: cfg.label_smoothing.0,
                    ignore_index: cfg.ignore_index,
                });
                let mut shape = vec![batch];
                shape.extend_from_slice(&sample[..sample.len() - 1]);
                (
                    TensorType {
                        shape,
                        dtype: DType::I32,
                    },
                    op,
                )
            }
            LossKind::Mse => (self.g.ty(out.tensor).clone(), OpKind::Mse(Mse)),
        };
        let labels = self.input("labels", kind_loc, labels_ty)?;
        self.g.labels = labels.tensor;
        let layer = self.push_layer("loss".into(), op.primitive().name(), kind_loc)?;
        let loss = self
            .g
            .add(op, &[out.tensor, labels.tensor], layer)
            .map_err(|e| Diagnostic::new(format!("loss: {e}")).at(kind_loc, "here"))?;
        self.g.layers[layer].output = Some(loss);
        self.g.loss = loss;
        Ok(())
    }
}

/// Kahn's algorithm, ready layers taken in declaration order (deterministic). On a cycle,
/// returns one cycle as indices in dependency order.
fn topo_order(deps: &[Vec<(Option<usize>, Loc)>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps
        .iter()
        .map(|d| d.iter().filter(|(r, _)| r.is_some()).count())
        .collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for (r, _) in d {
            if let Some(j) = r {
                users[*j].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            waiting[u] -= 1;
            if waiting[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk dependencies among the unfinished until a layer repeats: that loop is a cycle.
    let mut path: Vec<usize> = Vec::new();
    let mut cur = (0..n)
        .find(|&i| waiting[i] > 0)
        .expect("some layer is blocked");
    loop {
        if let Some(pos) = path.iter().position(|&p| p == cur) {
            let mut cycle = path[pos..].to_vec();
            cycle.reverse();
            return Err(cycle);
        }
        path.push(cur);
        cur = deps[cur]
            .iter()
            .filter_map(|(r, _)| *r)
            .find(|&j| waiting[j] > 0)
            .expect("a blocked layer waits on another");
    }
}
