import pytest
import torch

from metanlp_cli.checkpoint import load_checkpoint, save_checkpoint
from metanlp_cli.errors import MetaNLPError


def test_round_trip_keeps_tensors_and_plain_data(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 7,
        "config": {"algo": {"_target_": "x", "inner_lr": 0.1}},
        "tokenizer": {"vocabulary": ["<pad>"]},
    }
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", payload)
    loaded = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert loaded["step"] == 7 and loaded["config"] == payload["config"]
    torch.testing.assert_close(loaded["model"]["weight"], model.weight.detach())
    fresh = torch.optim.Adam(model.parameters())
    fresh.load_state_dict(loaded["optimizer"])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]  # no temporary left


def test_run_directory_resolves_to_its_best_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", {"step": 3})
    assert load_checkpoint(tmp_path)["step"] == 3


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def crash_midway(payload, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(MetaNLPError, match="file not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MetaNLPError, match="not a readable metanlp checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(MetaNLPError, match="not a metanlp checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
