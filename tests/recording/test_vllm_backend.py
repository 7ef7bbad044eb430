"""The vLLM back end's conversion of prompt log-probs into store rows, and its stores against the hf back end's,
on vLLM-shaped stand-ins (the package itself needs a GPU machine)."""

import math
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from distily.config import parse_record_config
from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.data.store import ROW_NLL, ROW_TARGETS, TAIL_LOGPROB, TOPK_IDS, TOPK_LOGPROBS, TeacherStore
from distily.errors import DistilyConfigError
from distily.objectives.losses import LOSSES
from distily.objectives.sparse import BucketLoss
from distily.models.architecture import max_positions
from distily.models.teacher import load_teacher
from distily.recording.run import run_recording
from distily.recording.targets import sparse_targets
from distily.recording.vllm_backend import position_targets, row_targets
from store_values import store_values
from tiny import make_conversations, make_instruct_tokenizer, make_tokenizer, save_tiny_model, write_chat_jsonl


def _candidates(logprobs: torch.Tensor, top_k: int, present: int) -> dict:
    """vLLM's per-position dict: the top-k tokens plus the token actually present, with ranks."""
    order = logprobs.argsort(descending=True).tolist()
    chosen = set(order[:top_k]) | {present}
    return {token: SimpleNamespace(logprob=float(logprobs[token]), rank=order.index(token) + 1) for token in chosen}


def test_a_row_converts_like_the_hf_back_end():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 30, generator=generator) * 3  # [seq, vocab]: position j predicts token j + 1
    logprobs = torch.log_softmax(logits.double(), -1)
    input_ids = [3, 17, 4, 29, 0, 11]
    k = 5
    prompt_logprobs = [None] + [_candidates(logprobs[j - 1], k, input_ids[j]) for j in range(1, 6)]
    last = _candidates(logprobs[5], k, 7)
    output = SimpleNamespace(prompt_logprobs=prompt_logprobs, outputs=[SimpleNamespace(logprobs=[last])])
    targets = [True, True, False, True, True]  # the third token is no target (a chat row's loss mask)
    top, ids, tail, nll = row_targets(output, input_ids, k, targets)
    expected_top, expected_ids, expected_tail = sparse_targets(logits.double(), k, 1.0)
    torch.testing.assert_close(top, expected_top.float())
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(tail, expected_tail.float(), rtol=1e-5, atol=1e-6)
    expected_nll = -sum(logprobs[j, input_ids[j + 1]].item() for j in range(5) if targets[j])
    assert nll.item() == pytest.approx(expected_nll)


def test_a_position_with_fewer_log_probs_than_k_is_a_clear_error():
    with pytest.raises(DistilyConfigError, match=r"vLLM returned 2 log-probs at a position; expected record_top_k=3"):
        position_targets({1: SimpleNamespace(logprob=-0.1), 2: SimpleNamespace(logprob=-3.0)}, 3)


def test_a_tail_below_the_top_ks_float32_resolution_is_read_at_it_and_keeps_every_loss_finite():
    """A confident teacher's top k sums to 1 within float32 rounding: its tail read as 0 (log -inf) made the sparse
    reverse KL about 3e38 and its gradient about 7e36 wherever the student puts mass outside the top k."""
    candidates = {token: SimpleNamespace(logprob=math.log(0.25)) for token in range(4)}
    _, _, tail = position_targets(candidates, 4)
    assert tail == pytest.approx(math.log(4 * 2.0**-24))
    top = torch.full((1, 4), math.log(0.25))
    student = torch.cat([torch.zeros(1, 4), torch.full((1, 4), -2.0)], -1).requires_grad_()  # mass outside top 4
    loss = BucketLoss(LOSSES["reverse_kl"])(student, (top, torch.arange(4)[None], torch.tensor([tail])), 1.0)
    (grad,) = torch.autograd.grad(loss.sum(), student)
    assert torch.isfinite(loss).all() and loss.item() < 20 and grad.abs().max() < 5


class StandInLLM:
    """vLLM's ``LLM`` for the recorder: prompt log-probs of the Hugging Face teacher over exactly the token ids it is
    sent (a real engine reads no attention mask), plus those of the one generated position."""

    built: list[dict] = []  # the settings of each engine built

    def __init__(self, model: str, **settings):
        self.model = load_teacher(model)
        if settings["max_model_len"] > max_positions(self.model.config):  # as vLLM refuses such an engine
            raise ValueError(f"User-specified max_model_len ({settings['max_model_len']}) is greater than the derived "
                             f"max_model_len (max_position_embeddings={max_positions(self.model.config)})")
        StandInLLM.built.append(settings)

    @torch.no_grad()
    def generate(self, requests, params, use_tqdm=True):
        outputs = []
        for request in requests:
            ids = request["prompt_token_ids"]
            logprobs = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            k = params.prompt_logprobs
            prompt = [None] + [_candidates(logprobs[j - 1], k, ids[j]) for j in range(1, len(ids))]
            last = _candidates(logprobs[-1], k, int(logprobs[-1].argmax()))
            outputs.append(SimpleNamespace(prompt_logprobs=prompt, outputs=[SimpleNamespace(logprobs=[last])]))
        return outputs


@pytest.fixture
def stand_in_vllm(monkeypatch):
    module = ModuleType("vllm")
    module.LLM, module.SamplingParams = StandInLLM, lambda **settings: SimpleNamespace(**settings)
    monkeypatch.setitem(sys.modules, "vllm", module)


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    """A ChatML teacher and conversations: padded rows of different lengths, each with its assistant loss mask."""
    root = tmp_path_factory.mktemp("chat")
    tokenizer = make_instruct_tokenizer("chatml")
    teacher = save_tiny_model(root / "teacher", "qwen2", tokenizer, vocab_size=len(tokenizer))
    return teacher, write_chat_jsonl(root / "chat.jsonl", make_conversations(40))


