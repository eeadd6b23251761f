"""The package layout and its rules, and run folders written before the layout still load.

Rules (../shared/DESIGN.md): commands import packages, never each other; `data` knows no model;
`models` know nothing of training or run folders; `runs` knows no model internals and
`runs.read` needs no TensorFlow; no module imports another module's `_private` name; no
import cycles.
"""

import ast
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from app.runs.compare import report
from app.runs.read import open_run
from app.tasks.inference import load_model

APP = REPO / "app"
FIXTURES = Path(__file__).parent / "fixtures" / "run_v0_1"
# `python -m app` is albert-train by another name: app/__main__.py imports it.
COMMANDS = {"app.train", "app.evaluate", "app.predict", "app.report",
            "app.tokenizer"}
# package -> packages it must not import
FORBIDDEN = {
    "app.data": ("app.models", "app.tasks", "app.training", "app.runs", "app.bench"),
    "app.models": ("app.training", "app.runs", "app.tasks", "app.bench"),
    "app.runs": ("app.models", "app.tasks", "app.training", "app.bench"),
    "app.config": ("app.models", "app.tasks", "app.training", "app.runs", "app.bench"),
    "app.runtime": ("app.models", "app.tasks", "app.training", "app.runs", "app.bench"),
    "app.training": ("app.tasks", "app.bench"),
    "app.tasks": ("app.bench",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every `import app...` / `from app... import ...`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("app")]
    return found


MODULES = {module_name(p): p for p in APP.rglob("*.py")}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def test_commands_import_packages_never_each_other():
    for name, path in MODULES.items():
        for imported, names in imports(path):
            targets = {imported, *(f"{imported}.{n}" for n in names)}
            others = {t for t in targets if t in COMMANDS or under(t, "app.bench")}
            if under(name, "app.bench"):
                others = {t for t in others if not under(t, "app.bench")}
            if name == "app.__main__":
                others -= {"app.train"}
            if name == "app.api":  # the commands by another name, for Python callers
                others -= {"app.train", "app.evaluate", "app.predict"}
            assert not others - {name}, f"{name} imports the command {others}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_dependency_rules(package):
    for name, path in MODULES.items():
        if not under(name, package):
            continue
        for imported, _ in imports(path):
            bad = [f for f in FORBIDDEN[package] if under(imported, f)]
            assert not bad, f"{name} imports {imported}: {package} must not import {bad}"


def test_no_module_imports_a_private_name():
    for name, path in MODULES.items():
        for imported, names in imports(path):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{name} imports {private} from {imported}"


def test_no_import_cycles():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for imported, names in imports(path):
            for target in (imported, *(f"{imported}.{n}" for n in names)):
                if target in graph and target != name:
                    graph[name].add(target)
    done, stack = set(), []

    def visit(node):
        if node in stack:
            pytest.fail(f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node in done:
            return
        stack.append(node)
        for child in graph[node]:
            visit(child)
        stack.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_reading_runs_needs_no_tensorflow():
    code = ("import sys, app.runs.read, app.runs.compare, app.runs.layout; "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_the_wheel_ships_every_package_and_the_configs():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p) for p in APP.rglob("__init__.py")}
    assert set(setuptools["packages"]) == packages | {"app.conf"}
    assert setuptools["package-dir"] == {"app.conf": "conf"}
    assert (REPO / "conf" / "__init__.py").is_file()


# ---------------------------------------------------------------- run folders of version 0.1

@pytest.fixture
def old_runs(tmp_path) -> Path:
    """A copy of the 0.1 run folders (commands write into a run folder; the repo stays clean)."""
    shutil.copytree(FIXTURES, tmp_path / "runs")
    return tmp_path / "runs"


def test_an_old_fine_tuning_run_still_predicts_evaluates_and_reports(old_runs):
    run = open_run(old_runs / "finetune")
    samples = json.loads((run.path / "export" / "sample_predictions.json").read_text())
    texts = np.array(samples["inputs"][0], dtype=object)
    exported = load_model(run, "export")
    np.testing.assert_allclose(exported.predict(texts, verbose=0), samples["outputs"],
                               atol=1e-5)
    # One epoch: the best checkpoint holds the exported weights; rebuilt from config + tokenizer.
    rebuilt = load_model(run, "best")
    np.testing.assert_allclose(rebuilt.predict(texts, verbose=0), samples["outputs"], atol=1e-5)
    rows, text = report(old_runs, draw=False)
    assert {row.job for row in rows} == {"finetune", "pretrain"} and "completed" in text


def test_an_old_preset_and_pretrainer_still_load(old_runs):
    import keras_hub

    from app.models.pretrainer import AlbertPretrainer
    from app.runtime.loading import load_backbone
    from app.runtime.loading import load_model as load_keras_file

    preset = old_runs / "finetune" / "export" / "preset"
    backbone = load_backbone(str(preset))
    reference = keras_hub.models.AlbertTextClassifier.from_preset(str(preset)).backbone
    for mine, theirs in zip(backbone.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    pretrainer = load_keras_file(old_runs / "pretrain" / "export" / "model.keras")
    assert isinstance(pretrainer, AlbertPretrainer)
    assert type(pretrainer.optimizer.learning_rate).__name__ != "float"


def test_an_old_interrupted_run_resumes_with_its_callbacks_renamed(old_runs):
    from app.config.instantiate import check_config
    from app.training.resume import resumed_config

    run = old_runs / "finetune"
    (run / "status.json").write_text('{"status": "preempted", "step": 1}')
    state = run / "checkpoints" / "state" / "step-000000001"
    state.mkdir(parents=True)
    (state / "meta.json").write_text('{"step": 1}')
    saved = (run / ".hydra" / "config.yaml").read_text()
    assert "app.checkpoints.AtomicModelCheckpoint" in saved  # as version 0.1 wrote it
    cfg = resumed_config(str(run))
    targets = {node._target_ for node in cfg.callbacks.values()}
    assert targets == {"app.training.checkpoints.AtomicModelCheckpoint"}
    check_config(cfg)  # every target resolves under the new layout
