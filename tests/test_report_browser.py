"""The report opens in a real browser (headless Chromium): every section renders with content and every
embedded image decodes. Skipped when no Chromium is installed (Debian: `apt-get install chromium`;
`.ci/run` installs it)."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ehrxdiff_core.evaluation.report import SECTIONS, build_report
from test_eval_report import demo_shaped_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# Run in the page after it loads: decode every <img>, measure every section, and write the findings into
# the DOM, which `--dump-dom` prints.
CHECK_JS = """
window.addEventListener("load", () => {
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  const images = Array.from(document.images).map((img) => {
    // a broken image has no natural size; drawing it decodes every pixel (an error throws)
    let decoded = img.complete && img.naturalWidth > 0;
    if (decoded) {
      try {
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        ctx.drawImage(img, 0, 0);
      } catch (e) {
        decoded = false;
      }
    }
    const box = img.getBoundingClientRect();
    return {alt: img.alt, decoded: decoded, width: img.naturalWidth, shown: box.width > 0 && box.height > 0};
  });
  const sections = Array.from(document.querySelectorAll("h2")).map((h) => {
    let body = 0, tables = 0;
    for (let n = h.nextElementSibling; n && n.tagName !== "H2"; n = n.nextElementSibling) {
      body += n.getBoundingClientRect().height;
      tables += n.tagName === "TABLE" ? 1 : n.querySelectorAll("table").length;
    }
    return {id: h.id, title: h.textContent, height: h.getBoundingClientRect().height, body: body, tables: tables};
  });
  const links = Array.from(document.querySelectorAll('a[href^="#"]'))
    .map((a) => a.getAttribute("href").slice(1)).filter((id) => !document.getElementById(id));
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images: images, sections: sections, dangling_links: links});
  document.body.appendChild(out);
});
"""


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)}); on Debian: apt-get install chromium")


def render(report: Path, workdir: Path, attempts: int = 3) -> dict:
    """Open a copy of `report` (plus the checking script) in headless Chromium; what the script found.

    `--dump-dom` prints the page once it has loaded and the virtual time budget has run out; on a busy
    machine it rarely prints it before the load event ran the script, so a run without a result is retried.
    """
    page = workdir / "page.html"
    page.write_text(report.read_text().replace("</body>", f"<script>{CHECK_JS}</script></body>"))
    binary = chromium()
    for attempt in range(attempts):
        profile = workdir / f"profile{attempt}"
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, HOME=str(workdir)))
        found = re.search(r'<pre id="browser-check">(.*?)</pre>', proc.stdout, flags=re.S)
        if found:
            return json.loads(html.unescape(found.group(1)))
    raise AssertionError(
        f"Chromium printed no check result in {attempts} runs (exit {proc.returncode}):\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )


def check_rendered(result: dict) -> None:
    """Every section of the report is there, in order, with visible content; every image decoded and is shown."""
    assert [s["title"] for s in result["sections"]] == list(SECTIONS)
    for s in result["sections"]:
        assert s["height"] > 0 and s["body"] > 50, s
        assert s["tables"] or s["title"] == "Training curves", s  # the curves section holds images only
    images = result["images"]
    assert images, "no <img> in the report"
    broken = [i for i in images if not (i["decoded"] and i["shown"])]
    assert not broken, f"{len(broken)} of {len(images)} images did not decode or are not shown: {broken[:5]}"
    assert not result["dangling_links"]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    inputs, cfg = demo_shaped_run(root / "results", grid_pairs=4)
    out = root / "report.html"
    build_report(inputs, cfg, out)
    return out


def test_every_section_renders_and_every_image_decodes(demo_report, tmp_path):
    result = render(demo_report, tmp_path)
    check_rendered(result)
    alts = [i["alt"] for i in result["images"]]
    assert alts.count("generated") == 4 and alts.count("previous") == 4 and alts.count("real target") == 4
    assert sum(a.endswith(" loss") for a in alts) == 4  # VAE, CLIP, LDM, evaluator curves


def test_a_broken_image_is_caught(demo_report, tmp_path):
    """The check itself: an image whose PNG header is damaged (zeros over the signature and the header
    chunk) is reported as not decoded."""
    doc = demo_report.read_text()
    first = re.search(r'alt="generated" src="data:image/png;base64,([^"]+)"', doc)
    png = base64.b64decode(first.group(1))
    damaged = base64.b64encode(bytes(33) + png[33:]).decode()
    broken = tmp_path / "broken.html"
    broken.write_text(doc.replace(first.group(1), damaged, 1))
    result = render(broken, tmp_path)
    bad = [i for i in result["images"] if not i["decoded"]]
    assert len(bad) == 1 and bad[0]["alt"] == "generated"
