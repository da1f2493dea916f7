//! Our own parsers for the ONNX-ML tree ensembles, registered over tract's.
//!
//! tract 0.23 gets two things wrong with what skl2onnx exports for trees, and lacks a third:
//!
//! - `TreeEnsembleClassifier` with one score column (every binary forest, tree and boosting model:
//!   its leaves all write class 0, the score of the second class): tract expands the column into
//!   the two probabilities but takes the label's argmax over the one column, so **every label is
//!   the first class** while the probabilities favour the second. A silent wrong answer.
//! - The same binary layout with `base_values` of length 1 (a binary GradientBoostingClassifier's
//!   prior log-odds) is refused at load ("attribute 'base_values': expected length").
//! - `TreeEnsembleRegressor` is not registered at all: no tree regressor loads.
//!
//! The parsers read the node's attributes into tract-onnx-opl's packed `TreeEnsemble` layout, and
//! [`Forest`] evaluates it: tract's own evaluation walks, for every tree, past every leaf of the
//! trees before it (an `ndarray` axis iterator's `skip`, which has no `nth`), so a 100-tree forest
//! took 5.5 ms of CPU a row (`bench/forest.sh`, docs/performance.md), and it decodes a
//! `BRANCH_GTE` node as a leaf (its comparison codes stop at 5). The rest is wired in ONNX's terms (ONNX-ML operator
//! docs, `ai.onnx.ml.TreeEnsembleClassifier`/`TreeEnsembleRegressor`, opset 1 and 3; and
//! onnxruntime's binary case: one score column `s` means probabilities `[1 - s, s]`). The label is
//! always the class label at the argmax of the probabilities the node outputs, as scikit-learn's
//! `predict` is `classes_[argmax(predict_proba)]`. What the parsers do not know how to run
//! (PROBIT, SOFTMAX_ZERO, a binary layout with two base values, tensor-valued attributes of
//! ai.onnx.ml opset 5) is refused at load with the attribute named.

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::array::TypedConcat;
use tract_onnx_opl::ml::tree::{Aggregate, Cmp, TreeEnsemble, TreeEnsembleData};

/// An ONNX parser with our tree-ensemble ops in place of tract's.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    register(&mut onnx.op_register);
    onnx
}

fn register(reg: &mut OnnxOpRegister) {
    reg.insert("TreeEnsembleClassifier", tree_classifier);
    reg.insert("TreeEnsembleRegressor", tree_regressor);
}

/// What is applied to the aggregated scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PostTransform {
    None,
    Softmax,
    Logistic,
}

fn post_transform(node: &NodeProto) -> TractResult<PostTransform> {
    match node
        .get_attr_opt::<&str>("post_transform")?
        .unwrap_or("NONE")
    {
        "NONE" => Ok(PostTransform::None),
        "SOFTMAX" => Ok(PostTransform::Softmax),
        "LOGISTIC" => Ok(PostTransform::Logistic),
        other => bail!("{}: post_transform {other} is not supported", node.name),
    }
}

/// Refuses the tensor-valued attributes that ai.onnx.ml opset 3 added (`*_as_tensor`): they carry
/// double-precision values this parser would otherwise silently ignore.
fn refuse_tensor_attributes(node: &NodeProto) -> TractResult<()> {
    if let Some(attr) = node
        .attribute
        .iter()
        .find(|a| a.name.ends_with("_as_tensor"))
    {
        bail!(
            "{}: attribute {} (double-precision tree values) is not supported",
            node.name,
            attr.name
        );
    }
    Ok(())
}

fn vec_attr<'a, T>(node: &'a NodeProto, name: &str, len: usize) -> TractResult<Vec<T>>
where
    T: tract_onnx::pb_helpers::AttrTVecType<'a>,
{
    let found: Vec<T> = node.get_attr_vec(name)?;
    if found.len() != len {
        bail!(
            "{}: attribute {name} has {} values, expected {len}",
            node.name,
            found.len()
        );
    }
    Ok(found)
}

