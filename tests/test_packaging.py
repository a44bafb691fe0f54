"""The package layout: boxinst.* imports, and the standard 'platform' module never shadowed."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_platform_folder_has_no_top_level_init():
    assert (REPO / "platform").is_dir()
    assert not (REPO / "platform" / "__init__.py").exists()


def test_stdlib_platform_is_not_shadowed_from_the_repo_root():
    """A process whose path starts with the repo root (a shell in the repo, a Ray working_dir)
    still gets Python's own platform module, and the boxinst packages import."""
    code = (
        "import sys; assert sys.path[0] == '', sys.path; "  # the repo root comes first
        "import platform; assert callable(platform.system), platform; "
        "import boxinst.platform.training.objective, boxinst.models, boxinst.losses; "
        "import boxinst.dashboards; "
        "print(platform.system())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
