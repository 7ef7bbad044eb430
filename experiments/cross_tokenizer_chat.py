"""Does chat distillation across tokenizers carry what the answers alone do not? A task with many right answers.

    python experiments/cross_tokenizer_chat.py [--work_dir runs/cross-tokenizer-chat]

1. The task: the user names a subject, the assistant answers with a sentence about it whose verb, object and ending
   are drawn at random (``len(VERBS) * len(OBJECTS) * len(ENDINGS)`` right answers, equally likely). A reference
   answer is one draw; the teacher's distribution is all of them.
2. The teacher: a byte-level BPE (GPT-2 conventions) with Llama 3's chat template and special tokens, and a Llama
   trained on ``--teacher_conversations`` conversations (their answers' tokens) until it knows the distribution.
3. The students: a SentencePiece-style BPE (``▁``, byte fallback) with ChatML's template and special tokens, and a
   Llama of ``--student_layers`` layers from scratch, trained the same steps on ``--transfer_conversations`` other
   conversations (each with one drawn answer): by the answers' cross-entropy (the baseline), by the teacher's
   logits across tokenizers (``mapped``), by both, and by both with half the batches on-policy (the student answers,
   the teacher scores the text of its answer in its own tokens and template).
4. Every model is evaluated on ``--heldout_conversations`` fresh conversations: its own tokens of the answers
   (end-of-turn included), in bits per byte; the students before training and every ``--eval_every`` steps. The
   baseline's reported point is its best checkpoint, chosen on those same answers (there is no validation set);
   the lowest possible value is the answers' entropy. The task has ``len(SUBJECTS)`` times as many distinct
   conversations as answers (4,096), so the teacher's draws hold nearly all of them and some held-out draws
   repeat a transfer one.

Writes ``docs/results/cross_tokenizer_chat.{md,png}`` and ``benchmarks/results/cross_tokenizer_chat.json``.
"""

import argparse
import json
import math
import random
from pathlib import Path
from typing import Optional

import matplotlib
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from distily.config import parse_config
from distily.data.batches import collate
from distily.data.chat import ChatTemplate, assistant_token_mask
from distily.data.tokenizer import train_byte_level_bpe, train_sentencepiece_bpe
from distily.outputs import write_json_atomic
from distily.training.distill import run_distillation
from distily.training.run_dir import TRAINER_STATE_FILE, RunDir

from wikitext import REPO, command_line, device_description, markdown_head, markdown_row, save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SUBJECTS = ["The cat", "A dog", "My friend", "The teacher", "A student", "The model", "Our team", "That bird"]
VERBS = ["sees", "likes", "reads", "builds", "finds", "trains", "loves", "writes"]
OBJECTS = ["a book", "the tree", "some code", "a song", "the river", "an idea", "the house", "a letter"]
ENDINGS = ["today.", "again.", "at night.", "with care.", "quickly.", "in the park.", "every day.", "slowly."]
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BASELINE = "cross-entropy"
STUDENTS = [  # (name, what it learns from, config keys)
    (BASELINE, "the reference answers' cross-entropy (no teacher)", {"logits_weight": 0.0, "hard_label_weight": 1.0}),
    ("mapped", "the teacher's logits across tokenizers (mapped forward KL), no labels", {}),
    ("mapped+labels", "both", {"hard_label_weight": 1.0}),
    ("mapped+labels, on-policy 0.5", "both, half the batches the student's own answers", {"hard_label_weight": 1.0,
                                                                                          "lmbda": 0.5}),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "cross-tokenizer-chat"))
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "cross_tokenizer_chat.md"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "cross_tokenizer_chat.json"))
    parser.add_argument("--teacher_conversations", type=int, default=20000)
    parser.add_argument("--transfer_conversations", type=int, default=256)
    parser.add_argument("--heldout_conversations", type=int, default=512)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--teacher_layers", type=int, default=4)
    parser.add_argument("--student_layers", type=int, default=2)
    parser.add_argument("--teacher_steps", type=int, default=1500)
    parser.add_argument("--student_steps", type=int, default=400)
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.eval_every < 1 or args.student_steps % args.eval_every:
        parser.error(f"--eval_every {args.eval_every} must be a positive divisor of --student_steps "
                     f"{args.student_steps}")
    return args


