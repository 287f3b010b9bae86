"""The reproductions' tables as Markdown, and the documentation they go into: ``docs/reproductions/`` and the
marked section of README.md (``python -m recipes.reproduce docs``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

README_START, README_END = "<!-- reproductions:start -->", "<!-- reproductions:end -->"


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def render_markdown(name: str, result: dict) -> str:
    rows = result["rows"]
    cols = list(dict.fromkeys(k for row in rows for k in row))
    lines = [
        f"# {result['title']}",
        "",
        f"**Claim.** {result['claim']}",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    spread = {s["variant"]: s for s in result.get("spread", [])}  # several seeds: every seed's value too

    def cell(row: dict, col: str) -> str:
        values = spread.get(row["variant"], {}).get(col)
        if col == "variant" or values is None:
            return fmt(row.get(col))
        return f"{fmt(row.get(col))} ({' / '.join(fmt(v) for v in values)})"

    lines += ["| " + " | ".join(cell(row, c) for c in cols) + " |" for row in rows]
    lines += ["", "| check (from the numbers above) | holds |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in result["check"].items()]
    lines += [
        "",
        result["notes"],
        "",
        (
            f"Preset `{result['preset']}` ({result['preset_config']}), "
            f"seed{'s' if result.get('spread') else ''} {result['seed']}; "
            f"{result['wall_s']:.0f} s wall for this reproduction (a run shared with an earlier one, such as "
            f"stage 1, counts where first trained"
            + (
                f"; reused from an earlier command on the workdir, not counted: {', '.join(result['reused'])}"
                if result.get("reused")
                else ""
            )
            + f"); finished {result['finished']}."
        ),
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def _tables(out_dir: Path, names: Sequence[str]) -> list[str]:
    return [(out_dir / f"{n}.md").read_text().strip() for n in names if (out_dir / f"{n}.md").exists()]


def write_index(out_dir: Path, names: Sequence[str]) -> None:
    """``<out_dir>/README.md``: the latest table of every reproduction found in ``out_dir``,
    one after another."""
    head = (
        "# Reproductions (latest tables)\n\n"
        "Written by `python -m recipes.reproduce run` (recipes/reproduce.py); "
        "every number comes from a real training + evaluation run on the synthetic data, "
        "whatever it says.\n\n"
    )
    (out_dir / "README.md").write_text(
        head
        + "\n\n".join(p.replace("\n# ", "\n## ").replace("# ", "## ", 1) for p in _tables(out_dir, names))
        + "\n"
    )


def update_readme(readme: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Replace what lies between the reproduction markers of ``readme`` with the latest tables."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} section")
    body = "\n\n".join(p.replace("\n# ", "\n### ").replace("# ", "### ", 1) for p in _tables(out_dir, names))
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{body}\n{README_END}{tail}")
