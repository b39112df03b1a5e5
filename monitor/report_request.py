"""What a report asks for: initiative, window, detail. Light on purpose: the command line parses it at start-up.

>>> from typing import get_args
>>> get_args(Window) == tuple(WINDOWS)
True
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WINDOWS = {"7d": 7, "14d": 14, "30d": 30}
Window = Literal["7d", "14d", "30d"]  # the keys of WINDOWS
Detail = Literal["summary", "full"]


class ReportRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    initiative: str = Field(min_length=1)
    window: Window = "7d"
    detail: Detail = "summary"
    dimension: Literal["profile", "channel", "cohort"] | None = None
    alert_threshold: float | None = Field(None, gt=0, lt=1)
    trends: bool = Field(
        False,
        description="Add the time series a dashboard draws: per series and closed bucket, "
        "and each experiment's lift per look.",
    )

    @classmethod
    def from_query(cls, query: dict[str, str]) -> ReportRequest:
        return cls.model_validate({k: v for k, v in query.items() if v != ""})
