"""Dependencies point one way (STYLE.md): networks, data and evaluation know no method, and the
library never imports the notebook-facing studies."""

import subprocess
import sys

import pytest

LOWER = [
    "ddcore.data",
    "ddcore.models",
    "ddcore.augment",
    "ddcore.evaluate",
    "ddcore.robust",
    "ddcore.cluster",
    "ddcore.decoder",
    "ddcore.storage",
    "ddcore.train",
    "ddcore.live",
]


@pytest.mark.parametrize("module", LOWER)
def test_lower_modules_import_no_method_and_no_study(module):
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.startswith(('ddcore.distill', 'ddcore.studies'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{module} pulls in {out.strip()}"


def test_methods_import_no_study():
    code = "import sys, ddcore.distill; print(sorted(m for m in sys.modules if m.startswith('ddcore.studies')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
