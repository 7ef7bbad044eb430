"""Cross-tokenizer losses: the chain rule against enumeration, ULD against a float64 reference, the mapped loss
against its formula, the same-tokenizer case against today's logit loss, and a run between two tokenizers."""

import itertools
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from distily.config import parse_config, parse_record_config
from distily.data.alignment import ALIGNED, TEACHER_INPUT_IDS, collate_aligned
from distily.data.framing import INPUT_IDS
from distily.data import vocabulary
from distily.data.vocabulary import VocabularyMap, map_vocabularies, token_bytes
from distily.errors import DistilyConfigError
from distily.objectives.cross_tokenizer import (
    CrossTokenizerLogitsComponent, SupportColumns, chain_logprobs, mapped, teacher_token_logprobs, uld,
)
from distily.objectives.losses import forward_kl
from distily.objectives.objective import LogitsComponent
from distily.recording.run import run_recording
from distily.training.distill import run_distillation
from distily.training.on_policy import AlignedOnPolicyBatches
from tests.tiny import (
    CHAT_STYLES, make_bos_tokenizer, make_chat_tokenizer, make_conversations, make_documents,
    make_sentencepiece_chat_tokenizer, make_sentencepiece_tokenizer, make_tokenizer, tiny_config,
    train_bos_anchored_llama, train_llama, write_chat_jsonl, write_jsonl,
)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chain_rule_span_probability_equals_enumeration(temperature):
    torch.manual_seed(0)
    vocab = 5
    bigram = torch.randn(vocab, vocab) * 2  # a teacher whose next-token logits depend on the last token
    teacher_ids = torch.tensor([[3, 1, 4, 0, 2]])
    logits = bigram[teacher_ids]  # [1, 5, vocab]
    # student position 0 is aligned with teacher 0, its next token spans teacher tokens 1..3; position 1 ends with 3
    aligned = torch.tensor([[0, 3, 4]])
    targets = torch.tensor([[True, True]])
    token_logprobs = teacher_token_logprobs(logits, None, None, teacher_ids, temperature)
    chain = chain_logprobs(token_logprobs, aligned, targets)

    def step(previous):
        return torch.softmax(bigram[previous].double() / temperature, -1)

    joint = {}
    for span in itertools.product(range(vocab), repeat=3):  # every teacher continuation of three tokens
        probability, previous = 1.0, 3
        for token in span:
            probability *= step(previous)[token].item()
            previous = token
        joint[span] = probability
    assert sum(joint.values()) == pytest.approx(1.0)
    assert chain[0, 0].item() == pytest.approx(math.log(joint[(1, 4, 0)]), abs=1e-5)
    assert chain[0, 1].item() == pytest.approx(math.log(step(0)[2].item()), abs=1e-5)
    assert chain[0, 2].item() == -math.inf  # the last position: no next token


def uld_reference(student_logits, teacher_logits, temperature):
    rows = []
    for student, teacher in zip(student_logits.double(), teacher_logits.double()):
        p = sorted(torch.softmax(student / temperature, -1).tolist(), reverse=True)
        q = sorted(torch.softmax(teacher / temperature, -1).tolist(), reverse=True)
        width = max(len(p), len(q))
        p, q = p + [0.0] * (width - len(p)), q + [0.0] * (width - len(q))
        rows.append(sum(abs(a - b) for a, b in zip(p, q)) * temperature**2)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("widths", [(7, 11), (11, 7), (9, 9)])
def test_uld_matches_a_float64_reference(widths):
    torch.manual_seed(1)
    student, teacher = torch.randn(6, widths[0]) * 3, torch.randn(6, widths[1]) * 3
    for temperature in (1.0, 1.5):
        assert torch.allclose(uld(student, teacher, temperature).double(), uld_reference(student, teacher, temperature),
                              atol=1e-6)


