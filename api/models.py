"""Response models of `GET /segments`, named and shaped as in the original FastAPI API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SegmentType = Literal["growth", "base", "discovery"]
SegmentBasis = Literal["label", "asset"]


class SegmentCount(BaseModel):
    """User count and strength of one segment at one threshold."""

    segment_type: SegmentType = Field(
        description=(
            "Either growth (actions to drive overall engagement), discovery (actions for "
            "exploration), or base (actions for repeat behaviors)."
        )
    )
    segment_basis: SegmentBasis = Field(description="Ether label or asset")
    segment_basis_id: str = Field(description="Ether the label or asset id")
    action_type: str = Field(description="Recommended event_type")
    name: str
    user_count: int = Field(description="The number of users in the segment")
    strength: float = Field(description="The average of the user weights in the segment")
    min_weight: float = Field(description="The cutoff weight for including in the segment")


class PageSegmentCount(BaseModel):
    """One page of segments; `total` counts the segments of all pages."""

    items: list[SegmentCount]
    total: int = Field(ge=0)
    page: int = Field(ge=1)
    size: int = Field(ge=1)


class ValidationError(BaseModel):
    """One problem with the request (FastAPI style)."""

    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationError(BaseModel):
    """Body of a 422 answer."""

    detail: list[ValidationError] = Field(default_factory=list)


class ErrorMessage(BaseModel):
    """Body of a 503 answer of `GET /segments`."""

    detail: str


class Liveness(BaseModel):
    """Body of `GET /livez`: 200 while the process and its event loop respond."""

    live: bool


class Readiness(BaseModel):
    """Body of `GET /readyz`: 200 once this worker can answer `GET /segments` with
    `consistency=any`, 503 with the reason before (and while it stops)."""

    ready: bool
    serving: bool = Field(
        description="Whether it serves its own partitions right now (false while partitions "
                    "move: answers then come from owners, standby copies or last answers).")
    reason: str | None = Field(default=None, description="Why it is not ready.")
    rebuilding: list[int] = Field(
        default_factory=list,
        description="Its partitions still being rebuilt in the background (present only when "
                    "there are some): not served by it yet, their input not read yet.")


class Health(BaseModel):
    """Body of `GET /healthz`: 200 when ready, 503 otherwise."""

    ready: bool
    partitions: list[int] = Field(
        description="The partitions whose segments this worker holds and serves.")
    recommendations: int = Field(
        description="Recommendations held on those partitions (withdrawn ones included).")
    standbys: list[int] = Field(
        default_factory=list,
        description="The partitions of other workers whose standby copy this worker keeps "
                    "ready (complete, following their owners).")
    rebuilding: list[int] = Field(
        default_factory=list,
        description="Its partitions still being rebuilt in the background (present only when "
                    "there are some); it is not ready until they are served.")
