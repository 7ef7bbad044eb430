"""Config keys for recording a tiny teacher into a small store, and for training from it."""


def store_values(teacher_dir, text_file, root, **overrides) -> dict:
    """24 train and 8 eval sequences of 32 tokens, in shards of 8 sequences; 4 training steps."""
    return {
        "teacher_model_name_or_path": teacher_dir,
        "dataset_name": text_file,
        "max_seq_length": 32,
        "max_samples": 24,
        "max_eval_samples": 8,
        "teacher_store": str(root / "store"),
        "record_top_k": 16,
        "record_shard_size": 8,
        "output_dir": str(root / "run"),
        "tokenization_cache_dir": str(root / "cache"),
        "student_config_overrides": {"num_hidden_layers": 2},
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        **overrides,
    }
