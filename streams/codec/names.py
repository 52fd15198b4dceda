"""The names of the product's topics and tables: the ones settings name, and the internal ones
derived from the app id (Faust names a table's changelog ``<app id>-<table>-changelog``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

RECOMMENDATIONS: Final = "recommendations"
EMITTED_COUNTS: Final = "emitted-counts"
TABLES: Final = (RECOMMENDATIONS, EMITTED_COUNTS)


@dataclass(frozen=True)
class Names:
    app_id: str
    input_topic: str
    dlq_topic: str
    changes_topic: str
    counts_topic: str = "segment-counts"

    @property
    def repartition_topic(self) -> str:
        return f"{self.app_id}-recommendations-by-segment"

    def changelog_topic(self, table: str) -> str:
        return f"{self.app_id}-{table}-changelog"

    @property
    def changelog_topics(self) -> tuple[str, ...]:
        return tuple(self.changelog_topic(t) for t in TABLES)

    @property
    def batch_topics(self) -> tuple[str, str]:
        """The topics whose records the batch handler takes: input and repartition."""
        return (self.input_topic, self.repartition_topic)
