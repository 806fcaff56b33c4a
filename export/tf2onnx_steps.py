"""The two tf2onnx steps of `export.onnx`, each run in its own short child process by that exporter
(`export.onnx.split_commands`: `python -c` calling `main` with these arguments; a library, not a command):

    grappler FROZEN.pb INPUT OUTPUT OPTIMIZED.pb
    convert OPTIMIZED.pb MODEL.onnx OPSET

`grappler` is what `python -m tf2onnx.convert --graphdef` does first (tf2onnx.tf_loader.from_graphdef: the
graph frozen again, TF's grappler pass `tf_optimize`), on the frozen graph with its weights as placeholders
(`stub_constants`); it writes the optimised GraphDef (and its input/output names to OPTIMIZED.pb.json).
`convert` is the rest of that command (tf2onnx.convert's _convert_common: import the GraphDef,
`process_tf_graph`, tf2onnx's optimizers, `make_model`, save) once the weights are put back
(`restore_constants`), with its input INPUT renamed `clip` and OUTPUT `logits`.

Why two processes instead of one tf2onnx command (docs/DEPLOY.md, Export memory): grappler copies every weight
many times, and in one process its buffers, the GraphDef and the TF graph it was imported into stay resident
while tf2onnx builds and optimises its ONNX graph. Here grappler sees no weights, each step ends with its
process, and `convert` drops the GraphDef once it is imported and the TF graph once it is converted. Both
stay children of the exporter because grappler can abort its process (a failed CHECK), which must end as a
clear error there.

Only TensorFlow and tf2onnx are imported (not Keras or this project's models): every import is resident memory.
"""

import json
import os
import sys

# export.onnx runs both steps with pure-Python protobuf (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python): with
# the upb backend every rewrite of a node's attributes by tf2onnx's optimizers stays in the node's arena until
# the graph is gone (one copy of the weights per pass; see _convert there).
INPUT_NAME = "clip"
OUTPUT_NAME = "logits"


# Constants at least this large (the weights) go through grappler as Placeholders (see `stub_constants`).
STUB_BYTES = 16 * 1024


def names_path(optimized_path):
    """The JSON file beside OPTIMIZED.pb: {"inputs", "outputs", "constants" (FROZEN.pb), "stubbed" (names)}."""
    return optimized_path + ".json"


def _read_graph_def(path):
    from tf2onnx import tf_loader

    graph_def = tf_loader.tf_graphdef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    return graph_def


def stub_constants(graph_def, min_bytes=STUB_BYTES):
    """Turns every Const of at least `min_bytes` (tensor_content) into a Placeholder of its dtype and shape,
    same name, in place; returns the names.

    Grappler copies each constant many times over (cost_a_r101: +2.1 GB peak for its 0.2 GB of weights in
    tf_optimize; docs/DEPLOY.md, Export memory), while what it folds for tf2onnx are shapes and small
    constants. Weights as placeholders of the same shape keep every shape it infers; nothing computed from a
    weight is folded here then, which tf2onnx's own constant folding (with TF) and its ONNX optimizers do.
    """
    stubbed = []
    for node in graph_def.node:
        if node.op != "Const" or len(node.attr["value"].tensor.tensor_content) < min_bytes:
            continue
        dtype, shape = node.attr["dtype"].type, node.attr["value"].tensor.tensor_shape
        shape_copy = type(shape)()
        shape_copy.CopyFrom(shape)
        node.op = "Placeholder"
        node.ClearField("attr")
        node.attr["dtype"].type = dtype
        node.attr["shape"].shape.CopyFrom(shape_copy)
        stubbed.append(node.name)
    return stubbed


