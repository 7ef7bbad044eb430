"""Tiny models, a tiny tokenizer and tiny text, built here: the tests never touch the network."""

import json
import random
import re

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MixtralConfig,
    OPTConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers.convert_slow_tokenizer import bytes_to_unicode

from distily.data.tokenizer import train_byte_level_bpe, train_sentencepiece_bpe
from distily.models.architecture import decoder_layers

VOCAB = 320
SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "a student", "the model", "our team", "that bird"]
VERBS = ["sees", "likes", "reads", "builds", "finds", "trains", "loves", "writes"]
OBJECTS = ["a book", "the tree", "some code", "a song", "the river", "an idea", "the house", "a letter"]
ENDINGS = ["today.", "again.", "at night.", "with care.", "quickly.", "in the park.", "every day.", "slowly."]


def make_documents(count: int, seed: int = 0) -> list[str]:
    """Sentences from a small grammar: structured enough that a model can learn it."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        sentences = [
            f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"
            for _ in range(rng.randint(2, 6))
        ]
        documents.append(" ".join(sentences).capitalize())
    return documents


def wikitext_like(paragraphs: list[str], per_article: int = 5, title: str = "Article") -> str:
    """WikiText's layout: articles under " = Title = " headings, paragraphs between blank lines."""
    articles = [
        f" = {title} {i} = \n \n" + "".join(f" {p} \n \n" for p in paragraphs[i : i + per_article])
        for i in range(0, len(paragraphs), per_article)
    ]
    return " \n" + "".join(articles)


def make_tokenizer(eos_token: str = "<eos>") -> PreTrainedTokenizerFast:
    return train_byte_level_bpe(make_documents(200, seed=1), VOCAB, eos_token, bos=False, model_max_length=256)


def tokenizer_for(arch: str) -> PreTrainedTokenizerFast:
    """The tokenizer saved beside a tiny ``arch`` model. Qwen2's and Qwen3's end texts with ``<|endoftext|>``, as
    theirs do: transformers loads a tokenizer beside a Qwen config as a Qwen2Tokenizer, which adds that token
    (as unknown and padding token) when the vocabulary lacks it, one id past the model's embedding."""
    return make_tokenizer(end_of_text(arch))


def end_of_text(arch: str) -> str:
    return "<|endoftext|>" if arch in ("qwen2", "qwen3") else "<eos>"


def tiny_config(arch: str, layers: int = 4, vocab_size: int = VOCAB, **overrides):
    common = dict(vocab_size=vocab_size, initializer_range=0.2)
    if arch == "gpt2":
        config = GPT2Config(n_layer=layers, n_embd=64, n_head=4, n_positions=256, **common)
    elif arch == "llama":
        config = LlamaConfig(
            num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=256, **common,
        )
    elif arch == "phi3":
        config = Phi3Config(
            num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=128, max_position_embeddings=256, pad_token_id=0, **common,
        )
    elif arch == "qwen2":
        config = Qwen2Config(
            num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=256, **common,
        )
    elif arch == "qwen3":  # not in ARCHITECTURES: the Qwen3 recipe's stand-in
        config = Qwen3Config(
            num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=True, **common,
        )
    elif arch == "mixtral":  # a mixture of 8 experts, 2 per token: not in ARCHITECTURES
        config = MixtralConfig(
            num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=32, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=256, **common,
        )
    else:
        raise ValueError(arch)
    config.bos_token_id = config.eos_token_id = 0
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


ARCHITECTURES = ["gpt2", "llama", "phi3", "qwen2"]
SLIDING, FULL = "sliding_attention", "full_attention"


