"""A mixture-of-experts student's own router load-balancing loss, where its config asks for it.

transformers adds ``router_aux_loss_coef * aux_loss`` to a mixture-of-experts model's loss when its config sets
``output_router_logits`` and labels are given, so its Trainer (and TRL's, which read the same two keys) optimise
it; a distillation loss alone leaves the router free to send most tokens to a few experts.
"""

from typing import Optional

from transformers import PretrainedConfig

from distily.errors import DistilyConfigError
from distily.objectives.component import Component, loss_positions

ROUTER_AUX = "router_aux"


class RouterAuxComponent(Component):
    """The student's router load-balancing loss as its model computes it (``aux_loss``, Switch Transformers': the
    number of experts times the sum over experts of the fraction of the tokens routed to each and its mean router
    probability, over the MoE layers), weighted by the student's ``router_aux_loss_coef``."""

    needs_teacher = False

    def forward(self, student_outputs, teacher_outputs, batch):
        aux_loss = getattr(student_outputs, "aux_loss", None)  # scalar: the micro-batch's
        if aux_loss is None:
            raise DistilyConfigError(
                "the student's config sets output_router_logits, but its model returns no router load-balancing "
                "loss (aux_loss); expected output_router_logits: false in student_config_overrides for it"
            )
        # a sum over the loss positions, which the objective divides by their count: accumulated micro-batches
        # weigh by their tokens
        return aux_loss.float() * loss_positions(batch).sum()


def router_aux_weight(student_config: Optional[PretrainedConfig]) -> float:
    """The student's ``router_aux_loss_coef`` where its config sets ``output_router_logits``, else 0."""
    if student_config is None or not getattr(student_config, "output_router_logits", False):
        return 0.0
    return float(getattr(student_config, "router_aux_loss_coef", 0.0) or 0.0)