fn node_mode(node: &NodeProto, mode: &str) -> TractResult<Option<Cmp>> {
    Ok(Some(match mode {
        "LEAF" => return Ok(None),
        "BRANCH_LEQ" => Cmp::LessEqual,
        "BRANCH_LT" => Cmp::Less,
        "BRANCH_GTE" => Cmp::GreaterEqual,
        "BRANCH_GT" => Cmp::Greater,
        "BRANCH_EQ" => Cmp::Equal,
        "BRANCH_NEQ" => Cmp::NotEqual,
        other => bail!("{}: node mode {other} is not supported", node.name),
    }))
}

/// The trees of a classifier (`class_*` leaves, summed) or a regressor (`target_*` leaves, with
/// its `aggregate_function`), with `n_columns` score columns, in tract-onnx-opl's packed layout:
/// per tree the row of its root; per node five u32 (feature, true row, false row, threshold bits,
/// comparison | 0x100 when a missing value goes the true way), a leaf's first two being the range
/// of its (column, weight) pairs.
fn ensemble(node: &NodeProto, leaf: &str, n_columns: usize) -> TractResult<TreeEnsemble> {
    refuse_tensor_attributes(node)?;
    let n_nodes = node.get_attr_slice::<i64>("nodes_featureids")?.len();
    if n_nodes == 0 {
        bail!("{}: no tree nodes", node.name);
    }
    let tree_ids = vec_attr::<usize>(node, "nodes_treeids", n_nodes)?;
    let node_ids = vec_attr::<usize>(node, "nodes_nodeids", n_nodes)?;
    let feature_ids = vec_attr::<usize>(node, "nodes_featureids", n_nodes)?;
    let true_ids = vec_attr::<usize>(node, "nodes_truenodeids", n_nodes)?;
    let false_ids = vec_attr::<usize>(node, "nodes_falsenodeids", n_nodes)?;
    let thresholds = vec_attr::<f32>(node, "nodes_values", n_nodes)?;
    let modes = vec_attr::<&str>(node, "nodes_modes", n_nodes)?
        .into_iter()
        .map(|m| node_mode(node, m))
        .collect::<TractResult<Vec<_>>>()?;
    let nan_true = match node.get_attr_opt_vec::<i64>("nodes_missing_value_tracks_true")? {
        Some(v) if v.len() == n_nodes => v.into_iter().map(|b| b != 0).collect(),
        Some(v) => bail!(
            "{}: nodes_missing_value_tracks_true has {} values, expected {n_nodes}",
            node.name,
            v.len()
        ),
        None => vec![false; n_nodes],
    };

    let n_leaves = node.get_attr_slice::<i64>(&format!("{leaf}_ids"))?.len();
    let leaf_columns = vec_attr::<usize>(node, &format!("{leaf}_ids"), n_leaves)?;
    let leaf_trees = vec_attr::<usize>(node, &format!("{leaf}_treeids"), n_leaves)?;
    let leaf_nodes = vec_attr::<usize>(node, &format!("{leaf}_nodeids"), n_leaves)?;
    let leaf_weights = vec_attr::<f32>(node, &format!("{leaf}_weights"), n_leaves)?;
    if let Some(bad) = leaf_columns.iter().find(|c| **c >= n_columns) {
        bail!(
            "{}: a leaf writes score column {bad}, but there are {n_columns}",
            node.name
        );
    }

    // Nodes and leaves sorted by (tree, node id); each tree's node ids index its own nodes.
    let mut order: Vec<usize> = (0..n_nodes).collect();
    order.sort_by_key(|&i| (tree_ids[i], node_ids[i]));
    let mut leaf_order: Vec<usize> = (0..n_leaves).collect();
    leaf_order.sort_by_key(|&i| (leaf_trees[i], leaf_nodes[i]));

    let mut roots: Vec<u32> = Vec::new();
    let mut tree_sizes: Vec<usize> = Vec::new();
    let mut packed: Vec<u32> = Vec::with_capacity(n_nodes * 5);
    let mut leaves: Vec<u32> = Vec::with_capacity(n_leaves * 2);
    let mut next_leaf = leaf_order.iter().peekable();
    let mut current: Option<usize> = None;
    for (row, &i) in order.iter().enumerate() {
        if current != Some(tree_ids[i]) {
            current = Some(tree_ids[i]);
            roots.push(row as u32);
            tree_sizes.push(0);
        }
        *tree_sizes.last_mut().expect("pushed above") += 1;
        let root = *roots.last().expect("pushed above");
        match modes[i] {
            Some(cmp) => {
                packed.extend([
                    feature_ids[i] as u32,
                    root + true_ids[i] as u32,
                    root + false_ids[i] as u32,
                    thresholds[i].to_bits(),
                    (0x100 * nan_true[i] as u32) | cmp as u32,
                ]);
            }
            None => {
                let start = leaves.len() as u32 / 2;
                while let Some(&&l) = next_leaf.peek() {
                    if (leaf_trees[l], leaf_nodes[l]) != (tree_ids[i], node_ids[i]) {
                        break;
                    }
                    leaves.extend([leaf_columns[l] as u32, leaf_weights[l].to_bits()]);
                    next_leaf.next();
                }
                packed.extend([start, leaves.len() as u32 / 2, 0, 0, 0]);
            }
        }
    }
    if next_leaf.next().is_some() {
        bail!(
            "{}: leaf weights name a (tree, node) that is not a leaf",
            node.name
        );
    }
    // A child must be a node of its own tree: node ids are dense from 0 within each tree.
    for (t, &root) in roots.iter().enumerate() {
        let size = tree_sizes[t] as u32;
        for row in root..root + size {
            let r = row as usize * 5;
            let is_branch = packed[r + 4] & 0xff != 0;
            if is_branch && (packed[r + 1] >= root + size || packed[r + 2] >= root + size) {
                bail!(
                    "{}: tree {t} has a child outside the tree (node ids must be 0..n within a tree)",
                    node.name
                );
            }
        }
    }

    let aggregate = if leaf == "class" {
        Aggregate::Sum
    } else {
        match node
            .get_attr_opt::<&str>("aggregate_function")?
            .unwrap_or("SUM")
        {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Avg,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => bail!("{}: aggregate_function {other} is not supported", node.name),
        }
    };
    let max_feature = feature_ids.iter().copied().max().unwrap_or(0);
    let n_packed = packed.len() / 5;
    let data = TreeEnsembleData {
        trees: rctensor1(&roots),
        nodes: tensor1(&packed)
            .into_shape(&[n_packed, 5])?
            .into_arc_tensor(),
        leaves: tensor1(&leaves)
            .into_shape(&[leaves.len() / 2, 2])?
            .into_arc_tensor(),
    };
    TreeEnsemble::build(data, max_feature, n_columns, aggregate)
}