def test_mapped_is_the_divergence_on_the_shared_tokens_and_the_chain_rule_target():
    # student tokens 0, 1 are teacher tokens 1, 2; student token 2 is unshared: its teacher probability comes by
    # the chain rule
    vocabulary = VocabularyMap(torch.tensor([0, 1]), torch.tensor([1, 2]), student_size=3, teacher_size=4)
    columns = SupportColumns(vocabulary)
    student, teacher = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, 1.0, 0.3, -0.7]])
    chain = torch.tensor([-2.5])
    found = mapped(student, teacher, 1.0, divergence=forward_kl, columns=columns, target_ids=torch.tensor([2]),
                   target_logprob=chain)
    teacher_logprobs = torch.log_softmax(teacher, -1)[0]
    q = torch.softmax(torch.stack([teacher_logprobs[1], teacher_logprobs[2], chain[0]]), -1)  # renormalised
    p = torch.softmax(student[0], -1)  # the student's support is all its tokens here
    assert found.item() == pytest.approx((q * (q.log() - p.log())).sum().item(), abs=1e-6)
    # a shared target: its column is the chain-rule one, not counted twice
    shared = mapped(student, teacher, 1.0, divergence=forward_kl, columns=columns, target_ids=torch.tensor([1]),
                    target_logprob=chain)
    q = torch.softmax(torch.stack([teacher_logprobs[1], chain[0]]), -1)
    p = torch.softmax(student[0, :2], -1)
    assert shared.item() == pytest.approx((q * (q.log() - p.log())).sum().item(), abs=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_one_tokenizer_through_the_cross_tokenizer_path_gives_todays_loss(fused):
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config("gpt2", layers=2)).eval()
    student = AutoModelForCausalLM.from_config(tiny_config("gpt2", layers=1)).eval()  # no dropout: one forward each
    texts = make_documents(3, seed=3)
    features = []
    for text in texts:
        ids = tokenizer(text)["input_ids"][:40]
        features.append({INPUT_IDS: ids, TEACHER_INPUT_IDS: ids, ALIGNED: list(range(len(ids)))})
    batch = collate_aligned(features)
    vocabulary = map_vocabularies(tokenizer, tokenizer, 320, 320)
    assert len(vocabulary) == len(tokenizer) == 320
    values = {}
    for name, component in (("today", LogitsComponent("forward_kl", 2.0)),
                            ("cross", CrossTokenizerLogitsComponent("forward_kl", 2.0, cross_tokenizer_loss="mapped",
                                                                    vocabulary=vocabulary))):
        component.attach(student, teacher)
        student.zero_grad()
        with torch.no_grad():
            teacher_outputs = (teacher.get_decoder() if fused else teacher)(
                input_ids=batch[TEACHER_INPUT_IDS], attention_mask=batch["teacher_attention_mask"])
        student_outputs = student(input_ids=batch[INPUT_IDS], attention_mask=batch["attention_mask"],
                                  output_hidden_states=True, logits_to_keep=1 if fused else 0)
        loss = component(student_outputs, teacher_outputs, batch)
        loss.backward()
        values[name] = (loss.item(), student.lm_head.weight.grad.clone())
    assert values["cross"][0] == pytest.approx(values["today"][0], rel=1e-5)
    assert torch.allclose(values["cross"][1], values["today"][1], atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_the_losses_leave_out_the_lm_heads_padding_rows(fused):
    """Heads padded past their tokenizers' ids (to multiples of 64 and 128, as many models pad them): ULD compares
    the two distributions over the tokenizers' ids only (the float64 reference), and the padding rows, which no
    text can hold, take no gradient from any cross-tokenizer loss."""
    student_tokenizer, teacher_tokenizer = make_sentencepiece_tokenizer(vocab_size=400), make_bos_tokenizer()
    sizes = (len(student_tokenizer), len(teacher_tokenizer))  # 400, 320
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(tiny_config("gpt2", layers=1, vocab_size=448)).eval()
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama", layers=1, vocab_size=384)).eval()
    text = make_documents(1, seed=3)[0]
    ids = [tokenizer(text)[INPUT_IDS][:24] for tokenizer in (student_tokenizer, teacher_tokenizer)]
    batch = collate_aligned([{INPUT_IDS: ids[0], TEACHER_INPUT_IDS: ids[1], ALIGNED: list(range(24))}])
    vocabulary = map_vocabularies(student_tokenizer, teacher_tokenizer, 448, 384)
    assert (vocabulary.student_size, vocabulary.teacher_size) == sizes
    with torch.no_grad():
        student_logits = student(input_ids=batch[INPUT_IDS]).logits[0]  # [24, 448]: every position aligned
        teacher_logits = teacher(input_ids=batch[TEACHER_INPUT_IDS]).logits[0]  # [24, 384]
    # a random head's padding rows hold real probability, which the old losses compared
    assert torch.softmax(student_logits / 2.0, -1)[:, sizes[0]:].sum(-1).min() > 0.05
    expected = uld_reference(student_logits[:, : sizes[0]], teacher_logits[:, : sizes[1]], 2.0).sum()
    for loss in ("uld", "mapped_uld"):
        component = CrossTokenizerLogitsComponent("forward_kl", 2.0, cross_tokenizer_loss=loss, vocabulary=vocabulary)
        component.attach(student, teacher)
        student.zero_grad()
        with torch.no_grad():
            teacher_outputs = (teacher.get_decoder() if fused else teacher)(input_ids=batch[TEACHER_INPUT_IDS])
        student_outputs = student(input_ids=batch[INPUT_IDS], output_hidden_states=True,
                                  logits_to_keep=1 if fused else 0)
        value = component(student_outputs, teacher_outputs, batch)
        value.backward()
        if loss == "uld":
            assert value.item() == pytest.approx(expected.item(), rel=1e-5)
        gradient = student.lm_head.weight.grad
        assert gradient[: sizes[0]].abs().sum() > 0 and gradient[sizes[0]:].abs().sum() == 0


@pytest.fixture(scope="module")
def two_tokenizer_run(tmp_path_factory):
    """A teacher trained on the grammar with a BOS-anchored byte-level tokenizer, a random student with a
    SentencePiece-style one of another size, and the documents."""
    root = tmp_path_factory.mktemp("xtok")
    teacher_tokenizer = make_bos_tokenizer()
    teacher = train_bos_anchored_llama(teacher_tokenizer, steps=150)
    teacher.save_pretrained(root / "teacher")
    teacher_tokenizer.save_pretrained(root / "teacher")
    student_tokenizer = make_sentencepiece_tokenizer(vocab_size=400)
    config = tiny_config("gpt2", layers=2, vocab_size=len(student_tokenizer))
    config.bos_token_id, config.eos_token_id = student_tokenizer.bos_token_id, student_tokenizer.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "student")
    student_tokenizer.save_pretrained(root / "student")
    return root, write_jsonl(root / "docs.jsonl", make_documents(400))


