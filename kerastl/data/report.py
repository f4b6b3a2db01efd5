"""What a data source skipped, and why: one line per bad record, counted by reason."""

from __future__ import annotations

import collections
import dataclasses


class BadRecordError(ValueError):
    """A record could not be used and the source was opened with `strict=True`."""


@dataclasses.dataclass
class DataReport:
    """The records a source read, and those it skipped with the reason.

    Attributes:
        source: the folder or file read.
        kept: how many records are in the dataset.
        skipped: `(where, reason)` pairs, `where` a file path or `file:row`.
        notes: findings that skip nothing (e.g. an empty class folder).
    """

    source: str
    kept: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def reject(self, where: str, reason: str, strict: bool) -> None:
        """Records a bad record; raises `BadRecordError` instead when `strict`."""
        if strict:
            raise BadRecordError(f"{where}: {reason} (strict=True stops at the first bad record).")
        self.skipped.append((where, reason))

    def counts(self) -> dict[str, int]:
        """Skipped records per reason kind (the text before the first colon)."""
        return dict(collections.Counter(reason.split(":")[0] for _, reason in self.skipped))

    def one_line(self) -> str | None:
        """`skipped 2 of 1002 records in SOURCE (1 x corrupt, ...)`, or None if none was."""
        if not self.skipped:
            return None
        kinds = ", ".join(f"{count} x {kind}" for kind, count in sorted(self.counts().items()))
        total = self.kept + len(self.skipped)
        return f"skipped {len(self.skipped)} of {total} records in {self.source} ({kinds})"

    def summary(self, limit: int = 20) -> str:
        """A readable report: totals, counts per reason, the first `limit` records.

        Example:
            >>> print(report.summary())
        """
        lines = [f"{self.source}: kept {self.kept}, skipped {len(self.skipped)}"]
        lines += [f"  {count} x {kind}" for kind, count in sorted(self.counts().items())]
        lines += [f"  {where}: {reason}" for where, reason in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)
