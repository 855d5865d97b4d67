"""The chargeback HTML report renders in a headless browser with its charts: a screenshot is taken and its pixels
are checked for the charts' colours (a page that failed to render the SVGs would be white and black only)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

from governance.chargeback import build_chargeback, render_html
from governance.config import parse_governance_config
from governance.period import parse_period
from tests.integration.test_chargeback import GOVERNANCE, replay_fleet

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw pixel rows without filter bytes) of an 8-bit RGB/RGBA PNG (what Chromium
    writes). Minimal on purpose: no imaging dependency for one assertion."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), f"unexpected PNG format depth={depth} colour={colour}"
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray()
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        ftype, row = line[0], bytearray(line[1:])
        for i in range(stride):
            left = row[i - channels] if i >= channels else 0
            up = previous[i]
            upleft = previous[i - channels] if i >= channels else 0
            if ftype == 1:
                row[i] = (row[i] + left) & 0xFF
            elif ftype == 2:
                row[i] = (row[i] + up) & 0xFF
            elif ftype == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                p = left + up - upleft
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
                row[i] = (row[i] + pred) & 0xFF
        out += row
        previous = row
    return width, height, channels, bytes(out)


def _count_colour(pixels: bytes, channels: int, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    count = 0
    r0, g0, b0 = rgb
    for i in range(0, len(pixels), channels):
        if abs(pixels[i] - r0) <= tolerance and abs(pixels[i + 1] - g0) <= tolerance \
                and abs(pixels[i + 2] - b0) <= tolerance:
            count += 1
    return count


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: apt-get install -y chromium")
def test_chargeback_report_renders_with_its_charts(ch_client: Any, ch_database: str, tmp_path: Path) -> None:
    replay_fleet(ch_client, ch_database)
    report = build_chargeback(ch_client, ch_database, parse_period("2026-10"), parse_governance_config(GOVERNANCE))
    assert report.balanced
    page = tmp_path / "chargeback.html"
    page.write_text(render_html(report), encoding="utf-8")
    shot = tmp_path / "chargeback.png"
    profile = tmp_path / "profile"
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000", f"file://{page}"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    width, height, channels, pixels = decode_png(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    # The bar chart and the first trend series are PALETTE[0] (#0072B2), the second series #E69F00.
    assert _count_colour(pixels, channels, (0x00, 0x72, 0xB2)) > 2_000
    assert _count_colour(pixels, channels, (0xE6, 0x9F, 0x00)) > 100
