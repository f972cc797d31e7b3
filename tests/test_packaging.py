"""pyproject.toml is the source of truth; environment.yml, README and CI must agree."""

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}
_MAKE_EXTRAS = ("dev", "flower")  # what `make setup` installs (the tests need both)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_lists_the_runtime_requirements_with_the_same_minimums():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    conda = {}
    pip_lines = []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            assert set(item) == {"pip"}, f"unexpected mapping {item}"
            pip_lines += item["pip"]
        else:
            req = Requirement(item)
            conda[req.name] = req.specifier
    runtime = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    missing = [r.name for r in runtime if CONDA_NAMES.get(r.name, r.name) not in conda]
    assert not missing, f"environment.yml lacks {missing}"
    for r in runtime:
        assert conda[CONDA_NAMES.get(r.name, r.name)] == r.specifier, r.name
    assert "-e .[" + ",".join(_MAKE_EXTRAS) + "]" in pip_lines
    python_pin = conda["python"]
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert str(python_pin) == str(requires)


def test_readme_first_screen_gives_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [
        line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()
    ]
    assert commands == ["make lab", "make test"]
    assert readme.index("```bash") < 800
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_torch_is_pinned_to_the_cpu_wheel_before_the_package():
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH ?= torch==2.13.0" in makefile
    setup = makefile.split("$(STAMP): pyproject.toml", 1)[1]
    package = '-e ".[' + ",".join(_MAKE_EXTRAS) + ']"'
    assert setup.index('"$(TORCH)"') < setup.index(package)


def test_make_setup_installs_extras_that_exist():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert set(_MAKE_EXTRAS) <= set(extras)
