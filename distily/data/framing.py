"""How token sequences are framed into training blocks, the way each model family was pretrained.

Four packings (``DataArguments.packing``):

- ``stream``: documents, each followed by the end-of-text token (unless the tokenizer already ends them
  with it), concatenated and cut into full ``max_seq_length`` blocks; attention runs across documents.
  This is how GPT-2 (WebText) and other EOS-separated families were trained. The end-of-text token is
  ``eos_token``, except where an instruct tokenizer made its chat end-of-turn token the EOS
  (``document_separator_id``). A tokenizer that opens a text with that token (OPT's BOS is its EOS, ``</s>``)
  gives ``</s> doc1 </s> doc2 </s>``, one between documents, as OPT was pretrained.
- ``bos_blocks``: documents as the tokenizer frames them (Llama, Mistral, Gemma: BOS first), concatenated
  and cut into full blocks; a block that opens in the middle of a document opens with BOS, as every
  pretraining context of these families did. Documents sharing a block never attend to each other and
  their positions restart at 0 (document masks).
- ``documents``: every document whole in a block when it fits (longer ones cut under the BOS rule),
  best-fit into blocks of at most ``max_seq_length`` tokens, with document masks; padding fills the
  rest of a batch and never enters a loss.
- ``padded``: one document per row (longer ones cut as for ``documents``), padded in a batch: no document
  masks, so any model takes it (what ``auto`` gives chat data).

``auto`` picks ``documents`` when the tokenizer starts a text with BOS, else ``stream``: a BOS-anchored
model reads each document from its own BOS, as alone (``bos_blocks`` is denser, but the piece of a document
continued in the next block has lost its start: on the BOS-anchored test teacher at 64-token blocks its
held-out loss is 0.76 nats against 0.52 for whole documents). A BOS that is the document separator (OPT's
``</s>``) is the previous document's end, not an anchor: such a tokenizer gets ``stream``, the model's pretraining
(and OPT's attention takes no document masks). Pre-tokenized rows are the user's exact
sequences, so ``auto`` packs them as ``documents`` too (no separator added, none re-cut unless longer than
``max_seq_length``).

Document masks reach the model as per-document ``position_ids`` with no ``attention_mask`` (and no KV
cache): transformers then builds the block-diagonal causal mask itself (eager and SDPA) or runs the
varlen flash-attention kernels, as TRL's padding-free collator does.
"""

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Optional

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.arguments import PACKINGS
from distily.errors import DistilyConfigError

INPUT_IDS, POSITION_IDS = "input_ids", "position_ids"
LOSS_MASK = "loss_mask"  # [seq] per row, [batch, seq] per batch: 1 at t when the token at t + 1 is a target


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer starts an encoded text with its BOS token (Llama, Mistral, Gemma do; GPT-2 and
    Qwen do not)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("x")[INPUT_IDS]
    return bos is not None and bool(ids) and ids[0] == bos


# EOS tokens that end a chat turn, not a document: Qwen2.5-Instruct, Qwen3, SmolLM2-Instruct and Phi-4 (ChatML's
# <|im_end|>), Llama-3.x-Instruct (<|eot_id|>), Phi-3 revisions (<|end|>), Gemma (<end_of_turn>)
END_OF_TURN_TOKENS = frozenset({"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"})
# the end-of-document tokens those families were pretrained with, kept in their instruct vocabularies: Qwen, GPT-2,
# Phi and SmolLM (<|endoftext|>), Llama 3 (<|end_of_text|>), Gemma (<eos>)
END_OF_TEXT_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "<eos>")


def document_separator_id(tokenizer: PreTrainedTokenizerBase) -> Optional[int]:
    """The token that ends a document in a stream of documents: the end-of-text token the model was pretrained
    with. That is ``eos_token``, except for an instruct tokenizer whose ``eos_token`` is its chat end-of-turn token
    (``END_OF_TURN_TOKENS``: Qwen2.5-Instruct and Qwen3 set ``<|im_end|>``, Llama-3.x-Instruct ``<|eot_id|>``, so
    that generation stops at a turn's end): there, its vocabulary's end-of-text token (``END_OF_TEXT_TOKENS``:
    ``<|endoftext|>``, ``<|end_of_text|>``, ``<eos>``), since ``doc1<|im_end|>doc2`` is no text such a model was
    pretrained on. Without one in the vocabulary, ``eos_token`` stays (None without an EOS)."""
    if tokenizer.eos_token in END_OF_TURN_TOKENS:
        vocabulary = tokenizer.get_vocab()
        end_of_text = next((token for token in END_OF_TEXT_TOKENS if token in vocabulary), None)
        if end_of_text is not None:
            return vocabulary[end_of_text]
    return tokenizer.eos_token_id