def test_distilling_across_tokenizers_lowers_the_students_heldout_loss(two_tokenizer_run, tmp_path):
    root, data = two_tokenizer_run
    metrics = run_distillation(parse_config(
        teacher_model_name_or_path=str(root / "teacher"), student_model_name_or_path=str(root / "student"),
        dataset_name=data, max_seq_length=48, max_eval_samples=16, output_dir=str(tmp_path / "run"),
        tokenization_cache_dir=str(tmp_path / "cache"), max_steps=30, learning_rate=3e-3,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, eval_strategy="no", save_strategy="no",
        report_to="none", disable_tqdm=True, cross_tokenizer_loss="mapped_uld", hidden_states_weight=0.1,
        hidden_states_layer_map="last",
    ))
    student = metrics["student"]
    assert student["after_lm_loss"] < 0.9 * student["before_lm_loss"], student
    assert student["after_loss_logits"] < student["before_loss_logits"], student
    assert metrics["framing"]["packing"] == "aligned_pieces"
    # bits per byte for both models, each on its own tokens: the student's bytes per target token do not change
    # with training, so bits per byte and loss per token move together
    assert student["after_bits_per_byte"] / student["after_lm_loss"] == pytest.approx(
        student["before_bits_per_byte"] / student["before_lm_loss"], rel=1e-6)
    assert 0 < metrics["teacher"]["bits_per_byte"] < student["before_bits_per_byte"]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert saved.config.vocab_size == 400


@pytest.fixture(scope="module")
def two_tokenizer_chat_run(tmp_path_factory):
    """A teacher trained on conversations in Llama 3's template with a byte-level tokenizer (the assistant repeats
    the question), a random student with a SentencePiece tokenizer and ChatML's template, and other conversations."""
    root = tmp_path_factory.mktemp("xtok_chat")
    teacher_tokenizer = make_chat_tokenizer("llama3")
    rendered = [teacher_tokenizer.apply_chat_template(messages, tokenize=False)
                for messages in make_conversations(600, seed=3)]
    teacher = train_llama(teacher_tokenizer, [teacher_tokenizer(text, add_special_tokens=False)["input_ids"]
                                              for text in rendered], steps=150)
    teacher.save_pretrained(root / "teacher")
    teacher_tokenizer.save_pretrained(root / "teacher")
    student_tokenizer = make_sentencepiece_chat_tokenizer("chatml")
    config = tiny_config("gpt2", layers=2, vocab_size=len(student_tokenizer))
    config.bos_token_id, config.eos_token_id = student_tokenizer.bos_token_id, student_tokenizer.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "student")
    student_tokenizer.save_pretrained(root / "student")
    return root, write_chat_jsonl(root / "chat.jsonl", make_conversations(300, seed=4))