/// `base_values` as a `[1, len]` row added to every row's scores.
fn base_values(node: &NodeProto, len: usize) -> TractResult<Option<Arc<Tensor>>> {
    match node.get_attr_opt_vec::<f32>("base_values")? {
        None => Ok(None),
        Some(v) if v.len() == len => Ok(Some(tensor1(&v).into_shape(&[1, len])?.into_arc_tensor())),
        Some(v) => bail!(
            "{}: base_values has {} values, expected {len}",
            node.name,
            v.len()
        ),
    }
}

/// `TreeEnsembleClassifier`: outputs the label and the probabilities.
#[derive(Debug, Clone, Hash)]
struct TreeClassifier {
    ensemble: TreeEnsemble,
    labels: Arc<Tensor>,
    base: Option<Arc<Tensor>>,
    transform: PostTransform,
    /// One score column (the second class's) for two classes: probabilities are `[1 - s, s]`.
    binary: bool,
}

fn tree_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ints = node.get_attr_opt_slice::<i64>("classlabels_int64s")?;
    let strings = node.get_attr_opt_tvec::<&str>("classlabels_strings")?;
    let labels = match (ints, strings) {
        (Some(i), None) if !i.is_empty() => rctensor1(i),
        (None, Some(s)) if !s.is_empty() => {
            rctensor1(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        }
        _ => bail!(
            "{}: exactly one of classlabels_int64s and classlabels_strings must name the classes",
            node.name
        ),
    };
    let n_classes = labels.len();
    let leaf_columns = node.get_attr_opt_slice::<i64>("class_ids")?.unwrap_or(&[]);
    let binary = n_classes == 2 && leaf_columns.iter().all(|c| *c == 0);
    let n_columns = if binary { 1 } else { n_classes };
    let ensemble = ensemble(node, "class", n_columns)?;
    let base = base_values(node, n_columns)?;
    let transform = post_transform(node)?;
    if binary && transform == PostTransform::Softmax {
        bail!(
            "{}: SOFTMAX over a single binary score column is not supported",
            node.name
        );
    }
    Ok((
        expand(TreeClassifier {
            ensemble,
            labels,
            base,
            transform,
            binary,
        }),
        vec![],
    ))
}