def resolve_packing(packing: str, tokenizer: PreTrainedTokenizerBase, pretokenized: bool) -> str:
    """The packing ``auto`` stands for with this tokenizer and data; any other value as given."""
    if packing not in PACKINGS:
        raise DistilyConfigError(f"packing={packing!r} is not supported; expected one of {', '.join(PACKINGS)}")
    if packing != "auto":
        return packing
    anchored = tokenizer_adds_bos(tokenizer) and tokenizer.bos_token_id != document_separator_id(tokenizer)
    return "documents" if pretokenized or anchored else "stream"


@dataclass(frozen=True)
class Framing:
    """A resolved packing and what it needs from the tokenizer."""

    packing: str  # stream | bos_blocks | documents
    max_seq_length: int
    bos_token_id: Optional[int] = None  # a continuation of a document that starts with it starts with it too
    eos_token_id: Optional[int] = None  # the separator of ``stream``: the end-of-text token (document_separator_id)
    # part of the tokenization cache's key (the dataclass's text): raised whenever the blocks Distily packs of the same
    # token ids change, so a cache written by an earlier version is not read back (2: stream and bos_blocks no longer
    # drop a partial block per 1000 documents; 3: stream puts one separator between documents whose BOS is it, OPT's)
    scheme: int = 3

    @classmethod
    def for_tokenizer(cls, packing: str, tokenizer: PreTrainedTokenizerBase, max_seq_length: int, pretokenized: bool):
        return cls(
            resolve_packing(packing, tokenizer, pretokenized), max_seq_length, tokenizer.bos_token_id,
            document_separator_id(tokenizer),
        )

    @property
    def document_masks(self) -> bool:
        """Whether documents sharing a block are kept apart (per-document positions, block-diagonal mask)."""
        return self.packing in ("bos_blocks", "documents")

    @property
    def in_order(self) -> bool:
        """Whether blocks run through the documents in order, cut at full blocks (``stream``, ``bos_blocks``): a
        batch of documents packed alone leaves its own last partial block."""
        return self.packing in ("stream", "bos_blocks")

    def rows_in_order(self, documents: Iterable[list[int]]) -> Iterator[dict[str, list[int]]]:
        """The blocks of ``stream`` or ``bos_blocks`` (``in_order``) as rows, one at a time, of documents read once
        in order, however many: only the last partial block of them all is dropped."""
        if self.packing == "stream":
            yield from ({INPUT_IDS: block} for block in self._stream(documents))
        else:
            yield from (_row(block) for block in self._bos_blocks(documents))

    def pack(
        self, documents: list[list[int]], loss_masks: Optional[list[list[int]]] = None
    ) -> dict[str, list[list[int]]]:
        """Blocks of token ids from tokenized documents (with ``position_ids`` under document masks). Documents
        with ``loss_masks`` (conversations, each at most ``max_seq_length`` tokens) stay whole (``padded`` or
        ``documents``), their masks beside them (``loss_mask``)."""
        if loss_masks is not None:
            return self._whole_documents(documents, loss_masks)
        if self.packing == "stream":
            return {INPUT_IDS: list(self._stream(documents))}
        if self.packing == "bos_blocks":
            blocks = list(self._bos_blocks(documents))
        else:
            pieces = [piece for document in documents for piece in self._pieces(document)]
            if self.packing == "padded":
                return {INPUT_IDS: pieces}
            blocks = [[pieces[i] for i in block] for block in _best_fit([len(p) for p in pieces], self.max_seq_length)]
        rows = [_row(block) for block in blocks]
        return {INPUT_IDS: [row[INPUT_IDS] for row in rows], POSITION_IDS: [row[POSITION_IDS] for row in rows]}

    def _whole_documents(self, documents: list[list[int]], loss_masks: list[list[int]]) -> dict[str, list[list[int]]]:
        """Documents whole, each one's loss mask beside its ids: one per row (``padded``) or best-fit into blocks
        with document masks (``documents``)."""
        if self.packing not in ("padded", "documents") or any(len(ids) > self.max_seq_length for ids in documents):
            raise ValueError("documents with loss masks stay whole (padded or documents), none longer than a block")
        if self.packing == "padded":
            return {INPUT_IDS: documents, LOSS_MASK: loss_masks}
        blocks = _best_fit([len(ids) for ids in documents], self.max_seq_length)
        return {
            INPUT_IDS: [[token for i in block for token in documents[i]] for block in blocks],
            POSITION_IDS: [[position for i in block for position in range(len(documents[i]))] for block in blocks],
            LOSS_MASK: [[value for i in block for value in loss_masks[i]] for block in blocks],
        }

    def _continuation_head(self, document: list[int]) -> list[int]:
        """What a continuation of ``document`` starts with: BOS when the document does."""
        return [self.bos_token_id] if self.bos_token_id is not None and document[:1] == [self.bos_token_id] else []

    def _stream(self, documents: Iterable[list[int]]) -> Iterator[list[int]]:
        """Documents with separators, concatenated and cut into full blocks (the last partial one dropped). A
        document after the first that opens with the separator (OPT's tokenizer starts a text with ``</s>``, its BOS
        and EOS) drops it: one ``</s>`` between documents, as OPT was pretrained (metaseq ends each with it)."""
        separator = [self.eos_token_id] if self.eos_token_id is not None else []
        length = self.max_seq_length
        stream = []
        for index, ids in enumerate(documents):
            if index and separator and ids[:1] == separator:  # the stream ends with the separator already
                ids = ids[1:]
            stream.extend(ids)
            if separator and ids[-1:] != separator:
                stream.extend(separator)
            full = len(stream) - len(stream) % length
            yield from (stream[i : i + length] for i in range(0, full, length))
            stream = stream[full:]

    def _bos_blocks(self, documents: Iterable[list[int]]) -> Iterator[list[list[int]]]:
        """Documents end to end in full blocks, each block a list of document pieces; a document cut at a
        block's end goes on at the next block's start behind its continuation head (the last partial
        block is dropped)."""
        block, used = [], 0
        for document in documents:
            start = 0
            while start < len(document):
                lead = self._continuation_head(document) if start > 0 else []  # the block is empty here
                room = self.max_seq_length - used - len(lead)
                piece = lead + document[start : start + room]
                block.append(piece)
                used += len(piece)
                start += room
                if used == self.max_seq_length:
                    yield block
                    block, used = [], 0

    def _pieces(self, document: list[int]) -> list[list[int]]:
        """A document cut into pieces of at most ``max_seq_length`` tokens, continuations behind their head."""
        length = self.max_seq_length
        head = self._continuation_head(document)
        pieces, start = [document[:length]], length
        while start < len(document):
            room = length - len(head)
            pieces.append(head + document[start : start + room])
            start += room
        return pieces


