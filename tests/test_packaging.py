"""What ships: the test session's isolation from the person's own medscale, and a non-editable install that keeps
ds_configs/, cluster/ and slurm/ (the design card's top-level folders) usable."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO


def test_a_module_fixture_never_writes_into_the_users_home(tmp_path):
    """Defect: a module-scoped fixture ran before the home was isolated and wrote a job into the real
    $MEDSCALE_HOME/registry.db of the person running the tests."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(textwrap.dedent("""
        import pytest
        from medscale.registry import JobSpec, Registry

        @pytest.fixture(scope="module")
        def early_job():
            reg = Registry()
            reg.register(JobSpec("leak", "/runs/leak", "ray", "name: leak", "fp"))
            reg.close()

        def test_it(early_job):
            pass
    """))
    home = tmp_path / "person"
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO / "tests")}
    env.pop("MEDSCALE_HOME")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", str(probe)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (home / ".medscale").exists(), "the test session wrote into the person's home"


@pytest.mark.slow
def test_a_non_editable_install_ships_the_deepspeed_accelerate_and_slurm_files(tmp_path):
    """Defect: ds_configs/ and cluster/ were read relative to the source checkout, so `pip install .` lost them."""
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    check = textwrap.dedent("""
        import medscale, launcher.local as local
        from medscale.recipe import load_recipe
        from medscale.paths import shipped
        assert "site" in medscale.__file__, medscale.__file__
        r = load_recipe("tiny-demo", ["dist.deepspeed=zero3", "dist.num_processes=2"])
        print(r.dist.deepspeed)
        print(local.accelerate_config(r))
        print(shipped("slurm", "common.sh"))
        print(shipped("cluster", "ray", "runtime_env.yaml"))
    """)
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr[-3000:]
    paths = [Path(line) for line in out.stdout.split()]
    assert len(paths) == 4 and all(p.is_file() and str(target) in str(p) for p in paths), out.stdout


def test_every_package_is_listed_in_pyproject():
    """pyproject lists packages by name (so the shipped folders can be mapped in): a new package must be added."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(REPO)).replace("/", ".")
             for top in ("medscale", "launcher") for p in REPO.glob(f"{top}/**/__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
