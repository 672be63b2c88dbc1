"""What every repair method's config shares, and how a ``repair`` block becomes configs.

A ``repair:`` block is one method's config (its class's fields) and may list more methods
in ``methods``; ``method_configs`` turns it into one validated config per method. Each
method's config class registers itself here when it is defined (by its ``method``
default), so this module finds the class for a method name without importing any of them:
a new method is one module with its class plus one line in the union of
``orchestrator.spec.repair``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, ValidationError, model_validator

from orchestrator import catalog
from orchestrator.catalog import is_import_path
from orchestrator.spec.fields import Int, Seed, _added, _Strict, slug

if TYPE_CHECKING:
    from orchestrator.spec.repair import RepairMethodConfig

IMPORTED = "import-path"


class _RepairCommon(_Strict):
    """What every repair method shares: which classes it repairs, and its seed."""

    method: str = Field(description="The repair method.")
    classes: list[Int] = Field(
        default_factory=list, description="Target classes repaired in every run."
    )
    seed: Seed = Field(
        0, description="Mixed with run seed, epoch and class: the method's random seed."
    )
    methods: list[str | dict[str, Any]] | None = _added(
        None,
        description="Repair every checkpoint x class with each of these methods (a sweep"
        " dimension): a method name (arachne, arachne-de, finetune, neurecover, provable, or"
        " 'pkg.module:fn') or a mapping {method: NAME, ...its fields}. Fields set in this"
        " `repair` block that a method also has (seed, n_positives, positives, ...) are"
        " inherited; the entry naming this block's own `method` is this block. Default: this"
        " block's method alone.",
    )
    accept: Literal["always", "fixes-some", "no-worse-val"] = _added(
        "always",
        description="Which patches are kept. always (the paper): every one. fixes-some: only"
        " a patch that fixes at least one repair-set negative of the class. no-worse-val: only"
        " one under which Qual(0.5, c) on the validation split does not drop. A rejected patch"
        " leaves the unrepaired model (record accepted: false, empty patch.json). A method"
        " listed again with another rule gets its own folder, repair/<method>+<accept>/.",
    )

    def configs(self) -> list[RepairMethodConfig]:
        """One config per method to run, in the order of ``methods``."""
        return method_configs(self)

    @model_validator(mode="after")
    def _methods(self) -> _RepairCommon:
        if self.methods is not None:
            if not self.methods:
                raise ValueError("methods: list at least one method, or leave it out")
            method_configs(self)  # every entry valid now, not when a run gets there
        return self

    # Tag -> config class of every method (filled as the classes are defined).
    _members: ClassVar[dict[str, type[_RepairCommon]]] = {}
    # The tag a class registers under when its `method` has no string default.
    TAG: ClassVar[str | None] = None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["method"].default
        tag = cls.__dict__.get("TAG") or (default if isinstance(default, str) else None)
        if tag is not None:
            _RepairCommon._members[tag] = cls

    @property
    def key(self) -> str:
        """The method's folder in the result layout (``repair/<key>/class_C``); a rule other
        than ``accept: always`` is part of it, so one method under two rules is two methods."""
        base = method_key(self.method)
        return base if self.accept == "always" else f"{base}+{self.accept}"


def _method(value: Any) -> Any:
    return (
        value.get("method", "arachne")
        if isinstance(value, dict)
        else getattr(value, "method", "arachne")
    )


def _known_method(value: Any) -> Any:
    method = _method(value)
    if isinstance(method, str) and (
        why := catalog.unknown("repair method", catalog.REPAIR_METHODS, method)
    ):
        raise ValueError(why)
    return value


def _repair_tag(value: Any) -> str | None:
    """The union member for a repair config: its `method`; no `method` means arachne."""
    method = _method(value)
    if not isinstance(method, str):
        return "arachne"  # whose Literal then names the problem
    return IMPORTED if is_import_path(method) else method


# Every tag a repair config can have: the catalog's methods, and import paths.
REPAIR_TAGS = frozenset({*catalog.REPAIR_METHODS, IMPORTED})


def _method_required(schema: dict[str, Any]) -> None:
    # Only arachne may leave `method` out; in the JSON Schema the other members must name
    # it, or a block without `method` would match several members of the oneOf.
    schema["required"] = sorted({*schema.get("required", []), "method"})


def member_class(method: Any) -> type[_RepairCommon] | None:
    """The config class of ``method`` (a catalog name or an import path), None if none."""
    if not isinstance(method, str):
        return None
    return _RepairCommon._members.get(IMPORTED if is_import_path(method) else method)


def method_key(method: str) -> str:
    """A method's folder name: its catalog name, or a slug of its import path."""
    return slug(method) if is_import_path(method) else method


def method_configs(block: _RepairCommon) -> list[RepairMethodConfig]:
    """The configs of every method a `repair` block asks for (see ``_RepairCommon.methods``).

    Each entry is validated as its own method's config, starting from the fields the block
    set that the method also has, so `seed: 3` in the block seeds every method.
    """
    own: Any = block.model_copy(update={"methods": None})
    if block.methods is None:
        return [own]
    inherited = {
        name: getattr(block, name)
        for name in block.model_fields_set - {"method", "methods", "classes"}
    }
    configs: list[RepairMethodConfig] = []
    for i, entry in enumerate(block.methods):
        fields = {"method": entry} if isinstance(entry, str) else dict(entry)
        if "methods" in fields:
            raise ValueError(f"methods.{i}: a method entry cannot list methods itself")
        if fields.get("method") == block.method:
            start = own.model_dump()
        else:
            target = _member_fields(fields.get("method"))
            start = {"classes": block.classes} | {k: v for k, v in inherited.items() if k in target}
        data = {**start, **fields}
        # As the `repair` union validates: the name against the catalog first, then the
        # fields by the method's own class.
        try:
            _known_method(data)
        except ValueError as e:
            raise ValueError(f"methods.{i}: {e}") from e
        cls = _RepairCommon._members.get(_repair_tag(data) or "")
        if cls is None:
            raise ValueError(f"methods.{i}: repair method {_method(data)!r} has no config class")
        try:
            configs.append(cls.model_validate(data))
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"] if str(p) not in REPAIR_TAGS)
            msg = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"methods.{i}{'.' + loc if loc else ''}: {msg}") from e
    keys = [c.key for c in configs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"methods: {dup!r} appears twice; list each method once")
    return configs


def _member_fields(method: Any) -> set[str]:
    """The field names of the config class of ``method`` (empty when it names none)."""
    cls = member_class(method)
    return set(cls.model_fields) if cls is not None else set()
