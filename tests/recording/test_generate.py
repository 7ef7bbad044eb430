"""``distily generate``: the temperature schedule, samples usable as a dataset, recording in the same command."""

import json

import datasets
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from distily.cli import main
from distily.config import parse_config, parse_generate_config
from distily.data.store import TeacherStore
from distily.errors import DistilyConfigError
from distily.models.teacher import load_tokenizer
from distily.generation.arguments import SamplingSettings
from distily.generation.engine import HFGenerator, LinearTemperatureLogitsProcessor
from distily.recording import generate
from distily.recording.arguments import GenerateArguments
from distily.recording.generate import run_generation, sample_sequences, start_token
from distily.recording.hf import HFRecorder
from distily.recording.run import run_recording
from distily.training.distill import run_distillation
from store_values import store_values
from tiny import save_float16_overflowing_llama, tiny_config


def test_temperature_moves_linearly_along_the_sequence_then_stays():
    processor = LinearTemperatureLogitsProcessor(start=2.0, end=0.5, length=4, prompt_length=1)
    scores = torch.ones(3, 5)
    expected = {1: 2.0, 2: 1.5, 3: 1.0, 4: 0.5, 6: 0.5}  # input length -> temperature of the next token
    for length, temperature in expected.items():
        out = processor(torch.zeros(3, length, dtype=torch.long), scores)
        torch.testing.assert_close(out, scores / temperature)


def _values(teacher_dirs, text_file, tmp_path, **overrides):
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, generate_num_samples=12, generate_length=40,
                          generate_temperature=1.5, generate_final_temperature=0.7, generate_top_p=0.9,
                          max_samples=None, eval_fraction=0.25, **overrides)
    values.pop("dataset_name")
    return values


def test_generated_samples_form_a_dataset_to_distill_on(teacher_dirs, text_file, tmp_path):
    tokenizer = load_tokenizer(teacher_dirs["llama"], "teacher")
    output = tmp_path / "samples.jsonl"
    values = _values(teacher_dirs, text_file, tmp_path, generate_output=str(output))
    result = run_generation(parse_generate_config(**values))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == result["samples"] == 12
    start = start_token(tokenizer)  # the tokenizer has no BOS: the end of text each document follows
    assert all(1 <= len(row["input_ids"]) <= 41 and row["input_ids"][0] == start and start not in row["input_ids"][1:]
               for row in rows)
    assert rows[0]["text"] == tokenizer.decode(rows[0]["input_ids"], skip_special_tokens=True)
    with pytest.raises(DistilyConfigError, match=r"generate_output='.*samples.jsonl' exists; expected a new path"):
        run_generation(parse_generate_config(**values))
    metrics = run_distillation(parse_config(**{**values, "dataset_name": str(output), "max_steps": 2}))
    assert metrics["train_sequences"] > 0


def test_samples_are_plain_generates_sequences_from_the_start_token_cut_before_the_stop(teacher_dirs, tmp_path):
    """A tokenizer that adds no BOS (GPT-2's, Qwen's; this one's) samples after its end-of-text token: the samples
    kept only what followed it, so the teacher's first token had no context to be predicted from, and every later one
    another context than it was drawn in."""
    tokenizer = load_tokenizer(teacher_dirs["llama"], "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"]).eval()
    args = GenerateArguments(generate_output=str(tmp_path / "s.jsonl"), generate_num_samples=8, generate_length=12,
                             generate_temperature=1.3, generate_top_p=0.9)
    torch.manual_seed(0)
    samples = sample_sequences(teacher, tokenizer, args, batch_size=8)
    torch.manual_seed(0)
    start = torch.full((8, 1), tokenizer.eos_token_id)  # this tokenizer's end of text
    plain = teacher.generate(start, attention_mask=torch.ones_like(start), do_sample=True, temperature=1.3, top_k=0,
                             top_p=0.9, max_new_tokens=12, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id).tolist()
    expected = [row[: row.index(row[0], 1)] if row[0] in row[1:] else row for row in plain]  # cut before the stop
    assert samples == expected


def test_generate_can_record_the_teacher_in_the_same_command(teacher_dirs, text_file, tmp_path):
    output = tmp_path / "samples"
    values = _values(teacher_dirs, text_file, tmp_path, generate_output=str(output), generate_record=True)
    config_file = tmp_path / "config.yaml"  # the file distill reads too: generate takes the keys it uses
    config_file.write_text(yaml.safe_dump({key: value for key, value in values.items() if value is not None}))
    assert main(["generate", str(config_file), "--generate_num_samples", str(values["generate_num_samples"])]) == 0
    assert len(datasets.load_from_disk(str(output))) == 12
    store = TeacherStore(values["teacher_store"])
    assert store.settings["dataset_name"] == str(output)
    assert store.manifest["rows"]["train"] > 0 and store.manifest["rows"]["eval"] > 0
    metrics = run_distillation(parse_config(**{**values, "dataset_name": str(output), "teacher_source": "recorded",
                                               "output_dir": str(tmp_path / "run"), "max_steps": 2}))
    assert metrics["teacher"]["source"] == "recorded"


