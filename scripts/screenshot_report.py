#!/usr/bin/env python3
"""Check a `hits-stamps run` report in headless Chromium and screenshot its first screen.

    python scripts/screenshot_report.py RUN_DIR/report.html --out shot.png [--window-size 1280,2000]

Checks, each failing with a non-zero exit and a message:
1. static: every <img> has a data:image/png;base64 URI that decodes to a PNG (Pillow verifies it),
   and no element loads anything from outside the file (src/href other than data: or #anchors,
   <link>, <script src>, CSS url(...) to anything but data:);
2. rendered: Chromium (`--headless --dump-dom`) loads a copy of the page with a small probe script
   that records every image's natural size after loading; each must be larger than 0x0 (a broken
   image has 0x0), and the rendered page has as many images as the file;
3. a screenshot of the first screen is written to --out (optionally shrunk to --max-width and
   reduced to a 256-colour palette to keep it small).

Needs the Debian package `chromium` (/usr/bin/chromium) or --chromium PATH. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--disable-dev-shm-usage",
)
# Appended to a temporary copy only (the report itself has no script): after every image has loaded
# or failed, write each one's natural size into a data attribute that --dump-dom shows.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = document.images;
  for (var i = 0; i < imgs.length; i++) {
    imgs[i].setAttribute("data-probe", imgs[i].complete + ":" + imgs[i].naturalWidth + "x" + imgs[i].naturalHeight);
  }
  document.body.setAttribute("data-probe-done", String(imgs.length));
});
</script>"""


class ReportError(Exception):
    """The report failed a check."""


class _Scan(HTMLParser):
    """Collects <img> sources and every attribute or tag that could load an external resource."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[str] = []
        self.external: list[str] = []
        self.probes: list[str] = []
        self.probe_done: str | None = None
        self._in_style = False
        self.styles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
            if "data-probe" in a:
                self.probes.append(a["data-probe"] or "")
        if tag == "body" and "data-probe-done" in a:
            self.probe_done = a["data-probe-done"]
        if tag == "link":
            self.external.append(f"<link href={a.get('href')!r}>")
        if tag == "script" and a.get("src"):
            self.external.append(f"<script src={a.get('src')!r}>")
        for key in ("src", "href", "srcset", "poster", "data"):
            v = a.get(key)
            if v and not (v.startswith("data:") or v.startswith("#")):
                self.external.append(f"<{tag} {key}={v[:80]!r}>")
        if a.get("style"):
            self.styles.append(a["style"] or "")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def scan(text: str) -> _Scan:
    s = _Scan()
    s.feed(text)
    s.close()
    return s


def check_static(text: str) -> dict:
    """Check 1; returns {"images": n, "image_sizes": [(w, h), ...]}."""
    from PIL import Image

    s = scan(text)
    problems = list(s.external)
    for css in s.styles:
        for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", css):
            if not url.startswith("data:"):
                problems.append(f"CSS url({url[:80]})")
        if "@import" in css:
            problems.append("CSS @import")
    sizes = []
    for i, src in enumerate(s.imgs):
        if not src.startswith(DATA_PNG):
            problems.append(f"image {i}: src is not a base64 PNG data URI ({src[:40]!r})")
            continue
        try:
            raw = base64.b64decode(src[len(DATA_PNG):], validate=True)
        except (binascii.Error, ValueError) as exc:
            problems.append(f"image {i}: base64 does not decode ({exc})")
            continue
        if not raw.startswith(PNG_SIGNATURE):
            problems.append(f"image {i}: decoded bytes are not a PNG")
            continue
        try:
            with Image.open(io.BytesIO(raw)) as im:
                im.verify()
            with Image.open(io.BytesIO(raw)) as im:
                sizes.append(im.size)
        except Exception as exc:  # Pillow raises many types for corrupt files
            problems.append(f"image {i}: PNG does not decode ({exc})")
    if problems:
        raise ReportError("static check failed: " + "; ".join(problems[:10]))
    return {"images": len(s.imgs), "image_sizes": sizes}


def find_chromium(explicit: str | None = None) -> str:
    for cand in ([explicit] if explicit else []) + ["/usr/bin/chromium", "chromium", "chromium-browser",
                                                     "google-chrome"]:
        path = shutil.which(cand) if cand else None
        if path:
            return path
    raise ReportError("Chromium not found (install the Debian package `chromium` or pass --chromium)")


def _chromium(binary: str, args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def check_rendered(report: Path, binary: str, expected: int, timeout: float = 120) -> dict:
    """Check 2: load a probed copy in Chromium and read back every image's natural size."""
    text = report.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="hs-chromium-") as tmp:
        probed = Path(tmp) / "probed.html"
        probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        res = _chromium(binary, ["--virtual-time-budget=20000", "--dump-dom", probed.as_uri()],
                        Path(tmp) / "profile", timeout)
    dom = res.stdout
    if res.returncode != 0 or "<html" not in dom:
        raise ReportError(f"chromium --dump-dom failed (exit {res.returncode}): {res.stderr.strip()[-500:]}")
    s = scan(dom)
    if s.probe_done is None:
        raise ReportError("the page's load event did not fire in Chromium (probe missing)")
    broken = [i for i, p in enumerate(s.probes) if not re.fullmatch(r"true:[1-9]\d*x[1-9]\d*", p)]
    if len(s.probes) != expected or len(s.imgs) != expected:
        raise ReportError(f"Chromium rendered {len(s.probes)} probed images of {len(s.imgs)}; the file has {expected}")
    if broken:
        raise ReportError(f"broken images in Chromium: {[(i, s.probes[i]) for i in broken[:10]]}")
    return {"rendered_images": len(s.probes), "broken": 0}


