#!/usr/bin/env python
"""
Regenerate the small BEiT-3 models shipped in `beit3_hf/assets/models/` from nothing, with the package's own
scripts: the shapes world and Fashion-MNIST data, a teacher and the VQ-KD visual tokenizer, masked data modeling
from random init, then every fine-tuning from that checkpoint, and finally the fp16 copies, their held-out scores
(the figures `python -m beit3_hf.demo` prints) and model cards.

    python examples/build_shipped_models.py --work_dir runs/shipped          # 34 min on 2 CPU cores
    python examples/build_shipped_models.py --work_dir /tmp/smoke --smoke    # every stage for a few steps

Each stage is one example-script command (printed before it runs, logged to `<work_dir>/logs/<stage>.log`); a stage
whose output directory holds `stage_done.json` is skipped, so an interrupted build resumes where it stopped. The
fine-tuning stages run `--jobs` at a time (one thread each by default on 2 cores: these models are too small for
two threads to pay). `--output_dir` (default: the package's `assets/models`) receives the shipped models; the
stage times and the build's total go to `<output_dir>/build.json`.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: The shipped BEiT-3: 4 blocks, 128 wide, 32-pixel images in 8-pixel patches (~1.2M parameters + embeddings).
MODEL = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256,image_size=32,patch_size=8"
#: The visual tokenizer's teacher: a shapes retrieval model at 64 px, 16-pixel patches (the same 4x4 grid).
TEACHER = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256,image_size=64,patch_size=16"
VQKD = (
    "image_size=64,patch_size=16,hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256,"
    "decoder_hidden_size=128,decoder_num_hidden_layers=1,decoder_num_attention_heads=4,decoder_intermediate_size=256,"
    "codebook_size=256,codebook_dim=32"
)
COMMON = ["--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "True", "--report_to", "none"]


@dataclass
class Stage:
    name: str
    argv: list[str]  # after `python`
    needs: list[str] = field(default_factory=list)
    #: the shipped model it becomes (a short name of beit3_hf.shipped.SHIPPED_MODELS), if any
    ships: str | None = None


def stages(work: Path, smoke: bool) -> list[Stage]:
    data, out = work / "data", work / "models"
    shapes = data / "shapes"
    tok = shapes / "tokenizer"

    def budget(epochs: float | None = None, steps: int | None = None) -> list[str]:
        if smoke:
            return ["--max_steps", "3"]
        return ["--max_steps", str(steps)] if steps else ["--num_train_epochs", str(epochs)]

    small = ["--max_train_samples", "64", "--max_eval_samples", "16"] if smoke else []
    eval_sizes = lambda n: ["--max_eval_samples", str(16 if smoke else n)]  # noqa: E731
    scenes = ["--num-train", "200", "--num-test", "40"] if smoke else []
    batch = lambda train, evaluation=256: [  # noqa: E731
        "--per_device_train_batch_size", str(8 if smoke else train),
        "--per_device_eval_batch_size", str(8 if smoke else evaluation),
    ]
    script = lambda name: [str(EXAMPLES / name)]  # noqa: E731

    return [
        Stage("data_shapes", ["-m", "beit3_hf.data.shapes", "--output-dir", str(shapes), *scenes]),
        Stage("data_shapes_dense", ["-m", "beit3_hf.data.shapes_dense", "--output-dir", str(shapes), *scenes]),
        Stage("data_fashion_mnist", ["-m", "beit3_hf.data.fashion_mnist", "--output-dir", str(data / "fashion_mnist"),
                                     *(["--max-train", "200", "--max-test", "40"] if smoke else [])]),
        Stage("teacher", [*script("run_retrieval.py"), "--dataset_dir", str(shapes / "retrieval"), "--tokenizer_dir",
                          str(tok), "--config_overrides", TEACHER, *budget(10), *batch(128), *eval_sizes(500),
                          "--learning_rate", "1e-3", *COMMON, "--output_dir", str(out / "teacher")],
              needs=["data_shapes"]),
        Stage("visual_tokenizer", [*script("run_visual_tokenizer.py"), "--dataset_dir", str(shapes / "captioning"),
                                   "--teacher_name_or_path", str(out / "teacher"), "--config_overrides", VQKD,
                                   "--restart_dead_codes", "True", *budget(10), *batch(128), "--learning_rate", "1e-3",
                                   "--warmup_steps", "50", "--do_eval", "True", *small, *COMMON,
                                   "--output_dir", str(out / "visual_tokenizer")],
              needs=["teacher"]),
        Stage("pretrained", [*script("run_pretraining.py"), "--tokenizer_dir", str(tok), "--visual_tokenizer",
                             str(out / "visual_tokenizer"), "--image_dirs", str(shapes / "captioning"), "--text_dirs",
                             str(shapes / "captioning"), f"{shapes / 'vqa'}::question", "--image_text_dirs",
                             str(shapes / "captioning"), "--config_overrides", MODEL, *budget(steps=2000),
                             *batch(96, 96), "--learning_rate", "1e-3", "--warmup_steps", "0.05", "--logging_steps",
                             "2" if smoke else "50", "--max_eval_samples", "24" if smoke else "600",
                             "--save_strategy", "no", "--eval_strategy", "steps", "--eval_steps",
                             "3" if smoke else "250", "--disable_tqdm", "True", "--report_to", "none",
                             "--output_dir", str(out / "pretrained")],
              needs=["visual_tokenizer", "data_shapes"], ships="shapes-pretrained"),
        Stage("vqa", [*script("run_vqa.py"), "--dataset_dir", str(shapes / "vqa"), "--model_name_or_path",
                      str(out / "pretrained"), *budget(4), *batch(64), "--learning_rate", "5e-4", *small, *COMMON,
                      "--output_dir", str(out / "vqa")],
              needs=["pretrained"], ships="shapes-vqa"),
        Stage("visual_reasoning", [*script("run_visual_reasoning.py"), "--dataset_dir", str(shapes / "nlvr2"),
                                   "--model_name_or_path", str(out / "vqa"), "--ignore_mismatched_sizes", "True",
                                   *budget(8), *batch(64), "--learning_rate", "5e-4", *small, *COMMON,
                                   "--output_dir", str(out / "visual_reasoning")],
              needs=["vqa"], ships="shapes-nlvr2"),
        Stage("retrieval", [*script("run_retrieval.py"), "--dataset_dir", str(shapes / "retrieval"),
                            "--model_name_or_path", str(out / "pretrained"), *budget(6), *batch(128), *eval_sizes(500),
                            "--learning_rate", "1e-3", *COMMON, "--output_dir", str(out / "retrieval")],
              needs=["pretrained"], ships="shapes-retrieval"),
        Stage("captioning", [*script("run_captioning.py"), "--dataset_dir", str(shapes / "captioning"),
                             "--model_name_or_path", str(out / "pretrained"), *budget(2), *batch(64, 250),
                             *eval_sizes(500), "--learning_rate", "1e-3", *COMMON,
                             "--output_dir", str(out / "captioning")],
              needs=["pretrained"], ships="shapes-captioning"),
        Stage("image_classification", [*script("run_image_classification.py"), "--dataset_dir",
                                       str(data / "fashion_mnist"), "--model_name_or_path", str(out / "pretrained"),
                                       *budget(3), *batch(128), "--learning_rate", "1e-3", *small, *COMMON,
                                       "--output_dir", str(out / "image_classification")],
              needs=["pretrained", "data_fashion_mnist"], ships="fashion-mnist"),
        Stage("semantic_segmentation", [*script("run_semantic_segmentation.py"), "--dataset_dir",
                                        str(shapes / "segmentation"), "--model_name_or_path", str(out / "pretrained"),
                                        "--image_size", "64", *budget(steps=600), *batch(32, 64), "--learning_rate",
                                        "5e-4", "--backbone_neck_scales", "2,1,0.5", "--backbone_neck_channels", "64",
                                        "--head_config_overrides", "hidden_size=64,auxiliary_channels=32", *small,
                                        *COMMON, "--output_dir", str(out / "semantic_segmentation")],
              needs=["pretrained", "data_shapes_dense"], ships="shapes-segmentation"),
    ]


def lineage(all_stages: list[Stage]) -> dict[str, list[str]]:
    """Per shipped model, the shipped models it was fine-tuned through, first to last (itself included)."""
    by_name = {stage.name: stage for stage in all_stages}

    def chain(stage: Stage) -> list[str]:
        parents = [by_name[name] for name in stage.needs if by_name[name].ships]
        return (chain(parents[0]) if parents else []) + [stage.ships]

    return {stage.ships: chain(stage) for stage in all_stages if stage.ships}


def stage_dir(work: Path, stage: Stage) -> Path:
    """Where a stage's `stage_done.json` goes: its model's directory, or `done/<name>` for a stage that writes data."""
    return work / ("done" if stage.name.startswith("data_") else "models") / stage.name


class Runner:
    """Runs the stages in dependency order, `jobs` at a time once the pretrained checkpoint exists."""

    def __init__(self, work: Path, jobs: int, threads: int):
        self.work, self.jobs, self.threads = work, jobs, threads
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.times: dict[str, float] = {}

    def marker(self, stage: Stage) -> Path:
        return stage_dir(self.work, stage) / "stage_done.json"

    def launch(self, stage: Stage, threads: int) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, *stage.argv]
        print(f"[{time.strftime('%H:%M:%S')}] {stage.name} ({threads} thread{'s' * (threads > 1)}): "
              f"OMP_NUM_THREADS={threads} python {' '.join(stage.argv)}", flush=True)
        log = open(self.work / "logs" / f"{stage.name}.log", "w")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        process.log, process.stage, process.start = log, stage, time.perf_counter()
        return process

    def wall_seconds(self) -> float:
        """From the first stage's start to the last one's end, over every run of the build (the markers' times)."""
        markers = [json.loads(path.read_text()) for path in self.work.glob("*/*/stage_done.json")]
        return max(m["ended"] for m in markers) - min(m["ended"] - m["seconds"] for m in markers)

    def run(self, all_stages: list[Stage]):
        pending = {stage.name: stage for stage in all_stages}
        done = {name for name, stage in pending.items() if self.marker(stage).exists()}
        for name in sorted(done):
            self.times[name] = json.loads(self.marker(pending[name]).read_text())["seconds"]
            print(f"{name}: done before ({self.times[name]:.0f} s), skipped")
        for name in done:
            pending.pop(name)
        running: list[subprocess.Popen] = []
        while pending or running:
            ready = [s for s in pending.values() if all(n in done for n in s.needs)]
            # before the pretrained checkpoint, one stage at a time with every thread; then `jobs` lanes
            parallel = "pretrained" in done
            slots = (self.jobs if parallel else 1) - len(running)
            for stage in ready[:max(slots, 0)]:
                threads = self.threads if not parallel else max(1, self.threads // self.jobs)
                running.append(self.launch(pending.pop(stage.name), threads))
            time.sleep(1.0)
            for process in list(running):
                if process.poll() is None:
                    continue
                running.remove(process)
                process.log.close()
                seconds = time.perf_counter() - process.start
                name = process.stage.name
                if process.returncode != 0:
                    for other in running:
                        other.terminate()
                    tail = (self.work / "logs" / f"{name}.log").read_text().splitlines()[-25:]
                    raise SystemExit(f"stage {name} failed (exit {process.returncode}); the end of its log:\n"
                                     + "\n".join(tail))
                self.marker(process.stage).parent.mkdir(parents=True, exist_ok=True)
                self.marker(process.stage).write_text(json.dumps({"seconds": seconds, "ended": time.time()}))
                self.times[name] = seconds
                done.add(name)
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {seconds / 60:.1f} min", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, required=True, help="data, logs and full-precision models")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="where the shipped models go (default: beit3_hf/assets/models, or <work_dir>/shipped "
                             "with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny data and 3 steps per stage (tests the pipeline)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tuning stages run side by side")
    parser.add_argument("--num_examples", type=int, default=None,
                        help="held-out examples per task in the shipped scores (default: beit3_hf.shipped's)")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or (args.work_dir / "shipped" if args.smoke else ROOT / "beit3_hf" / "assets" /
                                     "models")

    start = time.perf_counter()
    all_stages = stages(args.work_dir.resolve(), args.smoke)
    runner = Runner(args.work_dir.resolve(), args.jobs, args.threads)
    runner.run(all_stages)

    sys.path.insert(0, str(ROOT))
    from beit3_hf.shipped import package_models

    print(f"[{time.strftime('%H:%M:%S')}] packaging the shipped models into {output_dir}", flush=True)
    package_start = time.perf_counter()
    sources = {stage.ships: args.work_dir.resolve() / "models" / stage.name for stage in all_stages if stage.ships}
    work = str(args.work_dir.resolve())
    shown = lambda argv: " ".join(argv).replace(work, "$WORK").replace(str(ROOT) + os.sep, "")  # noqa: E731
    commands = {stage.ships: f"OMP_NUM_THREADS={1 if stage.name != 'pretrained' else args.threads} python "
                             f"{shown(stage.argv)}" for stage in all_stages if stage.ships}
    runner.times["package"] = 0.0
    build = {
        "command": "python examples/build_shipped_models.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "stage_seconds": runner.times,
        "stages_wall_seconds": runner.wall_seconds(),
        "machine": f"{os.cpu_count()} CPU cores, torch threads {args.threads}, {args.jobs} fine-tuning jobs at a time",
    }
    scores = package_models(sources, output_dir, commands=commands, lineage=lineage(all_stages), build=build,
                            num_examples=args.num_examples)
    for name, figures in scores.items():
        shown_scores = ", ".join(f"{key} {value:.3f}" for key, value in figures["scores"].items())
        print(f"  {name}: {shown_scores} on {figures['num_examples']} held-out examples "
              f"(before the fp16 cast: {', '.join(f'{v:.3f}' for v in figures['fp32_scores'].values())})")
    runner.times["package"] = time.perf_counter() - package_start
    build["this_invocation_seconds"] = time.perf_counter() - start
    build["stage_seconds_sum"] = sum(runner.times.values())
    build["wall_seconds"] = build["stages_wall_seconds"] + runner.times["package"]
    (output_dir / "build.json").write_text(json.dumps(build, indent=2) + "\n")
    print(f"built in {build['wall_seconds'] / 60:.1f} min of wall-clock time (first stage start to last stage end, "
          f"plus packaging; stages summed {build['stage_seconds_sum'] / 60:.1f} min): {output_dir}")


if __name__ == "__main__":
    main()
