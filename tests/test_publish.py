"""`beit3-publish`: a release folder of two tiny original-format checkpoints (+ beit3.spm) is converted, checked
and planned for upload (`--dry-run`, no network); without `--dry-run` the same calls go to the Hub client."""

import json

import pytest
import torch

from beit3_hf.publish import check_directory, main, publish

from official import build_official, needs_official

pytest.importorskip("sentencepiece", reason="the release folder's beit3.spm is trained with sentencepiece")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from test_tokenization import train_spm

    folder = tmp_path_factory.mktemp("release")
    torch.save({"model": build_official("vqa", num_labels=4).state_dict()}, folder / "tiny_vqa.pth")
    torch.save({"model": build_official("image_classification", num_labels=5).state_dict()}, folder / "tiny_in1k.pth")
    train_spm(folder / "beit3.spm")
    (folder / "answer2label.txt").write_text("".join(json.dumps({"answer": a, "label": i}) + "\n"
                                                     for i, a in enumerate(["yes", "no", "2", "red"])))  # fmt: skip
    return folder


@needs_official
def test_dry_run_writes_the_upload_tree_and_the_calls(release, tmp_path, capsys):
    work = tmp_path / "work"
    main([str(release), "my-org", "--work-dir", str(work), "--dry-run", "--num-attention-heads", "4"])
    plan = json.loads((work / "upload_plan.json").read_text())
    assert plan == [
        {"call": "create_repo", "repo_id": "my-org/tiny_in1k", "exist_ok": True, "private": False},
        {"call": "upload_folder", "repo_id": "my-org/tiny_in1k", "folder_path": str(work / "tiny_in1k"),
         "commit_message": "Upload tiny_in1k converted with beit3_hf"},
        {"call": "create_repo", "repo_id": "my-org/tiny_vqa", "exist_ok": True, "private": False},
        {"call": "upload_folder", "repo_id": "my-org/tiny_vqa", "folder_path": str(work / "tiny_vqa"),
         "commit_message": "Upload tiny_vqa converted with beit3_hf"},
    ]  # fmt: skip
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == plan
    vqa = {path.name for path in (work / "tiny_vqa").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "processor_config.json", "tokenizer.json",
            "modeling_beit3.py", "configuration_beit3.py", "processing_beit3.py", "tokenization_beit3.py"} <= vqa  # fmt: skip
    in1k = {path.name for path in (work / "tiny_in1k").iterdir()}
    assert "tokenizer.json" not in in1k and "preprocessor_config.json" in in1k  # image-only: no tokenizer
    card = (work / "tiny_vqa" / "README.md").read_text()
    assert 'BEiT3ForVisualQuestionAnswering.from_pretrained("my-org/tiny_vqa")' in card
    assert 'AutoModelForVisualQuestionAnswering.from_pretrained("my-org/tiny_vqa", trust_remote_code=True)' in card
    assert json.loads((work / "tiny_vqa" / "config.json").read_text())["id2label"]["3"] == "red"


@needs_official
def test_upload_goes_through_the_hub_client_and_checks_stop_first(release, tmp_path):
    class RecordingApi:
        def __init__(self):
            self.calls = []

        def create_repo(self, **kwargs):
            self.calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            self.calls.append(("upload_folder", kwargs))

    api = RecordingApi()
    plan = publish(release, "me", tmp_path / "work", only=["tiny_vqa"], private=True, num_attention_heads=4, api=api)
    assert api.calls == [(call["call"], {k: v for k, v in call.items() if k != "call"}) for call in plan]
    assert api.calls[0] == ("create_repo", {"repo_id": "me/tiny_vqa", "exist_ok": True, "private": True})

    (tmp_path / "work" / "tiny_vqa" / "README.md").write_text("# no usage here")
    with pytest.raises(ValueError, match=r"the card is missing \['BEiT3ForVisualQuestionAnswering', 'import beit3_hf'"):
        from beit3_hf import BEiT3ForVisualQuestionAnswering

        check_directory(tmp_path / "work" / "tiny_vqa", BEiT3ForVisualQuestionAnswering)
    with pytest.raises(ValueError, match=r"--only names \['nope'\]"):
        publish(release, "me", tmp_path / "w2", only=["nope"], dry_run=True)
    with pytest.raises(ValueError, match="Hub user or organisation"):
        publish(release, "bad/namespace", tmp_path / "w3", dry_run=True)
