"""The operation graph of a functional Keras model, for group resolution.

Layer names cannot be trusted alone (auto-named layers carry session-wide
counters), so group boundaries are resolved on the graph: a group is every
not-yet-assigned ancestor of its last layer, and "the point where a block
begins" is the immediate dominator of a layer inside that block.
"""

from __future__ import annotations

import keras


class LayerGraph:
    """Operations of a functional model in topological order, with parents.

    Args:
        model: a built functional (or Sequential) Keras model.
        expand: names of container layers (e.g. KerasHub's `vit_encoder`)
            whose direct sublayers become a chain of operations in their place.
    """

    def __init__(self, model: keras.Model, expand: tuple[str, ...] = ()):
        top_level = list(getattr(model, "_operations", None) or model.layers)
        own_nodes = getattr(model, "_nodes", None)
        self.operations: list = []
        self.parents: list[list[int]] = []
        output_index: dict[int, int] = {}  # id(top-level op) -> index of its output
        for op in top_level:
            parents: set[int] = set()
            for node in op._inbound_nodes:
                if own_nodes and _node_key(node) not in own_nodes:
                    continue
                for parent in node.parent_nodes:
                    index = output_index.get(id(parent.operation))
                    if index is not None:
                        parents.add(index)
            chain = list(op._layers) if op.name in expand else [op]
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


def _node_key(node) -> str:
    """Keras's key for a node in `Functional._nodes` (a layer reused elsewhere
    has nodes that belong to other models)."""
    operation = node.operation
    return f"{id(operation)}_ib-{operation._inbound_nodes.index(node)}"
