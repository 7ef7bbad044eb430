"""The sizes of a causal LM that feature distillation needs, read from its config (no forward pass)."""

from dataclasses import dataclass

from transformers import PretrainedConfig

from distily.models.layer_settings import layer_config


@dataclass(frozen=True)
class ModelShape:
    depth: int  # decoder blocks; output_hidden_states has depth + 1 entries
    width: int  # hidden size
    heads: int  # attention heads
    kv_heads: int  # key/value heads (fewer than heads with grouped-query attention)
    head_dim: int

    @property
    def query_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "ModelShape":
        """From any HF causal-LM config (GPT-2's n_layer/n_embd/n_head are read through its attribute_map); where
        the layers' attention differs (a heterogeneous config: Gemma 4's full-attention layers have a wider head_dim),
        the widest layer's."""
        config = config.get_text_config()
        layers = (cls._of_layer(config, layer_config(config, layer)) for layer in range(config.num_hidden_layers))
        return max(layers, key=lambda shape: shape.query_width + 2 * shape.kv_width)

    @classmethod
    def _of_layer(cls, config: PretrainedConfig, settings: PretrainedConfig) -> "ModelShape":
        heads = settings.num_attention_heads
        return cls(
            depth=config.num_hidden_layers,
            width=config.hidden_size,
            heads=heads,
            kv_heads=getattr(settings, "num_key_value_heads", None) or heads,
            head_dim=getattr(settings, "head_dim", None) or config.hidden_size // heads,
        )
