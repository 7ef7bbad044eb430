"""Rebuild the teacher that ships in ``distily/demo/teacher``: a byte-level BPE tokenizer and a small
Llama-architecture model trained by next-token prediction on ``pydoc_data.topics``.

    python scripts/build_demo_teacher.py [--output distily/demo/teacher] [--steps 400]

Takes about ten minutes on two CPU cores. The checkpoint stays under 10 MB.
"""

import argparse
import tempfile
from functools import partial

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, set_seed

from distily.data.arguments import DataArguments
from distily.data.batches import collate
from distily.data.tokenizer import train_byte_level_bpe
from distily.data.training_data import build_datasets
from distily.demo.corpus import python_doc_paragraphs, write_corpus

VOCAB_SIZE = 2048
SEQ_LENGTH = 128


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="distily/demo/teacher")
    parser.add_argument("--steps", type=int, default=400)
    options = parser.parse_args()
    set_seed(0)
    tokenizer = train_byte_level_bpe(python_doc_paragraphs(), VOCAB_SIZE, model_max_length=SEQ_LENGTH * 2)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LENGTH * 2,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with tempfile.TemporaryDirectory() as workdir:
        corpus = write_corpus(f"{workdir}/topics.jsonl")
        data_args = DataArguments(dataset_name=str(corpus), tokenization_cache_dir=f"{workdir}/cache")
        data = build_datasets(data_args, tokenizer, SEQ_LENGTH, seed=0)
        args = TrainingArguments(
            output_dir=f"{workdir}/run",
            max_steps=options.steps,
            per_device_train_batch_size=32,
            learning_rate=2e-3,
            lr_scheduler_type="cosine",
            warmup_steps=50,
            weight_decay=0.1,
            bf16=True,
            use_cpu=True,
            logging_steps=100,
            eval_strategy="steps",
            eval_steps=100,
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=partial(collate, pad_token_id=tokenizer.eos_token_id),
        )
        trainer.train()
        print(trainer.evaluate())
    model.to(torch.float32).save_pretrained(options.output)
    tokenizer.save_pretrained(options.output)


if __name__ == "__main__":
    main()
