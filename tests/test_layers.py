"""The house has no loops: import-linter's contracts in pyproject.toml ([tool.importlinter]) hold - no two parts of a
package import each other, the command line sits above the pipeline, training and evaluation above features,
validation and data, the server's entry point above its routes above its model, and the library never imports the
server, the pipeline definition or its components."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 6 kept, 0 broken." in r.stdout


def test_the_library_logs_and_the_command_line_prints(capsys):
    """Library modules report progress through `logging`; print is for entry points (the command line, the Ray
    job's script) whose stdout is their result. `iranker.logs.setup` installs one stderr handler, however often it is
    called, in the `[iranker] ...` form the command line has always printed."""
    import ast
    import logging

    from iranker.logs import setup

    printing = []
    for path in [*(ROOT / "iranker").rglob("*.py"), *(ROOT / "serving").rglob("*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("iranker/cli/") or rel == "iranker/train/ray_job.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{rel}:{node.lineno}")
    assert printing == []
    logger = setup()
    setup()
    assert sum(getattr(h, "iranker", False) for h in logger.handlers) == 1
    logging.getLogger("iranker.train.loop").info("step 1")
    logging.getLogger("iranker.features").warning("no Feast store")
    err = capsys.readouterr().err
    assert "[iranker] step 1\n" in err and "[iranker] warning: no Feast store\n" in err
