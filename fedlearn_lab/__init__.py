"""fedlearn_lab: teach and explore federated learning with server-side adjustment.

Each round the server samples devices, they train locally, the server averages
their weights (FedAvg) and then adjusts the result with a few SGD steps on a small
shared dataset it holds.
"""

from .aggregation import fedavg
from .compare import (
    Summary,
    adjustment_gain,
    compare,
    compare_settings,
    format_grid,
    format_summary,
    state_bytes,
    summarize,
)
from .config import FedConfig
from .data import Dataset, from_arrays, load_dataset, load_digits, synthetic
from .federation import Federation, Result, run
from .history import History, RoundRecord
from .methods import METHODS, inactive_settings, method_of
from .publish import load_model, save_model
from .rounds import (
    DivergedError,
    RoundPlan,
    num_sampled,
    plan_round,
    run_round,
    sample_devices,
)
from .server import server_adjust
from .state import ServerState, Setup

__all__ = [
    "METHODS",
    "Dataset",
    "DivergedError",
    "FedConfig",
    "Federation",
    "History",
    "Result",
    "RoundPlan",
    "RoundRecord",
    "ServerState",
    "Setup",
    "Summary",
    "adjustment_gain",
    "compare",
    "compare_settings",
    "fedavg",
    "format_grid",
    "format_summary",
    "from_arrays",
    "inactive_settings",
    "load_dataset",
    "load_digits",
    "load_model",
    "method_of",
    "num_sampled",
    "plan_round",
    "run",
    "run_round",
    "sample_devices",
    "save_model",
    "server_adjust",
    "state_bytes",
    "summarize",
    "synthetic",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    # fl.widgets imports ipywidgets and ipympl only when first used.
    if name == "widgets":
        import importlib

        return importlib.import_module(".widgets", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
