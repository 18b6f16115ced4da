"""Checkpoint I/O: strict loading with named problems, pickle refusal, sharding, atomic writes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from internvl35.checkpoint import CheckpointError, build_model, load_model, save_checkpoint
from internvl35.presets import preset


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(preset("tiny-test"))
    save_checkpoint(model, tmp_path)
    return model, tmp_path


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_save_load_roundtrip_is_exact(saved):
    model, path = saved
    again = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert all(not p.is_meta for p in again.parameters())


def test_missing_key_is_named(saved):
    _, path = saved
    state = _state(path)
    del state["mlp1.1.weight"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): mlp1.1.weight"):
        load_model(path)


def test_unexpected_and_misshaped_keys_are_named(saved):
    _, path = saved
    state = _state(path)
    state["vision_model.extra"] = torch.zeros(2)
    state["mlp1.3.bias"] = torch.zeros(7)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "unexpected (1): vision_model.extra" in str(e.value)
    assert "mlp1.3.bias: checkpoint (7,) vs model (64,)" in str(e.value)


def test_wrong_config_for_weights(saved):
    _, path = saved
    preset("tiny-test-moe").save(path)
    with pytest.raises(CheckpointError, match="missing .*mlp.experts"):
        load_model(path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.pth"])
def test_pickle_checkpoints_are_refused(tmp_path, name):
    preset("tiny-test").save(tmp_path)
    (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match=f"found pickle files: {name}.*never unpickles.*save_pretrained"):
        load_model(tmp_path)


def test_missing_dir_and_corrupt_file(tmp_path, saved):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    _, path = saved
    (path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(path)


def test_sharded_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = build_model(preset("tiny-test-moe"))
    save_checkpoint(model, tmp_path, max_shard_bytes=30_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    again = load_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    shards[0].unlink()
    with pytest.raises(CheckpointError, match="names shard"):
        load_model(tmp_path)


def test_failed_save_leaves_old_file_intact(saved, monkeypatch):
    import internvl35.checkpoint as ckpt

    model, path = saved
    before = (path / "model.safetensors").read_bytes()

    def boom(state, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(model, path)
    assert (path / "model.safetensors").read_bytes() == before
    assert not list(path.glob(".*tmp"))


def test_bf16_load_and_forward(saved):
    _, path = saved
    model = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        ref = load_model(path)(ids).logits
        out = model(ids).logits
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() < 0.1


def test_saved_files_get_the_usual_permissions_not_the_temp_files_0600(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        save_checkpoint(build_model(preset("tiny-test")), tmp_path / "ckpt")
    finally:
        os.umask(umask)
    for f in (tmp_path / "ckpt").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name
