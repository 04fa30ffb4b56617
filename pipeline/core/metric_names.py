"""One naming scheme for every MLflow metric of every task: `<group>/<name>`.

The MLflow UI groups charts and columns by the part before the first slash, so each group
below is one section there:

- `train/` per-epoch training metrics (`train/loss`, `train/accuracy`), the per-step
  `train/batch_loss`, and at the end `train/steps` and `train/epochs`;
- `val/`, `test/`, `baseline/` validation, test and baseline scores;
- `grad_norm/` gradient norms per step (global, clipped, per layer);
- `grad_flow/` ‖∂L/∂h_t‖ per layer with the timestep as MLflow's step (`grad_flow/<layer>`),
  and per epoch its summaries `grad_flow/horizon/<layer>`, `grad_flow/log_ratio/<layer>`,
  `grad_flow/last/<layer>`;
- `perf/` throughput, time and utilisation (`perf/samples_per_second`, `perf/train_seconds`,
  `perf/flops_per_second`, `perf/mfu`; flush latency);
- `data/` statistics of the download, tokenize and featurize stages;
- `system/` CPU and memory (MLflow's own system metrics).

DVC metric files keep dotted keys (`test.accuracy`), DVC's own way of showing groups;
`mlflow_key` maps them onto this scheme, so both tools show the same names.
"""

from __future__ import annotations

from collections.abc import Mapping

FLOW = "grad_flow/"
FLOW_SUMMARIES = ("horizon", "log_ratio", "last")
TRAIN_STEPS = "train/steps"  # optimizer steps of the whole training, resumed sessions included
STEP_LOSS = "train/batch_loss"  # this step's own loss, logged every few steps
VAL_PREFIX = "val_"  # Keras's prefix for validation metrics


def mlflow_key(key: str) -> str:
    """`test.accuracy` -> `test/accuracy`; keys already in the scheme are kept."""
    group, dot, name = key.partition(".")
    return key if not dot or "/" in group else f"{group}/{name}"


def mlflow_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A DVC metrics dict under MLflow names."""
    return {mlflow_key(k): float(v) for k, v in metrics.items()}


def epoch_key(keras_key: str) -> str:
    """A Keras epoch log key under its group: `val_loss` -> `val/loss`, `loss` -> `train/loss`."""
    if keras_key.startswith(VAL_PREFIX):
        return f"val/{keras_key.removeprefix(VAL_PREFIX)}"
    return f"train/{keras_key}"


def data_metrics(stats: Mapping[str, float]) -> dict[str, float]:
    """A stage's data statistics (`train.len_p50`) as `data/train_len_p50`."""
    return {f"data/{k.replace('.', '_')}": float(v) for k, v in stats.items()}


def flow_summary_key(kind: str, layer: str) -> str:
    """`grad_flow/horizon/rnn_1`: a per-epoch summary of one layer's curve."""
    return f"{FLOW}{kind}/{layer}"


def is_flow_curve(key: str) -> bool:
    """Whether `key` is a per-timestep curve (`grad_flow/<layer>`), not one of its summaries."""
    if not key.startswith(FLOW):
        return False
    return key.removeprefix(FLOW).split("/", 1)[0] not in FLOW_SUMMARIES


def train_summary(final: Mapping[str, float]) -> dict[str, float]:
    """What the end of training adds to the run: totals over every session of a resumed run.

    The last epoch's metrics are already the latest values of their `train/` and `val/`
    series, so they are not logged a second time.
    """
    names = {
        "steps": TRAIN_STEPS,
        "epochs_run": "train/epochs",
        "train_seconds": "perf/train_seconds",
        "samples_per_second": "perf/samples_per_second",
        "flops_per_example": "perf/flops_per_example",
        "flops_per_second": "perf/flops_per_second",
        "matmul_peak_flops": "perf/matmul_peak_flops",
        "mfu": "perf/mfu",
    }
    return {name: float(final[k]) for k, name in names.items() if k in final}
