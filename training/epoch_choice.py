"""Which epoch's weights a training job keeps: held-out validator pass first, held-out loss second.

The held-out loss (measured after every whole epoch) says how likely the teacher's answers are
under the model; the site's user cares whether the model's own answers pass the site's checks.
The two part ways: a model that has learned a map's exact layout from the teacher has a low loss,
yet one that places every wall and enemy where the request allows may pass more often with a
higher loss. So a job keeps the `EPOCH_CANDIDATES` epochs of lowest held-out loss, answers the
held-out requests with each (as the proxy would serve them), and keeps the one whose answers pass
most often; the held-out loss breaks ties, and decides alone where nothing can be checked (a
free-text site without a validator).

The same held-out set then gates the version (not worse than the site's current one), so the
chosen epoch's pass rate is the best of at most three measurements on it: slightly optimistic,
by at most the spread between the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

EPOCH_CANDIDATES = 3  # epochs whose weights are kept for the choice: the default plan's three, at most


@dataclass(frozen=True)
class EpochCandidate:
    epoch: int  # 1-based
    eval_loss: float  # held-out loss after the epoch
    held_out_pass: float | None = None  # held-out validator pass (parse-valid without a validator); None: not measured

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "eval_loss": self.eval_loss, "held_out_pass": self.held_out_pass}


def choose_epoch(candidates: list[EpochCandidate]) -> EpochCandidate:
    """The candidate whose held-out answers pass most often; among equals, the lowest held-out loss
    (then the earlier epoch). Candidates whose pass rate was not measured compete on loss alone, and
    only when none was measured."""
    if not candidates:
        raise ValueError("no epoch to choose from")
    measured = [c for c in candidates if c.held_out_pass is not None]
    pool = measured or candidates
    return min(pool, key=lambda c: (-(c.held_out_pass or 0.0), c.eval_loss, c.epoch))
