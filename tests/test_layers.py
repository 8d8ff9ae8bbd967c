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
