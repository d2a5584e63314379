"""Reading a rendered PDF back as a person would: Poppler's text, word boxes, fonts and page images.

Poppler's tools come from Debian's poppler-utils (bin/test installs it). Page images go
to var/test-artifacts/ (git-ignored), to be looked at.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"

# pdftotext marks right-to-left runs with embedding controls; the text between them
# is in logical order.
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def _poppler(tool: str, *args: str, data: bytes) -> str:
    if shutil.which(tool) is None:
        raise AssertionError(f"{tool} is missing: install Debian's poppler-utils (bin/test does).")
    result = subprocess.run([tool, *args], input=data, capture_output=True, check=True, timeout=60)
    return result.stdout.decode()


def text(pdf: bytes, *, layout: bool = False) -> str:
    """The PDF's text as pdftotext reads it, bidi controls removed, in NFC.

    pdftotext reads each printed line left to right and gives each right-to-left run
    in logical order: a Hebrew "street 5", printed with the 5 at the left end of the
    line, reads back as "5 street".
    """
    raw = _poppler("pdftotext", "-enc", "UTF-8", *(["-layout"] if layout else []), "-", "-", data=pdf)
    return unicodedata.normalize("NFC", raw.translate(_BIDI_CONTROLS))


def flat_text(pdf: bytes) -> str:
    """text(), all runs of white space (wrapped lines, cell gaps) made one space."""
    return " ".join(text(pdf).split())


def logical(value: str) -> str:
    return unicodedata.normalize("NFC", value)


@dataclass(frozen=True)
class Word:
    page: int
    text: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def _band(self) -> tuple[float, float]:
        # Poppler's boxes span the font's whole ascent and descent, more than a tight
        # line height: the boxes of two lines set solid overlap by a point or so. Their
        # middle halves (where the letters' bodies are) never do, unless text is
        # printed over text.
        quarter = (self.y_max - self.y_min) / 4
        return self.y_min + quarter, self.y_max - quarter

    def overlaps(self, other: Word, tolerance: float = 0.2) -> bool:
        (top, bottom), (other_top, other_bottom) = self._band(), other._band()
        return (
            self.page == other.page
            and self.x_min + tolerance < other.x_max
            and other.x_min + tolerance < self.x_max
            and top < other_bottom
            and other_top < bottom
        )


_PAGE = re.compile(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', re.S)
_WORD = re.compile(
    r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>', re.S
)


def words(pdf: bytes) -> tuple[list[tuple[float, float]], list[Word]]:
    """The page sizes and every word with its box (points, origin top left).

    A right-to-left word comes as printed, its letters in visual order.
    """
    out = _poppler("pdftotext", "-enc", "UTF-8", "-bbox", "-", "-", data=pdf)
    sizes, found = [], []
    for number, (width, height, body) in enumerate(_PAGE.findall(out), start=1):
        sizes.append((float(width), float(height)))
        for x_min, y_min, x_max, y_max, word in _WORD.findall(body):
            found.append(
                Word(
                    number,
                    logical(html.unescape(word).translate(_BIDI_CONTROLS)),
                    *map(float, (x_min, y_min, x_max, y_max)),
                )
            )
    return sizes, found


def overlapping(found: list[Word]) -> list[tuple[Word, Word]]:
    """Pairs of words whose boxes overlap: text printed over text."""
    pairs = []
    ordered = sorted(found, key=lambda word: (word.page, word.y_min))
    for index, word in enumerate(ordered):
        for other in ordered[index + 1 :]:
            if other.page != word.page or other.y_min >= word.y_max:
                break
            if word.overlaps(other):
                pairs.append((word, other))
    return pairs


def fonts(pdf: bytes) -> list[str]:
    """The embedded fonts' names, subset prefixes removed ("Noto-Sans-Arabic")."""
    out = _poppler("pdffonts", "-", data=pdf).splitlines()[2:]
    return [line.split()[0].split("+", 1)[-1] for line in out if line.strip()]


def first_page_pixels(pdf: bytes, dpi: int = 100) -> bytes:
    """The first page as raw greyscale pixels (a PGM image from pdftoppm)."""
    if shutil.which("pdftoppm") is None:
        raise AssertionError("pdftoppm is missing: install Debian's poppler-utils (bin/test does).")
    result = subprocess.run(
        ["pdftoppm", "-gray", "-r", str(dpi), "-f", "1", "-l", "1", "-"],
        input=pdf,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def save_pages(pdf: bytes, name: str) -> list[Path]:
    """Writes the PDF and a 60 dpi PNG of each page under var/test-artifacts/; returns the PNGs."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob(f"{name}-*.png"):
        old.unlink()
    path = ARTIFACTS / f"{name}.pdf"
    path.write_bytes(pdf)
    if shutil.which("pdftoppm") is None:
        raise AssertionError("pdftoppm is missing: install Debian's poppler-utils (bin/test does).")
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(path), str(ARTIFACTS / name)], check=True, timeout=60)
    return sorted(ARTIFACTS.glob(f"{name}-*.png"))