def tiny_gemma4_config(layers: int = 4, vocab_size: int = VOCAB, **settings):
    """A Gemma 4 text config: sliding-window layers then full-attention ones (the last must be), whose head_dim is
    global_head_dim (a per_layer_config override), and per-layer inputs (PLE) of width 8. ``settings`` go to the
    constructor: attention_k_eq_v, num_kv_shared_layers, enable_moe_block, ... are read there."""
    from transformers import Gemma4TextConfig

    text = dict(num_hidden_layers=layers, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, global_head_dim=32, hidden_size_per_layer_input=8,
                vocab_size_per_layer_input=vocab_size, sliding_window=4, max_position_embeddings=256,
                layer_types=[SLIDING] * (layers // 2) + [FULL] * (layers - layers // 2))
    return Gemma4TextConfig(vocab_size=vocab_size, initializer_range=0.2, **{**text, **settings})


def tiny_gemma3n_config(layers: int = 4, vocab_size: int = VOCAB, **settings):
    """A Gemma 3n text config: sliding-window layers then full-attention ones, an MLP width and an activation
    sparsity per layer, per-layer inputs of width 8, AltUp over 2 streams, no layer sharing keys and values unless
    ``settings`` say so."""
    from transformers import Gemma3nTextConfig

    text = dict(num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=[96 + 16 * i for i in range(layers)], hidden_size_per_layer_input=8,
                activation_sparsity_pattern=[0.9] + [0.0] * (layers - 1), vocab_size_per_layer_input=vocab_size,
                sliding_window=4, max_position_embeddings=256, altup_num_inputs=2, laurel_rank=8,
                num_kv_shared_layers=0, layer_types=[SLIDING] * (layers // 2) + [FULL] * (layers - layers // 2))
    return Gemma3nTextConfig(vocab_size=vocab_size, initializer_range=0.2, **{**text, **settings})


def save_tiny_model(path, arch: str, tokenizer, seed: int = 0, **config_overrides) -> str:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **config_overrides))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_float16_overflowing_llama(path) -> str:
    """A tiny Llama teacher (the llama tokenizer beside it) finite in float32 whose second block's MLP output is 3e4
    times its own: loaded in float16 its activations overflow, and its logits are NaN."""
    save_tiny_model(path, "llama", tokenizer_for("llama"))
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(3e4)
    model.save_pretrained(path)
    return str(path)


def tiny_opt(tokenizer):
    """A tiny OPTForCausalLM over ``tokenizer``, in eval mode: its attention ignores restarting position_ids (packed
    documents read each other)."""
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(config).eval()


def save_tiny_masked_lm(path, tokenizer) -> str:
    """A tiny BertForMaskedLM, saved: AutoModelForCausalLM loads it as a BertLMHeadModel with is_decoder=False,
    which attends both ways (a model that sees later tokens)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=256, pad_token_id=0)
    BertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def layer_outputs(model, ids, inputs=None):
    """The input and output hidden states of each decoder layer in ``model``'s forward on ``ids``; with ``inputs``,
    layer i is given ``inputs[i]`` in place of its own input."""
    seen_inputs, outputs, hooks = [], [], []

    def take_input(layer, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen_inputs.append(hidden)
        if inputs is None:
            return None
        given = inputs[len(seen_inputs) - 1]
        return ((given, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": given})

    for layer in decoder_layers(model):
        hooks.append(layer.register_forward_pre_hook(take_input, with_kwargs=True))
        hooks.append(layer.register_forward_hook(
            lambda layer, args, output: outputs.append(output[0] if isinstance(output, tuple) else output)))
    with torch.no_grad():
        model(ids, use_cache=False)  # transformers makes no mask for a cache of Mamba layers alone
    for hook in hooks:
        hook.remove()
    return seen_inputs, outputs


def assert_stands_for_teacher_layers(teacher, student, layers: list[int], ids, directory, **forward) -> None:
    """Student layer i, given teacher layer ``layers[i]``'s input in the student's own forward, gives that layer's
    output exactly, and the student saved in ``directory`` loads in plain transformers with the same logits."""
    teacher_inputs, teacher_outputs = layer_outputs(teacher, ids)
    _, student_outputs = layer_outputs(student, ids, [teacher_inputs[index] for index in layers])
    for student_output, index in zip(student_outputs, layers):
        torch.testing.assert_close(student_output, teacher_outputs[index], rtol=0, atol=0)
    student.save_pretrained(directory)
    reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, **forward).logits, student(ids, **forward).logits, rtol=0, atol=0)


def documents_of(block_ids, block_positions):
    """The pieces of a block, cut where positions restart."""
    pieces = []
    for token, position in zip(block_ids, block_positions):
        if position == 0:
            pieces.append([])
        pieces[-1].append(token)
    return pieces


def sequences_of(dataset) -> list[list[int]]:
    return [piece for row in dataset for piece in documents_of(row["input_ids"].tolist(), row["position_ids"].tolist())]


def plain_loss(model, sequences: list[list[int]]) -> float:
    """Mean next-token loss of each sequence run alone, in plain transformers."""
    total, targets = 0.0, 0
    with torch.no_grad():
        for ids in filter(lambda ids: len(ids) > 1, sequences):  # a one-token piece has no target
            ids = torch.tensor([ids])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            targets += ids.shape[1] - 1
    return total / targets


def write_jsonl(path, documents: list[str]) -> str:
    with open(path, "w") as out:
        for document in documents:
            out.write(json.dumps({"text": document}) + "\n")
    return str(path)


def make_bos_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer: ``<s>`` (BOS) before every text, ``</s>`` (EOS) apart; ``VOCAB`` tokens."""
    backend = train_byte_level_bpe(make_documents(200, seed=1), VOCAB - 1, "</s>", bos=False).backend_tokenizer
    backend.add_special_tokens(["<s>"])
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", model_max_length=256)


def train_bos_anchored_llama(tokenizer, steps: int = 250, seed: int = 0):
    """A 2-layer Llama trained only on contexts that start with BOS (each document alone, as Llama's
    pretraining framed them), so that, like real Llama-family models, it needs BOS at position 0."""
    return train_llama(tokenizer, [tokenizer(text)["input_ids"] for text in make_documents(2000, seed=5)], steps, seed)


def train_llama(tokenizer, documents: list[list[int]], steps: int, seed: int = 0):
    """A 2-layer Llama trained on ``documents`` (token ids, each row alone), batches of 16 in turn."""
    from distily.data.batches import collate

    config = tiny_config("llama", layers=2, vocab_size=len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = collate([{"input_ids": documents[(step * 16 + row) % len(documents)]} for row in range(16)])
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              labels=batch["labels"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def make_sentencepiece_tokenizer(prepend_scheme: str = "always", vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A SentencePiece-style (Llama 2) tokenizer (``▁`` for the space, prepended per ``prepend_scheme``, byte
    fallback, ``<s>`` first) trained on other sentences than ``make_tokenizer``'s."""
    return train_sentencepiece_bpe(make_documents(300, seed=7), vocab_size, model_max_length=256,
                                   prepend_scheme=prepend_scheme)


def make_character_splitting_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE whose merges cut across characters (byte-level merges may): ``中文`` (bytes e4 b8 ad, e6 96
    87) is read as e4 b8 | ad e6 96 87, a token holding 中's first two bytes, then one holding its last
    byte and all of 文."""
    byte_char = bytes_to_unicode()
    merges = [(0xE4, 0xB8), (0xAD, 0xE6), (0xAD, 0xE6, 0x96), (0xAD, 0xE6, 0x96, 0x87)]
    vocab = {byte_char[byte]: byte for byte in range(256)}
    pairs = [("".join(byte_char[b] for b in merge[:-1]), byte_char[merge[-1]]) for merge in merges]
    vocab.update({left + right: 256 + rank for rank, (left, right) in enumerate(pairs)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


# Chat templates in the public formats of three families, written here (no {% generation %} markers, as theirs)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (  # Qwen2's
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
REASONING_CONTENT_TEMPLATE = (  # ChatML whose assistant turns open with the message's reasoning_content (as Qwen3's
    # and SmolLM3's templates render a reasoning dataset's traces)
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message.reasoning_content is defined %}{{ '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}"
    "{% endif %}{{ message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
DATED_TEMPLATE = (  # ChatML whose system turn holds the day it is rendered (SmolLM3's and Mistral Small 3's habit)
    "{{ '<|im_start|>system\\nToday: ' + strftime_now('%d %b %Y') + '<|im_end|>\\n' }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_DATED_TEMPLATE = (  # Llama 3.1's habit: the system turn holds date_string, else the day it is rendered
    "{% if date_string is not defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}{{ bos_token }}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nToday Date: ' + date_string + '<|eot_id|>' }}"
) + LLAMA3_TEMPLATE.removeprefix("{{ bos_token }}")
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + "
    "'<|end|>\\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)
QWEN3_TEMPLATE = (  # ChatML, plus Qwen3's habits with reasoning: the last answer after the last user turn opens with
    # a <think> block (empty without reasoning), earlier answers lose theirs; enable_thinking=false puts the empty
    # block in the generation prompt
    "{% set state = namespace(last_user=-1) %}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% set state.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{% set answer = message['content'] %}{% set reasoning = '' %}{% if '</think>' in answer %}"
    "{% set reasoning = answer.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{% set answer = answer.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
    "{{ '<|im_start|>assistant\\n' }}{% if loop.index0 > state.last_user and (loop.last or reasoning) %}"
    "{{ '<think>\\n' + reasoning + '\\n</think>\\n\\n' }}{% endif %}{{ answer + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)
GEMMA_TEMPLATE = (  # Gemma 3's habits: BOS from the template, the assistant called model, a system turn folded into
    # the first user turn, and conversations whose roles do not alternate refused (raise_exception)
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set preamble = messages[0]['content'] + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set preamble = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{{ (preamble if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
HARMONY_TEMPLATE = (  # gpt-oss's habits: after the generation prompt <|start|>assistant the model writes its channel
    # (<|channel|>final<|message|>, special tokens) before the answer; the last answer ends <|return|>, after its
    # analysis channel when it has thinking, earlier ones <|end|>. The assistant's part in {% generation %} markers
    "{% for message in messages %}{% if message['role'] != 'assistant' %}"
    "{{ '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}"
    "{% elif loop.last and not add_generation_prompt %}{{ '<|start|>assistant' }}{% generation %}"
    "{% if message.thinking is defined %}{{ '<|channel|>analysis<|message|>' + message.thinking + "
    "'<|end|><|start|>assistant' }}{% endif %}{{ '<|channel|>final<|message|>' + message['content'] + '<|return|>' }}"
    "{% endgeneration %}{% else %}{{ '<|start|>assistant' }}{% generation %}"
    "{{ '<|channel|>final<|message|>' + message['content'] + '<|end|>' }}{% endgeneration %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
)
HARMONY_TOKENS = ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>"]  # gpt-oss's, special
EMPTY_REASONING = "<think>\n\n</think>\n\n"  # what Qwen3's template opens a last answer without reasoning with
CHAT_STYLES = {  # style -> (template, its special tokens, the end-of-turn token)
    "llama3": (LLAMA3_TEMPLATE, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|eot_id|>"),
    "chatml": (CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "phi3": (PHI3_TEMPLATE, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<|end|>"),
    "qwen3": (QWEN3_TEMPLATE, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "gemma": (GEMMA_TEMPLATE, ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
}
BOS_TOKENS = {"llama3": "<|begin_of_text|>", "gemma": "<bos>"}  # the styles whose template writes a BOS
REASONING_TOKENS = {"qwen3": ["<think>", "</think>"]}  # added tokens, not special ones (as Qwen3's are)


def make_chat_tokenizer(style: str, with_template: bool = True,
                        eos_token: str = "<eos>") -> PreTrainedTokenizerFast:
    """The tiny tokenizer with a family's special tokens (ids from ``VOCAB`` up) and, by default, its template."""
    template, specials, _ = CHAT_STYLES[style]
    tokenizer = make_tokenizer(eos_token)
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.add_tokens(REASONING_TOKENS.get(style, []))
    if style in BOS_TOKENS:
        tokenizer.bos_token = BOS_TOKENS[style]
    if with_template:
        tokenizer.chat_template = template
    return tokenizer


def make_harmony_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer with gpt-oss's special tokens and ``HARMONY_TEMPLATE`` without its ``{% generation %}``
    markers (as Distily renders a template)."""
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(HARMONY_TOKENS, special_tokens=True)
    tokenizer.chat_template = re.sub(r"{% (end)?generation %}", "", HARMONY_TEMPLATE)
    return tokenizer


INSTRUCT_END_OF_TEXT = {"chatml": "<|endoftext|>", "llama3": "<|end_of_text|>"}  # their base models' end of text


def make_instruct_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """An instruct tokenizer's habits: ``eos_token`` is the chat end-of-turn token, so that generation stops at a
    turn's end, while the end-of-text token the base model was pretrained with stays in the vocabulary: ChatML
    (Qwen2.5-Instruct, Qwen3) ``<|im_end|>``, with ``<|endoftext|>`` as padding token; Llama-3.x-Instruct
    ``<|eot_id|>``, with ``<|end_of_text|>`` and ``<|begin_of_text|>`` before every text."""
    tokenizer = make_chat_tokenizer(style, eos_token=INSTRUCT_END_OF_TEXT[style])
    tokenizer.eos_token = CHAT_STYLES[style][2]
    if style == "chatml":
        tokenizer.pad_token = INSTRUCT_END_OF_TEXT[style]
    if style in BOS_TOKENS:
        bos = BOS_TOKENS[style]
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos))]
        )
    return tokenizer


def make_sentencepiece_chat_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """``make_sentencepiece_tokenizer`` with a family's special tokens and template: a student's tokenizer for
    cross-tokenizer chat data (other pieces, other byte conventions, another template than the teacher's)."""
    template, specials, _ = CHAT_STYLES[style]
    tokenizer = make_sentencepiece_tokenizer()
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.add_tokens(REASONING_TOKENS.get(style, []))
    tokenizer.chat_template = template
    return tokenizer


def make_conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """Conversations where the assistant repeats the user's sentence: one to three turns, some with a system turn."""
    rng = random.Random(seed)
    conversations = []
    for index in range(count):
        turns = [{"role": "system", "content": "Repeat what you read."}] if index % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"
            turns += [{"role": "user", "content": sentence}, {"role": "assistant", "content": sentence}]
        conversations.append(turns)
    return conversations


def write_chat_jsonl(path, conversations: list[list[dict]]) -> str:
    with open(path, "w") as out:
        for messages in conversations:
            out.write(json.dumps({"messages": messages}) + "\n")
    return str(path)
