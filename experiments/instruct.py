"""Instruction distillation: which way of learning from a chat teacher makes the best half-depth student?

    python experiments/instruct.py [--work_dir runs/instruct] [--student_steps 600] [--eval_every 50]

The task, built and shipped here: the user sends a string of 5 to 12 lowercase letters, the assistant answers
it reversed (``{"role": "user", "content": "reverse abcde"}`` -> ``"edcba"``). References are scarce, prompts
are not: the student's transfer set is ``--prompts`` prompts, of which only ``--references`` come with a
reference answer (as in practice, where people label few conversations but have many prompts).

1. A tokenizer with one token per byte and ChatML-like turns (``<|im_start|>ROLE\\nTEXT<|im_end|>\\n``; its
   end-of-turn token is its end-of-text token) and a Llama teacher (4 layers) trained with a plain loop on
   fresh reversals, cross-entropy on the assistant's tokens (``distily.data.chat``'s mask), to high held-out
   exact match.
2. ``distily generate --generate_prompts`` answers the transfer set's prompts with the teacher.
3. Students of half the teacher's depth (blocks copied from evenly spaced teacher blocks, its embeddings,
   final norm and LM head) are trained with ``distily distill`` (a sweep, resumable) at equal optimizer steps
   and batch by: (a) fine-tuning on the references (hard labels, assistant tokens); (b) supervised KD on the
   references (teacher logits on the reference conversations); (c) supervised KD on the teacher's responses;
   (d) on-policy (``lmbda=1``: the student answers the transfer set's prompts, the teacher scores its
   answers); (e) mixed (``lmbda=0.5``: half the batches (c)'s, half (d)'s). (b) to (e) use one logits loss, the
   generalized JSD of GKD with beta 0.5 (``jsd``): bounded (at most log 2 per token), so the student's
   early, poor samples in (d) and (e) give no huge reverse-KL terms, and the same divergence GKD and TRL's
   ``GKDTrainer`` default to, which ``benchmarks/on_policy_trl.py`` runs beside distily.
4. Teacher and every student checkpoint (every ``--eval_every`` steps) answer held-out prompts greedily:
   exact match, and KL(teacher || student) per token on the student's own answers; the final students also
   answer the reference conversations' prompts (what (a) and (b) trained on: memorising them shows there).

Writes the table to ``docs/results/instruct.md``, the exact-match curves beside it (``instruct.png``) and every
number to ``benchmarks/results/instruct.json``; prints the goals (every KD student beats (a) on exact match, by
more than two standard errors of the difference; on-policy or mixed beats (b) by at least 5 points). The estimate
printed at the start comes from a smoke run's per-step costs (``runtime_estimate``); the teacher's steps dominate it.
"""

import argparse
import json
import math
import random
import string
import time
from pathlib import Path

import matplotlib
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from distily.config import parse_generate_config
from distily.data.chat import ChatTemplate, assistant_token_mask
from distily.data.tokenizer import train_byte_level_bpe
from distily.evaluation.generations import GenerationEval, HeldoutPrompts
from distily.metrics import generation_key
from distily.models.student import load_student
from distily.outputs import write_json_atomic
from distily.recording.generate import run_generation
from distily.training.distillation_model import STUDENT
from distily.training.run_dir import RunDir

