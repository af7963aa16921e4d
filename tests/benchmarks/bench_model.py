"""CPU backends for the KinD pipeline side by side: eager PyTorch, torch.compile, ONNX Runtime (fp32, int8),
OpenVINO, each at fp32 and the lower precisions this CPU has; plus the tiling waste of a 12-megapixel photo.

Run from the repository root::

    python tests/benchmarks/bench_model.py                          # every backend, 600x400, 5 rounds
    python tests/benchmarks/bench_model.py --backends eager,ort --repeats 3 --quality 6 --tiles

Each backend (a name/precision pair) lives in its own child process, so that its start-up cost (build,
export or compile, then the first call) and its peak RSS are its own. The children are built one at a time,
then timed in interleaved rounds: round after round, each child runs the same image once while the others
wait, so load from other processes on the machine hits every backend alike. Only figures from one such run
compare. Parity is the largest |difference| from eager fp32 on the benchmark image (bundle weights); with
``--quality N`` also the PSNR against eager fp32 on N SICE dev low-light inputs (the int8 adoption rule:
≥ 40 dB). The CPU's flags that decide the precisions are printed with every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kind_serve.model import KinD  # noqa: E402
from kind_serve.model.onnx_export import EnhancePipeline, export_onnx  # noqa: E402
from kind_serve.model.precision import cpu_native  # noqa: E402
from kind_serve.model.recipe import inference_context  # noqa: E402
from kind_serve.model.tiling import split_windows  # noqa: E402
from tests.machine import cpu_flags  # noqa: E402

BUNDLE = ROOT / "checkpoints" / "kind-sice"
SICE = ROOT.parent / "shared" / "datasets" / "sice-sequences"
ALPHA = 5.0
BACKENDS = (
    "eager/fp32",
    "eager/bf16",
    "compile/fp32",
    "compile/bf16",
    "ort/fp32",
    "ort/int8",
    "openvino/fp32",
    "openvino/bf16",
)


def say(message: str = "") -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def tag(backend: str) -> str:
    return backend.replace("/", "-")


def load_kind() -> KinD:
    try:
        return KinD.load(BUNDLE)
    except Exception as exc:  # noqa: BLE001 - speed does not depend on the weights; say which were used
        say(f"{BUNDLE} unusable ({exc}): random weights, parity and quality figures are not meaningful")
        torch.manual_seed(0)
        return KinD()


# -- backends (built inside the child processes) ------------------------------------------------------------
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def build_torch(kind: KinD, precision: str, compiled: bool) -> Runner:
    graph = EnhancePipeline(kind.prepare("cpu"), kind.defaults.mode).eval()
    if compiled:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights become constants that inductor prepacks for oneDNN
        graph = torch.compile(graph, dynamic=False)
    device = torch.device("cpu")

    def run(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        with inference_context(device, precision):
            x = torch.from_numpy(image).contiguous(memory_format=torch.channels_last)
            return graph(x, torch.from_numpy(alpha)).float().numpy()

    return run


def build_ort(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda image, alpha: session.run(["enhanced"], {"image": image, "alpha": alpha})[0]


def build_openvino(path: Path, precision: str, threads: int) -> Runner:
    import openvino as ov

    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return np.array(request.infer({"image": image, "alpha": alpha})[0])

    return run


def quantize_int8(fp32: Path, out: Path, images: list[np.ndarray]) -> Path:
    """ONNX Runtime static int8 (QDQ, per-channel weights) of the networks' convolutions, calibrated on ``images``.

    The composition's separable Gaussian blurs (the only convolutions with non-square kernels) stay fp32: they
    act on the output image itself.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": im, "alpha": np.array([ALPHA], np.float32)} for im in images])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre)).graph
    kernels = {i.name: list(i.dims)[2:] for i in graph.initializer}
    blurs = [n.name for n in graph.node if n.op_type == "Conv" and len(set(kernels.get(n.input[1], [0]))) > 1]
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", "ConvTranspose"],
        nodes_to_exclude=blurs,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def child(backend: str, onnx_dir: Path, threads: int) -> None:
    """A backend serving the parent's commands on stdin: ``run``, ``eval IN OUT ALPHA``, ``quit``."""
    torch.set_num_threads(threads)
    kind_, precision = backend.split("/")
    start = time.perf_counter()
    if kind_ in ("eager", "compile"):
        run = build_torch(load_kind(), precision, compiled=kind_ == "compile")
    elif kind_ == "ort":
        run = build_ort(onnx_dir / f"kind-{precision}.onnx", threads)
    else:
        run = build_openvino(onnx_dir / "kind-fp32.onnx", precision, threads)
    build_s = time.perf_counter() - start
    image = np.load(onnx_dir / "bench_image.npy")
    alpha = np.array([ALPHA], np.float32)
    start = time.perf_counter()
    first = run(image, alpha)
    first_s = time.perf_counter() - start
    np.save(onnx_dir / f"{tag(backend)}.npy", first)
    print(json.dumps({"build_s": build_s, "first_call_s": first_s}), flush=True)  # noqa: T201
    for line in sys.stdin:
        words = line.split()
        if words[0] == "run":
            wall, cpu = time.perf_counter(), time.process_time()
            run(image, alpha)
            print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}), flush=True)  # noqa: T201
        elif words[0] == "eval":
            np.save(words[2], run(np.load(words[1]), np.array([float(words[3])], np.float32)))
            print("{}", flush=True)  # noqa: T201
        else:
            break
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)  # noqa: T201