def test_a_recording_stopped_part_way_resumes_with_the_same_command(teacher_dirs, text_file, tmp_path, monkeypatch,
                                                                   capsys):
    """The samples are written before the recording: a run stopped during it is finished by the same command (it
    was refused, generate_output existing, and a new generate_output was refused by the store's settings)."""
    output = tmp_path / "samples.jsonl"
    values = _values(teacher_dirs, text_file, tmp_path, generate_output=str(output), generate_record=True)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({key: value for key, value in values.items() if value is not None}))
    record, recorded = HFRecorder.record, []

    def stopped(self, *args, **kwargs):  # the second shard never comes
        if recorded:
            raise KeyboardInterrupt
        recorded.append(args)
        return record(self, *args, **kwargs)

    monkeypatch.setattr(HFRecorder, "record", stopped)
    assert main(["generate", str(config_file)]) == 130  # Ctrl-C
    samples = output.read_text()
    monkeypatch.setattr(HFRecorder, "record", record)
    monkeypatch.setattr(HFGenerator, "generate", lambda *args: pytest.fail("sampled again"))
    assert main(["generate", str(config_file)]) == 0
    assert "resumed the recording of" in capsys.readouterr().out and output.read_text() == samples
    whole = parse_generate_config(**{**values, "teacher_store": str(tmp_path / "whole")})
    run_recording(whole.recording())  # the samples recorded without a stop
    resumed, reference = TeacherStore(values["teacher_store"]), TeacherStore(str(tmp_path / "whole"))
    assert resumed.manifest["rows"] == reference.manifest["rows"] and resumed.manifest["rows"]["train"] > 8
    for split in ("train", "eval"):
        for row, expected in zip(resumed.dataset(split), reference.dataset(split), strict=True):
            assert all(torch.equal(row[key], expected[key]) for key in expected)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--generate_num_samples", "0"], r"generate_num_samples=0 must be a positive integer"),
        (["--generate_temperature", "-1"], r"generate_temperature=-1.0 must be >= 0 \(0: greedy\)"),
        (["--generate_temperature", "0"], r"generate_temperature=0 \(greedy\) without generate_prompts would write "
                                          r"one sequence 1000 times; expected a temperature > 0 to sample from BOS"),
        (["--generate_temperature", "0", "--generate_prompts", "p.jsonl", "--generate_num_return_sequences", "3"],
         r"generate_num_return_sequences=3 would write copies of one response; expected 1 response per prompt"),
        (["--generate_temperature", "0", "--generate_prompts", "p.jsonl", "--generate_final_temperature", "0.5"],
         r"generate_final_temperature=0.5 with generate_temperature=0 \(greedy\); expected no final temperature"),
        (["--generate_final_temperature", "-1"], r"generate_final_temperature=-1.0 must be > 0"),
        (["--generate_top_p", "1.5"], r"generate_top_p=1.5 is out of range; expected 0 < x <= 1"),
    ],
)
def test_bad_generate_flags_are_one_line_errors(flags, message):
    with pytest.raises(DistilyConfigError, match=message):
        parse_generate_config(argv=["--teacher_model_name_or_path", "t", "--generate_output", "g", *flags])


