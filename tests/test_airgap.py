"""The air-gapped install (README, "Where it fits"): the wheelhouse's medscale wheel holds every file a checkout
ships (nothing is fetched later), and constraints/gpu.txt pins a set medscale accepts, the GPU image's own versions.
The second step itself (`pip install --no-index --find-links`, then `medscale demo`) runs in .ci/run."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

from conftest import REPO, SHARED

MAPPED = {"ds_configs": "medscale/ds_configs", "cluster": "medscale/cluster", "slurm": "medscale/slurm"}


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints/gpu.txt: {line}: a pin, not a bound"
            pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_gpu_constraints_pin_versions_medscale_accepts():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = _pins((REPO / "constraints" / "gpu.txt").read_text(encoding="utf-8"))
    assert {"torch", "transformers", "peft", "accelerate"} <= set(pins)  # what the GPU image ships
    for line in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs pyproject {line}"


def test_gpu_constraints_agree_with_the_wheels_the_gpu_host_gets():
    script = SHARED / "gpu" / "wheels.sh"
    if not script.exists():
        pytest.skip(f"{script} not present (../shared is optional)")
    pins = _pins((REPO / "constraints" / "gpu.txt").read_text(encoding="utf-8"))
    fetched = dict(re.findall(r"\b([A-Za-z][\w.-]*)==([\w.]+)", script.read_text(encoding="utf-8")))
    assert fetched and all(pins.get(name.lower().replace("_", "-")) == v for name, v in fetched.items()), fetched


@pytest.mark.slow
def test_the_wheel_holds_every_file_the_checkout_ships(tmp_path):
    """What `pip wheel` puts in the wheelhouse: every tracked module and data file, at its installed path."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = tmp_path.glob("medscale-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "medscale", "launcher", *MAPPED], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    expected = {MAPPED[p.split("/")[0]] + p[p.index("/"):] if p.split("/")[0] in MAPPED else p for p in tracked}
    missing = sorted(p for p in expected if p not in inside)
    assert not missing, f"not in the wheel (pyproject's packages / package-data): {missing}"
