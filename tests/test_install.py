"""A non-editable install works from any folder: its commands find their templates inside the package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

from tests.conftest import REPO, TINY


def test_the_install_ships_every_package_of_the_checkout():
    """pyproject.toml lists its packages by hand (the templates are mapped into one): a new package
    left off the list would import in the checkout and be missing from every install."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "harness").rglob("__init__.py")}
    assert found <= listed, f"pyproject.toml does not ship {sorted(found - listed)}"


def test_installed_copy_trains_and_reports_from_another_folder(analyzed_run, tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    for part in ("harness", "report_templates"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # The venv sees the packages of the interpreter running the tests, through a .pth file: torch and
    # friends, pip and setuptools, whether pytest runs in a virtual environment (as most users run it)
    # or in the system's interpreter (--system-site-packages would show the base interpreter's instead,
    # which in a user's venv has no torch, and a setuptools without bdist_wheel). Only the harness is
    # installed into it. No download: torch 2.14 requires setuptools>=77, which builds wheels itself.
    seen = [path for path in sys.path if path.endswith("site-packages")]
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(site_packages, "running-interpreter.pth").write_text("\n".join(seen) + "\n")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)]
    result = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(analyzed_run, elsewhere / "run")
    (elsewhere / "run" / "report.html").unlink()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: the install alone

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    where = run(python, "-c", "import harness; print(harness.__file__)")
    assert str(venv) in where.stdout and str(REPO) not in where.stdout, where.stdout + where.stderr
    report = run(str(venv / "bin" / "harness-report"), "run")
    assert report.returncode == 0, report.stderr[-3000:]
    assert 'id="gradcam"' in (elsewhere / "run" / "report.html").read_text()

    config = elsewhere / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "analysis": {"enabled": True}, "report": {"enabled": True}}))
    trained = run(python, "-m", "harness.run", str(config), "--out", "trained")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((elsewhere / "trained" / "summary.json").read_text())["analysis_completed_utc"]
    assert (elsewhere / "trained" / "report.html").is_file()
    assert not Path(REPO / "build").exists() and not list(REPO.glob("*.egg-info")), "the checkout stays clean"
