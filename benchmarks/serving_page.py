"""docs/results/<card>-serving.md from a committed run directory: its notes (notes.md: card, date, commands,
what was seen) and then the report, rendered again from the run's result files by `aggregate`.

    python benchmarks/serving_page.py docs/results/nvidia-h200-serving
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from inference_optim_llm.report import aggregate


def main(run_dir: str) -> None:
    d = Path(run_dir)
    page = d.parent / f"{d.name}.md"
    files = sorted((d / "runs").rglob("*.json")) + sorted((d / "serving").rglob("*.json"))
    with tempfile.TemporaryDirectory(dir=d.parent) as tmp:
        out = Path(tmp) / "report.md"
        aggregate(files, out_md=out, out_csv=d / "summary.csv", plots_dir=d / "plots",
                  calibration=sorted(d.glob("calibration.json")), title="")
        body = out.read_text().split("\n", 1)[1]   # without the report's own title line
    # the plots, relative to the page (the report was rendered one directory down, beside it)
    body = body.replace("](../", "](")
    body = body.replace(f"from {len(files)} result files", f"from the {len(files)} result files in `{d.name}/`")
    page.write_text((d / "notes.md").read_text() + body)
    print(f"{page}: {len(files)} result files")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except ValueError as e:   # a result file that is not a valid result, named with what is wrong
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
