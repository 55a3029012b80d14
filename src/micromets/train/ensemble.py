"""A seed ensemble as one ONNX graph: the lesion verifier of a detector (issue 14).

Models of one recipe trained with different seeds disagree most on the tissue none of them saw: on the bench's
stroma-rich negative nodes three seeds of the tissue-class recipe left 4, 1 and 16 false lesions, and no seed was
best on every source. Averaging their probabilities is the standard cure for that variance (Lakshminarayanan et
al. 2017, "Simple and scalable predictive uncertainty estimation using deep ensembles", NeurIPS). Running every
member over every tissue patch would multiply the inference time by their number, so the ensemble is used where
it decides something: a lesion that the detector confirms is confirmed again by the ensemble
(:func:`micromets.analyze.confirmation`); the heatmap stays one network.

:func:`ensemble_onnx` joins the members' graphs (float or INT8, same input) under one input and outputs the mean
of their softmax: N × classes probabilities (card ``output: probabilities``). Needs ``onnx`` (the ``train``
extra); the result runs on onnxruntime alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: file name of the verifier graph inside a model folder (card ``verifier.file``)
VERIFIER_FILE = "verifier.onnx"


def ensemble_onnx(member_paths: list[str | Path], out_path: str | Path) -> Path:
    """Write one ONNX graph whose output ``probabilities`` is the mean softmax (over axis 1) of the member graphs
    ``member_paths`` (each: one input of the same shape, first output N × classes logits). Node, tensor and
    initializer names are prefixed per member (``m0_``, ``m1_``, …) so the graphs cannot collide."""
    import onnx
    from onnx import compose, helper

    members = [onnx.load(str(p)) for p in member_paths]
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    input_name = members[0].graph.input[0].name
    nodes, initializers, value_info, probs = [], [], [], []
    for k, model in enumerate(members):
        prefixed = compose.add_prefix(model, f"m{k}_")
        graph = prefixed.graph
        own_input, logits = graph.input[0].name, graph.output[0].name
        for node in graph.node:
            node.input[:] = [input_name if name == own_input else name for name in node.input]
            nodes.append(node)
        initializers += list(graph.initializer)
        value_info += list(graph.value_info)
        probs.append(f"m{k}_probabilities")
        nodes.append(helper.make_node("Softmax", [logits], [probs[-1]], axis=1, name=f"m{k}_softmax"))
    nodes.append(helper.make_node("Sum", probs, ["sum_probabilities"], name="sum"))
    initializers.append(onnx.numpy_helper.from_array(np.array(1.0 / len(members), np.float32), "inverse_n"))
    nodes.append(helper.make_node("Mul", ["sum_probabilities", "inverse_n"], ["probabilities"], name="mean"))
    first = members[0].graph
    n_classes = first.output[0].type.tensor_type.shape.dim[1].dim_value
    output = helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["n", n_classes or None])
    graph = helper.make_graph(nodes, "seed_ensemble", [first.input[0]], [output], initializers, value_info=value_info)
    opsets = {}
    for model in members:
        for op in model.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name="micromets.train.ensemble")
    model.ir_version = max(m.ir_version for m in members)
    onnx.checker.check_model(model)
    out_path = Path(out_path)
    onnx.save(model, str(out_path))
    return out_path
