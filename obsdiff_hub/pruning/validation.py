"""One validation pass for every settings object: frozen pydantic models that refuse unknown fields
and non-finite floats, and a one-line description of the first problem of a failed validation."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InputError


class StrictModel(BaseModel):
    """Frozen; unknown fields are errors (a typo in a recipe must not be ignored) and so are
    infinite or NaN floats (``.inf`` is valid YAML, never a valid setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """``value`` if it already is one, else validated from a mapping; a bad field is an
        :class:`InputError` naming it (``calibration.steps: ...``)."""
        if isinstance(value, cls):
            return value
        try:
            return cls.model_validate(value if value is not None else {})
        except ValidationError as error:
            raise InputError(describe_error(error, cls)) from None


def fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the (nested) model that ``path`` leads to, or [] if it leads elsewhere."""
    for part in path:
        field = model.model_fields.get(part)
        options = [field.annotation, *typing.get_args(field.annotation)] if field is not None else []
        nested = [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def first_problem(error: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """The dotted location of a failed validation's first problem and what is wrong there: pydantic's
    message, the allowed values, and for an unknown field the closest real one."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    expected = str(first.get("ctx", {}).get("expected", ""))
    hint = f" (allowed: {expected})" if expected and expected not in first["msg"] else ""
    if first["type"] == "extra_forbidden" and loc:
        close = difflib.get_close_matches(loc[-1], fields_at(model, loc[:-1]), n=1, cutoff=0.6)
        hint = f"; did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else ""
    message = first["msg"].removeprefix("Value error, ")  # our validators' messages stand alone
    return ".".join(loc), f"{message}{hint}"


def describe_error(error: ValidationError, model: type[BaseModel]) -> str:
    """The first problem of a failed validation of ``model`` in one line, led by the field it concerns."""
    where, what = first_problem(error, model)
    return f"{where or model.__name__}: {what}"