def _row(block: list[list[int]]) -> dict[str, list[int]]:
    """A block of document pieces as a row: their ids end to end, each piece's positions from 0."""
    return {
        INPUT_IDS: [token for piece in block for token in piece],
        POSITION_IDS: [position for piece in block for position in range(len(piece))],
    }


def _best_fit(sizes: list[int], length: int) -> list[list[int]]:
    """Best-fit decreasing: each piece (by its index in ``sizes``), longest first, into the block with the least
    room that holds it."""
    blocks: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, block index), sorted
    for piece in sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True):
        size = sizes[piece]
        slot = bisect.bisect_left(rooms, (size, -1))
        if slot == len(rooms):
            blocks.append([piece])
            bisect.insort(rooms, (length - size, len(blocks) - 1))
            continue
        room, index = rooms.pop(slot)
        blocks[index].append(piece)
        bisect.insort(rooms, (room - size, index))
    return blocks


def model_inputs(batch: dict[str, torch.Tensor], device: Optional[torch.device] = None) -> dict:
    """What a model is called with for a batch built by ``collate``: the token ids and either the padding
    mask or, for blocks with document masks, the per-document positions (no mask and no cache, so that
    transformers builds the block-diagonal causal mask from the positions)."""
    def on_device(tensor):
        return tensor if device is None else tensor.to(device)

    if POSITION_IDS in batch:
        return {
            INPUT_IDS: on_device(batch[INPUT_IDS]), POSITION_IDS: on_device(batch[POSITION_IDS]), "use_cache": False,
        }
    return {INPUT_IDS: on_device(batch[INPUT_IDS]), "attention_mask": on_device(batch["attention_mask"])}


