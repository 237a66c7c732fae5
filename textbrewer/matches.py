"""``IntermediateMatch``: one validated entry of ``DistillationConfig.intermediate_matches``."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from textbrewer import presets
from textbrewer._compat import layer_spec, warn_user
from textbrewer._validation import Problems

_REQUIRED = ("layer_T", "layer_S", "feature", "loss", "weight")
_ALL_KEYS = (*_REQUIRED, "proj", "teacher")


@dataclasses.dataclass
class IntermediateMatch:
    """One intermediate-feature match between a teacher layer and a student layer.

    Attributes:
        layer_T: index into the teacher adaptor's ``hidden``/``attention`` list, or a list of two
            indices for two-layer losses (``fsp``/``gram``, ``nst``/``mmd``).
        layer_S: the same for the student.
        feature: a name in ``FEATURES`` (``'hidden'`` or ``'attention'``).
        loss: a key of ``MATCH_LOSS_MAP``.
        weight: the match loss's weight in the total loss.
        proj: ``None``, or ``[kind, dim_in_student, dim_out_teacher, optimizer_options]`` with
            ``kind`` a key of ``PROJ_MAP``; a projection applied to the student's feature. The
            options dict (e.g. ``{'lr': 1e-3}``) configures the projection's optimizer param group.
        teacher: ``None``, or the index into ``model_T`` of the teacher whose features the match
            reads (``MultiTeacherDistiller``, and ``MultiTaskDistiller`` tasks with several
            teachers, need it; single-teacher distillers accept only ``None`` or 0). Left out of
            ``to_dict()`` when ``None``, so 0.2.x configurations write the same files.
    """

    layer_T: int | list[int]
    layer_S: int | list[int]
    feature: str
    loss: str
    weight: float
    proj: list[Any] | None = None
    teacher: int | None = None

    @classmethod
    def from_config(
        cls, entry: Any, index: int, problems: Problems | None = None
    ) -> IntermediateMatch:
        """Validates one config entry (a dict); problems are named ``intermediate_matches[i]``."""
        own = problems is None
        problems = problems or Problems("DistillationConfig")
        prefix = f"intermediate_matches[{index}]"
        if not isinstance(entry, dict):
            problems.add(f"`{prefix}`={entry!r} must be a dict with keys {list(_REQUIRED)}")
            return cls(*(None for _ in _ALL_KEYS))
        unknown = [key for key in entry if key not in _ALL_KEYS]
        if unknown:
            # TextBrewer 0.2.x read the keys it knew and ignored the rest (e.g. a note, or a
            # 'name' used by the script itself): keep training, but say they do nothing.
            warn_user(
                f"`{prefix}` has key(s) {unknown} that no match reads (known: "
                f"{list(_ALL_KEYS)}); they are ignored"
            )
        missing = [key for key in _REQUIRED if key not in entry]
        if missing:
            problems.add(f"`{prefix}` is missing key(s) {missing}")
        match = cls(**{key: entry.get(key) for key in _ALL_KEYS})
        if not missing:
            match._check(prefix, problems)
        if own:
            problems.raise_if_any()
        return match

    def _check(self, prefix: str, problems: Problems) -> None:
        problems.choice(f"{prefix}.feature", self.feature, presets.FEATURES, "FEATURES")
        self.weight = problems.real(f"{prefix}.weight", self.weight)
        self.layer_T, self.layer_S = layer_spec(self.layer_T), layer_spec(self.layer_S)
        if problems.choice(f"{prefix}.loss", self.loss, presets.MATCH_LOSS_MAP, "MATCH_LOSS_MAP"):
            self._check_layers(prefix, problems)
        if self.proj is not None:
            self.proj = _checked_proj(self.proj, prefix, problems)
        if self.teacher is not None:
            self._check_teacher(prefix, problems)

    def _check_teacher(self, prefix: str, problems: Problems) -> None:
        value = self.teacher
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            problems.add(
                f"`{prefix}.teacher`={value!r} must be an int >= 0, the index in `model_T` of "
                "the teacher the match reads from (or left out for a single teacher)"
            )
        else:
            self.teacher = int(value)

    def _check_layers(self, prefix: str, problems: Problems) -> None:
        pairs = {}
        for side in ("layer_T", "layer_S"):
            value = getattr(self, side)
            is_int = isinstance(value, int) and not isinstance(value, bool)
            is_pair = isinstance(value, list) and len(value) == 2
            is_pair = is_pair and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            if not (is_int or is_pair):
                problems.add(f"`{prefix}.{side}`={value!r} must be an int or a list of two ints")
                return
            pairs[side] = is_pair
        info = presets.match_loss_info(presets.MATCH_LOSS_MAP[self.loss])
        wants_pairs = None if info is None else info.layers == 2
        if wants_pairs is None and pairs["layer_T"] != pairs["layer_S"]:
            problems.add(
                f"`{prefix}`: layer_T={self.layer_T!r} and layer_S={self.layer_S!r} must both be "
                "ints or both be lists of two ints"
            )
        for side, is_pair in pairs.items():
            if wants_pairs is not None and is_pair != wants_pairs:
                shape = "a list of two layers, e.g. [0, 1]" if wants_pairs else "a single int layer"
                problems.add(
                    f"`{prefix}.{side}`={getattr(self, side)!r}: loss {self.loss!r} takes {shape}"
                )

    @property
    def is_two_layer(self) -> bool:
        """Whether the match takes a pair of layers from each side."""
        return isinstance(self.layer_S, list)

    def to_dict(self) -> dict[str, Any]:
        """Returns the match as a plain dict, as written in a config."""
        plain = dataclasses.asdict(self)
        if plain["proj"] is not None:
            plain["proj"] = list(plain["proj"])
        if plain["teacher"] is None:
            del plain["teacher"]
        return plain

    def __getitem__(self, key: str) -> Any:
        # 0.2.x scripts sometimes read matches back as dicts: `match['layer_T']`.
        if key not in _ALL_KEYS:
            raise KeyError(f"{key!r} is not a match field (known: {list(_ALL_KEYS)})")
        return getattr(self, key)


def _checked_proj(proj: Any, prefix: str, problems: Problems) -> list[Any] | None:
    field = f"{prefix}.proj"
    if not isinstance(proj, (list, tuple)) or len(proj) not in (3, 4):
        problems.add(
            f"`{field}`={proj!r} must be a list [kind, dim_in_student, dim_out_teacher] with an "
            "optional 4th element, a dict of optimizer options"
        )
        return None
    kind, dim_in, dim_out, *rest = proj
    options = rest[0] if rest and rest[0] is not None else {}
    problems.choice(f"{field}[0]", kind, presets.PROJ_MAP, "PROJ_MAP")
    dim_in = problems.whole(f"{field}[1]", dim_in, 1)
    dim_out = problems.whole(f"{field}[2]", dim_out, 1)
    if not isinstance(options, dict):
        problems.add(
            f"`{field}[3]`={options!r} must be a dict of optimizer options, e.g. {{'lr': 1e-3}}"
        )
    elif "params" in options:
        problems.add(f"`{field}[3]` must not set 'params': the projection's parameters are used")
    return [kind, dim_in, dim_out, dict(options) if isinstance(options, dict) else options]