impl Expansion for TreeClassifier {
    fn name(&self) -> StaticName {
        "TreeEnsembleClassifier".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, self.labels.datum_type())?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].datum_type, DatumType::F32)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], self.labels.len().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let scores = wire_scores(
            prefix,
            model,
            inputs,
            &self.ensemble,
            self.base.clone(),
            self.transform,
        )?;
        let probabilities = if self.binary {
            let one = model.add_const(format!("{prefix}.one"), rctensor2(&[[1f32]]))?;
            let other = model.wire_node(
                format!("{prefix}.complement"),
                tract_onnx::tract_core::ops::math::sub(),
                &[one, scores],
            )?[0];
            model.wire_node(
                format!("{prefix}.binary"),
                TypedConcat::new(1),
                &[other, scores],
            )?[0]
        } else {
            scores
        };
        let label = wire_label(prefix, model, probabilities, &self.labels)?;
        Ok(tvec!(label, probabilities))
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }
}

/// The ensemble's score columns, plus the base values, through the post-transform.
fn wire_scores(
    prefix: &str,
    model: &mut TypedModel,
    inputs: &[OutletId],
    ensemble: &TreeEnsemble,
    base: Option<Arc<Tensor>>,
    transform: PostTransform,
) -> TractResult<OutletId> {
    let mut scores = model.wire_node(
        format!("{prefix}.trees"),
        Forest {
            ensemble: ensemble.clone(),
        },
        inputs,
    )?[0];
    if let Some(base) = base {
        let base = model.add_const(format!("{prefix}.base_values"), base)?;
        scores = model.wire_node(
            format!("{prefix}.add_base"),
            tract_onnx::tract_core::ops::math::add(),
            &[scores, base],
        )?[0];
    }
    Ok(match transform {
        PostTransform::None => scores,
        PostTransform::Logistic => model.wire_node(
            format!("{prefix}.logistic"),
            tract_onnx::tract_core::ops::nn::sigmoid(),
            &[scores],
        )?[0],
        PostTransform::Softmax => tract_onnx::tract_hir::ops::nn::LayerSoftmax::new(1, false)
            .wire(&format!("{prefix}.softmax"), model, &[scores])?[0],
    })
}

