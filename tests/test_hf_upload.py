"""espnet2_birq.bin.hf_upload: staging of a packed archive, with a stand-in Hub client."""

import sys
import types
import zipfile

import pytest
import yaml

from espnet2_birq.bin import hf_upload


def _archive(tmp_path):
    path = tmp_path / "asr_x_valid.cer_ctc.ave.zip"
    meta = {"files": {"asr_model_file": "exp/asr_x/valid.cer_ctc.ave.pth"},
            "yaml_files": {"asr_train_config": "exp/asr_x/config.yaml"},
            "espnet": "202511", "torch": "2.9.1"}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.yaml", yaml.safe_dump(meta))
        z.writestr("exp/asr_x/config.yaml", "token_list: [a]\n")
        z.writestr("exp/asr_x/valid.cer_ctc.ave.pth", b"model")
    return path


def test_upload_with_a_standin_hub(tmp_path, monkeypatch):
    calls, uploaded = [], {}

    class HfApi:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs["repo_id"], kwargs["exist_ok"]))

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message):
            calls.append(("upload_folder", repo_id, repo_type))
            for f in sorted(__import__("pathlib").Path(folder_path).rglob("*")):
                if f.is_file():
                    uploaded[str(f.relative_to(folder_path))] = f.read_bytes()
            return "standin-commit"

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=HfApi))
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n## Environments\n- date: `x`\n")
    archive = _archive(tmp_path)
    assert hf_upload.main(["--archive", str(archive), "--repo_id", "me/asr", "--task", "asr",
                           "--results", str(results)]) == 0
    assert calls == [("create_repo", "me/asr", True), ("upload_folder", "me/asr", "model")]
    # The archive's layout as it is (meta.yaml at the top), plus the model card.
    assert set(uploaded) == {"meta.yaml", "exp/asr_x/config.yaml", "exp/asr_x/valid.cer_ctc.ave.pth",
                             "README.md"}
    card = uploaded["README.md"].decode()
    assert "library_name: espnet" in card and "- automatic-speech-recognition" in card
    assert "`asr_model_file`: `exp/asr_x/valid.cer_ctc.ave.pth`" in card
    assert "## Environments" in card and "Speech2Text" in card


def test_bad_input_is_refused_before_any_upload(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(HfApi=lambda: pytest.fail("no upload expected")))
    assert hf_upload.main(["--archive", str(tmp_path / "missing.zip"), "--repo_id", "me/x",
                           "--task", "ssl"]) == 1
    not_zip = tmp_path / "model.zip"
    not_zip.write_text("not a zip")
    with pytest.raises(ValueError, match="not a zip archive"):
        hf_upload.stage_folder(str(not_zip), str(tmp_path / "f"), "ssl", "me/x", None)
    no_meta = tmp_path / "nometa.zip"
    with zipfile.ZipFile(no_meta, "w") as z:
        z.writestr("model.pth", b"x")
    with pytest.raises(ValueError, match="no meta.yaml"):
        hf_upload.stage_folder(str(no_meta), str(tmp_path / "g"), "ssl", "me/x", None)


def test_huggingface_hub_is_imported_only_for_uploading():
    assert "huggingface_hub" not in vars(hf_upload)
    source = open(hf_upload.__file__).read()
    top_level = source.split("\ndef ")[0]
    assert "huggingface_hub import" not in top_level