def _stores_by_backend(teacher_dir, data_file, root, **overrides) -> dict:
    stores = {}
    for backend in ("hf", "vllm"):
        values = store_values(teacher_dir, data_file, root / backend, record_backend=backend, **overrides)
        stores[backend] = (run_recording(parse_record_config(**values)), TeacherStore(values["teacher_store"]))
    return stores


def _assert_same_store(stores: dict) -> None:
    """Every row of the vllm store is the hf store's: its tokens and masks without padding, its targets, its NLL,
    its top-k; the manifests count the same positions and targets."""
    (hf_manifest, hf), (vllm_manifest, vllm) = stores["hf"], stores["vllm"]
    assert vllm_manifest["rows"] == hf_manifest["rows"]
    for split in ("train", "eval"):
        assert ({key: vllm.manifest["shards"][split]["0"]["stats"][key] for key in ("positions", "targets")}
                == {key: hf.manifest["shards"][split]["0"]["stats"][key] for key in ("positions", "targets")})
        expected_rows, rows = hf.dataset(split), vllm.dataset(split)
        for index in range(len(expected_rows)):
            expected, row = expected_rows[index], rows[index]
            assert sorted(row) == sorted(expected)
            for key in (INPUT_IDS, LOSS_MASK, ROW_TARGETS):
                if key in expected:
                    assert torch.equal(row[key], expected[key]), (split, index, key)
            torch.testing.assert_close(row[ROW_NLL], expected[ROW_NLL], rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(row[TOPK_LOGPROBS].float(), expected[TOPK_LOGPROBS].float(), rtol=0, atol=2e-3)
            assert torch.equal(row[TOPK_IDS][:, 0], expected[TOPK_IDS][:, 0])
            torch.testing.assert_close(row[TAIL_LOGPROB], expected[TAIL_LOGPROB], rtol=1e-3, atol=1e-4)


def test_the_vllm_store_of_padded_rows_is_the_hf_store(stand_in_vllm, teacher_dirs, text_file, tmp_path):
    stores = _stores_by_backend(teacher_dirs["llama"], text_file, tmp_path, packing="padded")
    lengths = [len(stores["hf"][1].dataset("train")[index][INPUT_IDS]) for index in range(8)]
    assert min(lengths) < max(lengths) == 32  # rows padded in their shard
    _assert_same_store(stores)


def test_the_vllm_store_of_chat_rows_is_the_hf_store_with_its_loss_mask(stand_in_vllm, chat_data, tmp_path):
    stores = _stores_by_backend(*chat_data, tmp_path, max_seq_length=96, max_samples=12, max_eval_samples=4)
    row = stores["vllm"][1].dataset("train")[0]
    assert 0 < int(row[LOSS_MASK].sum()) < len(row[INPUT_IDS]) - 1  # the assistant's tokens only
    _assert_same_store(stores)


def test_the_vllm_back_end_refuses_packed_documents_in_one_line(stand_in_vllm, teacher_dirs, text_file, tmp_path):
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, record_backend="vllm", packing="documents")
    with pytest.raises(DistilyConfigError, match=r"records whole rows, not packed documents \(packing=documents\)"):
        run_recording(parse_record_config(**values))


def test_the_vllm_engine_holds_the_checkpoints_dtype_for_auto_as_the_hf_back_end_does(stand_in_vllm, teacher_dirs,
                                                                                      text_file, tmp_path):
    """vLLM's own auto casts a float32 checkpoint to half precision; the hf back end's auto keeps float32. The store
    says what the engine ran (it said float32, the checkpoint's, under teacher_torch_dtype bfloat16)."""
    teacher = teacher_dirs["llama"]
    assert load_teacher(teacher, "auto").dtype == torch.float32
    for dtype, expected in (("auto", "float32"), ("bfloat16", "bfloat16")):
        values = store_values(teacher, text_file, tmp_path / dtype, record_backend="vllm", teacher_torch_dtype=dtype)
        manifest = run_recording(parse_record_config(**values))
        assert StandInLLM.built[-1]["dtype"] == manifest["settings"]["teacher_dtype"] == expected


def test_a_row_that_leaves_the_teacher_no_position_for_the_sampled_token_is_refused_in_one_line(
        stand_in_vllm, text_file, tmp_path):
    """The last position's log-probs come with a token sampled after the row: rows as long as the teacher's positions
    would need an engine longer than the model, which vLLM refuses with its own error."""
    teacher = save_tiny_model(tmp_path / "teacher", "llama", make_tokenizer(), max_position_embeddings=32)
    built = len(StandInLLM.built)
    values = store_values(teacher, text_file, tmp_path, record_backend="vllm", max_seq_length=32)
    with pytest.raises(DistilyConfigError, match=r"record_backend=vllm samples one token after each row .* "
                                                 r"max_seq_length=32 leaves no position for it among the teacher's 32; "
                                                 r"expected max_seq_length <= 31, or record_backend=hf"):
        run_recording(parse_record_config(**values))
    assert len(StandInLLM.built) == built
    run_recording(parse_record_config(**{**values, "max_seq_length": 31, "teacher_store": str(tmp_path / "s31")}))
    assert StandInLLM.built[-1]["max_model_len"] == 32