def restore_constants(graph_def, frozen, stubbed):
    """Puts the Const nodes named `stubbed` of the GraphDef `frozen` back in place of their placeholders in
    `graph_def` (in place). ValueError if grappler changed one into anything but the same placeholder."""
    originals = {node.name: node for node in frozen.node if node.name in stubbed}
    for node in graph_def.node:
        if node.name in originals:
            if node.op != "Placeholder" or node.input:
                raise ValueError(f"Grappler rewrote the stubbed constant {node.name!r} into a {node.op}.")
            node.CopyFrom(originals[node.name])


def grappler(frozen_path, input_name, output_name, optimized_path, min_bytes=STUB_BYTES):
    """tf2onnx's --graphdef loading (freeze, `tf_optimize`) on `frozen_path`, its constants of at least
    `min_bytes` stubbed (`stub_constants`); writes `optimized_path` and its names file."""
    from tf2onnx import tf_loader

    graph_def = _read_graph_def(frozen_path)
    stubbed = stub_constants(graph_def, min_bytes)
    stub_path = optimized_path + ".stubbed.pb"
    with open(stub_path, "wb") as f:
        f.write(graph_def.SerializeToString())
    del graph_def
    graph_def, inputs, outputs = tf_loader.from_graphdef(stub_path, [input_name], [output_name])
    os.remove(stub_path)
    with open(optimized_path, "wb") as f:
        f.write(graph_def.SerializeToString())
    with open(names_path(optimized_path), "w", encoding="utf-8") as f:
        json.dump({"inputs": inputs, "outputs": outputs, "constants": frozen_path, "stubbed": stubbed}, f)


def convert(optimized_path, onnx_path, opset):
    """tf2onnx's conversion of the GraphDef `grappler` wrote (its constants put back, grappler not run
    again) to `onnx_path`.

    The same calls as tf2onnx.convert's _convert_common for a GraphDef, with tf2onnx's optimizers not catching
    errors (a failing pass fails the conversion; tf2onnx's default deep-copies the whole graph, weights
    included, before every pass to restore it).
    """
    import tensorflow as tf
    from tf2onnx import optimizer, tfonnx, utils

    with open(names_path(optimized_path), encoding="utf-8") as f:
        names = json.load(f)
    inputs, outputs = names["inputs"], names["outputs"]
    graph_def = _read_graph_def(optimized_path)
    if names["stubbed"]:
        frozen = _read_graph_def(names["constants"])
        restore_constants(graph_def, frozen, set(names["stubbed"]))
        del frozen
    with tf.device("/cpu:0"):
        with tf.Graph().as_default() as tf_graph:
            tf.import_graph_def(graph_def, name="")
            del graph_def  # the TF graph holds the constants now
            graph = tfonnx.process_tf_graph(
                tf_graph,
                opset=opset,
                input_names=inputs,
                output_names=outputs,
                tensors_to_rename={inputs[0]: INPUT_NAME, outputs[0]: OUTPUT_NAME},
            )
        del tf_graph  # tf2onnx's graph holds its own copies of the constants
        graph = optimizer.optimize_graph(graph, catch_errors=False)
        model_proto = graph.make_model(f"converted from {optimized_path}")
    del graph
    utils.save_protobuf(onnx_path, model_proto)


def main(argv):
    """Runs one step: argv = [program, "grappler", FROZEN.pb, INPUT, OUTPUT, OPTIMIZED.pb] or
    [program, "convert", OPTIMIZED.pb, MODEL.onnx, OPSET]."""
    from tf2onnx import logging

    # As `python -m tf2onnx.convert` logs (export.onnx reads " - ERROR - " lines as a failed conversion).
    logging.basicConfig(level=logging.get_verbosity_level(None))
    if len(argv) == 6 and argv[1] == "grappler":
        grappler(*argv[2:])
    elif len(argv) == 5 and argv[1] == "convert":
        convert(argv[2], argv[3], int(argv[4]))
    else:
        sys.exit(
            "usage: tf2onnx_steps grappler FROZEN.pb INPUT OUTPUT OPTIMIZED.pb | "
            f"convert OPTIMIZED.pb MODEL.onnx OPSET. Received: {argv[1:]}"
        )
