"""The generator a run opens, by the back end it names (``arguments.GENERATION_BACKENDS``)."""

from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.chat import ChatTemplate
from distily.generation.arguments import SamplingSettings
from distily.generation.engine import CompletionGenerator, HFGenerator, chat_stop_ids, vocabulary_size
from distily.generation.vllm_engine import open_vllm_generator


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id prompts are padded with (masked out: any id the model has)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def open_generator(
    backend: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: SamplingSettings,
    max_model_len: Optional[int], template: Optional[ChatTemplate] = None, trust_remote_code: bool = False,
    role: str = "model",
) -> CompletionGenerator:
    """A generator sampling from ``model`` with ``settings`` the ids of ``tokenizer``, prompt and completion at most
    ``max_model_len`` tokens (None, hf only: the model's positions): ``backend`` hf (``model.generate``) or vllm (an
    engine over a copy of ``model``). Completions of chats rendered with ``template`` end at its end of turn too
    (``chat_stop_ids``). ``trust_remote_code``: the engine may run the model's code from its checkpoint, as the run
    does (vllm). ``role`` names the model in an error (hf: logits that hold NaN or +inf)."""
    if backend == "vllm":
        return open_vllm_generator(model, tokenizer, settings, max_model_len, template, trust_remote_code)
    stop_ids = chat_stop_ids(tokenizer, model, template)
    return HFGenerator(model, settings, stop_ids, pad_token_id(tokenizer), max_length=max_model_len,
                       vocab_size=vocabulary_size(tokenizer, stop_ids), role=role)