def _chat_run(root, data, output_dir, cache_dir, **overrides) -> dict:
    return run_distillation(parse_config(**{
        "teacher_model_name_or_path": str(root / "teacher"), "student_model_name_or_path": str(root / "student"),
        "dataset_name": data, "max_seq_length": 96, "max_eval_samples": 16, "output_dir": str(output_dir),
        "tokenization_cache_dir": str(cache_dir), "max_steps": 40, "learning_rate": 3e-3,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "eval_strategy": "no",
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True, **overrides,
    }))


@pytest.mark.slow
def test_distilling_chat_across_tokenizers_teaches_the_student_the_answers(two_tokenizer_chat_run, tmp_path):
    """Each model reads the conversations in its own template; the logit loss alone (no labels) at the aligned
    positions of the answers lowers the student's held-out loss on its answers' tokens by a third in 40 steps,
    which only targets at the right characters can do, and the student keeps its own template."""
    root, data = two_tokenizer_chat_run
    distilled = _chat_run(root, data, tmp_path / "kd", tmp_path / "cache", cross_tokenizer_loss="mapped",
                          generation_eval_dataset=data, generation_eval_max_samples=4,
                          generation_eval_max_new_tokens=12)
    student = distilled["student"]
    assert student["after_generation/samples"] == 4  # greedy answers to prompts in the student's own template
    assert distilled["framing"]["packing"] == "aligned_conversations"
    assert student["after_lm_loss"] < 0.75 * student["before_lm_loss"], student
    assert student["after_loss_logits"] < 0.5 * student["before_loss_logits"], student
    assert 0 < distilled["teacher"]["lm_loss"] < student["after_lm_loss"]  # on the teacher's answer tokens
    saved = AutoTokenizer.from_pretrained(tmp_path / "kd")
    assert saved.chat_template == CHAT_STYLES["chatml"][0]
    card = (tmp_path / "kd" / "README.md").read_text()
    assert "tokens, rendered with each model's own chat template" in card and "`loss_on: assistant`" in card
    assert ("held-out data: 15 conversations of at most 96 tokens set aside before training, on their assistant's"
            in card)
    (method,) = [line for line in card.splitlines() if line.startswith("- `logits`")]
    assert "aligned loss position" in method and "  " not in method  # the docstring's line breaks folded


@pytest.mark.slow
def test_on_policy_distillation_across_tokenizers_teaches_the_answers(two_tokenizer_chat_run, tmp_path,
                                                                     monkeypatch):
    """lmbda=1: every batch is the student's own completions of the conversations' last questions, in its template
    and tokens, scored by the teacher through its tokens of their text; the student's held-out answer loss falls by
    a fifth in 40 steps, and its saved generation config stops at its own end-of-turn token."""
    root, data = two_tokenizer_chat_run
    batches = []
    completed = AlignedOnPolicyBatches.completed

    def counted(self, batch, prompts, completions):
        batches.append(completed(self, batch, prompts, completions))
        return batches[-1]

    monkeypatch.setattr(AlignedOnPolicyBatches, "completed", counted)
    distilled = _chat_run(root, data, tmp_path / "on_policy", tmp_path / "cache", cross_tokenizer_loss="mapped",
                          lmbda=1.0, on_policy_max_new_tokens=24)
    student = distilled["student"]
    assert student["after_lm_loss"] < 0.8 * student["before_lm_loss"], student
    assert len(batches) == 40 and all((batch[ALIGNED] >= 0).sum() > 8 for batch in batches)
    end_of_turn = AutoTokenizer.from_pretrained(tmp_path / "on_policy").convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in GenerationConfig.from_pretrained(tmp_path / "on_policy").eos_token_id


