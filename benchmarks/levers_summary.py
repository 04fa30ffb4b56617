"""Mean ± sample std over seeds of `translation_levers.py` results, one setting at a time.

Each lever is run once per training seed (`--set train.translation.seed=S --out NAME_seedS.json`);
this reads those files and writes, per split and decoding setting, BLEU and chrF means and
stds beside the dictionary baseline's and the training seconds, so the README's tables cite a
file rather than hand arithmetic.

    python benchmarks/levers_summary.py \\
        benchmarks/results/translation_levers/longer20_seed4[234].json \\
        --out benchmarks/results/translation_levers/longer20_summary.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated

import typer


def mean_std(values: list[float]) -> dict[str, float | list[float]]:
    """Mean, sample std (0 for one value) and the values themselves, in file order."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def setting_name(setting: dict) -> str:
    """`beam B, alpha A, eos E`: the decoding setting a score belongs to."""
    return (
        f"beam {setting['beam_size']}, alpha {setting['length_penalty']}, "
        f"eos {setting['eos_penalty']}"
    )


def summarize_split(runs: list[dict], split: str) -> dict:
    """BLEU and chrF of every decoding setting and the baseline's, over the runs."""
    names = [setting_name(s) for s in runs[0][split]["settings"]]
    out: dict = {}
    for index, name in enumerate(names):
        rows = [run[split]["settings"][index] for run in runs]
        if any(setting_name(row) != name for row in rows):
            raise typer.BadParameter(f"{split}: the runs decoded different settings")
        out[name] = {metric: mean_std([row[metric] for row in rows]) for metric in ("bleu", "chrf")}
    out["dictionary"] = {
        metric: mean_std([run[split]["dictionary"][f"baseline.{metric}"] for run in runs])
        for metric in ("bleu", "chrf")
    }
    return out


def main(
    files: Annotated[list[Path], typer.Argument(help="translation_levers.py results, one a seed.")],
    out: Annotated[Path, typer.Option(help="Where to write the summary JSON.")],
) -> None:
    """Summarize one lever's seeds and print each setting's mean ± std."""
    runs = [json.loads(path.read_text()) for path in files]
    splits = [split for split in ("val", "test") if all(split in run for run in runs)]
    summary = {
        "files": [path.name for path in files],
        "seeds": [run["train_params"]["seed"] for run in runs],
        "overrides": runs[0]["overrides"],
        "train_seconds": mean_std([run["train_seconds"] for run in runs]),
        **{split: summarize_split(runs, split) for split in splits},
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    for split in splits:
        for name, scores in summary[split].items():
            bleu, chrf = scores["bleu"], scores["chrf"]
            print(
                f"{split} {name}: BLEU {bleu['mean']:.2f} ± {bleu['std']:.2f}, "
                f"chrF {chrf['mean']:.2f} ± {chrf['std']:.2f}"
            )
    seconds = summary["train_seconds"]
    print(f"train seconds {seconds['mean']:.1f} ± {seconds['std']:.1f}")


if __name__ == "__main__":
    typer.run(main)