from wikitext import (
    REPO, command_line, markdown_head, markdown_row, run_students, save_figure, save_results, write_sweep,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

END_OF_TURN, START_OF_TURN = "<|im_end|>", "<|im_start|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LOGITS_LOSS = {"logits_loss": "jsd", "logits_loss_kwargs": {"beta": 0.5}}
# (name, what the student learns from, its training data, config keys over the common ones)
VARIANTS = [
    ("a-fine-tune", "reference answers, hard labels", "references", {"logits_weight": 0.0, "hard_label_weight": 1.0}),
    ("b-kd-references", "teacher logits on the reference conversations", "references", {}),
    ("c-kd-responses", "teacher logits on the teacher's responses", "responses", {}),
    ("d-on-policy", "teacher logits on the student's answers (lmbda=1)", "responses", {"lmbda": 1.0}),
    ("e-mixed", "half (c), half (d) (lmbda=0.5)", "responses", {"lmbda": 0.5}),
]
STUDENTS = [name for name, *_ in VARIANTS]
KD_VARIANTS = STUDENTS[1:]
ON_POLICY_VARIANTS = ("d-on-policy", "e-mixed")
GOAL_MARGIN = 5.0  # exact-match points by which on-policy or mixed must beat (b)
# seconds per optimizer step of 32 conversations (see runtime_estimate); the mixed student is half on-policy
STEP_SECONDS = {"a-fine-tune": 0.23, "b-kd-references": 0.23, "c-kd-responses": 0.23, "d-on-policy": 0.31,
                "e-mixed": 0.5 * 0.31 + 0.5 * 0.23}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "instruct"), help="data, teacher, students")
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "instruct.md"),
                        help="the table (markdown), the curves beside it as .png")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "instruct.json"))
    parser.add_argument("--min_letters", type=int, default=5)
    parser.add_argument("--max_letters", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=1024, help="the transfer set's prompts")
    parser.add_argument("--references", type=int, default=64, help="of them, those with a reference answer")
    parser.add_argument("--heldout", type=int, default=256, help="held-out prompts every model answers")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--teacher_layers", type=int, default=4)
    parser.add_argument("--teacher_steps", type=int, default=1500)
    parser.add_argument("--teacher_batch_size", type=int, default=64)
    parser.add_argument("--student_steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="the students' (the peak, with a schedule)")
    parser.add_argument("--lr_scheduler_type", default="constant",
                        choices=("constant", "constant_with_warmup", "cosine", "linear"),
                        help="the students' schedule (transformers' names; constant: no warmup)")
    parser.add_argument("--warmup_steps", type=int, default=0, help="the students' linear warmup from 0")
    parser.add_argument("--logits_temperature", type=float, default=1.0,
                        help="of the KD students' (b to e) loss: both distributions softened, the loss times T^2")
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=STUDENTS, metavar="NAME",
                        help=f"the students to train, of {' '.join(STUDENTS)} (all by default; the goals need all)")
    parser.add_argument("--eval_every", type=int, default=50, help="steps between the evaluated checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.min_letters <= args.max_letters:
        parser.error(f"--min_letters {args.min_letters} --max_letters {args.max_letters}: expected 1 <= min <= max")
    if not 1 <= args.references <= args.prompts:
        parser.error(f"--references {args.references} must be between 1 and --prompts {args.prompts}")
    if args.logits_temperature <= 0:
        parser.error(f"--logits_temperature {args.logits_temperature}: expected a positive number")
    if not 0 <= args.warmup_steps < args.student_steps:
        parser.error(f"--warmup_steps {args.warmup_steps}: expected 0 <= it < --student_steps {args.student_steps}")
    if args.warmup_steps and args.lr_scheduler_type == "constant":
        parser.error(f"--warmup_steps {args.warmup_steps} with --lr_scheduler_type constant: expected "
                     "constant_with_warmup (constant has no warmup)")
    if args.eval_every < 1 or args.student_steps % args.eval_every:
        parser.error(f"--eval_every {args.eval_every} must divide --student_steps {args.student_steps}")
    return args  # fmt: skip


# the task


def reversal(rng: random.Random, min_letters: int, max_letters: int) -> tuple[str, str]:
    """A prompt's text and its reference answer: a random lowercase string, reversed."""
    letters = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(min_letters, max_letters)))
    return f"reverse {letters}", letters[::-1]


def conversation(prompt: str, answer: str = None) -> list[dict]:
    turns = [{"role": "user", "content": prompt}]
    return turns + [{"role": "assistant", "content": answer}] if answer is not None else turns