def test_student_chat_template_needs_a_student_with_its_own_tokenizer(two_tokenizer_chat_run, tmp_path):
    root, data = two_tokenizer_chat_run
    with pytest.raises(DistilyConfigError, match=r"student_chat_template is for a student with its own tokenizer"):
        _chat_run(root, data, tmp_path / "run", tmp_path / "cache", student_model_name_or_path=None,
                  student_tokenizer_name_or_path=None, student_chat_template=CHAT_STYLES["chatml"][0])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"lmbda": 0.5}, r"lmbda=0.5: on-policy distillation completes the prompts of chat data, and '.*' holds "
                     r"none; expected messages or prompt \+ completion data, or lmbda=0"),
    ({"chat": True}, r"the student's tokenizer \(\w+\) has no chat template; expected student_chat_template"),
    ({"chat": True, "loss_on": "all", "student_chat_template": CHAT_STYLES["chatml"][0]},
     r"loss_on='all': across tokenizers only the assistant's turns align .*; expected loss_on=assistant"),
    ({"teacher_source": "recorded"}, r"cross-tokenizer distillation needs teacher_source=live: a store holds the "),
])
def test_what_a_cross_tokenizer_run_cannot_do_is_a_one_line_error(two_tokenizer_run, tmp_path, overrides, message):
    root, data = two_tokenizer_run
    if overrides.pop("chat", False):
        data = write_chat_jsonl(tmp_path / "chat.jsonl", make_conversations(8))
    if overrides.get("teacher_source") == "recorded":  # a store of the teacher's tokens
        overrides["teacher_store"] = str(tmp_path / "store")
        run_recording(parse_record_config(
            teacher_model_name_or_path=str(root / "teacher"), dataset_name=data, max_seq_length=48, max_samples=8,
            max_eval_samples=4, record_top_k=8, teacher_store=overrides["teacher_store"],
            tokenization_cache_dir=str(tmp_path / "cache"),
        ))
    with pytest.raises(DistilyConfigError, match=message):
        run_distillation(parse_config(
            teacher_model_name_or_path=str(root / "teacher"), student_model_name_or_path=str(root / "student"),
            dataset_name=data, max_seq_length=48, output_dir=str(tmp_path / "run"),
            tokenization_cache_dir=str(tmp_path / "cache"), max_steps=1, report_to="none", **overrides,
        ))
    assert not (tmp_path / "run").exists()


def test_a_student_built_from_the_teacher_with_its_own_tokenizer_takes_rows_and_special_tokens_by_token(
        tmp_path, monkeypatch):
    """The teacher's layers, and of its embedding and LM head the rows of the tokens both tokenizers hold, each
    where the student's tokenizer has that token (a vocabulary of the teacher's size used to be copied by id: every
    row another token's); the saved student's config and generation config name its own tokenizer's BOS, end of
    text and padding (they named the teacher's ids). Each vocabulary is read once: the rows and the loss mapped the
    two apart (about a second each for vocabularies of 50k tokens)."""
    read = []
    monkeypatch.setattr(vocabulary, "token_bytes", lambda tokenizer: read.append(tokenizer) or token_bytes(tokenizer))
    teacher_tokenizer, student_tokenizer = make_bos_tokenizer(), make_sentencepiece_tokenizer(vocab_size=320)
    config = tiny_config("llama", layers=2, vocab_size=len(teacher_tokenizer), tie_word_embeddings=False)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config)
    teacher.save_pretrained(tmp_path / "teacher")
    teacher_tokenizer.save_pretrained(tmp_path / "teacher")
    student_tokenizer.save_pretrained(tmp_path / "tokenizer")
    run_distillation(parse_config(
        teacher_model_name_or_path=str(tmp_path / "teacher"),
        student_tokenizer_name_or_path=str(tmp_path / "tokenizer"), student_config_overrides={"num_hidden_layers": 1},
        dataset_name=write_jsonl(tmp_path / "d.jsonl", make_documents(40)),
        max_seq_length=32, max_eval_samples=8, output_dir=str(tmp_path / "run"),
        tokenization_cache_dir=str(tmp_path / "cache"), max_steps=1, learning_rate=1e-12,
        per_device_train_batch_size=4, eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
    ))
    assert len(read) == 2
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    shared = map_vocabularies(student_tokenizer, teacher_tokenizer)
    assert 0 < len(shared) < len(student_tokenizer) and student.config.vocab_size == config.vocab_size
    for rows, teacher_rows in ((student.get_input_embeddings().weight, teacher.get_input_embeddings().weight),
                               (student.lm_head.weight, teacher.lm_head.weight)):
        torch.testing.assert_close(rows[shared.student_ids], teacher_rows[shared.teacher_ids], atol=1e-6, rtol=0)
        unshared = sorted(set(range(len(student_tokenizer))) - set(shared.student_ids.tolist()))
        assert not torch.isclose(rows[unshared], teacher_rows[unshared], atol=1e-6, rtol=0).all(dim=1).any()
    copied = student.model.layers[0].mlp.up_proj.weight
    assert any(torch.allclose(copied, layer.mlp.up_proj.weight, atol=1e-6, rtol=0) for layer in teacher.model.layers)
    for settings in (student.config, student.generation_config):
        assert (settings.bos_token_id, settings.eos_token_id, settings.pad_token_id) == (
            student_tokenizer.bos_token_id, student_tokenizer.eos_token_id, student_tokenizer.pad_token_id)