def test_a_teacher_that_overflows_float16_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    """Sampling from its NaN logits ended in a traceback from torch.multinomial (on a GPU, a device-side assert).
    Now one line names the teacher and its dtype."""
    teacher = save_float16_overflowing_llama(tmp_path / "teacher")
    output = tmp_path / "samples.jsonl"
    values = {"teacher_model_name_or_path": teacher, "teacher_torch_dtype": "float16", "generate_num_samples": 2,
              "generate_length": 4, "generate_output": str(output)}
    (tmp_path / "generate.yaml").write_text(yaml.safe_dump(values))
    assert main(["generate", str(tmp_path / "generate.yaml")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "distily generate: error: the teacher's next-token logits hold NaN or +inf (the teacher ran with float16 "
        "weights); expected finite teacher outputs: teacher_torch_dtype bfloat16 or float32 (some families, such as "
        "Gemma, overflow in float16)")
    assert not output.exists()


def test_greedy_answers_of_nan_logits_are_refused_not_returned(tmp_path):
    """Greedy decoding returned the argmax of NaN logits as an answer (the generation eval scored them)."""
    model = AutoModelForCausalLM.from_pretrained(save_float16_overflowing_llama(tmp_path / "teacher"),
                                                 dtype=torch.float16)
    generator = HFGenerator(model, SamplingSettings(4, temperature=0), [0], 0)
    with pytest.raises(DistilyConfigError, match=r"^the model's next-token logits hold NaN or \+inf \(the model ran "
                       r"with float16 weights\); expected finite model outputs: weights in bfloat16 or float32"):
        generator.generate([[5, 6, 7]])


def test_generate_needs_an_output_and_a_store_to_record_into(teacher_dirs, text_file, tmp_path):
    values = _values(teacher_dirs, text_file, tmp_path)
    with pytest.raises(DistilyConfigError, match=r"generate_output is not set; expected a .jsonl file or a directory"):
        run_generation(parse_generate_config(**values))
    values.update(generate_output=str(tmp_path / "s.jsonl"), generate_record=True, teacher_store=None)
    with pytest.raises(DistilyConfigError, match=r"generate_record=true needs teacher_store"):
        run_generation(parse_generate_config(**values))
    (tmp_path / "notes.txt").write_text("a user's file")
    values.update(teacher_store=str(tmp_path / "notes.txt"))  # refused before sampling, not after it
    with pytest.raises(DistilyConfigError, match=r"teacher_store='.*notes.txt' is an existing file; expected a dir"):
        run_generation(parse_generate_config(**values))
    assert not (tmp_path / "s.jsonl").exists()


def test_an_output_below_an_existing_file_is_refused_before_the_teacher_loads(teacher_dirs, text_file, tmp_path,
                                                                             monkeypatch):
    """The samples are written after all the sampling: a path no file can be made at used to end it there with a
    FileExistsError."""
    (tmp_path / "notes.txt").write_text("a user's file")
    monkeypatch.setattr(generate, "load_teacher", lambda *args: pytest.fail("the teacher loaded"))
    values = _values(teacher_dirs, text_file, tmp_path, generate_output=str(tmp_path / "notes.txt" / "s.jsonl"))
    with pytest.raises(DistilyConfigError, match=r"generate_output='.*s.jsonl' is below the file '.*notes.txt'; "
                                                 r"expected a new path"):
        run_generation(parse_generate_config(**values))
    assert (tmp_path / "notes.txt").read_text() == "a user's file"


def test_a_launch_of_several_processes_is_refused_before_the_teacher_loads(teacher_dirs, text_file, tmp_path,
                                                                           monkeypatch):
    """Every process sampled the same prompts and wrote the same generate_output."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(generate, "load_teacher", lambda *args: pytest.fail("the teacher loaded"))
    values = _values(teacher_dirs, text_file, tmp_path, generate_output=str(tmp_path / "s.jsonl"))
    with pytest.raises(DistilyConfigError, match=r"^distily generate was launched as 2 processes \(WORLD_SIZE=2\); "
                                                 r"expected one"):
        run_generation(parse_generate_config(**values))
    assert not (tmp_path / "s.jsonl").exists()


def test_teacher_samples_and_responses_hold_only_the_tokenizers_ids(teacher_dirs, text_file, tmp_path, monkeypatch):
    """A teacher whose logits have padding columns past its tokenizer (Qwen2.5: 151,936 against 151,665 ids) could
    sample them, ids no tokenizer can decode or student read: made the likeliest here, none may appear."""
    tokenizer = load_tokenizer(teacher_dirs["llama"], "teacher")
    tokens = len(tokenizer)
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=tokens + 64))
    with torch.no_grad():
        teacher.lm_head.weight[tokens:] *= 50
    padded = tmp_path / "padded-teacher"
    teacher.save_pretrained(padded)
    tokenizer.save_pretrained(padded)
    completions = []
    generate = HFGenerator.generate
    monkeypatch.setattr(HFGenerator, "generate", lambda self, prompts: completions.extend(
        generate(self, prompts)) or completions[-len(prompts):])
    samples = tmp_path / "samples.jsonl"
    values = _values(teacher_dirs, text_file, tmp_path, teacher_model_name_or_path=str(padded),
                     generate_output=str(samples), generate_keep_unfinished=True)
    run_generation(parse_generate_config(**values))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the cat sees {n} books"}) + "\n" for n in range(4)))
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    run_generation(parse_generate_config(**{**values, "generate_prompts": str(prompts), "chat_template": template,
                                            "generate_output": str(tmp_path / "responses.jsonl")}))
    assert len(completions) == 12 + 4 and all(token < tokens for ids in completions for token in ids)
