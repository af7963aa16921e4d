"""The light level α: one type, :class:`LightLevel`, and its range, ``ALPHA_MIN``..``ALPHA_MAX``.

α scales the illumination: above 1 it brightens, below 1 it darkens; "auto" lets
:func:`model.auto_alpha.auto_alpha_from_parts` choose it per image. Every front end (HTTP query, CLI
flag, Python API) turns what the user typed into a ``LightLevel`` once, with :meth:`LightLevel.parse`,
and hands that value on unchanged to :mod:`model.recipe`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA_MIN, ALPHA_MAX = 0.1, 20.0


class AlphaError(ValueError):
    """A light level outside the supported range or not a number."""


@dataclass(frozen=True)
class LightLevel:
    """``"auto"`` (``value`` is None) or a fixed α in [``ALPHA_MIN``, ``ALPHA_MAX``]."""

    value: float | None = None

    def __post_init__(self) -> None:
        if self.value is None:
            return
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise AlphaError(f"alpha must be 'auto' or a number, got {self.value!r}")
        if not (ALPHA_MIN <= self.value <= ALPHA_MAX) or math.isnan(self.value):
            raise AlphaError(f"alpha must be 'auto' or between {ALPHA_MIN} and {ALPHA_MAX}, got {self.value!r}")
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def parse(cls, raw: LightLevel | str | float | None) -> LightLevel:
        """``"auto"`` (any case) or ``None`` → automatic; a number or numeric string → fixed α (range-checked)."""
        if isinstance(raw, LightLevel):
            return raw
        if raw is None or (isinstance(raw, str) and raw.strip().lower() == "auto"):
            return AUTO
        if isinstance(raw, str):
            try:
                number = float(raw)
            except ValueError:
                raise AlphaError(f"alpha must be 'auto' or a number, got {raw!r}") from None
            if not (ALPHA_MIN <= number <= ALPHA_MAX):  # also rejects NaN
                raise AlphaError(f"alpha must be 'auto' or between {ALPHA_MIN} and {ALPHA_MAX}, got {raw!r}")
            return cls(number)
        return cls(raw)

    @property
    def auto(self) -> bool:
        return self.value is None

    def __str__(self) -> str:
        """Canonical spelling: ``auto`` or the float's repr, so equal levels share cache keys and ETags."""
        return "auto" if self.value is None else repr(self.value)


AUTO = LightLevel()