def peak_rss_mib() -> float:
    """This process's own peak RSS: Linux's VmHWM (ru_maxrss keeps the parent's peak across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Child:
    def __init__(self, backend: str, onnx_dir: Path, threads: int) -> None:
        self.backend = backend
        command = [sys.executable, __file__, "--child", backend, str(onnx_dir), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        self.ready = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.backend}: child exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> float:
        peak = self.ask("quit")["peak_rss_mib"]
        self.proc.wait(30)
        return peak


# -- figures --------------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def dev_inputs(count: int, side: int) -> list[np.ndarray]:
    """The darkest exposure of ``count`` SICE dev scenes, longer side at most ``side``, as 1×3×H×W float32."""
    from PIL import Image

    from kind_serve.training.data import read_sice_frames

    scenes = sorted((scene, frames) for scene, frames in read_sice_frames(SICE).items() if frames[0].split == "dev")
    darkest = [min(frames, key=lambda f: f.mean) for _, frames in scenes]
    images = []
    for frame in darkest[:count]:
        with Image.open(SICE / frame.scene / f"{frame.k}.jpg") as im:
            im = im.convert("RGB")
            im.thumbnail((side, side), Image.Resampling.BOX)
            images.append(np.asarray(im, np.float32).transpose(2, 0, 1)[None] / 255)
    return images


def available(backends: list[str]) -> list[str]:
    keep = []
    for b in backends:
        name, precision = b.split("/")
        if precision == "bf16" and not cpu_native("bf16"):
            say(f"{b}: skipped (no native bf16 on this CPU; eager bf16 is emulated there)")
            continue
        module = {"ort": "onnxruntime", "openvino": "openvino"}.get(name)
        if module:
            try:
                __import__(module)
            except ImportError:
                say(f"{b}: skipped ({module} not installed: pip install 'kind-serve[bench]')")
                continue
        keep.append(b)
    return keep


def compare(args: argparse.Namespace, work: Path) -> None:
    kind = load_kind()
    backends = available(args.backends.split(","))
    width, height = args.size
    rng = np.random.default_rng(0)
    image = (rng.random((1, 3, height, width), dtype=np.float32) ** 2 * 0.35).astype(np.float32)
    np.save(work / "bench_image.npy", image)
    if any(b.split("/")[0] in ("ort", "openvino") for b in backends):
        if args.onnx:  # an earlier `kind export --format onnx` of the same bundle: the export is slow on 2 cores
            shutil.copy(args.onnx, work / "kind-fp32.onnx")
        else:
            start = time.perf_counter()
            export_onnx(kind, work / "kind-fp32.onnx")
            say(f"ONNX export (kind export --format onnx): {time.perf_counter() - start:.1f} s, once per bundle")
    quality_images = dev_inputs(args.quality, args.quality_side) if args.quality else []
    if "ort/int8" in backends:
        start = time.perf_counter()
        calibration = dev_inputs(args.quality + args.calibration, 300)[args.quality :]  # not the scored scenes
        quantize_int8(work / "kind-fp32.onnx", work / "kind-int8.onnx", calibration)
        say(f"int8 static quantization ({len(calibration)} calibration images): {time.perf_counter() - start:.1f} s")

    say(f"\n== {width}x{height}, alpha={ALPHA}, photo mode, {args.threads} thread(s), {args.repeats} rounds ==")
    children: dict[str, Child] = {}
    for b in backends:  # one at a time: a start-up cost is measured on its own
        try:
            children[b] = Child(b, work, args.threads)
        except (RuntimeError, json.JSONDecodeError) as exc:
            say(f"{b}: failed to start ({exc})")
    wall = {b: math.inf for b in children}
    cpu = {b: math.inf for b in children}
    for _ in range(args.repeats):
        for b, c in children.items():
            t = c.ask("run")
            wall[b], cpu[b] = min(wall[b], t["wall"]), min(cpu[b], t["cpu"])
    quality: dict[str, list[float]] = {b: [] for b in children}
    for i, im in enumerate(quality_images):
        np.save(work / f"q{i}.npy", im)
        for b, c in children.items():
            c.ask(f"eval {work / f'q{i}.npy'} {work / f'q{i}-{tag(b)}.npy'} {ALPHA}")
        reference = np.load(work / f"q{i}-eager-fp32.npy")
        for b in children:
            quality[b].append(psnr(np.load(work / f"q{i}-{tag(b)}.npy"), reference))
    peak = {b: c.close() for b, c in children.items()}

    reference = np.load(work / "eager-fp32.npy") if "eager/fp32" in children else None
    base = wall.get("eager/fp32")
    say(
        f"{'backend':15s} {'best ms':>9s} {'vs eager':>9s} {'cpu ms':>8s} {'start s':>8s} {'1st call s':>10s} "
        f"{'peak RSS MiB':>12s} {'max|diff|':>10s} {'PSNR dB':>8s}"
    )
    for b, c in children.items():
        out = np.load(work / f"{tag(b)}.npy")
        diff = float(np.abs(out - reference).max()) if reference is not None else math.nan
        speed = f"{base / wall[b]:.2f}x" if base else "-"
        q = f"{min(quality[b]):.1f}" if quality[b] else "-"
        say(
            f"{b:15s} {wall[b] * 1e3:9.1f} {speed:>9s} {cpu[b] * 1e3:8.1f} {c.ready['build_s']:8.1f} "
            f"{c.ready['first_call_s']:10.2f} {peak[b]:12.0f} {diff:10.1e} {q:>8s}"
        )
    if quality_images:
        say(f"PSNR dB: the worst of {len(quality_images)} SICE dev inputs (≤{args.quality_side} px) against eager fp32")
    if args.save_crops and quality_images:
        save_crops(work, children, len(quality_images), args.save_crops)


def save_crops(work: Path, children: dict, count: int, out: Path) -> None:
    """For a visual check (banding): each backend's output of the darkest dev input, with its error ×20."""
    from PIL import Image

    means = [float(np.load(work / f"q{i}.npy").mean()) for i in range(count)]
    i = int(np.argmin(means))
    ref = np.load(work / f"q{i}-eager-fp32.npy")[0]
    rows = []
    for b in children:
        o = np.load(work / f"q{i}-{tag(b)}.npy")[0]
        rows.append(np.concatenate([o, np.clip(np.abs(o - ref) * 20, 0, 1)], axis=2))
    grid = np.concatenate(rows, axis=1).transpose(1, 2, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(out)
    say(f"visual check: {out} (rows: {', '.join(children)}; right: |error| x20)")


def tile_waste(sizes: list[int], overlaps: list[int]) -> None:
    """Share of network work spent on overlaps (tile pixels / image pixels − 1) for a 12 MP photo."""
    say("\n== tiling a 4000x3000 photo: extra pixels computed (overlaps), windows, largest tile ==")
    for overlap in overlaps:
        for tile in sizes:
            if tile <= overlap + 16:
                continue
            windows = split_windows(3000, 4000, tile, overlap)
            area = sum(w.height * w.width for w in windows)
            largest = max(w.height * w.width for w in windows)
            say(
                f"tile {tile:5d} overlap {overlap:3d}: +{area / 12e6 - 1:6.1%} work, {len(windows):3d} windows, "
                f"largest {largest / 1e6:.2f} MP"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, from {BACKENDS}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads per backend")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (best of)")
    parser.add_argument("--size", type=lambda s: tuple(map(int, s.split("x"))), default=(600, 400), help="WxH")
    parser.add_argument("--quality", type=int, default=0, help="PSNR vs eager fp32 on N SICE dev inputs")
    parser.add_argument("--quality-side", type=int, default=600, help="longer side of the quality inputs")
    parser.add_argument("--calibration", type=int, default=4, help="int8 calibration images (other dev scenes)")
    parser.add_argument("--save-crops", type=Path, help="PNG of each backend's darkest dev output and its error")
    parser.add_argument("--onnx", type=Path, help="reuse this export of the bundle instead of exporting again")
    parser.add_argument("--tiles", action="store_true", help="also the tiling waste of a 12 MP photo")
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], Path(args.child[1]), args.threads)
        return
    load = os.getloadavg()
    say(f"machine: {cpu_flags()}")
    say(f"torch {torch.__version__}; native bf16: {cpu_native('bf16')}; load average {load[0]:.2f}/{load[1]:.2f}")
    with tempfile.TemporaryDirectory() as work:
        compare(args, Path(work))
    if args.tiles:
        tile_waste([512, 640, 768, 1024, 1280, 1536], [32, 64])
    load = os.getloadavg()
    say(f"\nload average after the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")


if __name__ == "__main__":
    main()
