"""Reference checkpoints (docs/algorithm.md section 5) convert to ClusTR and compute what the reference network
computes."""

import pytest
import torch
from conftest import photo_batch
from reference_forward import reference_logits, reference_state_dict

from clustr_hf import ClusTRConfig, ClusTRForImageClassification, ClusTRImageProcessor, ClusTRModel
from clustr_hf.convert_reference_checkpoint import (
    convert_checkpoint,
    convert_reference_state_dict,
    infer_config,
    main,
)


@pytest.fixture(scope="module")
def b0_reference():
    return reference_state_dict(ClusTRConfig.from_variant("b0"), num_labels=7)


def converted_model(state):
    model = ClusTRForImageClassification(infer_config(state)).eval()
    model.load_state_dict(convert_reference_state_dict(state), strict=True)
    return model


def test_converted_model_computes_the_reference_network(b0_reference):
    pixel_values = photo_batch(size=(48, 40), names=("astronaut", "coffee"))
    model = converted_model(b0_reference)
    with torch.no_grad():
        expected = reference_logits(b0_reference, model.config, pixel_values)
        logits = model(pixel_values).logits
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_every_model_parameter_comes_from_the_checkpoint(b0_reference):
    converted = convert_reference_state_dict({"model": b0_reference})
    model = ClusTRForImageClassification(infer_config(b0_reference))
    assert set(converted) == set(model.state_dict())
    assert len(converted) == len(b0_reference)


def test_infers_the_variant_and_classes_from_shapes(b0_reference):
    config = infer_config({"model": b0_reference})
    assert list(config.hidden_sizes) == [32, 64, 160, 256]
    assert list(config.depths) == [2, 2, 2, 2]
    assert list(config.num_attention_heads) == [1, 2, 5, 8]
    assert config.num_labels == 7


def test_checkpoint_without_head_converts_to_the_base_model(b0_reference):
    backbone_only = {k: v for k, v in b0_reference.items() if not k.startswith("head.")}
    converted = convert_reference_state_dict(backbone_only)
    model = ClusTRModel(infer_config(backbone_only))
    assert set(converted) == set(model.state_dict())


def test_unexpected_keys_are_listed(b0_reference):
    state = dict(b0_reference, **{"pos_embed": torch.zeros(1), "block1.0.attn.sr.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"2 keys are not ClusTR reference names.*block1\.0\.attn\.sr\.weight.*pos_embed"):
        convert_reference_state_dict(state)


def test_wrong_variant_is_named(b0_reference):
    with pytest.raises(ValueError, match=r"does not fit variant 'b1': hidden_sizes is \(32, 64, 160, 256\)"):
        infer_config(b0_reference, "b1")


def test_not_a_clustr_checkpoint():
    with pytest.raises(ValueError, match="not a ClusTR reference checkpoint"):
        infer_config({"model": {}})


def test_command_line_writes_a_loadable_folder(tmp_path, b0_reference, capsys):
    checkpoint = tmp_path / "clustr_b0.pth"
    torch.save({"model": b0_reference, "epoch": 299}, checkpoint)  # as the reference training code saves it
    output_dir = tmp_path / "converted"
    main(["--checkpoint", str(checkpoint), "--variant", "b0", "--output-dir", str(output_dir)])  # or --output_dir
    assert "ClusTRForImageClassification" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_clustr.py"} <= {
        p.name for p in output_dir.iterdir()
    }
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clustr_b0.pth", "converted"]  # no staging left
    loaded = ClusTRForImageClassification.from_pretrained(output_dir).eval()
    pixel_values = photo_batch(size=(40, 40), names=("chelsea",))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, converted_model(b0_reference)(pixel_values).logits)


def test_corrupt_checkpoint_file_gets_a_clear_error(tmp_path, capsys):
    checkpoint = tmp_path / "broken.pth"
    checkpoint.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SystemExit) as exit_status:
        main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out")])
    assert exit_status.value.code == 1
    assert "is not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    (lambda state: state.pop("patch_embed2.proj.weight"), r"lacks patch_embed2\.proj\.weight \(stages 1 to 4"),
    (lambda state: state.pop("block1.0.mlp.fc1.weight"), r"lacks block1\.0\.mlp\.fc1\.weight"),
    (lambda state: state.update({"patch_embed1.proj.weight": [[0.0]]}), r"1 entries .* are not tensors: "
                                                                          r"\['patch_embed1\.proj\.weight \(list\)'\]"),
])
def test_damaged_state_dicts_are_named(b0_reference, change, message):
    state = dict(b0_reference)
    change(state)
    with pytest.raises(ValueError, match=message):
        infer_config(state)
    with pytest.raises(ValueError, match="not a state dict"):
        convert_reference_state_dict({"model": [1, 2, 3]})


def _contents(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_the_output_folder_is_written_whole_or_not_at_all(tmp_path, b0_reference, monkeypatch):
    checkpoint = tmp_path / "clustr_b0.pth"
    torch.save({"model": b0_reference}, checkpoint)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    (existing / "notes.md").write_text("kept")
    before = _contents(existing)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:  # the image processor is written after config.json and the weights
        patch.setattr(ClusTRImageProcessor, "save_pretrained", full_disk)
        for output_dir in (existing, tmp_path / "new"):
            with pytest.raises(OSError, match="No space left"):
                convert_checkpoint(checkpoint, output_dir)
    assert _contents(existing) == before  # not the new config.json beside the old weights
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clustr_b0.pth", "existing"]  # nothing half-written

    convert_checkpoint(checkpoint, existing)
    after = _contents(existing)
    assert after["notes.md"] == b"kept" and after["config.json"] != before["config.json"]
    assert {"model.safetensors", "preprocessor_config.json", "modeling_clustr.py"} <= set(after)
    assert ClusTRForImageClassification.from_pretrained(existing).config.num_labels == 7
