"""envs/pssl.yaml (conda, for clusters) carries exactly the pins of constraints.txt."""

import yaml

from conftest import REPO


def test_conda_env_pins_match_constraints():
    pins = {line.strip() for line in (REPO / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    env = yaml.safe_load((REPO / "envs/pssl.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_section) == pins
    assert "python=3.11" in env["dependencies"]
    assert any(p.startswith("torch==2.14.1") for p in pins) and "torchvision==0.29.1" in pins
