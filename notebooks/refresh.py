"""Execute lesson notebooks in place and keep only what a reader needs.

    python notebooks/refresh.py                  # every notebook here
    python notebooks/refresh.py 03_*.ipynb       # some of them

Outputs and execution counts stay (nbval compares against them); per-run noise goes:
cell ids become their position, cell metadata keeps only tags and JupyterLab's
hidden flags (``jupyter``, on solution cells), and the notebook keeps only its
kernelspec (no timings, no widget state with random model ids).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
# Cell metadata kept: tags, and JupyterLab's hidden source/outputs (solution cells).
KEPT = ("tags", "jupyter")
KERNELSPEC = {
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
    "name": "python3",
}


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop metadata that changes from one execution to the next."""
    nb.metadata = nbformat.from_dict(
        {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    )
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
        cell.metadata = nbformat.from_dict(
            {k: v for k, v in cell.metadata.items() if k in KEPT}
        )
    return nb


def refresh(path: Path) -> float:
    """Run every cell of ``path`` top to bottom, clean it, save it; returns seconds."""
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
        store_widget_state=False,
    ).execute()
    nbformat.write(clean(nb), path)
    return time.perf_counter() - started


def main(names: list[str]) -> None:
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("[0-9]*.ipynb"))
    for path in paths:
        print(f"{path.name}: {refresh(path):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