ISOLATION_PROBE = (5, 4)  # two documents' lengths in the probe block
CAUSALITY_PROBE = (6, 4)  # the tokens kept, then the tokens changed, in the causality probe
CAUSALITY_TOLERANCE = 1e-3  # of the changed positions' move, for float noise


def _probe_ids(model: PreTrainedModel, lengths: tuple[int, ...]) -> list[torch.Tensor]:
    """Random token ids (seeded), one [1, n] tensor per length, for the probes below."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(1, model.config.vocab_size, (1, n), generator=generator) for n in lengths]


def _logits(model: PreTrainedModel, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """The model's logits in eval mode (its mode kept), in fp32: [seq, vocab]."""
    was_training = model.training
    model.eval()
    logits = model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False, **kwargs).logits
    model.train(was_training)
    return logits[0].float()


def _differ(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return (actual - expected).abs().max().item() > 0.02 * expected.abs().max().item() + 1e-3


@torch.no_grad()
def check_document_isolation(model: PreTrainedModel, role: str) -> None:
    """Refuse a model that does not keep packed documents apart: the second document's logits in a packed
    block must equal its logits alone (a model whose attention ignores restarting positions would let it
    see the first one). The refusal names ``padded``, which runs each document alone as ``documents`` would;
    ``stream`` instead joins and cuts documents, a framing only an EOS-separated family was pretrained on."""
    first, second = _probe_ids(model, ISOLATION_PROBE)
    positions = torch.cat([torch.arange(n) for n in ISOLATION_PROBE])[None]  # [1, seq]
    device = next(model.parameters()).device
    packed = _logits(model, torch.cat([first, second], 1), position_ids=positions.to(device))[ISOLATION_PROBE[0]:]
    if _differ(packed, _logits(model, second)):
        raise DistilyConfigError(
            f"the {role} ({type(model).__name__}) lets packed documents attend to each other (it ignores restarting "
            "position_ids); expected packing=padded for this model (each document alone), or stream if it was "
            "pretrained on a stream of documents"
        )


def check_models_keep_documents_apart(models: Iterable[tuple[str, PreTrainedModel]], framing: Optional[Framing],
                                      eval_sets: Iterable[datasets.Dataset] = ()) -> None:
    """``check_document_isolation`` for every (role, model) that will read blocks of packed documents: in training
    and held-out blocks under ``framing`` with document masks, or in a named eval set carrying ``position_ids``
    (text eval sets are packed as documents even when chat training data is padded)."""
    if framing is not None and framing.document_masks or any(POSITION_IDS in s.column_names for s in eval_sets):
        for role, model in models:
            check_document_isolation(model, role)


@torch.no_grad()
def check_causality(model: PreTrainedModel, role: str) -> None:
    """Refuse a model that sees later tokens: changing the last tokens of a sequence must leave the logits
    before them as they were. (A saved BertForMaskedLM loads through AutoModelForCausalLM as a
    BertLMHeadModel with is_decoder=False, which attends both ways: its next-token predictions read the
    answer, and a student distilled from it learns nothing a causal model can use.)"""
    kept, changed = _probe_ids(model, CAUSALITY_PROBE)
    before = _logits(model, torch.cat([kept, changed], 1))  # [seq, vocab]
    after = _logits(model, torch.cat([kept, changed % (model.config.vocab_size - 1) + 1], 1))  # each id other
    moved = (after - before).abs().amax(-1)  # [seq]: how far each position's logits moved
    # a causal model's earlier positions do not move at all (the same arithmetic on the same rows); a
    # bidirectional one's move by a share of what the changed positions move, small only while it is untrained
    if moved[:CAUSALITY_PROBE[0]].max().item() > CAUSALITY_TOLERANCE * moved[CAUSALITY_PROBE[0]:].max().item() + 1e-6:
        raise DistilyConfigError(
            f"the {role} ({type(model).__name__}) is not causal: its logits at a position change with later tokens "
            "(a bidirectional model, e.g. a masked LM such as BERT loaded as a causal LM); expected a causal language "
            "model (a decoder)"
        )
