"""The README's main job runs and prints one line per head."""

from beit3_hf import demo


def test_demo_runs_every_head(capsys):
    demo.main(["--image-size", "64"])
    lines = capsys.readouterr().out.splitlines()
    for head in ("BEiT3Model", "BEiT3ForImageClassification", "BEiT3ForVisualQuestionAnswering",
                 "BEiT3ForVisualReasoning", "BEiT3ForImageTextRetrieval", "BEiT3ForCaptioning",
                 "BEiT3ForMaskedDataModeling"):
        assert any(line.startswith(head) for line in lines), head
    assert any("image (1, 17, 192)" in line for line in lines)
    assert any("(1, 2, 3, 64, 64)" in line for line in lines)
