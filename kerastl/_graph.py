"""The operation graph of a functional Keras model: the one graph walker of
the package, used by group resolution and by feature caching.

Layer names cannot be trusted alone (auto-named layers carry session-wide
counters), so group boundaries are resolved on the graph: a group is every
not-yet-assigned ancestor of its last layer, and "the point where a block
begins" is the immediate dominator of a layer inside that block. Feature
caching cuts a model where its frozen part ends: `close_upward` and
`crossing_tensors` find the operations above the cut and the tensors crossing it.
"""

from __future__ import annotations

import keras

from kerastl._internals import container_layers, inbound_nodes, owns_node, producer


class LayerGraph:
    """Operations of a functional model in topological order, with parents.

    Args:
        model: a built functional (or Sequential) Keras model.
        expand: names of container layers (e.g. KerasHub's `vit_encoder`)
            whose direct sublayers become a chain of operations in their place.
    """

    def __init__(self, model: keras.Model, expand: tuple[str, ...] = ()):
        top_level = list(getattr(model, "operations", None) or model.layers)
        functional = hasattr(model, "operations")
        self.operations: list = []
        self.parents: list[list[int]] = []
        output_index: dict[int, int] = {}  # id(top-level op) -> index of its output
        for op in top_level:
            parents: set[int] = set()
            for node in inbound_nodes(op):
                if functional and not owns_node(model, op, node):
                    continue
                for parent in node.parent_nodes:
                    index = output_index.get(id(parent.operation))
                    if index is not None:
                        parents.add(index)
            chain = container_layers(op) if op.name in expand else [op]
            for link in chain:
                self.operations.append(link)
                self.parents.append(sorted(parents))
                parents = {len(self.operations) - 1}
            output_index[id(op)] = len(self.operations) - 1
        self._dominators: list[frozenset[int]] | None = None

    def ancestors(self, index: int) -> set[int]:
        """Returns `index` and every operation it depends on."""
        seen = {index}
        stack = [index]
        while stack:
            for parent in self.parents[stack.pop()]:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    def immediate_dominator(self, index: int) -> int:
        """Returns the last operation every path from the inputs to `index` crosses.

        That is the point where the block containing `index` begins: for a
        concatenation of Inception branches it is the layer that feeds them all.
        """
        if self._dominators is None:
            self._dominators = self._compute_dominators()
        strict = self._dominators[index] - {index}
        if not strict:
            return -1
        return max(strict)

    def _compute_dominators(self) -> list[frozenset[int]]:
        dominators: list[frozenset[int]] = []
        for index, parents in enumerate(self.parents):
            if not parents:
                dominators.append(frozenset({index}))
                continue
            common = set(dominators[parents[0]])
            for parent in parents[1:]:
                common &= dominators[parent]
            common.add(index)
            dominators.append(frozenset(common))
        return dominators


def inputs_inside(model: keras.Model, operation) -> list:
    """The tensors `operation` consumes inside `model`'s graph."""
    return [
        tensor
        for node in inbound_nodes(operation)
        if owns_node(model, operation, node)
        for tensor in node.input_tensors
    ]


def close_upward(model: keras.Model, upper: set[int]) -> set[int]:
    """`upper` (operation ids) plus every operation fed by one of them: weightless
    operations outside the groups, such as KerasHub's `x[:, 0, :]` before BERT's pooler."""
    closed = set(upper)
    for operation in model.operations:  # topological order
        if any(id(producer(t)) in closed for t in inputs_inside(model, operation)):
            closed.add(id(operation))
    return closed


def crossing_tensors(model: keras.Model, upper: set[int]) -> list:
    """Tensors made below the cut and used above it (or as the model's outputs)."""
    cut: list = []

    def add(tensor):
        if id(producer(tensor)) not in upper and all(t is not tensor for t in cut):
            cut.append(tensor)

    for operation in model.operations:
        if id(operation) in upper:
            for tensor in inputs_inside(model, operation):
                add(tensor)
    for tensor in keras.tree.flatten(model.output):
        add(tensor)
    return cut
