"""When meta-training has diverged: a stop with one line that says what to lower, instead of a run that
trains on numeric garbage and reports chance."""

from __future__ import annotations

import math
from pathlib import Path

from metanlp_cli.errors import MetaNLPError

# The largest meta-loss (mean over the meta-batch) a sound run can have. Every metanlp meta-loss is a
# per-example mean: cross-entropy in nats (log N at chance: 1.6 for 5-way; 1e6 nats means the right class
# has probability e^-1e6, logits a million apart, so float32 softmax and its gradients are saturated),
# squared error of regression targets (STS-B's are 0..5), or Reptile's 0.5 ||theta - phi||^2 (a million:
# one adaptation moved the weights by more than 1,400). Only a diverged inner or outer loop gets there,
# so this never stops a run that is learning, however badly initialised.
MAX_META_LOSS = 1e6


def diverged(meta_loss: float, gradient_norm: float) -> bool:
    """A non-finite meta-loss or gradient, or a meta-loss beyond what any learning run reaches."""
    return not (math.isfinite(meta_loss) and math.isfinite(gradient_norm) and abs(meta_loss) <= MAX_META_LOSS)


def check_meta_loss(meta_loss: float, gradient_norm: float, step: int, checkpoint_dir: Path, hint: str = "") -> None:
    """Stop on a non-finite or diverged meta-loss (or gradient), naming the checkpoint to go back to."""
    gradient_norm = float(gradient_norm)
    if not diverged(meta_loss, gradient_norm):
        return
    finite = math.isfinite(meta_loss) and math.isfinite(gradient_norm)
    why = "" if not finite else f", above {MAX_META_LOSS:.0e}: the inner or outer loop diverged"
    last = checkpoint_dir / "last.pt"
    kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint was written before this step"
    raise MetaNLPError(
        f"meta-loss became {meta_loss:.3g} (gradient norm {gradient_norm:.3g}) at step {step}{why}; lower "
        f"optim.lr or algo.inner_train.lr{hint} ({kept})"
    )
