"""Matplotlib set-up shared by the report sections (headless, one style)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save", "caption", "read_caption"]


def caption(fig) -> str:
  """A caption from the figure's panel titles ("Left: ...; right: ..." for two panels)."""
  titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
  if len(titles) <= 1:
    return titles[0] if titles else ""
  names = ["Left", "right"] if len(titles) == 2 else [f"({chr(97 + i)})" for i in range(len(titles))]
  return "; ".join(f"{n}: {t}" for n, t in zip(names, titles)) + "."


def save(fig, path, text: str | None = None) -> str:
  """Saves a figure as PNG with its caption (``text``, else :func:`caption`) in the file's metadata."""
  fig.tight_layout()
  fig.savefig(path, dpi=110, metadata={"Description": text if text is not None else caption(fig)})
  plt.close(fig)
  return str(path)


def read_caption(path) -> str:
  """The caption :func:`save` stored in a PNG ('' if none)."""
  from PIL import Image
  with Image.open(path) as im:
    return str(im.info.get("Description", ""))
