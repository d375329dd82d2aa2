"""Methods and solvers by name, each with its own typed settings (llm-compressor's modifiers, without
their lifecycle: calibration here is the same for every method).

A recipe names one with its settings (``solver: {name: admm, iterations: 60}``) or by name alone
(its defaults). Every part that lists, validates, documents or prints methods reads the registry,
so a new one is one class with a ``@REGISTRY.register`` decorator: the recipe schema, the card, and
``obsdiff-hub recipes methods`` pick it up.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, ClassVar, Generic, Iterator, TypeVar

from pydantic import BeforeValidator, GetJsonSchemaHandler, SerializeAsAny, ValidationError
from pydantic_core import PydanticCustomError

from ..errors import InputError
from .validation import StrictModel, first_problem

Granularity = str  # "unstructured", "n:m" or "structured" (checked by PruneConfig)
GRANULARITIES: tuple[Granularity, ...] = ("unstructured", "n:m", "structured")


class Settings(StrictModel):
    """A registered method's or solver's settings; ``name`` picks the class.

    Subclasses declare ``name: Literal["..."] = "..."``, their own fields (each with a
    description), ``summary`` (one line for listings) and ``granularities`` (where they apply)."""

    name: str
    kind: ClassVar[str] = ""  # "method" or "solver": what a recipe's field names
    summary: ClassVar[str] = ""
    granularities: ClassVar[tuple[Granularity, ...]] = GRANULARITIES

    @classmethod
    def name_of(cls) -> str:
        """The name this class is registered under."""
        return cls.model_fields["name"].default

    def card_text(self, granularity: Granularity) -> str:
        """The sentence a model card prints about this choice, with the settings that matter."""
        settings = ", ".join(f"{k} {v}" for k, v in self.model_dump().items() if k != "name")
        return f"{self.name}" + (f" ({settings})" if settings else "")

    def check(self, config: Any) -> None:
        """Refuse (``ValueError``) a run this choice cannot serve; ``config`` is the whole ``PruneConfig``."""
        if config.granularity not in self.granularities:
            raise ValueError(
                f"{self.kind} {self.name} applies to granularity {' or '.join(self.granularities)}, "
                f"not {config.granularity!r}"
            )


S = TypeVar("S", bound=Settings)


class Registry(Generic[S]):
    """The registered classes of one kind (``method`` or ``solver``), by name."""

    def __init__(self, kind: str, base: type[S], default: str) -> None:
        self.kind = kind
        self.base = base
        self.default = default  # what a recipe that names none gets; listed first
        self._classes: dict[str, type[S]] = {}

    def register(self, cls: type[S]) -> type[S]:
        """Class decorator: ``cls`` becomes available under its ``name`` default."""
        name = cls.name_of()
        if not isinstance(name, str) or not issubclass(cls, self.base):
            raise TypeError(f"a {self.kind} is a {self.base.__name__} with a default name")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        self._classes.pop(name, None)

    def names(self) -> list[str]:
        """The default first, then the others by name."""
        return sorted(self._classes, key=lambda name: (name != self.default, name))

    def __iter__(self) -> Iterator[type[S]]:
        return iter([self._classes[name] for name in self.names()])

    def default_settings(self) -> S:
        return self[self.default]()

    def __getitem__(self, name: str) -> type[S]:
        if name not in self._classes:
            close = difflib.get_close_matches(name, self._classes, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; choose {', '.join(self._classes)}"
            raise InputError(f"unknown {self.kind} {name!r}{hint}")
        return self._classes[name]

    def validate(self, value: Any) -> S:
        """A pydantic before-validator: a name, a mapping with ``name`` and settings, or an instance."""
        if isinstance(value, self.base):
            return value
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise PydanticCustomError(
                "registry", "a {kind} is a name or a mapping with a name and its settings", {"kind": self.kind}
            )
        try:
            cls = self[value["name"]]
        except InputError as error:
            raise PydanticCustomError("registry", str(error)) from None
        try:
            return cls.model_validate(value)
        except ValidationError as error:
            where, what = first_problem(error, cls)
            raise PydanticCustomError(
                "registry", "{name} setting {where}: {what}", {"name": cls.name_of(), "where": where, "what": what}
            ) from None

    def json_schema(self) -> dict[str, Any]:
        """Every registered choice: its name alone, or a mapping of its settings."""
        return {
            "anyOf": [{"type": "string", "enum": self.names()}, *(cls.model_json_schema() for cls in self)],
            "description": f"a {self.kind}: its name, or {{name: NAME, setting: value, ...}}",
        }


class _RegistrySchema:
    """The JSON schema of a registry field, read from the registry when the schema is generated."""

    def __init__(self, registry: Registry[Any]) -> None:
        self.registry = registry

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return self.registry.json_schema()


def registry_field(registry: Registry[S]) -> Any:
    """The annotation of a settings field holding one of ``registry``'s choices."""
    return Annotated[SerializeAsAny[registry.base], BeforeValidator(registry.validate), _RegistrySchema(registry)]