def screenshot(report: Path, out: Path, binary: str, window: str, timeout: float = 120,
               max_width: int | None = None, palette: bool = False) -> dict:
    """Check 3: the first screen as PNG."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hs-chromium-") as tmp:
        shot = Path(tmp) / "shot.png"
        res = _chromium(binary, ["--virtual-time-budget=20000", f"--window-size={window}",
                                 f"--screenshot={shot}", report.resolve().as_uri()], Path(tmp) / "profile", timeout)
        if not shot.exists():
            raise ReportError(
                f"chromium --screenshot wrote nothing (exit {res.returncode}): {res.stderr.strip()[-500:]}"
            )
        with Image.open(shot) as im:
            im = im.convert("RGB")
            if max_width and im.width > max_width:
                im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
            if palette:
                im = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            im.save(out, optimize=True)
            size = im.size
    return {"screenshot": str(out), "screenshot_size": list(size), "screenshot_bytes": out.stat().st_size}


def check_report(report: Path, out: Path | None = None, window: str = "1280,2000", chromium: str | None = None,
                 max_width: int | None = None, palette: bool = False) -> dict:
    """Run every check; returns the JSON summary (raises ReportError on the first failure)."""
    report = Path(report)
    if not report.is_file():
        raise ReportError(f"{report}: no such file")
    result = {"report": str(report), "bytes": report.stat().st_size}
    static = check_static(report.read_text(encoding="utf-8"))
    result["images"] = static["images"]
    binary = find_chromium(chromium)
    result.update(check_rendered(report, binary, static["images"]))
    if out is not None:
        result.update(screenshot(report, Path(out), binary, window, max_width=max_width, palette=palette))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="report.html of a `hits-stamps run` directory")
    ap.add_argument("--out", type=Path, default=None, help="screenshot PNG of the first screen")
    ap.add_argument("--window-size", default="1280,2000", help="browser window WIDTH,HEIGHT (default 1280,2000)")
    ap.add_argument("--chromium", default=None, help="Chromium binary (default /usr/bin/chromium)")
    ap.add_argument("--max-width", type=int, default=None, help="shrink the screenshot to this width")
    ap.add_argument("--palette", action="store_true", help="save the screenshot with a 256-colour palette")
    args = ap.parse_args(argv)
    try:
        result = check_report(args.report, args.out, args.window_size, args.chromium, args.max_width, args.palette)
    except (ReportError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