/// `labels[argmax(probabilities, axis 1)]`, one per row (the first class on a tie, as numpy).
fn wire_label(
    prefix: &str,
    model: &mut TypedModel,
    probabilities: OutletId,
    labels: &Arc<Tensor>,
) -> TractResult<OutletId> {
    // Never used (the argmax is always a class index), but the lookup wants one of the labels' type.
    let fallback = if labels.datum_type() == String::datum_type() {
        rctensor0(String::new())
    } else {
        Tensor::zero_dt(labels.datum_type(), &[])?.into_arc_tensor()
    };
    let winner = model.wire_node(
        format!("{prefix}.argmax"),
        Reduce::new(tvec!(1), Reducer::ArgMax(false)),
        &[probabilities],
    )?;
    let winner = model.wire_node(format!("{prefix}.argmax_row"), AxisOp::Rm(1), &winner)?;
    let winner = model.wire_node(
        format!("{prefix}.argmax_i32"),
        tract_onnx::tract_core::ops::cast::cast(i32::datum_type()),
        &winner,
    )?;
    Ok(model.wire_node(
        format!("{prefix}.label"),
        tract_onnx_opl::ml::DirectLookup::new(labels.clone(), fallback)?,
        &winner,
    )?[0])
}

/// `TreeEnsembleRegressor`: outputs `float32[N, n_targets]`.
#[derive(Debug, Clone, Hash)]
struct TreeRegressor {
    ensemble: TreeEnsemble,
    base: Option<Arc<Tensor>>,
    transform: PostTransform,
}

fn tree_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let n_targets: usize = node.get_attr("n_targets")?;
    if n_targets == 0 {
        bail!("{}: n_targets is 0", node.name);
    }
    let ensemble = ensemble(node, "target", n_targets)?;
    let base = base_values(node, n_targets)?;
    let transform = post_transform(node)?;
    Ok((
        expand(TreeRegressor {
            ensemble,
            base,
            transform,
        }),
        vec![],
    ))
}

impl Expansion for TreeRegressor {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.ensemble.n_classes().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        Ok(tvec!(wire_scores(
            prefix,
            model,
            inputs,
            &self.ensemble,
            self.base.clone(),
            self.transform,
        )?))
    }
}

/// The score columns of a packed tree ensemble (`ensemble`'s layout), one row of input at a time:
/// each tree walked from its root to its leaf, the leaf's (column, weight) pairs read from their
/// own range, aggregated as the node says (`AVERAGE` divides by the pairs a column got, as tract
/// does; `MIN`/`MAX` start from 0, as tract's do).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Forest {
    ensemble: TreeEnsemble,
}

