"""The vLLM generation back end (optional; needs the vllm package on a GPU machine).

The engine is built once from a copy of the model saved to a temporary directory; ``load_weights`` copies the
model's current weights into it (vLLM's ``LLM.apply_model`` runs a function on the engine's model in its worker:
that function is the model's own ``load_weights``, which takes Hugging Face parameter names). The engine runs
in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the weights reach it without a copy between processes,
and takes ``GPU_MEMORY_FRACTION`` of the accelerator's memory, beside the training.
"""

import os
import tempfile
from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.chat import ChatTemplate
from distily.errors import DistilyConfigError
from distily.generation.arguments import SamplingSettings
from distily.generation.engine import CompletionGenerator, chat_stop_ids, cut_at_stop, vocabulary_size
from distily.models.architecture import output_vocab_size
from distily.models.bitnet import is_bitnet

GPU_MEMORY_FRACTION = 0.3  # of the accelerator's memory, for the engine's weights and KV cache


class VLLMGenerator(CompletionGenerator):
    """Completions from a vLLM ``LLM`` engine (``engine``, with ``generate`` and ``apply_model``), sampled with
    ``sampling_params`` (a ``vllm.SamplingParams`` of ``settings``)."""

    def __init__(self, engine, sampling_params, settings: SamplingSettings, stop_ids: list[int]):
        self.engine, self.sampling_params = engine, sampling_params
        self.settings, self.stop_ids = settings, stop_ids

    def load_weights(self, model: PreTrainedModel, sharded: bool = False) -> None:
        if sharded:
            raise DistilyConfigError(
                "on_policy_backend='vllm' copies the whole student into its engine, but the student is sharded "
                "over the processes (FSDP, DeepSpeed ZeRO-3); expected on_policy_backend=hf, or DDP / ZeRO-1/2"
            )
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        self.engine.apply_model(lambda engine_model: engine_model.load_weights(weights))

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        requests = [{"prompt_token_ids": prompt} for prompt in prompts]
        outputs = self.engine.generate(requests, self.sampling_params, use_tqdm=False)
        return [cut_at_stop(list(output.outputs[0].token_ids), self.stop_ids) for output in outputs]


def open_vllm_generator(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: SamplingSettings, max_model_len: int,
    template: Optional[ChatTemplate] = None, trust_remote_code: bool = False,
) -> VLLMGenerator:
    """A vLLM engine over a saved copy of ``model`` (and ``tokenizer``), sampling with ``settings`` until a stop
    token (``chat_stop_ids``: with ``template``, its end of turn too); ``trust_remote_code`` as the run loaded it."""
    if is_bitnet(model.config):  # vLLM would read the saved copy as its plain architecture: full-precision layers
        raise DistilyConfigError(
            "on_policy_backend='vllm' would sample from the BitNet student's full-precision latent weights (the "
            "engine knows no ternary layers), not from the student; expected on_policy_backend=hf"
        )
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise DistilyConfigError(
            "on_policy_backend='vllm' needs the vllm package; expected `pip install vllm` on a GPU machine, or "
            "on_policy_backend=hf"
        )
    if settings.final_temperature is not None:
        raise DistilyConfigError(
            f"the vLLM back end samples at one temperature, not a schedule to {settings.final_temperature}; "
            "expected no final temperature, or the hf back end"
        )
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # apply_model hands the weights over in this process
    with tempfile.TemporaryDirectory(prefix="distily-vllm-") as copy:
        model.save_pretrained(copy)
        tokenizer.save_pretrained(copy)
        engine = LLM(
            model=copy,
            dtype=str(model.dtype).removeprefix("torch."),
            max_model_len=max_model_len,
            gpu_memory_utilization=GPU_MEMORY_FRACTION,
            enable_prefix_caching=False,
            trust_remote_code=trust_remote_code,  # the saved copy's config may name the checkpoint's code (auto_map)
        )
    stop_ids = chat_stop_ids(tokenizer, model, template)
    vocab_size = vocabulary_size(tokenizer, stop_ids)
    params = SamplingParams(
        n=1, temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_new_tokens,
        stop_token_ids=stop_ids, detokenize=False,
        # the head's padding columns past the tokenizer's ids, when it has any, are left out (see engine.py)
        allowed_token_ids=list(range(vocab_size)) if vocab_size < output_vocab_size(model) else None,
    )
    return VLLMGenerator(engine, params, settings, stop_ids)