def conversations(count: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        subject = rng.choice(SUBJECTS)
        answer = f"{subject} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"
        rows.append([{"role": "user", "content": f"Say something about {subject.lower()}."},
                     {"role": "assistant", "content": answer}])
    return rows


def answer_entropy_bits() -> float:
    """The entropy of an answer given its question, in bits (the lowest possible held-out loss of an answer)."""
    return math.log2(len(VERBS) * len(OBJECTS) * len(ENDINGS))


def write_chats(path: Path, rows: list[list[dict]]) -> str:
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in rows), encoding="utf-8")
    return str(path)


def with_chat_tokens(tokenizer, specials: list[str], template: str, bos: Optional[str] = None):
    """``tokenizer`` with a chat template's special tokens, the template, and ``bos`` as its BOS when given."""
    tokenizer.add_tokens(specials, special_tokens=True)
    if bos is not None:
        tokenizer.bos_token = bos
    tokenizer.chat_template = template
    return tokenizer


def llama_config(args, tokenizer, layers: int) -> LlamaConfig:
    """The teacher's and the students' shape: ``layers`` blocks of the run's width, tied embeddings."""
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size,
                       num_hidden_layers=layers, num_attention_heads=max(args.hidden_size // 64, 1),
                       max_position_embeddings=256, tie_word_embeddings=True,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def train_teacher(args, directory: Path) -> None:
    """The teacher's tokenizer and model, trained on its conversations' answer tokens (skipped when saved)."""
    if (directory / "model.safetensors").exists():
        return
    rows = conversations(args.teacher_conversations, seed=1)
    texts = [turn["content"] for messages in rows[:2000] for turn in messages]
    tokenizer = with_chat_tokens(train_byte_level_bpe(texts, 400, "<|end_of_text|>", bos=False),
                                 ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                                 LLAMA3_TEMPLATE, bos="<|begin_of_text|>")
    template = ChatTemplate(LLAMA3_TEMPLATE)
    encoded = [assistant_token_mask(messages, tokenizer, template, row) for row, messages in enumerate(rows)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(llama_config(args, tokenizer, args.teacher_layers))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    for step in range(args.teacher_steps):
        picked = [encoded[(step * args.batch_size + k) % len(encoded)] for k in range(args.batch_size)]
        batch = collate([{"input_ids": ids} for ids, _ in picked])
        labels = batch["input_ids"].masked_fill(collate([{"input_ids": mask} for _, mask in picked])["input_ids"] == 0,
                                                -100)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def student_init(args, directory: Path) -> None:
    """The students' tokenizer (trained on other conversations than any run reads) and random model."""
    if (directory / "model.safetensors").exists():
        return
    texts = [turn["content"] for messages in conversations(2000, seed=4) for turn in messages]
    tokenizer = with_chat_tokens(train_sentencepiece_bpe(texts, 500), ["<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(llama_config(args, tokenizer, args.student_layers)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def train_student(args, name: str, keys: dict, paths: dict) -> dict:
    """One student's run (resumed from its metrics when finished): its held-out curve of answer bits per byte."""
    output_dir = Path(args.work_dir) / "students" / name.replace(" ", "_").replace(",", "")
    if not (output_dir / "metrics.json").exists():
        run_distillation(parse_config(
            teacher_model_name_or_path=str(paths["teacher"]), student_model_name_or_path=str(paths["student"]),
            dataset_name=paths["data"], eval_fraction=args.heldout_conversations / paths["rows"], max_eval_samples=None,
            eval_split_by="conversation",  # fresh draws of answers to the same questions, not unseen questions
            max_seq_length=64, output_dir=str(output_dir), overwrite_output_dir=True, max_steps=args.student_steps,
            learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
            per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, eval_strategy="steps",
            eval_steps=args.eval_every, save_steps=args.eval_every, save_total_limit=1, logging_steps=args.eval_every,
            report_to="none", disable_tqdm=True, seed=0, cross_tokenizer_loss="mapped", on_policy_max_new_tokens=24,
            tokenization_cache_dir=str(Path(args.work_dir) / "cache"), **keys,
        ))
    found = json.loads((output_dir / "metrics.json").read_text())
    (checkpoint,) = RunDir(output_dir).checkpoints()
    state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    curve = [{"step": 0, "bits_per_byte": found["student"]["before_bits_per_byte"]}]
    curve += [{"step": entry["step"], "bits_per_byte": entry["eval_bits_per_byte"]}
              for entry in state["log_history"] if "eval_bits_per_byte" in entry]
    return {"curve": curve, "teacher_bits_per_byte": found["teacher"]["bits_per_byte"],
            "train_seconds": found["train"]["wall_seconds"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir, student_dir = work / "teacher", work / "student-init"
    train_teacher(args, teacher_dir)
    transfer = conversations(args.transfer_conversations, seed=2)
    heldout = conversations(args.heldout_conversations, seed=3)
    student_init(args, student_dir)
    # one file of i.i.d. conversations; eval_fraction holds --heldout_conversations of them out (drawn by the seed)
    rows = transfer + heldout
    paths = {"teacher": teacher_dir, "student": student_dir, "rows": len(rows),
             "data": write_chats(work / "conversations.jsonl", rows)}
    students = {name: {"learns_from": learns, **train_student(args, name, keys, paths)}
                for name, learns, keys in STUDENTS}
    teacher_bpb = students[BASELINE].pop("teacher_bits_per_byte")
    for row in students.values():
        row.pop("teacher_bits_per_byte", None)
    trained = [point for point in students[BASELINE]["curve"] if point["step"] > 0]
    best = min(trained, key=lambda point: point["bits_per_byte"])
    for row in students.values():
        row["best"] = min((p for p in row["curve"] if p["step"] > 0), key=lambda point: point["bits_per_byte"])
        row["best_over_baseline_best"] = row["best"]["bits_per_byte"] / best["bits_per_byte"]
    results = {"command": command_line("cross_tokenizer_chat.py", argv), "device": device_description(),
               "arguments": vars(args), "teacher_bits_per_byte": teacher_bpb,
               "answer_entropy_bits": answer_entropy_bits(), "baseline_best_step": best["step"], "students": students}
    write_json_atomic(Path(args.json), results)
    write_report(args, results)
    return results


def write_report(args, results: dict) -> None:
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Chat distillation across tokenizers, on a task with many right answers",
        "",
        f"Command: `{results['command']}` (on {results['device']}). See the script's docstring for the setup: a "
        f"{args.teacher_layers}-layer teacher (byte-level BPE, Llama 3's template) trained on "
        f"{args.teacher_conversations:,} conversations; {args.student_layers}-layer students from scratch "
        f"(SentencePiece BPE, ChatML) trained {args.student_steps} steps of {args.batch_size} on "
        f"{args.transfer_conversations} other draws; held-out: {args.heldout_conversations} new draws. "
        "Bits per byte of the answers' text, each model on its own tokens (end-of-turn included). An answer has "
        f"{len(VERBS) * len(OBJECTS) * len(ENDINGS)} equally likely right forms; a reference is one of them.",
        "",
        f"Teacher: {results['teacher_bits_per_byte']:.4f} bits per byte.",
        "",
        *markdown_head(["student", "learns from", "best bits per byte", "at step", "over the baseline's best",
                        f"at step {args.student_steps}"]),
    ]
    for name, row in results["students"].items():
        best, last = row["best"], row["curve"][-1]
        lines.append(markdown_row([name, row["learns_from"], f"{best['bits_per_byte']:.4f}", best["step"],
                                   f"{row['best_over_baseline_best']:.3f}x", f"{last['bits_per_byte']:.4f}"]))
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, row in results["students"].items():
        axes.plot([p["step"] for p in row["curve"]], [p["bits_per_byte"] for p in row["curve"]], marker="o", label=name)
    axes.axhline(results["teacher_bits_per_byte"], color="tab:red", linestyle="--", label="teacher")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("held-out answers, bits per byte")
    axes.set_yscale("log")
    axes.legend()
    save_figure(figure, report.with_suffix(".png"))


if __name__ == "__main__":
    main()
