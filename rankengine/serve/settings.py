"""The serving limits one server runs under."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ServeSettings:
    """The serving limits (``rankengine serve`` checks the ranges of its flags; these checks
    catch what no server could run with). ``admin_token``, when set, is required as
    ``Authorization: Bearer <token>`` by ``POST /v2/repository/models/{name}/load``."""

    threads: int = 2
    max_candidates: int = 2000
    max_body_bytes: int = 8 << 20
    max_fusion_weight: float = 100.0
    poll_interval: float = 30.0
    admin_token: str | None = None

    def __post_init__(self) -> None:
        for name in ("threads", "max_candidates", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServeSettings.{name} must be a positive integer, found "
                                 f"{value!r}")
        for name in ("max_fusion_weight", "poll_interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ServeSettings.{name} must be a positive finite number, "
                                 f"found {value!r}")
        if self.admin_token is not None and not self.admin_token:
            raise ValueError("ServeSettings.admin_token must not be empty (None: no token)")
