"""Import boundaries that keep workers healthy and the architecture readable."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest


def _modules_after_import(statement: str) -> set[str]:
    script = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import worker.tasks",  # what `celery -A worker.app worker` loads before forking
        "import worker.study_tasks",  # the study tasks, loaded by the same worker
        "import service.study_render, service.plots, trainer.study_report",
        "import worker.app, worker.recovery, worker.jobstore",
        "import trainer.spec, trainer.registry, trainer.data, trainer.errors",
        "import trainer.architectures, trainer.card, trainer.datasets",
        "import service.cli",  # the client CLI starts fast
    ],
)
def test_tensorflow_is_not_imported(statement: str) -> None:
    # TensorFlow loaded before a worker forks hangs the child; it must load only
    # inside the child that runs a job.
    modules = _modules_after_import(statement)
    assert "tensorflow" not in modules
    assert "keras" not in modules


@pytest.mark.parametrize("statement", ["import service.app", "import service.cli"])
def test_the_api_and_the_cli_start_without_scikit_learn(statement: str) -> None:
    # They read evaluation reports and never compute one; importing scikit-learn
    # would add about 1.6 s to every start of the API and of each CLI command.
    assert "sklearn" not in _modules_after_import(statement)


def test_trainer_knows_nothing_of_http_or_queues() -> None:
    modules = _modules_after_import(
        "import trainer.run, trainer.train, trainer.evaluate, trainer.augmentation, "
        "trainer.study_report, trainer.study_presets, trainer.selection, trainer.statistics"
    )
    assert not {"fastapi", "celery", "redis", "service", "worker"} & modules


PROJECT = Path(__file__).resolve().parents[1]


def _all_modules() -> list[str]:
    names = []
    for package in ("service", "worker", "trainer"):
        for info in pkgutil.walk_packages([str(PROJECT / package)], prefix=f"{package}."):
            names.append(info.name)
    return names


def test_importing_any_module_never_touches_the_disk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    modules = _all_modules()
    assert "worker.app" in modules and "service.app" in modules
    environment = {**os.environ, "DACIAVISION_HOME": str(home)}
    for name in ("REDIS_URL", "DATA_DIR", "REGISTRY_DIR"):
        environment.pop(name, None)
        environment.pop(f"DACIAVISION_{name}", None)
    script = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    subprocess.run(
        [sys.executable, "-c", script], env=environment, check=True, timeout=300, cwd=tmp_path
    )
    assert not home.exists(), f"importing created {sorted(p.name for p in home.rglob('*'))}"


ROUTES = Path(__file__).resolve().parents[1] / "service" / "routes"


def _route_modules() -> list[Path]:
    return sorted(path for path in ROUTES.glob("*.py") if path.name != "__init__.py")


@pytest.mark.parametrize("path", _route_modules(), ids=lambda path: path.stem)
def test_route_modules_do_not_import_each_other(path: Path) -> None:
    # Shared request handling lives in service/ (bodies, predictions, deps), so a
    # route module can change or go without breaking another one.
    tree = ast.parse(path.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not {name for name in imported if name and name.startswith("service.routes")}


@pytest.mark.parametrize("path", _route_modules(), ids=lambda path: path.stem)
def test_request_and_response_schemas_live_with_the_schemas(path: Path) -> None:
    tree = ast.parse(path.read_text())
    classes = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    bases = {
        ast.unparse(base)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for base in node.bases
    }
    assert "BaseModel" not in bases, f"{path.name} declares schemas {classes}"
