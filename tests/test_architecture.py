"""The package's shape: no import cycle, the library never imports the app
layer, and every private Keras/TF name kerastl uses still exists."""

import ast
import pathlib

import keras
import numpy as np
import pytest

import kerastl
from kerastl import _internals

PACKAGE = pathlib.Path(kerastl.__file__).parent


def _runtime_nodes(tree):
    """Every node of `tree` except those under `if TYPE_CHECKING:` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not (isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING"):
                stack.append(child)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the kerastl modules it imports when run, at any level of the file."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kerastl"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    imported.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name in modules}
        graph[name] = imported - {name}
    return graph


def _cycle(graph) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node, path):
        state[node] = 1
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state and (found := visit(child, [*path, child])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_module_imports_itself_back_through_others():
    graph = _import_graph()
    assert len(graph) > 60
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_library_does_not_import_the_app_layer():
    for module, imported in _import_graph().items():
        if not module.startswith("kerastl.app"):
            assert not [m for m in imported if m.startswith("kerastl.app")], module


def test_the_library_never_names_the_app_layer_or_its_config():
    """Not even under `TYPE_CHECKING` or in a docstring: the library's functions
    take plain arguments, and `kerastl.app` builds them from a `RunConfig`."""
    import re

    named = {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path.parent.name != "app" and re.search(r"kerastl\.app\b|RunConfig", path.read_text())
    }
    assert not named


def _body_lines(function) -> int:
    """A function's lines, its docstring aside."""
    body = function.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:] or body
    return body[-1].end_lineno - body[0].lineno + 1


def test_modules_and_functions_stay_short():
    """No module over 700 lines, no function body over 80 (docstrings aside)."""
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(PACKAGE.parent))
        if text.count("\n") > 700:
            long_modules.append((name, text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and _body_lines(node) > 80:
                long_functions.append((name, node.name, _body_lines(node)))
    assert not long_modules and not long_functions


def test_the_group_rule_vocabulary_imports_nothing_of_kerastl():
    assert not _import_graph()["kerastl.backbones.rules"]


def test_every_private_keras_name_kerastl_uses_still_exists():
    inputs = keras.Input((4,), name="x")
    dense = keras.layers.Dense(2, name="d")
    dropout = keras.layers.Dropout(0.5, seed=1)
    model = keras.Model(inputs, dropout(dense(inputs)))
    assert [layer.name for layer in _internals.sublayers(model)][-2:] == ["d", dropout.name]
    assert _internals.own_trainable_variables(dense) == [dense.kernel, dense.bias]
    assert _internals.own_variables(dense) == [dense.kernel, dense.bias]
    assert len(_internals.seed_generators(dropout)) == 1
    (node,) = _internals.inbound_nodes(dense)
    assert _internals.owns_node(model, dense, node)
    assert _internals.producer(dense.output) is dense
    container = keras.Sequential([keras.layers.Dense(1), keras.layers.Dense(1)])
    assert len(_internals.container_layers(container)) == 2
    with _internals.object_sharing_scope():
        pass
    assert _internals.timm_efficientnet_config("lite0")["stackwise_num_repeats"][:2] == [1, 2]
    by_path = {"d/bias": keras.optimizers.SGD(1.0)}
    optimizer = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(keras.optimizers.SGD(0.1), by_path)
    )
    optimizer.build(dense.trainable_variables)
    assert _internals.multi_optimizer_variables(optimizer) == [dense.kernel, dense.bias]
    assert _internals.optimizer_for(optimizer, dense.bias) is not _internals.optimizer_for(
        optimizer, dense.kernel
    )
    adam = keras.optimizers.AdamW()
    adam.exclude_from_weight_decay(var_names=["bias"])
    adam.build(dense.trainable_variables)
    momentum, velocity = _internals.adam_slots(adam, dense.bias)
    assert momentum.shape == velocity.shape == dense.bias.shape and momentum is not velocity
    assert _internals.decays(adam, dense.kernel) and not _internals.decays(adam, dense.bias)
    assert callable(keras.optimizers.AdamW._apply_weight_decay)  # kerastl.fused_adam overrides it
    model.compile("sgd", "mse")
    _internals.symbolic_build(model, (np.ones((2, 4)), np.ones((2, 2))))
    assert model.optimizer.built
    trainer = _internals.tensorflow_trainer()
    assert callable(trainer.reduce_per_replica)
    assert callable(trainer.TensorFlowTrainer._maybe_symbolic_build)
    nn = _internals.tensorflow_nn()
    assert callable(nn.conv) and callable(nn.depthwise_conv)


def test_the_tfds_manual_dir_accessor_reads_the_download_manager(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    manager = tfds.download.DownloadManager(download_dir=str(tmp_path), manual_dir=str(tmp_path))
    assert str(_internals.tfds_manual_dir(manager)) == str(tmp_path)


def test_every_test_file_the_package_names_exists():
    import re

    named = {
        (path.relative_to(PACKAGE.parent), match)
        for path in PACKAGE.rglob("*.py")
        for match in re.findall(r"tests/[\w/]+\.py", path.read_text())
    }
    assert named  # the package does point readers at its tests
    missing = [
        (str(path), test) for path, test in sorted(named) if not (PACKAGE.parent / test).is_file()
    ]
    assert not missing, missing


def test_dir_lists_each_public_name_once_and_each_resolves():
    names = dir(kerastl)
    assert len(names) == len(set(names))  # a name both imported and lazily exported: once
    public = [name for name in names if not name.startswith("_")]
    assert {"TransferModel", "FineTuner", "Stage", "export", "set_precision"} <= set(public)
    for name in public:
        assert getattr(kerastl, name) is not None, name


def test_importing_every_public_name_again_leaves_bound_names_as_they_are(monkeypatch):
    """`kerastl.app.cli.main` imports every public name at its start. Before, that
    bound each name again from its module, so a test that had patched a module's
    function left `kerastl.create_backbone` patched for every later test."""
    import kerastl.backbones

    real = kerastl.create_backbone
    monkeypatch.setattr(kerastl.backbones, "create_backbone", lambda *args, **kwargs: None)
    kerastl._import_all()
    assert kerastl.create_backbone is real
