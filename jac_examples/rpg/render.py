"""Renderings of an RPG map: an ASCII grid (terminal, CLI, Jac program) and a PNG (Pillow).

Both accept a Map as a dict, JSON text/bytes, or a live Jac object (duck-typed attributes),
and draw whatever is readable: rendering is for looking at outputs, including flawed ones,
so it does not validate (that is `validator`'s job). Row 0 is the top line, column 0 the left
character, matching the 0-based `(x, y)` conventions in `mapmodel`.

Legend: `#` wall, `o` small obstacle, `E` enemy, `P` player, `.` open. When several things
share a cell the most important is drawn: player, then enemy, then obstacle, then wall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from understudy.jac_examples.rpg.mapmodel import Cell, Layout, layout_from

WALL, OBSTACLE, ENEMY, PLAYER, OPEN = "#", "o", "E", "P", "."
LEGEND = {WALL: "wall", OBSTACLE: "obstacle", ENEMY: "enemy", PLAYER: "player", OPEN: "open"}

# PNG palette (RGB), one colour per legend symbol.
COLOURS = {
    OPEN: (236, 230, 214),
    WALL: (70, 62, 58),
    OBSTACLE: (139, 110, 72),
    ENEMY: (200, 48, 48),
    PLAYER: (40, 110, 220),
}
GRID_LINE = (210, 202, 184)


def _symbols(layout: Layout) -> dict[Cell, str]:
    """Symbol per non-open cell; later assignments win, so order encodes precedence."""
    cells: dict[Cell, str] = {}
    cells.update((c, WALL) for c in layout.walls)
    cells.update((c, OBSTACLE) for c in layout.obstacles)
    cells.update((c, ENEMY) for c in layout.enemies)
    if layout.player is not None:
        cells[layout.player] = PLAYER
    return cells


def ascii_grid(map_like: Any) -> str:
    """The map as `height` lines of `width` characters (no trailing newline)."""
    layout = layout_from(map_like)
    symbols = _symbols(layout)
    return "\n".join("".join(symbols.get((x, y), OPEN) for x in range(layout.width)) for y in range(layout.height))


def render_png(map_like: Any, path: str | Path, cell: int = 16) -> Path:
    """Draw the map as a PNG with `cell`-pixel squares; returns the written path."""
    from PIL import Image, ImageDraw  # imported here so ASCII rendering needs no Pillow

    if cell < 2:
        raise ValueError("cell must be at least 2 pixels")
    layout = layout_from(map_like)
    symbols = _symbols(layout)
    image = Image.new("RGB", (layout.width * cell, layout.height * cell), COLOURS[OPEN])
    draw = ImageDraw.Draw(image)
    for y in range(layout.height):
        for x in range(layout.width):
            box = (x * cell, y * cell, (x + 1) * cell - 1, (y + 1) * cell - 1)
            symbol = symbols.get((x, y), OPEN)
            if symbol in (ENEMY, PLAYER):
                # Entities as discs on the floor colour, so they read apart from blocks.
                draw.rectangle(box, fill=COLOURS[OPEN], outline=GRID_LINE)
                inset = max(1, cell // 6)
                draw.ellipse((box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset), fill=COLOURS[symbol])
            else:
                draw.rectangle(box, fill=COLOURS[symbol], outline=GRID_LINE)
    out = Path(path)
    image.save(out, format="PNG")
    return out
