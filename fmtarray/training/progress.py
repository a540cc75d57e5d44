"""Progress display: MATLAB's verbose table and a progress bar (tqdm when installed)."""

from __future__ import annotations

import importlib.util
import math
import sys
import time


class _TextBar:
    def __init__(self, total, stream):
        self.total, self.n, self.stream, self.post = total, 0, stream, ""
        self.t0 = time.perf_counter()

    def update(self, k=1):
        self.n += k
        self._draw()

    def set_postfix_str(self, s):
        self.post = s

    def _draw(self):
        w = 30
        frac = self.n / self.total if self.total else 1.0
        done = int(w * frac)
        el = time.perf_counter() - self.t0
        self.stream.write(f"\r[{'#' * done}{'.' * (w - done)}] {self.n}/{self.total} "
                          f"{el:6.1f}s {self.post}")
        self.stream.flush()

    def write(self, s):
        self.stream.write("\r" + s + "\n")
        self._draw()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


def _make_bar(options, total):
    on = options.progress
    if on == "auto":
        on = bool(options.verbose) and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if not on:
        return None
    if importlib.util.find_spec("tqdm") is not None:
        from tqdm.auto import tqdm

        return tqdm(total=total, file=sys.stderr, unit="it", leave=True, dynamic_ncols=True)
    return _TextBar(total, sys.stderr)


_HEADER = ("|  Epoch  |  Iteration  |  Time Elapsed  |  Mini-batch  |  Mini-batch  |  Validation  |"
           "  Validation  |  Base Learn  |\n|         |             |   (hh:mm:ss)   |     Loss     |"
           "   Accuracy   |     Loss     |   Accuracy   |     Rate     |")


def _fmt_num(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return " " * 12
    return f"{v:11.2f}%" if pct else f"{v:12.4f}"


def _row(epoch, it, el, loss, acc, vloss, vacc, lr):
    h, rem = divmod(int(el), 3600)
    m, s = divmod(rem, 60)
    return (f"| {epoch:7d} | {it:11d} | {h:02d}:{m:02d}:{s:02d}       | {_fmt_num(loss)} | "
            f"{_fmt_num(acc, True)} | {_fmt_num(vloss)} | {_fmt_num(vacc, True)} | {lr:12.4g} |")
