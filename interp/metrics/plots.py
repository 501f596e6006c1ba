"""Small PNG charts for interp-eval, drawn with PIL (no plotting library is a dependency): bars per scheme
with a ±std whisker, and one curve per sequence of its steps."""
import math

from PIL import Image, ImageDraw, ImageFont

from ldm.files import atomic_path

PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
PANEL, MARGIN = (320, 260), (56, 34, 16, 44)  # panel size; left, top, right, bottom margins
COLUMNS = 4


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has one size
        return ImageFont.load_default()


def _save(im: Image.Image, path) -> None:
    with atomic_path(path) as tmp:
        im.save(tmp)


def _ticks(top: float) -> list:
    """About five round tick values from 0 to at least `top`."""
    if not top > 0 or not math.isfinite(top):
        return [0.0, 1.0]
    step = 10 ** math.floor(math.log10(top / 5))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if top / (step * m) <= 5)
    return [k * step for k in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _label(v: float) -> str:
    return f"{v:.3g}"


class _Axes:
    """One panel: a title, a y axis from 0 to the top tick, and a mapping of data to pixels."""

    def __init__(self, draw, origin, title: str, top: float, size=PANEL):
        self.draw, (self.x0, self.y0) = draw, origin
        left, up, right, down = MARGIN
        self.box = (self.x0 + left, self.y0 + up, self.x0 + size[0] - right, self.y0 + size[1] - down)
        self.ticks = _ticks(top)
        draw.text((self.x0 + size[0] / 2, self.y0 + 8), title, fill="black", font=_font(13), anchor="mt")
        x1, y1, x2, y2 = self.box
        for t in self.ticks:
            y = self.y(t)
            draw.line((x1, y, x2, y), fill="#e5e5e5")
            draw.text((x1 - 4, y), _label(t), fill="#444", font=_font(10), anchor="rm")
        draw.line((x1, y1, x1, y2, x2, y2), fill="black")

    def y(self, v: float) -> float:
        x1, y1, x2, y2 = self.box
        return y2 - (y2 - y1) * max(0.0, v) / self.ticks[-1]


def _figure(panels: int, title: str, legend: list, size=PANEL):
    """A white canvas for `panels` panels of `size`, COLUMNS to a row, a title above and a colour legend below."""
    cols, rows = min(panels, COLUMNS), -(-panels // COLUMNS)
    im = Image.new("RGB", (size[0] * cols, 30 + size[1] * rows + 18 * len(legend) + 8), "white")
    draw = ImageDraw.Draw(im)
    draw.text((im.width / 2, 8), title, fill="black", font=_font(14), anchor="mt")
    for row, name in enumerate(legend):
        y = 30 + size[1] * rows + 18 * row
        draw.rectangle((MARGIN[0], y, MARGIN[0] + 12, y + 12), fill=PALETTE[row % len(PALETTE)])
        draw.text((MARGIN[0] + 18, y + 6), name, fill="black", font=_font(12), anchor="lm")
    origins = [(size[0] * (k % COLUMNS), 30 + size[1] * (k // COLUMNS)) for k in range(panels)]
    return im, draw, origins


def bars(path, title: str, labels: list, panels: list) -> None:
    """`panels`: [(name, [value or None per label], [std or None per label]), ...], one bar per label in the
    legend's colour, its value below it (n/a: no value)."""
    im, draw, origins = _figure(len(panels), title, labels)
    for origin, (name, values, stds) in zip(origins, panels):
        tops = [v + (s or 0) for v, s in zip(values, stds) if v is not None]
        ax = _Axes(draw, origin, name, max(tops, default=1.0))
        x1, _, x2, y2 = ax.box
        width = (x2 - x1) / max(1, len(labels))
        for i, (v, s) in enumerate(zip(values, stds)):
            cx = x1 + width * (i + 0.5)
            if v is not None:
                draw.rectangle((cx - width * 0.35, ax.y(v), cx + width * 0.35, y2), fill=PALETTE[i % len(PALETTE)])
                if s:
                    draw.line((cx, ax.y(v - s), cx, ax.y(v + s)), fill="black", width=2)
                    draw.line((cx - 5, ax.y(v + s), cx + 5, ax.y(v + s)), fill="black", width=2)
            draw.text((cx, y2 + 6), "n/a" if v is None else _label(v), fill="#444", font=_font(10), anchor="ma")
    _save(im, path)


def curves(path, title: str, xlabel: str, series: list, legend: list) -> None:
    """`series`: [(legend index, [(x, y), ...]), ...] with x in [0, 1], drawn in the legend's colours."""
    size = (2 * PANEL[0], PANEL[1] + 20)
    im, draw, (origin,) = _figure(1, title, legend, size)
    ax = _Axes(draw, origin, "", max((y for _, pts in series for _, y in pts), default=1.0), size)
    x1, _, x2, y2 = ax.box
    for colour, points in series:
        xy = [(x1 + (x2 - x1) * x, ax.y(y)) for x, y in points]
        draw.line(xy, fill=PALETTE[colour % len(PALETTE)], width=2)
        for x, y in xy:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=PALETTE[colour % len(PALETTE)])
    for t in (0, 0.25, 0.5, 0.75, 1):
        draw.text((x1 + (x2 - x1) * t, y2 + 4), _label(t), fill="#444", font=_font(10), anchor="ma")
    draw.text(((x1 + x2) / 2, y2 + 22), xlabel, fill="black", font=_font(12), anchor="ma")
    _save(im, path)
