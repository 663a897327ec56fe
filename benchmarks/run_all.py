"""Run every benchmark in this folder and write benchmarks/RESULTS.md.

Each benchmark is a script that prints a final line holding one JSON object. This runner executes them
one after another (never in parallel: the machine is small and timings must not disturb each other),
collects those objects and writes a Markdown table with the machine's description. Every ``*.py`` here
except this runner is a benchmark (see ``DESCRIPTIONS``). They run with this interpreter, so optional peers
(``peer_distill`` uses textbrewer when it can import it) follow the environment that runs this file.

    python benchmarks/run_all.py [--only NAME ...] [--out benchmarks/RESULTS.md]
    python benchmarks/run_all.py --gpu      # on a GPU machine: the speed benchmarks in bf16 -> RESULTS-gpu.md

``--gpu`` passes ``--device cuda --dtype bf16`` to the benchmarks in ``DEVICE_AWARE``; the others measure
CPU-side work (vocabulary merging, the peer loop) and run as they do without it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"run_all.py", "common.py"}
DEVICE_AWARE = {"inference_latency", "train_throughput"}  # accept --device/--dtype (benchmarks/common.py)
# Every benchmark script in this folder runs (discovered by file name); this says what each one measures.
DESCRIPTIONS = {
    "inference_latency": "student vs teacher inference latency (batch 1 and 32; CPU, or the GPU with --gpu), throughput, parameter ratio",
    "peer_distill": "same distillation run: mergedistill's loss path vs a peer (textbrewer if importable, else an HF DistilBERT-style loop)",
    "train_throughput": "student training-step throughput, MFU-style ratio, masked-only head, offline vs online targets",
    "vocab_losses": "the step's vocabulary-wide loss work: MLM + top-k KD from one log-softmax vs the two separate terms; MLM alone vs torch",
    "vocab_merge": "merging 250k + 120k + 50k teacher vocabularies: time and peak memory",
    "data_scale": "the Arrow data path at 25/100/400 MB of text, 250k XLM-R unigram: peak RSS, paragraphs/s, vs raw tokenizers",
}


def discover(only=None) -> list[Path]:
    """The benchmark scripts to run, in name order (``only``: file stems)."""
    return sorted(p for p in HERE.glob("*.py") if p.name not in SKIP and (not only or p.stem in only))


def machine_info() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="benchmark file stems to run")
    parser.add_argument("--out", default=None, help="default: benchmarks/RESULTS.md (RESULTS-gpu.md with --gpu)")
    parser.add_argument("--gpu", action="store_true", help="run the device-aware benchmarks on cuda in bf16")
    args = parser.parse_args(argv)
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            parser.error("--gpu: torch sees no CUDA device on this machine")
    out = args.out or str(HERE / ("RESULTS-gpu.md" if args.gpu else "RESULTS.md"))
    scripts = discover(args.only)
    rows, failed = [], []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        extra = ["--device", "cuda", "--dtype", "bf16"] if args.gpu and script.stem in DEVICE_AWARE else []
        proc = subprocess.run([sys.executable, str(script), *extra], capture_output=True, text=True)
        sys.stdout.write(proc.stdout[-2000:])
        result = last_json_line(proc.stdout)
        if proc.returncode != 0 or result is None:
            failed.append(script.name)
            sys.stderr.write(proc.stderr[-3000:])
            result = {"error": f"exit {proc.returncode}"}
        rows.append((script.stem, result))
    info = machine_info()
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{'make bench-gpu' if args.gpu else 'make bench'}` (`python benchmarks/run_all.py{' --gpu' if args.gpu else ''}`) "
        f"on {datetime.date.today().isoformat()}."
        + (" inference_latency and train_throughput ran on the GPU in bf16." if args.gpu else ""),
        "Ratios are measured within one run; absolute numbers depend on the machine and its load.",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
        "| benchmark | what it measures | result (final JSON line) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {DESCRIPTIONS.get(name, '')} | `{json.dumps(result, sort_keys=True)}` |" for name, result in rows
    ]
    from mergedistill.io import write_text_atomic

    write_text_atomic(out, "\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
