"""The README's gallery: before/after pairs of real dark photos, one R/L decomposition, the demo page.

    .venv/bin/python scripts/gallery.py                       # shipped bundle, ../shared/datasets/real-lowlight
    .venv/bin/python scripts/gallery.py --no-screenshot       # without chromium

Run it again whenever the shipped bundle changes: it rewrites ``docs/images/gallery-*.jpg``,
``docs/images/decomposition.jpg``, ``docs/images/demo.jpg`` and the block between the gallery markers in
README.md (the α each photo got comes from the bundle, so the captions change with it). The photos are
downscaled research test images (DICM: Lee, Lee & Kim, IEEE TIP 2013; LIME: Guo, Li & Ling, IEEE TIP 2017,
as redistributed with Zero-DCE), shown with their attribution as papers show them; the total stays under
``--budget-kb``. The screenshot needs Playwright and Debian's chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kind_serve.model import KinD  # noqa: E402
from kind_serve.model.image import from_tensor, to_tensor  # noqa: E402
from kind_serve.model.normalise import normalise  # noqa: E402

PHOTOS = ["DICM/14.jpg", "DICM/01.jpg", "LIME/10.bmp", "LIME/8.bmp"]
DECOMPOSED = "DICM/14.jpg"
SIDE = 440  # longest side of each half of a pair
GAP = 6
READY = "() => !document.body.hasAttribute('aria-busy') && document.getElementById('after').naturalWidth > 0"
START, END = "<!-- gallery:start (scripts/gallery.py writes this block) -->", "<!-- gallery:end -->"
ATTRIBUTION = (
    "Photos: DICM (Lee, Lee & Kim, IEEE TIP 2013) and LIME (Guo, Li & Ling, IEEE TIP 2017) test images, "
    "as redistributed with Zero-DCE; research use, downscaled."
)


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")


def _load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
    return image


def _row(images: list[Image.Image]) -> Image.Image:
    width = sum(i.width for i in images) + GAP * (len(images) - 1)
    sheet = Image.new("RGB", (width, max(i.height for i in images)), (255, 255, 255))
    x = 0
    for image in images:
        sheet.paste(image, (x, 0))
        x += image.width + GAP
    return sheet


def _save_jpeg(image: Image.Image, path: Path, quality: int = 82) -> int:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    path.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def pairs(kind: KinD, data: Path, out: Path) -> list[tuple[str, str, float]]:
    """Before|after JPEG per photo with automatic α: (photo, file name, α)."""
    made = []
    for rel in PHOTOS:
        image = _load(data / rel)
        result, alpha = kind.enhance_tensor(to_tensor(image), "auto")
        name = "gallery-" + rel.lower().replace("/", "-").rsplit(".", 1)[0] + ".jpg"
        size = _save_jpeg(_row([image, from_tensor(result)]), out / name)
        _say(f"{rel}: auto α = {alpha:.2f}, {out / name} ({size // 1024} KB)")
        made.append((rel, name, alpha))
    return made


def decomposition(kind: KinD, data: Path, out: Path) -> float:
    """Input | R | L | L adjusted to the automatic α, for :data:`DECOMPOSED`; returns that α."""
    image = _load(data / DECOMPOSED)
    x = to_tensor(image)
    with torch.inference_mode():
        s, span = normalise(x)
        alpha = kind.choose_alpha(s, span=span)
        r, l = kind.decompose(s)
        l_adj = kind.adjust(l, alpha)
    grey = [from_tensor(t.expand(-1, 3, -1, -1)) for t in (l, l_adj)]
    size = _save_jpeg(_row([image, from_tensor(r), *grey]), out / "decomposition.jpg")
    _say(f"{DECOMPOSED}: decomposition with α = {alpha:.2f}, {out / 'decomposition.jpg'} ({size // 1024} KB)")
    return alpha


def screenshot(checkpoint: Path, photo: Path, out: Path) -> bool:
    """The demo page after a photo and its decomposition, as a phone-friendly-width desktop screenshot."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        _say("no screenshot: needs playwright (dev extra) and chromium (apt-get install chromium)")
        return False
    import uvicorn

    from kind_serve.service.app import create_app
    from kind_serve.service.config import Settings

    app = create_app(Settings(checkpoint=checkpoint, device="cpu", json_logs=False, warmup=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 900, "height": 900}, device_scale_factor=1)
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#file", str(photo))
            page.wait_for_function(READY, timeout=120_000)
            page.click("#decompose")
            page.wait_for_function("() => document.querySelectorAll('#components img').length === 3", timeout=120_000)
            page.evaluate("() => document.getElementById('compare').style.setProperty('--split', '45%')")
            shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    shot.thumbnail((720, 2000), Image.Resampling.LANCZOS)
    size = _save_jpeg(shot, out / "demo.jpg", quality=78)
    _say(f"demo page: {out / 'demo.jpg'} ({size // 1024} KB)")
    return True


def readme_block(made: list[tuple[str, str, float]], alpha: float, with_demo: bool) -> str:
    captions = ", ".join(f"{rel} α {a:.1f}" for rel, _, a in made)
    lines = [
        START,
        "## Gallery",
        "",
        f"Real dark photos, before and after (the shipped bundle, automatic α: {captions}).",
        "",
        *[f'<img src="docs/images/{name}" alt="{rel} before and after" width="49%">' for rel, name, _ in made],
        "",
        f"Decomposition of {DECOMPOSED}: input, reflectance R, illumination L, L adjusted to α {alpha:.1f}.",
        "",
        '<img src="docs/images/decomposition.jpg" alt="input, R, L and adjusted L" width="98%">',
        "",
    ]
    if with_demo:
        lines += [
            "The demo page at `/` of `kind serve` (slider, before/after split, decomposition, download):",
            "",
            '<img src="docs/images/demo.jpg" alt="the demo page" width="60%">',
            "",
        ]
    lines += [f"<sub>{ATTRIBUTION} Regenerate with `scripts/gallery.py`.</sub>", END]
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    if START.split(" (")[0] in text:
        text = re.sub(re.escape(START.split(" (")[0]) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:  # first run: after the title paragraph, so the pictures come near the top
        head, sep, rest = text.partition("\n## ")
        text = head.rstrip() + "\n\n" + block + "\n\n" + sep.lstrip("\n") + rest if sep else text + "\n" + block
    readme.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "kind-sice")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "real-lowlight")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--no-screenshot", action="store_true")
    parser.add_argument("--budget-kb", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    kind = KinD.load(args.checkpoint).prepare("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    made = pairs(kind, args.data, args.out)
    alpha = decomposition(kind, args.data, args.out)
    shot = not args.no_screenshot and screenshot(args.checkpoint, args.data / DECOMPOSED, args.out)
    with_demo = shot or (args.out / "demo.jpg").is_file()
    total = sum(p.stat().st_size for p in args.out.glob("*.jpg"))
    _say(f"total {total // 1024} KB in {args.out} (budget {args.budget_kb} KB)")
    if total > args.budget_kb * 1024:
        _say("over budget: lower SIDE or the JPEG quality")
        return 1
    update_readme(args.readme, readme_block(made, alpha, with_demo))
    _say(f"updated the gallery block in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
