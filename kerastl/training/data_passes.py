"""`DataPasses`: a staged run's passes over its training data, replayed on resume.

A reshuffling `tf.data` pipeline and random augmentation layers give each
pass its own order and draws; a resumed run makes the interrupted run's
passes again, over the data alone, so that it sees what an uninterrupted run
would have seen.
"""

from __future__ import annotations

# Keras 3.15's `EpochIterator` (dataset of known length, no `steps_per_epoch`)
# creates a fresh iterator when an epoch's last batch is drawn, then ignores it
# and creates another when the next epoch begins. Each iterator takes a seed
# from a reshuffling `shuffle`, so a trained epoch advances the order by two
# passes. `tests/test_keras_fixes.py` shows it (and fails when Keras changes).
KERAS_SPARE_ITERATORS = 1


class DataPasses:
    """Counts the run's passes over its training data, and replays them on resume.

    A `tf.data` shuffle that reshuffles each iteration draws its order from
    how many iterations its dataset (or any dataset built on it) has made,
    and random augmentation layers advance with each augmented pass. A
    resumed run makes the same passes before it trains: the passes whose
    work the backup holds are run again over the data alone (no model).

    Args:
        train: the training data as the run iterates it (caching, class weights).
        augmented: the training data as end-to-end stages iterate it.
    """

    def __init__(self, train, augmented):
        self.total = 0
        self.augmented = 0
        self.extracted_at: dict[str, int] = {}
        self._train = train
        self._augmented = augmented
        self._replay: dict[str, int] = {}
        self._known: dict[str, int] = {}  # the backed-up run's extraction points
        self._pending: dict | None = None
        self._warned = False

    def counts(self) -> dict:
        """The counts so far (JSON-serializable)."""
        return {
            "total": self.total,
            "augmented": self.augmented,
            "extracted_at": {**self._known, **self.extracted_at},
        }

    def resume(self, extracted_at: dict, pending: dict) -> None:
        """Replays a backed-up run: its caches are extracted at the passes they
        were (`extracted_at`); anything else waits until `pending` counts."""
        self._replay = dict(extracted_at)
        self._known = dict(extracted_at)
        self._pending = pending

    def counted(self) -> None:
        """One pass over the training data happened (class weights)."""
        self.total += 1

    def before_extract(self, boundary: str) -> None:
        """Catches up to where the cache at `boundary` was first extracted."""
        at = self._replay.pop(boundary, None)
        if at is not None:
            self._advance({"total": at, "augmented": self.augmented})
        elif self._pending is not None:
            self.catch_up()
        self.extracted_at[boundary] = self.total
        self.total += 1

    def epoch_begun(self) -> None:
        """An end-to-end epoch started a pass over the augmented data."""
        self.total += 1
        self.augmented += 1

    def epoch_ended(self) -> None:
        """An end-to-end epoch ran to its end: Keras then creates the next
        epoch's iterator at once and drops it (`KERAS_SPARE_ITERATORS`)."""
        self.total += KERAS_SPARE_ITERATORS

    def replay_epoch(self, dataset) -> None:
        """The data passes of one end-to-end epoch over `dataset` (the stage's
        training data) trained before the interruption."""
        _drain(dataset)
        self.epoch_begun()
        for _ in range(KERAS_SPARE_ITERATORS):
            iter(dataset)
        self.epoch_ended()

    def catch_up(self, target: dict | None = None) -> None:
        """Runs passes over the data alone until the counts reach `target`
        (default: the pending counts of the resumed run)."""
        target = target or self._pending
        self._pending = None
        if target is not None:
            self._advance(target)

    def _advance(self, target: dict) -> None:
        while self.augmented < target["augmented"]:
            _drain(self._augmented)
            self.augmented += 1
            self.total += 1
        while self.total < target["total"]:
            _drain(self._train)
            self.total += 1
        if self.total > target["total"] and not self._warned:
            self._warned = True
            print(
                "kerastl: note: the resumed run has made more passes over the training data "
                "than the interrupted one at this point; a reshuffling pipeline now gives "
                "another order than an uninterrupted run would."
            )

    def expected(self) -> dict:
        """The counts the uninterrupted run had here: the pending ones of a resumed
        run not caught up yet, else the counts so far."""
        if self._pending is None:
            return self.counts()
        return {**self._pending, "extracted_at": self.counts()["extracted_at"]}


def _drain(dataset) -> None:
    for _ in dataset:
        pass
