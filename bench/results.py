"""What a side-by-side benchmark hands to `bench/run`: tables with ratios to mmserve.

Each benchmark script (chat_one.py, chat_many.py, embeddings.py, swap.py, gateway.py) measures
its contenders, builds one `Result` and prints it as markdown; with `--json PATH` it also writes
it there, and `bench/run` reads the files back to write docs/benchmarks.md.

  Column   one figure: its key in `Row.values`, its title, digits, and whether a column with
           the ratio to mmserve follows it
  Row      one contender's figures; a figure it lacks renders as "n/a", and its note says why
           (a peer that could not be installed or run keeps its row, with the reason)
  Table    columns and rows; the row marked `baseline` (mmserve's) is what the ratios divide by
  Result   one benchmark: title, how it was measured, its tables, notes, command, duration

Ratios are the contender's figure divided by mmserve's, both from the same run: on a shared
machine whose speed moves from one minute to the next, they are the figures that matter.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NOT_AVAILABLE = "n/a"


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    digits: int = 1
    ratio: bool = True  # followed by "÷ mmserve": this figure divided by the baseline's


@dataclass
class Row:
    contender: str
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""
    baseline: bool = False  # mmserve's row: the ratios divide by its figures


@dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    caption: str = ""

    def baseline(self) -> Row | None:
        return next((row for row in self.rows if row.baseline), None)


@dataclass
class Result:
    key: str  # chat-one, chat-many, embeddings, swap, gateway
    title: str
    setup: str  # markdown: what was measured, and how
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    command: str = ""
    seconds: float = 0.0
    error: str = ""  # the benchmark did not finish: why

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Result:
        data: dict[str, Any] = json.loads(path.read_text())
        tables = [
            Table(
                columns=[Column(**c) for c in t["columns"]],
                rows=[Row(**r) for r in t["rows"]],
                caption=t["caption"],
            )
            for t in data.pop("tables")
        ]
        return cls(tables=tables, **data)


# --- markdown ----------------------------------------------------------------------------------


def ratio(value: float | None, base: float | None) -> str:
    """`value / base` with 2 decimals, or n/a when either is missing or the base is zero."""
    if value is None or base is None or base == 0:
        return NOT_AVAILABLE
    return f"{value / base:.2f}"


def render_table(table: Table) -> str:
    """A markdown table: contender, each figure (and its ratio to mmserve), notes if any."""
    base = table.baseline()
    header, align = ["contender"], ["---"]
    for column in table.columns:
        header.append(column.title)
        align.append("---:")
        if column.ratio and base is not None:
            header.append("÷ mmserve")
            align.append("---:")
    with_notes = any(row.note for row in table.rows)
    if with_notes:
        header.append("notes")
        align.append("---")
    lines = [_line(header), _line(align)]
    lines += [_line(_cells(table, row, base, with_notes)) for row in table.rows]
    caption = [table.caption, ""] if table.caption else []
    return "\n".join([*caption, *lines])


def _cells(table: Table, row: Row, base: Row | None, with_notes: bool) -> list[str]:
    cells = [f"**{row.contender}**" if row.baseline else row.contender]
    for column in table.columns:
        value = row.values.get(column.key)
        cells.append(NOT_AVAILABLE if value is None else f"{value:.{column.digits}f}")
        if column.ratio and base is not None:
            cells.append(ratio(value, base.values.get(column.key)))
    if with_notes:
        cells.append(row.note)
    return cells


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render(result: Result, level: int = 3) -> str:
    """The benchmark's section: title, setup, tables, notes, command and duration."""
    parts = [f"{'#' * level} {result.title}", "", wrap(result.setup), ""]
    if result.error:
        parts += [wrap(f"**Not completed:** {result.error}"), ""]
    for table in result.tables:
        parts += [render_table(table), ""]
    parts += [wrap(note, "- ") for note in result.notes]
    if result.notes:
        parts.append("")
    took = f" ({result.seconds:.0f} s)" if result.seconds else ""
    parts += [f"Command{took}: `{result.command}`", ""]
    return "\n".join(parts)


def wrap(text: str, first: str = "") -> str:
    """A paragraph (or a list item after `first`) wrapped at 100 columns, as the docs are."""
    indent = " " * len(first)
    return textwrap.fill(
        " ".join(text.split()),
        width=100,
        initial_indent=first,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
