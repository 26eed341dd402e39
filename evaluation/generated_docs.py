"""Generated tables inside hand-written docs: only the block between two markers is replaced."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def replace_block(out: Path, generated: str, markers: tuple[str, str], title: str) -> None:
    """Put ``generated`` (which starts and ends with ``markers``) into ``out`` in place of the
    block between the markers, keeping the text around it; a new file gets ``title``."""
    begin, end = markers
    if out.is_file() and begin in (text := out.read_text()) and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1]
        out.write_text(before + generated.rstrip("\n") + after)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"# {title}\n\n" + generated)


def table_cell(key: str, fmt: str, values: float | list[float] | None) -> str:
    """One table cell: a value or the mean of pooled values in ``fmt``; ``type_*`` keys
    (curve types kept, 1 or 0 per region) as kept/total; ``-`` when nothing was measured."""
    if values is None or (isinstance(values, list) and not values):
        return "-"
    if isinstance(values, list):
        if key.startswith("type_"):
            return f"{int(sum(values))}/{len(values)}"
        return fmt.format(float(np.mean(values)))
    return fmt.format(values)