impl Op for Forest {
    fn name(&self) -> StaticName {
        "Forest".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Forest {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input = input.cast_to::<f32>()?;
        let x = input
            .to_plain_array_view::<f32>()?
            .into_dimensionality::<tract_ndarray::Ix2>()?;
        let (n, n_features) = x.dim();
        let e = &self.ensemble;
        if n_features <= e.max_used_feature {
            bail!(
                "the trees read feature {}, the input has {n_features}",
                e.max_used_feature
            );
        }
        let trees = e.data.trees.try_as_plain_ram()?.as_slice::<u32>()?;
        let nodes = e.data.nodes.try_as_plain_ram()?.as_slice::<u32>()?;
        let leaves = e.data.leaves.try_as_plain_ram()?.as_slice::<u32>()?;
        let columns = e.n_classes;
        let mut out = vec![0f32; n * columns];
        let mut counts = vec![0u32; columns];
        let mut row = vec![0f32; n_features];
        for (i, scores) in out.chunks_exact_mut(columns).enumerate() {
            for (v, x) in row.iter_mut().zip(x.row(i)) {
                *v = *x;
            }
            counts.fill(0);
            for &root in trees {
                let mut id = root as usize;
                let (start, end) = loop {
                    let node = &nodes[id * 5..id * 5 + 5];
                    let cmp = node[4] & 0xff;
                    if cmp == 0 {
                        break (node[0] as usize, node[1] as usize);
                    }
                    let (v, t) = (row[node[0] as usize], f32::from_bits(node[3]));
                    let go_true = if v.is_nan() {
                        node[4] & 0x100 != 0
                    } else {
                        match cmp {
                            c if c == Cmp::Equal as u32 => v == t,
                            c if c == Cmp::NotEqual as u32 => v != t,
                            c if c == Cmp::Less as u32 => v < t,
                            c if c == Cmp::Greater as u32 => v > t,
                            c if c == Cmp::LessEqual as u32 => v <= t,
                            c if c == Cmp::GreaterEqual as u32 => v >= t,
                            other => bail!("node {id}: comparison code {other}"),
                        }
                    };
                    id = if go_true { node[1] } else { node[2] } as usize;
                };
                for pair in leaves[start * 2..end * 2].chunks_exact(2) {
                    let (column, weight) = (pair[0] as usize, f32::from_bits(pair[1]));
                    let score = &mut scores[column];
                    match e.aggregate_fn {
                        Aggregate::Sum | Aggregate::Avg => *score += weight,
                        Aggregate::Max => *score = score.max(weight),
                        Aggregate::Min => *score = score.min(weight),
                    }
                    counts[column] += 1;
                }
            }
            if e.aggregate_fn == Aggregate::Avg {
                for (score, &count) in scores.iter_mut().zip(&counts) {
                    if count > 1 {
                        *score /= count as f32;
                    }
                }
            }
        }
        Ok(tvec!(
            Tensor::from_shape(&[n, columns], &out)?.into_tvalue()
        ))
    }
}

impl TypedOp for Forest {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = &inputs[0].shape[0];
        Ok(tvec!(f32::fact(&[
            n.clone(),
            self.ensemble.n_classes().into()
        ])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tree per comparison: `x0 >= 1` (tract decodes that code as a leaf) and `x0 < 1`, each
    /// leaf writing one weight to column 0; averaged over the two trees.
    fn forest(aggregate: Aggregate) -> Forest {
        let branch = |cmp: Cmp, root: u32| [0, root + 1, root + 2, 1f32.to_bits(), cmp as u32];
        let leaf = |i: u32| [i, i + 1, 0, 0, 0];
        let nodes: Vec<u32> = [
            branch(Cmp::GreaterEqual, 0),
            leaf(0),
            leaf(1),
            branch(Cmp::Less, 3),
            leaf(2),
            leaf(3),
        ]
        .concat();
        let weights = [10f32, 20., 30., 40.];
        let leaves: Vec<u32> = weights.iter().flat_map(|w| [0, w.to_bits()]).collect();
        let data = TreeEnsembleData {
            trees: rctensor1(&[0u32, 3]),
            nodes: tensor1(&nodes)
                .into_shape(&[6, 5])
                .unwrap()
                .into_arc_tensor(),
            leaves: tensor1(&leaves)
                .into_shape(&[4, 2])
                .unwrap()
                .into_arc_tensor(),
        };
        Forest {
            ensemble: TreeEnsemble::build(data, 0, 1, aggregate).unwrap(),
        }
    }

    fn scores(f: &Forest, rows: &[f32]) -> Vec<f32> {
        let input = tensor1(rows).into_shape(&[rows.len(), 1]).unwrap();
        let out = f
            .eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue()))
            .unwrap();
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn each_comparison_takes_its_branch_and_leaves_aggregate() {
        // x = 2: the first tree's true leaf (10), the second's false leaf (40); x = 0: 20 and 30.
        assert_eq!(scores(&forest(Aggregate::Sum), &[2.0, 0.0]), [50.0, 50.0]);
        assert_eq!(scores(&forest(Aggregate::Avg), &[2.0, 1.0]), [25.0, 25.0]);
        assert_eq!(scores(&forest(Aggregate::Max), &[0.0]), [30.0]);
        // A missing value goes the false way unless the node says otherwise.
        assert_eq!(scores(&forest(Aggregate::Sum), &[f32::NAN]), [60.0]);
    }
}
