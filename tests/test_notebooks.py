"""The lessons are committed executed and follow the conventions nbval relies on.

nbval (``make test``) re-runs every notebook and compares the ``# NBVAL_CHECK_OUTPUT``
cells with their stored outputs; a never-executed notebook would pass it vacuously.
``python notebooks/refresh.py`` re-executes and cleans them.
"""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LESSONS = [
    "01_federated_averaging",
    "02_non_iid_data",
    "03_shared_dataset_adjustment",
    "04_playground",
    "05_dynamic_server_update",
    "06_faults_and_attacks",
    "07_remedies_compared",
]


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_every_lesson_is_there():
    assert set(LESSONS) <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_was_executed_top_to_bottom_without_errors(path):
    cells = code_cells(path)
    counts = [c.execution_count for c in cells]
    assert None not in counts, f"unexecuted: python notebooks/refresh.py {path.name}"
    assert counts == list(range(1, len(cells) + 1)), "cells were run out of order"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_checks_numbers_and_claims(path):
    cells = code_cells(path)
    checked = [c for c in cells if "# NBVAL_CHECK_OUTPUT" in c.source]
    assert checked and all(c.outputs for c in checked), "no stored output to compare"
    assert any(re.search(r"^assert ", c.source, re.M) for c in cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_seeded_single_threaded_and_shows_a_figure(path):
    cells = code_cells(path)
    # One import cell, then (in it or the next cell) a SEED and a config.
    assert "SEED = " in cells[0].source + cells[1].source
    assert "torch.set_num_threads(1)" in cells[0].source
    kinds = {kind for c in cells for o in c.outputs for kind in o.get("data", {})}
    assert kinds & {"image/png", "application/vnd.jupyter.widget-view+json"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_carries_no_per_run_metadata(path):
    nb = nbformat.read(path, as_version=4)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    assert all(set(c.metadata) <= {"tags", "jupyter"} for c in nb.cells)


def test_make_test_runs_the_notebooks_with_nbval():
    makefile = (ROOT / "Makefile").read_text()
    assert "pytest tests notebooks --nbval-lax --nbval-current-env" in makefile


# --- lessons a lecturer can teach from (all but the playground) --------------------

TEACHING = [name for name in LESSONS if name != "04_playground"]


def _cells(name: str) -> list:
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells


def _tagged(cells: list, tag: str) -> list:
    return [c for c in cells if tag in c.metadata.get("tags", [])]


def _markdown(cells: list) -> str:
    return "\n".join(c.source for c in cells if c.cell_type == "markdown")


@pytest.mark.parametrize("name", TEACHING)
def test_lesson_states_goals_maths_discussion_and_what_to_remember(name):
    text = _markdown(_cells(name))
    headings = [  # without a leading section number ("6. Discussion")
        re.sub(r"^[\d\s.·]+", "", h).strip().lower()
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    ]
    assert "learning goals" in headings
    assert any(h.startswith("discussion") for h in headings)
    assert any(h.startswith("what to remember") for h in headings)
    assert re.search(r"\$\$.+?\$\$|\$[^$\n]+\$", text, re.S), "no LaTeX maths"
    discussion = text.lower().split("discussion", 1)[1]
    assert len(re.findall(r"^\s*(?:\d+\.|[-*]) ", discussion, re.M)) >= 3


@pytest.mark.parametrize("name", TEACHING)
def test_lesson_has_at_least_700_words_of_prose(name):
    prose = re.sub(
        r"\$\$.+?\$\$|\$[^$\n]+\$|`[^`]*`", " ", _markdown(_cells(name)), flags=re.S
    )
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", prose)
    assert len(words) >= 700, f"{len(words)} words"


@pytest.mark.parametrize("name", TEACHING)
def test_exercises_come_with_hidden_solutions_that_assert_their_claim(name):
    cells = _cells(name)
    exercises, solutions = _tagged(cells, "exercise"), _tagged(cells, "solution")
    assert len(exercises) >= 2 and len(solutions) >= len(exercises)
    for cell in solutions:
        hidden = cell.metadata.get("jupyter", {})
        assert hidden.get("source_hidden") and hidden.get("outputs_hidden")
    code = [c for c in solutions if c.cell_type == "code"]
    assert len(code) >= 2
    for cell in code:
        lines = [ln for ln in cell.source.strip().splitlines() if ln.strip()]
        assert lines[-1].lstrip().startswith("assert "), cell.source
