"""Perplexity of a GGUF file in llama.cpp against the fake-quantised PyTorch student (optional check).

Runs only where `llama-cpp-python` is installed. llama.cpp quantises activations per block of 256
(Q8_K) rather than per token, so the two perplexities agree closely but not exactly; the export
accepts a relative difference up to PERPLEXITY_TOLERANCE (the criterion of issue 4).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from distily.errors import DistilyConfigError
from distily.evaluation.perplexity import next_token_nll, perplexity

PERPLEXITY_TOLERANCE = 0.02


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def pytorch_perplexity(model: PreTrainedModel, token_ids: torch.Tensor) -> float:
    """exp(mean next-token NLL) of token_ids [seq] under `model`, log-softmax in fp32."""
    with torch.no_grad():
        logits = model(token_ids[None].to(model.device)).logits[0, :-1].float().cpu()  # [seq - 1, vocab]
    return _perplexity(logits, token_ids)


def llama_cpp_perplexity(path: str | Path, token_ids: torch.Tensor) -> float:
    """The same quantity computed by llama.cpp on the GGUF file at `path`."""
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(path), n_ctx=len(token_ids), logits_all=True, verbose=False,
                            n_threads=torch.get_num_threads())
    model.eval(token_ids.tolist())
    logits = torch.from_numpy(np.asarray(model.scores[: len(token_ids)], dtype=np.float32))[:-1]  # [seq - 1, vocab]
    model.close()
    return _perplexity(logits, token_ids)


def check_llama_cpp_perplexity(
    model: PreTrainedModel, path: str | Path, token_ids: torch.Tensor
) -> tuple[float, float]:
    """(llama.cpp, PyTorch) perplexities; DistilyConfigError if they differ by more than PERPLEXITY_TOLERANCE."""
    reference = pytorch_perplexity(model, token_ids)
    measured = llama_cpp_perplexity(path, token_ids)
    if abs(measured / reference - 1) > PERPLEXITY_TOLERANCE:
        raise DistilyConfigError(
            f"llama.cpp perplexity {measured:.4g} differs from PyTorch's {reference:.4g} by "
            f"{abs(measured / reference - 1):.2%}; expected at most {PERPLEXITY_TOLERANCE:.0%}"
        )
    return measured, reference


def _perplexity(logits: torch.Tensor, token_ids: torch.Tensor) -> float:
    # logits [seq - 1, vocab] predicting token_ids[1:]
    return perplexity(float(next_token_nll(logits, token_ids[1:].cpu())) / logits.shape[0])