def task_splits(args) -> dict[str, list[tuple[str, str]]]:
    """The transfer set (``prompts``, the first ``references`` of them with answers) and the ``heldout`` pairs,
    no prompt in both."""
    rng, seen, pairs = random.Random(args.seed), set(), []
    while len(pairs) < args.prompts + args.heldout:
        prompt, answer = reversal(rng, args.min_letters, args.max_letters)
        if prompt not in seen:
            seen.add(prompt)
            pairs.append((prompt, answer))
    return {"prompts": pairs[: args.prompts], "heldout": pairs[args.prompts:]}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_task_data(args, splits: dict) -> dict[str, str]:
    """The references (``messages``) and the transfer set's prompts (``prompt``) as jsonl files in WORK_DIR."""
    data = Path(args.work_dir) / "data"
    references = [{"messages": conversation(p, a)} for p, a in splits["prompts"][: args.references]]
    return {
        "references": write_jsonl(data / "references.jsonl", references),
        "prompts": write_jsonl(data / "prompts.jsonl", [{"prompt": p} for p, _ in splits["prompts"]]),
    }


# tokenizer and teacher


def max_length(args) -> int:
    """Tokens of the longest conversation: 29 of template and ``reverse ``, the letters twice, and room."""
    return 2 * args.max_letters + 32


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (no merges), ``<|im_end|>`` as end of text, of turn and padding, ``<|im_start|>``, and
    the ChatML-like template."""
    tokenizer = train_byte_level_bpe([], vocab_size=257, eos_token=END_OF_TURN, bos=False, pad=True)
    tokenizer.add_special_tokens({"extra_special_tokens": [START_OF_TURN]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def teacher_config(args, tokenizer, layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
        num_hidden_layers=layers, num_attention_heads=max(args.hidden_size // 32, 1),
        max_position_embeddings=max_length(args),
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


def tokenized_batch(conversations: list[list[dict]], tokenizer) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 but where an assistant token is the target)."""
    template = ChatTemplate(CHAT_TEMPLATE)
    rows = [assistant_token_mask(turns, tokenizer, template, row) for row, turns in enumerate(conversations)]
    longest = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), longest), tokenizer.pad_token_id)  # [batch, seq]
    attention_mask, labels = torch.zeros_like(input_ids), torch.full_like(input_ids, -100)  # [batch, seq] each
    for row, (ids, mask) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.as_tensor(ids).masked_fill(torch.as_tensor(mask) == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_teacher(args, heldout_prompts: set) -> Path:
    """The tokenizer and the teacher, trained on fresh reversals (none of the held-out prompts) into
    WORK_DIR/teacher (returned); kept when it is there, if trained with this seed (which draws the held-out
    prompts it must not have seen)."""
    teacher_dir = Path(args.work_dir) / "teacher"
    if (teacher_dir / "model.safetensors").exists():
        kept_seed = json.loads((teacher_dir / "training.json").read_text()).get("seed", args.seed)
        if kept_seed != args.seed:
            raise SystemExit(f"{teacher_dir} was trained with --seed {kept_seed}, not {args.seed}: its training data "
                             "may hold this seed's held-out prompts; expected another --work_dir for this seed")
        return teacher_dir
    tokenizer = chat_tokenizer()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(teacher_config(args, tokenizer, args.teacher_layers)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(args.teacher_steps // 20, 1), args.teacher_steps)
    rng, started = random.Random(args.seed + 1), time.perf_counter()
    for step in range(args.teacher_steps):
        pairs = []
        while len(pairs) < args.teacher_batch_size:
            prompt, answer = reversal(rng, args.min_letters, args.max_letters)
            if prompt not in heldout_prompts:
                pairs.append(conversation(prompt, answer))
        loss = model(**tokenized_batch(pairs, tokenizer)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % max(args.teacher_steps // 10, 1) == 0:
            print(f"teacher step {step}: loss {loss.item():.4f}", flush=True)
    model.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    write_json_atomic(teacher_dir / "training.json", {"train_seconds": time.perf_counter() - started,
                                                      "steps": args.teacher_steps, "seed": args.seed})  # fmt: skip
    return teacher_dir


def teacher_responses(args, teacher_dir: Path, prompts_file: str) -> str:
    """``distily generate --generate_prompts``: the teacher's answers to the transfer set's prompts, a messages
    dataset (kept when it is there). Temperature 0.1: nearly its greedy answers."""
    output = Path(args.work_dir) / "data" / "responses.jsonl"
    if not output.exists():
        run_generation(parse_generate_config(
            teacher_model_name_or_path=str(teacher_dir), generate_prompts=prompts_file, generate_output=str(output),
            generate_length=args.max_letters + 2, generate_temperature=0.1, per_device_eval_batch_size=64,
            seed=args.seed,
        ))  # fmt: skip
    return str(output)


# students


def student_keys(args, teacher_dir: Path) -> dict:
    """The config keys every student shares (half the teacher's depth, its blocks, embeddings and head copied)."""
    return {
        "teacher_model_name_or_path": str(teacher_dir),
        "student_config_overrides": {"num_hidden_layers": args.teacher_layers // 2},
        "student_init": "teacher",
        "eval_fraction": 0.01,  # the run's own split; the comparison is on the held-out prompts
        "eval_strategy": "no",
        "max_seq_length": max_length(args),
        "tokenization_cache_dir": str(Path(args.work_dir) / "cache"),
        **LOGITS_LOSS,
        "logits_temperature": args.logits_temperature,
        "on_policy_temperature": 1.0,
        "on_policy_max_new_tokens": args.max_letters + 2,
        "max_steps": args.student_steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": args.lr_scheduler_type,
        "warmup_steps": args.warmup_steps,
        "save_strategy": "steps",
        "save_steps": args.eval_every,
        "save_total_limit": 0,  # every checkpoint kept: each is a point of the curves
        "logging_steps": args.eval_every,
        "bf16": False,
        "report_to": "none",
        "seed": args.seed,
    }


def student_sweep(args, teacher_dir: Path, data: dict):
    runs = [{"name": name, "dataset_name": data[source], **overrides} for name, _, source, overrides in VARIANTS
            if name in args.students]
    return write_sweep(args.work_dir, "students", {"base": student_keys(args, teacher_dir), "runs": runs})


# evaluation


def heldout_scores(model, tokenizer, heldout: list[tuple[str, str]], max_new_tokens: int, teacher=None) -> dict:
    """Greedy exact match (percent) on the (prompt, answer) pairs ``heldout``, and with ``teacher`` the KL to it on
    the answers."""
    prompts = HeldoutPrompts([conversation(prompt) for prompt, _ in heldout], [answer for _, answer in heldout])
    scores = GenerationEval(prompts, CHAT_TEMPLATE, max_new_tokens, batch_size=128).scores(model, tokenizer, teacher)
    names = ("exact_match", "kl_to_teacher") if teacher is not None else ("exact_match",)
    return {name: scores[generation_key(name)] for name in names}


def run_checkpoints(run_dir: Path) -> dict[int, Path]:
    """The run's checkpoints by step."""
    found = {int(path.name.split("-")[1]): path for path in run_dir.glob("checkpoint-*") if path.name[11:].isdigit()}
    return dict(sorted(found.items()))


def checkpoint_student(run_dir: Path, checkpoint: Path) -> PreTrainedModel:
    """The student of a checkpoint (which holds the trainer's whole model: the student's weights under the
    ``student.`` prefix), in the final student's architecture."""
    student = load_student(str(run_dir))
    prefix = f"{STUDENT}."
    weights = {name[len(prefix):]: tensor for name, tensor in load_file(checkpoint / "model.safetensors").items()
               if name.startswith(prefix)}  # fmt: skip
    missing, unexpected = student.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if student.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{checkpoint} does not hold the student: missing {missing}, unexpected {unexpected}")
    student.tie_weights()
    return student


def evaluate(args, teacher_dir: Path, sweep, splits: dict) -> dict:
    """Teacher and students on the held-out prompts (every checkpoint of each student: its curve), and the final
    students also on the prompts of the reference conversations: what (a) and (b) trained on, so that memorising
    them shows as the gap between the two."""
    heldout, references = splits["heldout"], splits["prompts"][: args.references]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    budget = args.max_letters + 2
    training = json.loads((teacher_dir / "training.json").read_text())
    results = {"teacher": {"parameters": teacher.num_parameters(), **training,
                           **heldout_scores(teacher, tokenizer, heldout, budget)}}  # fmt: skip
    results["students"] = {}
    for run in sweep.runs:
        run_dir = sweep.run_dir(run)
        curve = {step: heldout_scores(checkpoint_student(run_dir, path), tokenizer, heldout, budget)
                 for step, path in run_checkpoints(run_dir).items()}  # fmt: skip
        final = load_student(str(run_dir))
        train = RunDir(run_dir).read_metrics().train
        label = run.name.rsplit("-", 1)[0]  # the sweep adds a hash of the run's keys
        signal, source = next((what, data) for name, what, data, _ in VARIANTS if name == label)
        results["students"][label] = {
            "signal": signal, "data": source, "parameters": final.num_parameters(), "steps": train.global_step,
            "train_seconds": train.wall_seconds, **heldout_scores(final, tokenizer, heldout, budget, teacher),
            "reference_exact_match": heldout_scores(final, tokenizer, references, budget)["exact_match"],
            "curve": {step: scores["exact_match"] for step, scores in curve.items()},
        }  # fmt: skip
    return results


def beats(better: float, worse: float, prompts: int) -> bool:
    """Whether exact match ``better`` exceeds ``worse`` (percent of ``prompts`` held-out prompts) by more than two
    standard errors of the difference of two binomial proportions: 1 prompt of 256 apart is not a win."""
    p, q = better / 100, worse / 100
    return better - worse > 200 * math.sqrt((p * (1 - p) + q * (1 - q)) / prompts)


def goals(results: dict, prompts: int) -> dict:
    """Every KD student above (a) on exact match, beyond noise on the ``prompts`` held-out prompts (``beats``);
    on-policy or mixed at least GOAL_MARGIN points above (b)."""
    students = results["students"]
    baseline, kd_references = students["a-fine-tune"]["exact_match"], students["b-kd-references"]["exact_match"]
    best_on_policy = max(students[name]["exact_match"] for name in ON_POLICY_VARIANTS)
    return {
        "every_kd_student_beats_fine_tuning": all(
            beats(students[name]["exact_match"], baseline, prompts) for name in KD_VARIANTS
        ),
        "on_policy_or_mixed_over_kd_references_points": best_on_policy - kd_references,
        "on_policy_or_mixed_beats_kd_references_by_5_points": best_on_policy - kd_references >= GOAL_MARGIN,
    }


def schedule_text(args) -> str:
    """The students' schedule, as the report words it ("" for a constant rate from the first step)."""
    if args.lr_scheduler_type == "constant" and args.warmup_steps == 0:
        return ""
    warmup = f"{args.warmup_steps} warmup steps, then " if args.warmup_steps else ""
    return f" ({warmup}{args.lr_scheduler_type})"


def temperature_text(args) -> str:
    """The KD students' loss temperature, as the report words it ("" at 1)."""
    return "" if args.logits_temperature == 1 else f", temperature {args.logits_temperature:g}"


def write_report(args, results: dict, command: str) -> None:
    teacher, students, met = results["teacher"], results["students"], results["goals"]
    lines = [
        "# Instruction distillation: string reversal in chat format",
        "",
        f"Command: `{command}` (on {results['device']}).",
        "",
        f"Task: the user sends `reverse LETTERS` ({args.min_letters} to {args.max_letters} lowercase letters), the "
        f"assistant answers them reversed. Transfer set: {args.prompts} prompts, {args.references} of them with "
        f"reference answers. Teacher: Llama, {args.teacher_layers} layers, width {args.hidden_size}, "
        f"{teacher['parameters'] / 1e6:.2f}M parameters, {teacher['steps']} steps of {args.teacher_batch_size} fresh "
        f"reversals. Students: {args.teacher_layers // 2} layers, blocks, embeddings and head from the teacher, "
        f"each {args.student_steps} steps of {args.batch_size} conversations at learning rate {args.learning_rate}"
        f"{schedule_text(args)}; "
        f"(b) to (e) with the generalized JSD (beta 0.5{temperature_text(args)}). Evaluated on "
        f"{args.heldout} held-out prompts, greedy; KL is KL(teacher || student) per token of the student's answers.",
        "",
        *markdown_head(["model", "learns from", "data", "exact match (%)", "on the reference prompts (%)",
                        "KL to teacher", "train time"]),
        markdown_row(["teacher", "reference answers (fresh)", "", f"{teacher['exact_match']:.1f}", "", "",
                      f"{teacher['train_seconds']:.0f} s"]),
    ]  # fmt: skip
    for name, row in students.items():
        lines.append(markdown_row([name, row["signal"], row["data"], f"{row['exact_match']:.1f}",
                                   f"{row['reference_exact_match']:.1f}", f"{row['kl_to_teacher']:.3f}",
                                   f"{row['train_seconds']:.0f} s"]))  # fmt: skip
    lines += [
        "",
        f"- Every KD student beats (a) on exact match, by more than two standard errors: "
        f"{'yes' if met['every_kd_student_beats_fine_tuning'] else 'no'}.",
        f"- On-policy or mixed over (b): {met['on_policy_or_mixed_over_kd_references_points']:+.1f} points "
        f"(goal: at least +{GOAL_MARGIN:.0f}).",
    ] if met else ["", "- The goals compare all five students: not checked for these."]  # fmt: skip
    lines += ["", f"![held-out exact match against steps]({Path(args.report).with_suffix('.png').name})", ""]
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))
    plot(results, Path(args.report).with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, row in results["students"].items():
        axes.plot(list(row["curve"]), list(row["curve"].values()), marker="o", label=name)
    axes.axhline(results["teacher"]["exact_match"], color="black", linestyle="--", label="teacher")
    axes.set_xlabel("optimizer steps")
    axes.set_ylabel("held-out exact match (%)")
    axes.legend()
    save_figure(figure, path)


def runtime_estimate(args) -> float:
    """Seconds on 2 CPU cores, from a smoke run's costs on this project's machine while other runs shared it (so
    rather an upper bound): 0.76 s per teacher step of 64 conversations, 0.23 s per supervised and 0.31 s per
    on-policy student step of 32 (``STEP_SECONDS``), 20 s to start each student, 5 s for the teacher's responses to
    1024 prompts; evaluations assumed at 2 s per 256 prompts."""
    per_student_step = sum(STEP_SECONDS[name] for name in args.students) * args.batch_size / 32
    evaluations = len(args.students) * (args.student_steps // args.eval_every + 1)
    return (args.teacher_steps * args.teacher_batch_size / 64 * 0.76 + args.student_steps * per_student_step
            + len(args.students) * 20 + evaluations * args.heldout / 256 * 2 + args.prompts / 1024 * 5)  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = command_line("instruct.py", argv)
    print(f"expected runtime on 2 idle CPU cores: about {runtime_estimate(args) / 60:.0f} minutes", flush=True)
    splits = task_splits(args)
    data = write_task_data(args, splits)
    teacher_dir = train_teacher(args, {prompt for prompt, _ in splits["heldout"]})
    data["responses"] = teacher_responses(args, teacher_dir, data["prompts"])
    sweep = student_sweep(args, teacher_dir, data)
    run_students(sweep)
    results = evaluate(args, teacher_dir, sweep, splits)
    results["goals"] = goals(results, args.heldout) if set(args.students) == set(STUDENTS) else {}
    save_results(args, results, command, write_report)
    for name, value in results["goals"].items():
        print(f"{name}: {value}")
    return results


if __name__ == "__main__":
    main()
